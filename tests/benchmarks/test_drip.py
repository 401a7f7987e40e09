"""The drip benchmark on a tiny run: a few drips of each kind against its own `drca serve`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import drip
from tests.service.media import tiny_checkpoint


@pytest.mark.slow
def test_a_tiny_drip_run_writes_readiness_and_descriptors(tmp_path: Path) -> None:
    out = tmp_path / "drip.json"
    drip.main(["--connections", "30", "--hold-seconds", "6", "--ramp-seconds", "1", "--drip-interval", "1",
               "--kinds", "headers,body,idle", "--checkpoint", str(tiny_checkpoint(tmp_path / "ckpt")),
               "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "drip" and doc["command"].startswith("python -m benchmarks.drip")
    assert doc["environment"]["cpu_cores"]
    res = doc["results"]
    assert res["connections"] == 30 and sum(res["drips"]["opened"].values()) >= 30
    assert set(res["drips"]["opened"]) == {"headers", "body", "idle"}
    assert res["drips"]["open_max"] == 30 and res["drips"]["bytes_dripped"] > 0
    # the server held the drips (a socket each), then gave every descriptor back
    fds = res["fds"]
    assert fds["peak_during"] >= fds["baseline"] + 30 and fds["released"] and fds["after"] <= fds["baseline"]
    assert res["readyz"]["probes"] >= 5 and res["readyz"]["answered"] >= 1
    assert len(res["timeline"]) >= 5 and res["server_log_tracebacks"] == 0
    assert set(res["met"]) == {"readyz_within_1s", "fds_released"} and res["met"]["fds_released"]
