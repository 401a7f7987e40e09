from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import Settings
from tests.procs import RedisServer
from tests.service.media import make_media, tiny_checkpoint
from tests.waiting import wait_until

DATA = Path(__file__).parents[1] / "data"
REAL_CLIPS = ("tiger.mp4", "car.mp4", "capitol.mp4", "sailboat.mp4")  # tests/data/make_clips.py
LIMITS = {"max_upload_bytes": 1_000_000, "max_pixels": 320 * 240, "max_duration_s": 10.0, "max_k": 50,
          "allowed_hosts": ["testserver", "127.0.0.1", "localhost"]}  # TestClient sends Host: testserver


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_media(tmp_path_factory.mktemp("media"))


def make_settings(checkpoint: Path, data_dir: Path, **kw: object) -> Settings:
    return Settings(checkpoint=checkpoint, data_dir=data_dir, device="cpu", batch_size=8, max_wait_ms=5,
                    decode_threads=2, torch_threads=1, **{**LIMITS, **kw})


@pytest.fixture(scope="session")
def client(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One embedded service (gateway + worker + index) shared by the API tests."""
    app = create_app(make_settings(checkpoint, tmp_path_factory.mktemp("data")))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def shipped_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, int]]]:
    """The embedded service on the shipped checkpoint (`drca serve`'s default), with the four real clips of
    tests/data indexed: their video ids by file name."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("shipped-data"), device="cpu", batch_size=4,
                        torch_threads=2, allowed_hosts=["testserver"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c, {name: ingest(c, DATA / name) for name in REAL_CLIPS}


def upload(client: TestClient, path: Path, **fields: str):
    with open(path, "rb") as f:
        return client.post("/v1/videos", files={"file": (path.name, f, "video/mp4")}, data=fields)


def wait_job(client: TestClient, job_id: int, timeout_s: float = 60.0) -> dict:
    def finished() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("done", "failed") else None

    return wait_until(finished, timeout_s, f"job {job_id} finished", interval_s=0.05)


def ingest(client: TestClient, path: Path, **fields: str) -> int:
    r = upload(client, path, **fields)
    assert r.status_code in (200, 202), r.text
    body = r.json()
    job = wait_job(client, body["job_id"])
    assert job["status"] == "done", job
    return body["video_id"]


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (AOF) on a free loopback port, in this test's directory."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
