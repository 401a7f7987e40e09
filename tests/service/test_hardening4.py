"""Issue 22, the remaining points: the cost bound per upload (F8), queries ahead of ingest (S), orphan upload
files reused after a crash."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from indexer import Span
from service.broker import InferenceResult
from service.http.app import create_app
from service.roles.embedded import encoder_threads
from service.settings import Settings
from service.storage import VideoStorage
from tests.service.conftest import make_settings, wait_job
from tests.service.media import H264, ffmpeg


# F8: a tiny file of many segments is refused before anything is queued -----------------------------------
def still_video(path: Path, seconds: float, period_s: float = 30.0) -> Path:
    """A 64x64 still picture, one frame every `period_s` s: a few KB for `seconds / 4` segments of the tiny
    4-frame checkpoint (the probe's 3 KB file of 1,313 segments)."""
    ffmpeg("-f", "lavfi", "-i", f"color=c=green:size=64x64:rate=1/{period_s:g}", "-t", f"{seconds:g}", *H264, str(path))
    return path


@pytest.fixture(scope="module")
def long_client(checkpoint, tmp_path_factory) -> TestClient:
    """An embedded service that accepts long videos (the shared one stops at 10 s)."""
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("data"), max_duration_s=4000.0, text_search=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_a_tiny_file_of_many_segments_is_422_before_queueing(long_client, tmp_path):
    video = still_video(tmp_path / "still.mp4", 1000)  # 250 segments of 4 s
    size = video.stat().st_size
    assert size < 250 * long_client.app.state.service.settings.min_bytes_per_segment  # the case under test
    before = long_client.get("/v1/videos").json()["total"]
    for url in ("/v1/videos", "/v1/classify", "/v1/search"):
        r = long_client.post(url, files={"file": ("still.mp4", video.read_bytes(), "video/mp4")})
        assert r.status_code == 422, (url, r.text)
        err = r.json()["error"]
        assert err["code"] == "video_too_sparse", err
        assert re.search(r"has 2\d\d segments", err["message"]) and f"{size} bytes" in err["message"], err["message"]
    assert long_client.get("/v1/videos").json()["total"] == before  # nothing registered, nothing queued
    assert not list((long_client.app.state.service.settings.videos_dir).rglob("*.mp4"))


def test_a_long_video_with_enough_bytes_per_segment_is_accepted(long_client, tmp_path):
    """The bound is on bytes per segment, not on length: the same 250 segments with a frame every 2 s pass."""
    video = tmp_path / "dense.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=1/2", "-t", "1000", *H264, str(video))
    assert video.stat().st_size >= 250 * long_client.app.state.service.settings.min_bytes_per_segment
    r = long_client.post("/v1/classify", files={"file": ("dense.mp4", video.read_bytes(), "video/mp4")},
                         data={"k": "1"})
    assert r.status_code == 200, r.text


# S: the gateway keeps a core, and says which queries are in flight ------------------------------------------
def test_the_embedded_encoder_leaves_the_gateway_a_core(tmp_path):
    auto = Settings(checkpoint=tmp_path, data_dir=tmp_path)
    assert encoder_threads(auto, True, cores=2) == 1
    assert encoder_threads(auto, True, cores=16) == 15
    assert encoder_threads(auto, True, cores=1) == 1
    assert encoder_threads(auto, False, cores=16) == 0  # a standalone worker: torch's default
    assert encoder_threads(Settings(checkpoint=tmp_path, data_dir=tmp_path, torch_threads=2), True, cores=16) == 2


def test_the_runtime_sets_the_encoder_threads(checkpoint, tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # the process's pool is left as it is
    settings = make_settings(checkpoint, tmp_path, text_search=False).model_copy(update={"torch_threads": 0})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 200
    assert calls == [encoder_threads(settings, True)], calls


def test_the_gateway_counts_its_queries_in_flight(long_client, monkeypatch):
    """classify and search (file or stored video) are counted from the moment their body is read until their
    answer is ready; the embedded worker holds ingest back while the count is not zero."""
    rt = long_client.app.state.service
    seen: list[int] = []

    def infer(request, timeout_s):
        seen.append(rt.queries.count)
        return InferenceResult(probs=np.full(5, 0.2, np.float32), vectors=np.ones((1, 16), np.float32),
                               segments=[Span(0, 1)])

    monkeypatch.setattr(rt.broker, "infer", infer)
    for url in ("/v1/classify", "/v1/search"):
        r = long_client.post(url, files={"file": ("q.mp4", b"not looked at", "video/mp4")})
        assert r.status_code == 200, r.text
    assert seen == [1, 1] and rt.queries.count == 0
    assert rt.worker.queries is rt.queries  # the embedded worker yields to them


# docs/architecture.md: an orphan upload file (a crash after the rename, before the rows) is reused ---------------
def test_an_orphan_upload_file_is_reused_by_the_next_upload_of_its_content(checkpoint, tmp_path, media):
    """The crash left the file in place with no rows; after a restart, the same content uploaded again (under
    another name) is registered on that file, which is neither rewritten nor stored twice, and is indexed."""
    settings = make_settings(checkpoint, tmp_path, text_search=False)
    content = media["bars"].read_bytes()
    orphan = VideoStorage(settings.videos_dir).path_for(hashlib.sha256(content).hexdigest(), "mp4")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(content)
    inode = orphan.stat().st_ino
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/videos", files={"file": ("again.mov", content, "video/quicktime")})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["status"] == "done"
        video = c.app.state.service.catalog.get_video(r.json()["video_id"])
    assert video.extra["path"] == str(orphan) and orphan.stat().st_ino == inode
    assert [p for p in settings.videos_dir.rglob("*") if p.is_file()] == [orphan]
    assert not list(settings.tmp_dir.glob("upload-*"))
