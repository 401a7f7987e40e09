"""Query views through the API: a mirrored copy matches in the `mirrored` view, a letterboxed copy is
embedded from its active picture (`query_box`), and the response fields of every kind of query."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.service.conftest import ingest
from tests.service.media import ffmpeg

ENC = ("-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p")


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Originals of their own (the session's shared service holds the other tests' videos) and copies."""
    root = tmp_path_factory.mktemp("copies")
    out = {"mandel": root / "mandel.mp4", "testsrc": root / "testsrc.mp4",
           "mirrored": root / "mandel_hflip.mp4", "letterbox": root / "testsrc_letterbox.mp4"}
    ffmpeg("-f", "lavfi", "-i", "mandelbrot=size=112x80:rate=10:start_scale=2,trim=duration=3", *ENC,
           str(out["mandel"]))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=112x80:rate=10:duration=3:alpha=0", *ENC, str(out["testsrc"]))
    ffmpeg("-i", str(out["mandel"]), "-vf", "hflip", *ENC, str(out["mirrored"]))
    ffmpeg("-i", str(out["testsrc"]), "-vf", "pad=112:128:0:22:black", *ENC, str(out["letterbox"]))
    return out


def _search(client, path: Path, k: int = 3) -> list[dict]:
    with open(path, "rb") as f:
        r = client.post("/v1/search", files={"file": (path.name, f)}, data={"k": str(k)})
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_mirrored_copy_matches_in_the_mirrored_view(client, copies):
    vid = ingest(client, copies["mandel"])
    hit = _search(client, copies["mirrored"])[0]
    assert hit["video_id"] == vid and hit["view"] == "mirrored"
    assert hit["score"] > 0.98 and hit["query_box"] is None  # no borders: the whole frame


def test_letterboxed_copy_is_embedded_from_its_active_picture(client, copies):
    vid = ingest(client, copies["testsrc"])
    hit = _search(client, copies["letterbox"])[0]
    assert hit["video_id"] == vid and hit["view"] in ("original", "mirrored")
    x, y, w, h = hit["query_box"]
    assert (x, w) == (0, 112) and abs(y - 22) <= 2 and abs(h - 80) <= 2
    assert hit["score"] > 0.98


def test_stored_and_text_queries_name_their_view(client, copies):
    vid = ingest(client, copies["testsrc"])
    ingest(client, copies["mirrored"])  # another indexed video, so the stored query (which skips itself) has hits
    hits = client.post("/v1/search", json={"video_id": vid, "k": 3}).json()["hits"]
    assert hits and all(h["view"] == "original" and h["query_box"] is None for h in hits)
    hits = client.post("/v1/search", json={"text": "a swimming race", "k": 2}).json()["hits"]
    assert hits and all(h["view"] is None and h["query_box"] is None for h in hits)


def test_query_views_decode_the_same_in_any_chunks(checkpoint, tmp_path, copies):
    """Rows are segment-major (every view of a segment together); chunk boundaries inside a segment's
    views, and the probe frames reused for the first segments, give the same clips as one pass."""
    from service.encoding.encoder import VideoEncoder
    from tests.service.conftest import make_settings

    long_copy = tmp_path / "long_letterbox.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=112x80:rate=5:duration=14", "-vf", "pad=112:128:0:22:black",
           *ENC, str(long_copy))
    enc = VideoEncoder(make_settings(checkpoint, tmp_path / "data", text_search=False, max_duration_s=60.0))
    whole = enc.open(long_copy, query=True)
    n = len(whole.segments)
    assert n >= 6 and whole.views[:2] == ["original", "mirrored"] and whole.boxes["original"][1] in (21, 22, 23)
    ref = whole.clips(0, n)
    whole.close()
    parts = enc.open(long_copy, query=True)
    got = torch.cat([parts.clips(a, min(a + 3, n)) for a in range(0, n, 3)])  # 3 rows: splits segments
    parts.close()
    assert torch.allclose(got, ref)
