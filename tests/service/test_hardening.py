"""Regression tests for the hardening items of issue 13 (a hostile client's probes of the API)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from media.segments import PROBE_SEGMENTS
from media.video import DEFAULT_LIMITS
from service.backends.buckets import LocalBuckets
from service.broker import InferenceRequest
from service.errors import ServiceError
from service.http.app import create_app
from service.ratelimit import AuthFailureLimiter, RateLimited
from service.thumbnails import ThumbnailCache
from tests.procs import ROOT, free_port
from tests.service.conftest import ingest, make_settings, wait_job
from tests.service.media import ffmpeg, lavfi_video
from tests.service.rawhttp import Conn, closes_within, json_error, running_server


def unique_copy(src: Path, dst_dir: Path, tag: str) -> Path:
    """`src` with trailing bytes (it still decodes): new content, so the shared `client`'s other tests
    still see their own uploads as new."""
    dst = dst_dir / f"{tag}-{src.name}"
    dst.write_bytes(src.read_bytes() + tag.encode())
    return dst


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    return body["error"]


# 1. /metrics: every label has a bounded set of values ------------------------------------------------
def test_metrics_labels_are_bounded(client):
    before = client.get("/metrics").text
    for i in range(30):
        client.request(f"XMETHOD{i:02d}" + "Q" * 200, "/v1/videos")
        client.get(f"/v1/no-such-route-{i}")
        client.get(f"/static/no-such-file-{i}.js")
    text = client.get("/metrics").text
    assert "XMETHOD" not in text and "no-such" not in text
    assert 'method="other",route="/v1/videos"' in text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert "unmatched" in routes
    assert all(r in ("unmatched", "/static", "/metrics", "/", "/healthz", "/readyz", "/docs", "/docs-assets",
                     "/openapi.json") or r.startswith("/v1/")
               for r in routes), routes
    # 90 distinct garbage requests added a handful of series, not 90 x 16
    assert len(text) - len(before) < 12_000


# a real server (uvicorn, h11) in a thread, for what only a socket can see ------------------------------
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """`drca serve`'s server (service.http.server.server_config) on a free port, with 1 s timeouts."""
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("server"), port=free_port(),
                             header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S, idle_timeout_s=TIMEOUT_S)
    with running_server(settings) as srv:
        yield srv, settings


# 4. bad numbers and deep JSON: 4xx JSON, never 500; the connection stays usable -------------------------
def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _obj(**raw: str) -> str:
    """A JSON object from raw (unquoted, unchecked) JSON values."""
    return "{" + ", ".join(f'"{k}": {v}' for k, v in raw.items()) + "}"


BIG = "1" * 5000  # past Python's 4300-digit limit for int()
HUGE_ID = str(2**63)


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/search", _obj(text=_deep(30_000)), 400),
    ("POST", "/v1/search", _obj(text=_deep(5_000)), 400),
    ("POST", "/v1/search", _obj(text='"a"', k=BIG), 400),
    ("POST", "/v1/search", '{"text": "a", "min_score": 1e400}', 400),
    ("POST", "/v1/search", '{"text": "a", "min_score": NaN}', 400),
    ("POST", "/v1/search", _obj(video_id=HUGE_ID), 422),
    ("POST", "/v1/search", _obj(video_id="1", exclude_ids=f"[{HUGE_ID}]"), 422),
    ("POST", "/v1/classify", _obj(video_id=HUGE_ID), 422),
    ("POST", "/v1/classify", _obj(video_id="9" * 4000), 422),
    ("GET", f"/v1/videos/{HUGE_ID}", "", 422),
    ("DELETE", f"/v1/videos/{HUGE_ID}", "", 422),
    ("GET", f"/v1/videos/{HUGE_ID}/thumbnail", "", 422),
    ("GET", f"/v1/videos/{HUGE_ID}/content", "", 422),
    ("GET", f"/v1/jobs/{HUGE_ID}", "", 422),
    ("GET", f"/v1/videos/{BIG}", "", 422),
    ("GET", "/v1/videos?offset=" + str(10**20), "", 422),
    ("GET", "/v1/videos/-1", "", 422),
])
def test_bad_numbers_and_deep_json_are_4xx_and_keep_the_connection(server, method, path, body, status):
    port = server[1].port
    c = Conn(port)
    try:
        c.request(method, path, body.encode(), {"Content-Type": "application/json"} if body else None)
        got = c.response()
        json_error(got, status)
        assert got[1].get("connection") != "close"
        c.request("GET", "/healthz")  # the same connection still serves
        assert c.response()[0] == 200
    finally:
        c.close()


def test_bad_numbers_in_forms_metadata_and_range(client, media, tmp_path):
    video = unique_copy(media["rgb"], tmp_path, "bad-numbers")

    def post(**data):
        with open(video, "rb") as f:
            return client.post("/v1/videos", files={"file": ("a.mp4", f, "video/mp4")}, data=data)

    for meta in (_obj(a=_deep(30_000)), _obj(a=_deep(600)), _obj(a=BIG), '{"a": 1e400}',
                 '{"a": Infinity}'):
        assert _error(post(metadata=meta), 400)["code"] == "bad_request"
    _error(client.post("/v1/classify", data={"video_id": HUGE_ID}, files={"x": ("x", b"x")}), 422)
    _error(client.post("/v1/search", data={"video_id": "1", "exclude_ids": HUGE_ID}, files={"x": ("x", b"x")}), 422)
    _error(client.post("/v1/search", data={"video_id": BIG}, files={"x": ("x", b"x")}), 422)
    vid = post().json()["video_id"]
    for rng in ("bytes=0-" + BIG, "bytes=" + BIG + "-", "bytes=-" + "9" * 30):
        _error(client.get(f"/v1/videos/{vid}/content", headers={"Range": rng}), 400)
    assert client.get("/v1/videos").status_code == 200  # nothing stored that the listing cannot show


@pytest.mark.expects_500("injects a RuntimeError into the store to check the JSON 500 and the kept connection")
def test_an_unexpected_500_keeps_the_connection(server, monkeypatch):
    srv, settings = server
    rt = srv.config.loaded_app
    while not hasattr(rt, "state"):  # uvicorn wraps the app in its own middleware
        rt = rt.app
    store = rt.state.service.catalog.store

    def broken(*a, **kw):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(store, "count_videos", broken)
    c = Conn(settings.port)
    try:
        c.request("GET", "/v1/videos")
        got = c.response()
        assert json_error(got, 500)["code"] == "internal_error"
        assert "injected" not in got[2].decode()
        c.request("GET", "/healthz")
        assert c.response()[0] == 200
    finally:
        c.close()


# 8. server-side timeouts: header, body, idle; a stalled upload leaves no part file -----------------------
def test_partial_headers_get_408_and_are_closed(server):
    port = server[1].port
    c = Conn(port)
    try:
        c.send(b"GET /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(2):  # a header byte now and then does not keep it open (the limit is for all headers)
            time.sleep(TIMEOUT_S / 4)
            c.send(b"a")
        c.sock.settimeout(10 * TIMEOUT_S)
        assert json_error(c.response(), 408)["code"] == "request_timeout"
        closes_within(c, 10 * TIMEOUT_S)
    finally:
        c.close()


def test_silent_and_idle_connections_are_closed(server):
    port = server[1].port
    silent = Conn(port)  # connects, never sends a byte
    idle = Conn(port)  # one request, then nothing
    try:
        idle.request("GET", "/healthz")
        assert idle.response()[0] == 200
        closes_within(silent, 10 * TIMEOUT_S)
        closes_within(idle, 10 * TIMEOUT_S)
    finally:
        silent.close()
        idle.close()


def test_stalled_upload_gets_408_and_its_part_file_is_removed(server, media):
    _, settings = server
    tmp = settings.tmp_dir
    boundary = "BoUnDaRy"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    data = media["bars"].read_bytes()
    c = Conn(settings.port)
    try:
        c.send((f"POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(head) + len(data) + 100}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + head + data[:1000])
        deadline = time.monotonic() + 10
        while not list(tmp.glob("upload-*.part")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(tmp.glob("upload-*.part")), "the upload was not being spooled"
        c.sock.settimeout(10 * TIMEOUT_S)  # then the client stalls
        status, headers, body = c.response()
        assert status == 408 and headers["connection"] == "close", body
        assert json.loads(body)["error"]["code"] == "request_timeout"
        closes_within(c, 10 * TIMEOUT_S)
        assert list(tmp.glob("upload-*.part")) == []
    finally:
        c.close()



def test_aborted_upload_leaves_no_part_file(server, media):
    _, settings = server
    tmp = settings.tmp_dir
    boundary = "BoUnDaRy"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    c = Conn(settings.port)
    c.send((f"POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + head + b"\0" * 5000)
    deadline = time.monotonic() + 10
    while not list(tmp.glob("upload-*.part")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp.glob("upload-*.part")), "the upload was not being spooled"
    c.close()  # the client goes away mid-body
    deadline = time.monotonic() + 10
    while list(tmp.glob("upload-*.part")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp.glob("upload-*.part")) == []

# 9. external_id: printable characters only ------------------------------------------------------------
@pytest.mark.parametrize("bad", ["a\x7fb", "zero\u200bwidth", "rtl\u202eoverride", "line\nbreak", "nb\u00a0sp",
                                 "bom\ufeff", "tab\tx", "x" * 257])
def test_external_id_must_be_printable(client, media, bad):
    with open(media["life"], "rb") as f:
        r = client.post("/v1/videos", files={"file": ("a.mp4", f, "video/mp4")}, data={"external_id": bad})
    assert _error(r, 422)["code"] == "invalid_input"


def test_external_id_printable_unicode_is_kept(client, media, tmp_path):
    data = unique_copy(media["life"], tmp_path, "ext-id").read_bytes()
    r = client.post("/v1/videos", files={"file": ("a.mp4", data, "video/mp4")},
                    data={"external_id": "  Clip 7 – été/№5  "})
    assert r.status_code == 202, r.text
    assert client.get(f"/v1/videos/{r.json()['video_id']}").json()["external_id"] == "Clip 7 – été/№5"


# 6. text search switched off: a 503 that says so ------------------------------------------------------
@pytest.fixture(scope="module")
def no_text(checkpoint, tmp_path_factory):
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("notext"), text_search=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_text_query_with_text_search_off_is_503(no_text, media):
    err = _error(no_text.post("/v1/search", json={"text": "a dog", "k": 3}), 503)
    assert err["code"] == "text_search_disabled" and "text_search=false" in err["message"]
    # the worker says the same when a gateway with other settings asks it (scale-out)
    rt = no_text.app.state.service
    with pytest.raises(ServiceError) as e:
        rt.broker.infer(InferenceRequest("embed_text", texts=("a dog",)), 30)
    assert (e.value.status, e.value.code) == (503, "text_search_disabled")
    # video queries and uploads still work
    vid = ingest(no_text, media["bars"])
    r = no_text.post("/v1/search", json={"video_id": vid, "k": 3})
    assert r.status_code == 200, r.text


# 7. the thumbnail cache: quantised t, capped size, least recently used evicted first -------------------
@pytest.fixture(scope="module")
def small_cache(checkpoint, tmp_path_factory):
    data = tmp_path_factory.mktemp("thumbs")
    settings = make_settings(checkpoint, data, text_search=False, thumbnail_cache_bytes=6_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c, data / "thumbnails"


def _cached(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpg"))


def test_thumbnail_times_are_quantised(small_cache, media):
    c, root = small_cache
    vid = ingest(c, media["two_segments"])  # 7 s
    for i in range(200):  # 200 distinct t values
        r = c.get(f"/v1/videos/{vid}/thumbnail", params={"t": f"{i * 0.0371:.4f}"})
        assert r.status_code == 200
    files = [p for p in _cached(root) if p.parent.name == str(vid)]
    assert 1 <= len(files) <= 8, files  # at most one file per second of video (0 s .. 7 s)
    assert c.get(f"/v1/videos/{vid}/thumbnail", params={"t": "2.4"}).content == \
        c.get(f"/v1/videos/{vid}/thumbnail", params={"t": "1.6"}).content  # both are the frame at 2 s


def test_thumbnail_cache_is_capped_lru(small_cache, media):
    c, root = small_cache
    rt = c.app.state.service
    vids = [ingest(c, media[name]) for name in ("bars", "testsrc", "life", "rgb")]
    keep = c.get(f"/v1/videos/{vids[0]}/thumbnail", params={"t": "1"}).content
    for vid in vids[1:]:
        for t in range(4):
            c.get(f"/v1/videos/{vid}/thumbnail", params={"t": t})
            # the first one stays in use, so it is never the least recently used
            assert c.get(f"/v1/videos/{vids[0]}/thumbnail", params={"t": "1"}).content == keep
            on_disk = sum(p.stat().st_size for p in _cached(root))
            assert on_disk <= rt.settings.thumbnail_cache_bytes, on_disk
            assert on_disk == rt.thumbnails.size_bytes
    assert (root / str(vids[0]) / "1s.jpg").is_file()
    evicted = root / str(vids[1]) / "0s.jpg"
    assert not evicted.exists()  # used once, long ago: evicted
    assert c.get(f"/v1/videos/{vids[1]}/thumbnail", params={"t": "0"}).status_code == 200  # rendered again


def test_thumbnail_cache_reloads_within_its_cap(tmp_path, media):
    root = tmp_path / "thumbs"
    cache = ThumbnailCache(root, DEFAULT_LIMITS, max_bytes=10**9)
    for t in range(4):
        cache.get(1, media["two_segments"], t, 7.0)
    (root / "1" / "25.jpg").write_bytes(b"old layout")  # tenths of a second, before the cap
    sizes = sorted(p.stat().st_size for p in _cached(root) if p.name.endswith("s.jpg"))
    reopened = ThumbnailCache(root, DEFAULT_LIMITS, max_bytes=sum(sizes[-2:]))
    assert reopened.size_bytes <= sum(sizes[-2:])
    assert not (root / "1" / "25.jpg").exists()
    assert sum(p.stat().st_size for p in _cached(root)) == reopened.size_bytes


# 5. rate limits: failed authentication per address in every mode; request limits embedded too ---------
KEY = "the-right-key"


def test_wrong_keys_are_rate_limited_per_address(checkpoint, tmp_path):
    settings = make_settings(checkpoint, tmp_path, api_keys=[KEY], auth_fail_limit_per_s=0.001,
                             auth_fail_limit_burst=3)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        good = {"Authorization": f"Bearer {KEY}"}
        assert c.get("/v1/videos", headers=good).status_code == 200
        for _ in range(5):  # a missing key is not a guess: not counted
            assert c.get("/v1/videos").status_code == 401
        codes = [c.get("/v1/videos", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(6)]
        assert codes == [401, 401, 401, 429, 429, 429]
        r = c.get("/v1/videos", headers=good)  # blocked: even the right key, so guessing cannot go on
        assert _error(r, 429)["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
        assert c.get("/healthz").status_code == 200
    with TestClient(create_app(settings), raise_server_exceptions=False, client=("10.0.0.9", 5000)) as other:
        assert other.get("/v1/videos", headers=good).status_code == 200  # another address is not blocked


def test_failed_auth_bucket_refills():
    now = [0.0]
    limiter = AuthFailureLimiter(LocalBuckets(rate=0.5, burst=2, clock=lambda: now[0]))
    limiter.failed("a")
    limiter.failed("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    limiter.check("b")
    now[0] += 2.0  # one failure forgiven per 2 s
    limiter.check("a")
    limiter.failed("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_local_buckets_are_bounded():
    buckets = LocalBuckets(rate=1.0, burst=1, max_keys=100)
    for i in range(1000):
        buckets.take(f"addr-{i}")
    assert len(buckets._buckets) == 100


def test_rate_limit_settings_are_honoured_embedded(checkpoint, tmp_path):
    settings = make_settings(checkpoint, tmp_path, rate_limit_per_s=0.01, rate_limit_burst=3)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        codes = [c.get("/v1/videos").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = c.get("/v1/videos")
        assert _error(r, 429)["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
        assert c.get("/healthz").status_code == 200


def test_wrong_keys_are_limited_across_gateway_replicas(redis_server, checkpoint, tmp_path):
    common = {"redis_url": redis_server.url, "api_keys": [KEY], "auth_fail_limit_per_s": 0.001,
              "auth_fail_limit_burst": 2}
    a = create_app(make_settings(checkpoint, tmp_path / "a", **common))
    b = create_app(make_settings(checkpoint, tmp_path / "b", **common))
    with TestClient(a, raise_server_exceptions=False) as ca, TestClient(b, raise_server_exceptions=False) as cb:
        wrong = {"Authorization": "Bearer nope"}
        assert ca.get("/v1/videos", headers=wrong).status_code == 401
        assert cb.get("/v1/videos", headers=wrong).status_code == 401
        for c in (ca, cb):  # the failures on both replicas count against the one address
            assert _error(c.get("/v1/videos", headers={"Authorization": f"Bearer {KEY}"}), 429)["code"] == \
                "rate_limited"


# 10. minor: HEAD on content and thumbnail -------------------------------------------------------------
def test_head_on_content_and_thumbnail(client, media, tmp_path):
    video = unique_copy(media["testsrc"], tmp_path, "head")
    vid = ingest(client, video)
    size = video.stat().st_size
    for path, ctype in ((f"/v1/videos/{vid}/content", "video/mp4"), (f"/v1/videos/{vid}/thumbnail?t=1", "image/jpeg")):
        get = client.get(path)
        head = client.head(path)
        assert head.status_code == 200, head.text
        assert head.content == b"" and head.headers["content-type"] == ctype
        assert head.headers["content-length"] == get.headers["content-length"]
    assert int(client.head(f"/v1/videos/{vid}/content").headers["content-length"]) == size
    ranged = client.head(f"/v1/videos/{vid}/content", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.headers["content-range"] == f"bytes 0-9/{size}"
    assert client.head("/v1/videos/987654/content").status_code == 404


# 10. minor: what h11 refuses (a Content-Length mismatch, ...) gets the JSON error body -------------------
def test_content_length_mismatch_and_bad_framing_are_json(server):
    port = server[1].port
    c = Conn(port)
    try:  # body longer than its Content-Length: the rest is read as the next request, which is garbage
        body = b'{"text": "a"}\r\n\r\n'
        c.send(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n"
               + body)
        json_error(c.response(), 400)  # the 5 bytes: malformed JSON
        assert json_error(c.response(), 400)["code"] == "bad_request"  # the rest
        closes_within(c, 10 * TIMEOUT_S)
    finally:
        c.close()
    for head in (b"Content-Length: abc\r\n", b"Content-Length: 5\r\nContent-Length: 7\r\n",
                 b"Transfer-Encoding: gzip\r\n"):
        c = Conn(port)
        try:
            c.send(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + head + b"\r\n{}")
            assert json_error(c.response(), 400)["code"] == "bad_request"
        finally:
            c.close()
    c = Conn(port)
    try:  # shorter than its Content-Length, and the client waits: the body timeout answers
        c.send(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        c.sock.settimeout(10 * TIMEOUT_S)
        assert json_error(c.response(), 408)["code"] == "request_timeout"
    finally:
        c.close()


# 3. long videos: bounded memory per job, a segments cap, synchronous requests first ----------------------
LONG_S = 400  # 1 frame per second, 64x64: 100 segments of 4 s for the tiny 4-frame model


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return lavfi_video(tmp_path_factory.mktemp("long") / "long400.mp4", f"testsrc2=size=64x64:rate=1:duration={LONG_S}")


@pytest.fixture(scope="module")
def chunked(checkpoint, tmp_path_factory):
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("chunked"), max_duration_s=1000.0,
                             decode_ahead_clips=8, max_segments=150)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_a_long_video_is_decoded_and_embedded_in_bounded_chunks(chunked, long_video, monkeypatch):
    import service.encoding.encoder as encoder_module

    calls: list[int] = []
    real = encoder_module.decode_segments

    def counting(reader, segs, inp, *a, **kw):
        calls.append(len(segs))
        return real(reader, segs, inp, *a, **kw)

    monkeypatch.setattr(encoder_module, "decode_segments", counting)
    worker = chunked.app.state.service.worker
    worker.peak_clips = 0
    vid = ingest(chunked, long_video)
    s = chunked.app.state.settings
    assert len(chunked.get(f"/v1/videos/{vid}").json()["segments"]) == LONG_S // 4
    # never all 100 clips at once; the first PROBE_SEGMENTS were decoded once, to find the borders
    assert sum(calls) + PROBE_SEGMENTS == LONG_S // 4 and max(calls) <= s.batch_size
    assert 0 < worker.peak_clips <= s.decode_ahead_clips + s.batch_size
    assert "drca_worker_decoded_clips 0.0" in chunked.get("/metrics").text  # all released


def test_more_segments_than_max_segments_is_422(checkpoint, tmp_path, long_video, media):
    settings = make_settings(checkpoint, tmp_path, max_duration_s=1000.0, max_segments=50)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        with open(long_video, "rb") as f:
            err = _error(c.post("/v1/videos", files={"file": ("long.mp4", f, "video/mp4")}), 422)
        assert err["code"] == "video_too_long" and "100 segments" in err["message"] and "50" in err["message"]
        with open(long_video, "rb") as f:  # a query video too (the worker checks)
            assert _error(c.post("/v1/classify", files={"file": ("long.mp4", f, "video/mp4")}), 422)["code"] == \
                "video_too_long"
        assert c.get("/v1/videos").json()["total"] == 0
        assert c.post("/v1/classify", files={"file": ("a.mp4", media["bars"].read_bytes())}).status_code == 200


def test_synchronous_requests_do_not_wait_behind_a_long_ingest(chunked, long_video, media, monkeypatch):
    """The job's decoding is held after its first chunk; classify, a video query and a text query must
    all complete meanwhile (before: they queued behind the whole video, and only then the job finished)."""
    import service.encoding.encoder as encoder_module

    first_chunk, release = threading.Event(), threading.Event()
    real = encoder_module.OpenedVideo.clips

    def gated(self, start, stop):
        if self.duration > LONG_S - 5 and start > 0:  # the long video, after its first chunk
            first_chunk.set()
            assert release.wait(60), "never released"
        return real(self, start, stop)

    monkeypatch.setattr(encoder_module.OpenedVideo, "clips", gated)
    video = unique_copy(long_video, long_video.parent, "prio")
    r = chunked.post("/v1/videos", files={"file": ("long.mp4", video.read_bytes(), "video/mp4")})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    try:
        assert first_chunk.wait(60)
        classify = chunked.post("/v1/classify", files={"file": ("q.mp4", media["bars"].read_bytes())})
        assert classify.status_code == 200, classify.text
        query = chunked.post("/v1/search", files={"file": ("q.mp4", media["testsrc"].read_bytes())})
        assert query.status_code == 200, query.text
        text = chunked.post("/v1/search", json={"text": "colour bars", "k": 3})
        assert text.status_code == 200, text.text
        assert chunked.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # still held
    finally:
        release.set()
    assert wait_job(chunked, job_id)["status"] == "done"


# 2. a second, larger video stream cannot slip past the pixel limit -------------------------------------
def test_two_stream_upload_over_the_pixel_limit_is_413(client, media, tmp_path):
    two = tmp_path / "two.mp4"  # 96x96 first, then the 640x480 stream decord would decode
    ffmpeg("-i", str(media["bars"]), "-i", str(media["large"]), "-map", "0:v", "-map", "1:v", "-c", "copy", str(two))
    before = client.get("/v1/videos").json()["total"]
    for url in ("/v1/videos", "/v1/classify", "/v1/search"):
        with open(two, "rb") as f:
            err = _error(client.post(url, files={"file": ("two.mp4", f, "video/mp4")}), 413)
        assert err["code"] == "video_too_large" and "640x480" in err["message"]
    assert client.get("/v1/videos").json()["total"] == before


# 10. minor: --api-key warns (keys belong in a file or the environment); a missing faiss is one line ---------
def test_api_key_flag_warns_and_key_files_work(checkpoint, tmp_path, monkeypatch):
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from service.cli import app as service_cli

    keys = tmp_path / "keys"
    keys.write_text("# deployment keys\nkey-one\n\n  key-two  \n")
    s = make_settings(checkpoint, tmp_path, api_keys_file=keys)
    assert [k.get_secret_value() for k in s.api_keys] == ["key-one", "key-two"]
    (tmp_path / "empty").write_text("# nothing\n")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValidationError, match="key file"):
            make_settings(checkpoint, tmp_path, api_keys_file=bad)

    runner = CliRunner()
    missing_ckpt = str(tmp_path / "no-checkpoint")  # exits 2 right after the flags are read
    r = runner.invoke(service_cli, ["serve", "--api-key", "s3cret", "--checkpoint", missing_ckpt])
    assert r.exit_code == 2 and "warning" in r.output and "ps" in r.output and "--api-key-file" in r.output
    r = runner.invoke(service_cli, ["serve", "--api-key-file", str(keys), "--checkpoint", missing_ckpt])
    assert r.exit_code == 2 and "warning" not in r.output
    r = runner.invoke(service_cli, ["serve", "--api-key-file", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "api_keys_file" in r.output and "Traceback" not in r.output

    empty = tmp_path / "no-videos"
    empty.mkdir()
    r = runner.invoke(service_cli, ["ingest", str(empty), "--api-key", "s3cret"])
    assert r.exit_code == 2 and "warning" in r.output
    monkeypatch.setenv("DRCA_API_KEY", "s3cret")
    r = runner.invoke(service_cli, ["ingest", str(empty)])
    assert r.exit_code == 2 and "warning" not in r.output
    r = runner.invoke(service_cli, ["ingest", str(empty), "--api-key-file", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "has no keys" in r.output


# `drca ingest`, the HTTP client, needs no faiss: tests/test_light_imports.py runs it without
@pytest.mark.parametrize("command", [["serve"], ["worker"]])
def test_missing_faiss_is_a_one_line_error(tmp_path, command):
    fake = tmp_path / "site" / "faiss"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'faiss\'", name="faiss")\n')
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"}
    r = subprocess.run([sys.executable, "-m", "cli.main", *command], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "faiss" in lines[0] and ".[cpu]" in lines[0] and ".[gpu]" in lines[0]
