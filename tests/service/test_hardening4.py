"""Issue 22, the remaining points: the cost bound per upload (F8), queries ahead of ingest (S), orphan upload
files reused after a crash."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import make_settings
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
    assert size < 250 * long_client.app.state.runtime.settings.min_bytes_per_segment  # the case under test
    before = long_client.get("/v1/videos").json()["total"]
    for url in ("/v1/videos", "/v1/classify", "/v1/search"):
        r = long_client.post(url, files={"file": ("still.mp4", video.read_bytes(), "video/mp4")})
        assert r.status_code == 422, (url, r.text)
        err = r.json()["error"]
        assert err["code"] == "video_too_sparse", err
        assert re.search(r"has 2\d\d segments", err["message"]) and f"{size} bytes" in err["message"], err["message"]
    assert long_client.get("/v1/videos").json()["total"] == before  # nothing registered, nothing queued
    assert not list((long_client.app.state.runtime.settings.videos_dir).rglob("*.mp4"))


def test_a_long_video_with_enough_bytes_per_segment_is_accepted(long_client, tmp_path):
    """The bound is on bytes per segment, not on length: the same 250 segments with a frame every 2 s pass."""
    video = tmp_path / "dense.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=1/2", "-t", "1000", *H264, str(video))
    assert video.stat().st_size >= 250 * long_client.app.state.runtime.settings.min_bytes_per_segment
    r = long_client.post("/v1/classify", files={"file": ("dense.mp4", video.read_bytes(), "video/mp4")},
                         data={"k": "1"})
    assert r.status_code == 200, r.text
