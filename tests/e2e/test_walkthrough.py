"""The curl walkthrough of the README, run word for word (only the port differs) against `drca serve` with
the shipped checkpoint and the MiniLM text encoder, as `make run` serves it. Needs curl (`.ci/run` installs
it); without it the test fails, it never skips."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model import SHIPPED_CHECKPOINT
from tests.e2e.test_serve import ROOT, Server


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return re.sub(r"^```(bash)?\s*$", "", block, flags=re.M)


@pytest.mark.slow
def test_walkthrough_runs(tmp_path):
    server = Server(SHIPPED_CHECKPOINT, tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        script = walkthrough().replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "TMPDIR": str(tmp_path)}
        r = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        docs = [json.loads(x) for x in lines if x.startswith("{")]
        assert docs[0] == {"video_id": 1, "job_id": 1, "status": "queued", "created": True}
        assert docs[2]["status"] == "done" and docs[3]["status"] == "indexed"
        assert docs[3]["labels"][0]["name"] == "tiger", docs[3]["labels"]
        assert docs[4]["query"] == "video" and docs[4]["hits"][0]["external_id"] == "tiger"
        assert docs[5]["query"] == "text" and docs[5]["hits"][0]["external_id"] == "tiger"
        assert len(docs[6]["labels"]) == 3 and docs[6]["labels"][0]["name"] == "tiger" and docs[7]["total"] == 2
        assert "204" in lines and docs[8]["error"]["code"] == "invalid_input"
        assert 'drca_videos{status="indexed"} 1.0' in r.stdout
    finally:
        server.stop()
