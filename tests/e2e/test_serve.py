"""One real `drca serve` subprocess on a free loopback port, driven over HTTP and by `drca ingest`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.commits import assert_committed_once, wal_commits
from tests.procs import ROOT, HttpServer, wait_jobs
from tests.service.media import CLASS_NAMES, distinct_videos, lavfi_video, make_media, tiny_checkpoint
from tests.waiting import wait_until


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
        # two `drca ingest` runs, the second skipping everything: each video committed to the index once
        assert_committed_once(wal_commits(tmp_path / "data" / "index"), list(videos.values()))

        server.stop()  # graceful (SIGTERM), then the same data directory again
        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            listed = {v["source_name"]: v for v in c.get("/v1/videos").json()["videos"]}
            assert set(listed) == {"testsrc.mp4", "mandel.mp4", "life.mp4"}
            assert all(v["status"] == "indexed" for v in listed.values())
            with open(media["testsrc_copy"], "rb") as f:
                hits = c.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "4"}).json()["hits"]
            assert hits[0]["video_id"] == videos["testsrc.mp4"]
            assert len(hits) == 3 and videos["bars.mp4"] not in [h["video_id"] for h in hits]
        server.stop()  # graceful: SIGTERM
        # uvicorn re-raises the signal after a clean shutdown, so the exit status is -SIGTERM
        assert server.proc.returncode in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log.read_text()
    finally:
        server.stop(signal.SIGKILL)


def durable_job_states(data_dir: Path) -> dict[int, str]:
    """Job id -> status as committed to the metadata store on disk (readable while the server is stopped)."""
    with contextlib.closing(sqlite3.connect(data_dir / "metadata.sqlite3")) as db:
        return dict(db.execute("SELECT job_id, status FROM jobs").fetchall())


@pytest.mark.slow
def test_kill_dash_nine_mid_job_reruns_unfinished_jobs_once(tmp_path):
    """Acknowledged uploads, then kill -9 while a job is verifiably running: after the restart every
    unfinished job runs again and commits its video to the index exactly once more; a finished job does not
    run again.

    The kill is made deterministic by freezing the server (SIGSTOP) once the first job is running: the job
    states and index commits read while it is frozen are exactly what the kill leaves behind. The first
    video takes a second or more to decode; if the job still finished before the freeze (a very loaded
    machine), the round is repeated with new uploads."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    data = tmp_path / "data"
    server = Server(ckpt, data, tmp_path / "server.log", env={"DRCA_DECODE_THREADS": "1", "DRCA_PREFETCH": "1",
                                                              "DRCA_TEXT_SEARCH": "false"})
    uploads: dict[int, int] = {}  # job id -> video id
    server.start()
    try:
        for attempt in range(3):
            long = lavfi_video(tmp_path / f"long{attempt}.mp4", f"testsrc2=size=64x64:rate=2:duration={600 + attempt}")
            short = distinct_videos(tmp_path / f"short{attempt}", 2, seconds=4 + attempt)  # new content each round
            with httpx.Client(base_url=server.url, timeout=60) as c:
                ups = [c.post("/v1/videos", files={"file": (p.name, p.read_bytes(), "video/mp4")})
                       for p in (long, *short)]
                assert [u.status_code for u in ups] == [202] * 3, [u.text for u in ups]
                uploads.update({u.json()["job_id"]: u.json()["video_id"] for u in ups})
                first = ups[0].json()["job_id"]
                wait_until(lambda: c.get(f"/v1/jobs/{first}").json()["status"] != "queued", 60,  # noqa: B023
                           "the long job taken by the worker", interval_s=0.005)
            server.proc.send_signal(signal.SIGSTOP)  # frozen: nothing changes from here to the kill
            before = durable_job_states(data)
            if before[first] == "running":
                break
            server.proc.send_signal(signal.SIGCONT)  # lost the race: the long job finished already
        else:
            raise AssertionError("the long job finished before the freeze in 3 rounds")
        commits_before = wal_commits(data / "index")
        server.stop(signal.SIGKILL)

        server.start()
        assert "re-queued" in server.tail(100_000)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            after = wait_jobs(c, list(uploads), timeout_s=120, procs=(server,))
            videos = {v: c.get(f"/v1/videos/{v}").json() for v in uploads.values()}
        assert all(j["status"] == "done" for j in after.values()), after
        assert all(v["status"] == "indexed" and v["segments"] for v in videos.values()), videos
        commits_after = wal_commits(data / "index")
        for job_id, video_id in uploads.items():
            n_before = len(commits_before.get(video_id, []))
            reran = before[job_id] != "done"
            assert len(commits_after[video_id]) == n_before + reran, (job_id, before[job_id], n_before)
        assert_committed_once(commits_after, list(uploads.values()),
                              rerun={v for j, v in uploads.items() if before[j] == "running"})
    finally:
        server.stop(signal.SIGKILL)
