"""One real `drca serve` subprocess on a free loopback port, driven over HTTP and by `drca ingest`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, HttpServer, wait_jobs
from tests.service.media import CLASS_NAMES, make_media, tiny_checkpoint


class Server(HttpServer):
    """The embedded `drca serve` (no Redis) with a checkpoint and a data directory."""

    def __init__(self, checkpoint: Path, data_dir: Path, log: Path, *extra_args: str,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--device", "cpu",
                          *extra_args], log, {"DRCA_TORCH_THREADS": "1", "DRCA_MAX_WAIT_MS": "5", **(env or {})})


def wait_job(c: httpx.Client, job_id: int, timeout_s: float = 60) -> dict:
    return wait_jobs(c, [job_id], timeout_s)[job_id]


def ingest_cli(folder: Path, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "ingest", str(folder), "--server", url,
                           "--concurrency", "3"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_drca_serve_end_to_end(tmp_path):
    media = make_media(tmp_path / "media")
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    folder = tmp_path / "to_ingest"
    folder.mkdir()
    for name in ("bars", "testsrc", "mandel", "life"):
        shutil.copy(media[name], folder / f"{name}.mp4")
    shutil.copy(media["corrupt"], folder / "corrupt.mp4")
    server = Server(ckpt, tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        # batch ingest: 4 ingested, the corrupt one fails with its reason, exit code 1
        r = ingest_cli(folder, server.url)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "ingested 4, skipped 0 (already indexed), failed 1" in r.stdout
        assert "corrupt.mp4" in r.stdout
        # resumable: the second run skips everything that is indexed
        (folder / "corrupt.mp4").unlink()
        r = ingest_cli(folder, server.url)
        assert r.returncode == 0 and "ingested 0, skipped 4" in r.stdout, r.stdout + r.stderr

        with httpx.Client(base_url=server.url, timeout=60) as c:
            videos = {v["source_name"]: v["video_id"] for v in c.get("/v1/videos").json()["videos"]}
            assert set(videos) == {"bars.mp4", "testsrc.mp4", "mandel.mp4", "life.mp4"}

            # a re-encoded, cropped copy finds its original first
            for name in ("bars", "testsrc"):
                with open(media[f"{name}_copy"], "rb") as f:
                    hits = c.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "4"}).json()["hits"]
                assert hits[0]["video_id"] == videos[f"{name}.mp4"], hits

            with open(media["mandel"], "rb") as f:
                labels = c.post("/v1/classify", files={"file": ("m.mp4", f)}).json()["labels"]
            assert len(labels) == 5 and {lb["name"] for lb in labels} == set(CLASS_NAMES)

            r = c.post("/v1/search", json={"text": "a person dancing", "k": 3})
            assert r.status_code == 200 and len(r.json()["hits"]) == 3

            assert c.delete(f"/v1/videos/{videos['bars.mp4']}").status_code == 204
            with open(media["bars_copy"], "rb") as f:
                hits = c.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "10"}).json()["hits"]
            assert videos["bars.mp4"] not in [h["video_id"] for h in hits]

            # acknowledged, then the process dies (kill -9) before or while it is indexed
            with open(media["rgb"], "rb") as f:
                up = c.post("/v1/videos", files={"file": ("rgb.mp4", f)})
            assert up.status_code == 202
        server.stop(signal.SIGKILL)

        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert wait_job(c, up.json()["job_id"])["status"] == "done"
            listed = {v["source_name"]: v for v in c.get("/v1/videos").json()["videos"]}
            assert set(listed) == {"testsrc.mp4", "mandel.mp4", "life.mp4", "rgb.mp4"}
            assert all(v["status"] == "indexed" for v in listed.values())
            with open(media["testsrc_copy"], "rb") as f:
                hits = c.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "4"}).json()["hits"]
            assert hits[0]["video_id"] == videos["testsrc.mp4"]
            assert len(hits) == 4 and videos["bars.mp4"] not in [h["video_id"] for h in hits]
        server.stop()  # graceful: SIGTERM
        # uvicorn re-raises the signal after a clean shutdown, so the exit status is -SIGTERM
        assert server.proc.returncode in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log.read_text()
    finally:
        server.stop(signal.SIGKILL)
