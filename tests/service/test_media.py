"""`/v1/videos/{id}/thumbnail` (JPEG, rendered once, cached, dropped on delete), `/v1/videos/{id}/content`
(range requests) and the web app's static files."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from media.video import DEFAULT_LIMITS, VIDEO_EXTENSIONS
from service.http.app import STATIC_DIR, create_app
from service.http.routes.media import MEDIA_TYPES
from service.thumbnails import THUMBNAIL_WIDTH, ThumbnailCache
from tests.service.conftest import ingest, make_settings


@pytest.fixture(scope="module")
def app_client(checkpoint, tmp_path_factory):
    data = tmp_path_factory.mktemp("media-data")
    with TestClient(create_app(make_settings(checkpoint, data, text_search=False)),
                    raise_server_exceptions=False) as c:
        yield c, data


def jpeg(body: bytes) -> Image.Image:
    assert body[:3] == b"\xff\xd8\xff"  # JPEG SOI marker
    return Image.open(io.BytesIO(body))


def test_thumbnail_rendered_once_and_cached(app_client, media, monkeypatch):
    c, data = app_client
    vid = ingest(c, media["two_segments"])  # 64x64 Mandelbrot zoom, 7 s
    r = c.get(f"/v1/videos/{vid}/thumbnail?t=5")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = jpeg(r.content)
    assert img.size == (64, 64) and img.mode == "RGB"  # small frames are not enlarged
    cached = data / "thumbnails" / str(vid) / "5s.jpg"
    assert cached.read_bytes() == r.content

    rt = c.app.state.service

    def no_render(*_a):
        raise AssertionError("rendered again")

    monkeypatch.setattr(rt.thumbnails, "render", no_render)
    again = c.get(f"/v1/videos/{vid}/thumbnail?t=5.4")  # rounds to the same second
    assert again.status_code == 200 and again.content == r.content
    monkeypatch.undo()

    first = c.get(f"/v1/videos/{vid}/thumbnail").content  # t defaults to 0
    assert first != r.content  # another frame of the zoom
    late = c.get(f"/v1/videos/{vid}/thumbnail?t=99999")  # clamped to the duration: the last frame
    assert late.status_code == 200
    duration = c.get(f"/v1/videos/{vid}").json()["duration"]
    assert (data / "thumbnails" / str(vid) / f"{round(duration)}s.jpg").is_file()


def test_thumbnail_bad_requests(app_client, media):
    c, _ = app_client
    vid = ingest(c, media["mandel"])
    for t in ("-1", "nan", "inf", "abc", "1e9"):
        r = c.get(f"/v1/videos/{vid}/thumbnail?t={t}")
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", (t, r.text)
    r = c.get("/v1/videos/987654/thumbnail")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert c.get("/v1/videos/abc/thumbnail").status_code == 422


def test_thumbnail_width_capped(media, tmp_path):
    """A 640x480 frame becomes a 320x240 JPEG (the decoding path is the service's one)."""
    cache = ThumbnailCache(tmp_path, DEFAULT_LIMITS)
    img = jpeg(cache.render(media["large"], 0.5))
    assert img.size == (THUMBNAIL_WIDTH, 240)


def test_content_and_ranges(app_client, media):
    c, _ = app_client
    vid = ingest(c, media["life"])
    raw = media["life"].read_bytes()
    size = len(raw)
    r = c.get(f"/v1/videos/{vid}/content")
    assert r.status_code == 200 and r.content == raw
    assert r.headers["content-type"] == "video/mp4" and r.headers["accept-ranges"] == "bytes"

    r = c.get(f"/v1/videos/{vid}/content", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.content == raw[:100]
    assert r.headers["content-range"] == f"bytes 0-99/{size}"
    r = c.get(f"/v1/videos/{vid}/content", headers={"Range": "bytes=-50"})
    assert r.status_code == 206 and r.content == raw[-50:]
    r = c.get(f"/v1/videos/{vid}/content", headers={"Range": f"bytes={size - 10}-"})
    assert r.status_code == 206 and r.content == raw[-10:]
    r = c.get(f"/v1/videos/{vid}/content", headers={"Range": f"bytes=100-{size * 2}"})  # end clamped
    assert r.status_code == 206 and r.content == raw[100:]

    for bad in ("bytes=abc", "items=0-1", "bytes=5-1", "bytes=-", "bytes=1-2-3", "0-10",
                "bytes=" + ",".join(["0-1"] * 17)):
        r = c.get(f"/v1/videos/{vid}/content", headers={"Range": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", (bad, r.text)
    for unsatisfiable in (f"bytes={size}-", "bytes=-0", f"bytes={size + 5}-{size + 9}"):
        r = c.get(f"/v1/videos/{vid}/content", headers={"Range": unsatisfiable})
        assert r.status_code == 416 and r.json()["error"]["code"] == "range_not_satisfiable", unsatisfiable
        assert r.headers["content-range"] == f"bytes */{size}"
    assert c.get("/v1/videos/987654/content").status_code == 404


def test_ranges_follow_rfc_9110(app_client, media):
    """Suffix ranges longer than the file, several ranges in one request, and If-Range."""
    c, _ = app_client
    vid = ingest(c, media["testsrc"])
    raw = media["testsrc"].read_bytes()
    size = len(raw)
    url = f"/v1/videos/{vid}/content"
    for suffix in (size, size + 1, size * 10):  # 14.1.2: a suffix longer than the file selects all of it
        r = c.get(url, headers={"Range": f"bytes=-{suffix}"})
        assert r.status_code == 206 and r.content == raw, (suffix, r.status_code, r.text[:200])
        assert r.headers["content-range"] == f"bytes 0-{size - 1}/{size}"

    r = c.get(url, headers={"Range": "bytes=0-9, 20-29, -5"})  # 14.6: multipart/byteranges
    assert r.status_code == 206
    ctype = r.headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=", 1)[1].encode()
    parts = [p for p in r.content.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    got = []
    for part in parts:
        head, _, body = part.partition(b"\r\n\r\n")
        m = re.search(rb"content-range: bytes (\d+)-(\d+)/(\d+)", head, re.I)
        start, end = int(m.group(1)), int(m.group(2))
        assert int(m.group(3)) == size and body.removesuffix(b"\r\n") == raw[start : end + 1]
        got.append((start, end))
    assert got == [(0, 9), (20, 29), (size - 5, size - 1)]

    etag, modified = c.get(url).headers["etag"], c.get(url).headers["last-modified"]
    for validator in (etag, modified):  # 13.1.5: the current validator: the range applies
        r = c.get(url, headers={"Range": "bytes=0-99", "If-Range": validator})
        assert r.status_code == 206 and r.content == raw[:100], validator
    for stale in ('"not-the-etag"', f"W/{etag}", "Thu, 01 Jan 1970 00:00:00 GMT"):
        for rng in ("bytes=0-99", f"bytes={size + 5}-"):  # any other: the whole file, even for a bad range
            r = c.get(url, headers={"Range": rng, "If-Range": stale})
            assert r.status_code == 200 and r.content == raw, (stale, rng, r.status_code)


def test_delete_drops_thumbnails_and_content(app_client, media):
    c, data = app_client
    vid = ingest(c, media["rgb"])
    assert c.get(f"/v1/videos/{vid}/thumbnail?t=1").status_code == 200
    assert (data / "thumbnails" / str(vid)).is_dir()
    assert c.delete(f"/v1/videos/{vid}").status_code == 204
    assert not (data / "thumbnails" / str(vid)).exists()
    for path in ("thumbnail", "content"):
        r = c.get(f"/v1/videos/{vid}/{path}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_deleted_while_rendering_leaves_no_thumbnail(app_client, media, monkeypatch):
    c, data = app_client
    vid = ingest(c, media["bars"])
    rt = c.app.state.service
    render = rt.thumbnails.render

    def render_then_delete(path, t):
        jpeg_bytes = render(path, t)
        rt.catalog.delete(vid)  # a DELETE lands while the frame is being encoded
        return jpeg_bytes

    monkeypatch.setattr(rt.thumbnails, "render", render_then_delete)
    r = c.get(f"/v1/videos/{vid}/thumbnail?t=1")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert not (data / "thumbnails" / str(vid)).exists()


def test_every_stored_extension_has_a_media_type():
    assert set(MEDIA_TYPES) >= VIDEO_EXTENSIONS


def test_web_app_is_served(app_client):
    c, _ = app_client
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'src="static/js/app.js"' in r.text
    js = c.get("/static/js/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert c.get("/static/app.css").headers["content-type"].startswith("text/css")
    r = c.get("/static/nope.js")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # every module the app imports is there (the browser tests exercise them; this is the cheap check)
    for module in (STATIC_DIR / "js").glob("*.js"):
        for name in re.findall(r'from "\./([\w-]+\.js)"', module.read_text()):
            assert (STATIC_DIR / "js" / name).is_file(), (module.name, name)
            assert c.get(f"/static/js/{name}").status_code == 200
