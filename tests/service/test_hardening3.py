"""Regression tests for the round-3 probe findings of issue 22 (framing, rate-limit keys, forwarded headers,
disconnects, slow uploads, resolution switches, cost per upload, strict numbers, browser-facing checks)."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import Settings
from tests.procs import free_port
from tests.service.conftest import make_settings
from tests.service.rawhttp import Conn, closes_within, json_error, running_server
from tests.waiting import wait_until

TIMEOUT_S = 1.0
BOUNDARY = "BoUnDaRy"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) + (f"\n{r.exc_info}" if r.exc_info else "") for r in self.records)


@pytest.fixture()
def server_log() -> Iterator[_Records]:
    """Every record the server logs in this test (its own loggers and uvicorn's, which do not propagate)."""
    handler = _Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """`drca serve`'s server on a free port, open mode (no API keys), 1 s timeouts."""
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("server3"), port=free_port(), text_search=False,
                             header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S, idle_timeout_s=TIMEOUT_S)
    with running_server(settings) as srv:
        yield srv, settings


def _metrics(port: int) -> str:
    c = Conn(port)
    try:
        c.request("GET", "/metrics")
        status, _, body = c.response()
        assert status == 200
        return body.decode()
    finally:
        c.close()


def _statuses(metrics: str, route: str) -> set[str]:
    return set(re.findall(r'drca_request_seconds_count\{method="[A-Z]+",route="' + re.escape(route)
                          + r'",status="(\d+)"\}', metrics))


# F2: Content-Length and Transfer-Encoding together are ambiguous framing: 400, and the connection closes ---
def test_content_length_with_transfer_encoding_is_400_and_closes(server):
    port = server[1].port
    smuggled = (b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/videos/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    c = Conn(port)
    try:
        c.send(smuggled)
        assert json_error(c.response(), 400)["code"] == "bad_request"
        closes_within(c, 10 * TIMEOUT_S)
        assert b"HTTP/1.1" not in c.buf, c.buf  # the hidden request was never answered
    finally:
        c.close()


# F5: a multipart boundary past python-multipart's 256 characters is a 400, not a 500 ---------------------
@pytest.mark.parametrize("path", ["/v1/videos", "/v1/classify", "/v1/search"])
def test_overlong_multipart_boundary_is_400(server, path):
    boundary = "b" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n3\r\n--{boundary}--\r\n").encode()
    c = Conn(server[1].port)
    try:
        c.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        err = json_error(c.response(), 400)
        assert err["code"] == "bad_request" and "boundary" in err["message"]
    finally:
        c.close()


# F6: a client that goes away mid-body, or sends a bad chunk size, is not a 500 -----------------------------
def _upload_head(length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()


PART = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
        "Content-Type: video/mp4\r\n\r\n").encode()


def test_disconnects_and_bad_chunks_are_not_500(server, server_log):
    port = server[1].port
    requests = [
        # JSON body cut short, then the client leaves
        (b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
         b'{"text": "a', True),
        # an upload cut short
        (_upload_head(1_000_000) + PART + b"\0" * 3000, True),
        # a chunked upload with a chunk size that is not hex
        (_upload_head(None) + f"{len(PART):x}\r\n".encode() + PART + b"\r\nzz\r\n", False),
        # a chunked JSON body with a chunk size that is not hex
        (b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
         b"\r\n\r\n4\r\n{\"te\r\n-1\r\n", False),
    ]
    for raw, leave in requests:
        c = Conn(port)
        try:
            c.send(raw)
            if leave:
                time.sleep(0.2)  # the server is reading the body
            else:
                assert json_error(c.response(), 400)["code"] == "bad_request"
        finally:
            c.close()

    def counted() -> str | None:
        text = _metrics(port)
        done = sum(int(float(n)) for n in re.findall(
            r'drca_request_seconds_count\{method="POST",route="/v1/(?:videos|search)",status="\d+"\} (\S+)', text))
        return text if done >= len(requests) else None

    text = wait_until(counted, 10, "every request finished")
    for route in ("/v1/videos", "/v1/search"):
        assert not any(s.startswith("5") for s in _statuses(text, route)), text
    logged = server_log.text()
    assert "Traceback" not in logged and "unhandled error" not in logged and "Exception in ASGI" not in logged, \
        logged
    assert len(server_log.records) <= 2 * len(requests), logged  # a line each at most, not a trace
    assert list(server[1].tmp_dir.glob("upload-*.part")) == []


# F3: in open mode the request limit is per client address, whatever bearer token is sent ------------------
def test_open_mode_rate_limit_ignores_bearer_tokens(checkpoint, tmp_path):
    settings = make_settings(checkpoint, tmp_path, text_search=False, rate_limit_per_s=0.001, rate_limit_burst=3)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        codes = [c.get("/v1/videos", headers={"Authorization": f"Bearer {uuid.uuid4()}"}).status_code
                 for _ in range(6)]
        assert codes == [200, 200, 200, 429, 429, 429]


# F4: X-Forwarded-For is trusted only from configured proxies (none by default) ----------------------------
KEY = "the-right-key"


def _wrong_keys_with_forwarded_for(port: int, n: int) -> list[int]:
    codes = []
    for i in range(n):
        c = Conn(port)
        try:
            c.request("GET", "/v1/videos", headers={"Authorization": f"Bearer guess-{i}",
                                                    "X-Forwarded-For": f"203.0.113.{i + 1}"})
            codes.append(c.response()[0])
        finally:
            c.close()
    return codes


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(checkpoint, tmp_path):
    common = {"text_search": False, "api_keys": [KEY], "auth_fail_limit_per_s": 0.001, "auth_fail_limit_burst": 2}
    settings = make_settings(checkpoint, tmp_path / "default", port=free_port(), **common)
    with running_server(settings):
        assert _wrong_keys_with_forwarded_for(settings.port, 5) == [401, 401, 429, 429, 429]
    settings = make_settings(checkpoint, tmp_path / "proxied", port=free_port(), trusted_proxies=["127.0.0.1"],
                             **common)
    with running_server(settings):  # behind a configured proxy, each forwarded client has its own count
        assert _wrong_keys_with_forwarded_for(settings.port, 5) == [401] * 5


# minor: ids and integers are plain ASCII decimal, everywhere (paths, queries, JSON, forms) ----------------
NOT_INTEGERS = ["1.0", "+1", "01", "1_0", "\uff11", "\u0661", "1e0", "true", " 1"]


@pytest.mark.parametrize("raw", NOT_INTEGERS)
def test_non_canonical_integers_are_422_everywhere(client, raw):
    def code(r) -> int:
        assert r.headers["content-type"] == "application/json", r.text
        return r.status_code

    assert code(client.get(f"/v1/videos/{raw}")) == 422
    assert code(client.get(f"/v1/jobs/{raw}")) == 422
    assert code(client.get("/v1/videos", params={"offset": raw})) == 422
    assert code(client.get("/v1/videos", params={"limit": raw})) == 422
    form = {"x": ("x", b"x")}
    assert code(client.post("/v1/search", data={"video_id": raw}, files=form)) == 422
    assert code(client.post("/v1/search", data={"video_id": "1", "k": raw}, files=form)) == 422
    if raw.strip() == raw:  # spaces around the commas of a list are allowed
        assert code(client.post("/v1/search", data={"video_id": "1", "exclude_ids": f"2, {raw}"}, files=form)) == 422
    assert code(client.post("/v1/classify", data={"video_id": raw}, files=form)) == 422


@pytest.mark.parametrize("body", ['{"video_id": 1.0}', '{"video_id": true}', '{"video_id": "+1"}',
                                  '{"text": "a", "k": true}', '{"text": "a", "k": 2.0}',
                                  '{"text": "a", "exclude_ids": [false]}', '{"text": "a", "min_score": true}'])
def test_json_booleans_and_floats_are_not_integers(client, body):
    for path in ("/v1/search", "/v1/classify"):
        if path == "/v1/classify" and "text" in body:
            continue
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_input"


def test_canonical_integers_still_work(client):
    assert client.get("/v1/videos", params={"offset": "0", "limit": "10"}).status_code == 200
    assert client.get("/v1/videos/987654321").status_code == 404
    r = client.post("/v1/search", json={"text": "a", "k": 3, "exclude_ids": [0, 10]})
    assert r.status_code == 200, r.text
    r = client.post("/v1/search", data={"video_id": "987654321", "k": "10", "min_score": "0.5"},
                    files={"x": ("x", b"x")})
    assert r.status_code == 404, r.text  # parsed, then the video is not there


# minor: HEAD is answered on every GET route; a 405 names the allowed methods ---------------------------
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/", "/v1/videos", "/v1/videos/987654",
                                  "/v1/jobs/987654"])
def test_head_on_get_routes(server, path):
    c = Conn(server[1].port)
    try:
        c.request("GET", path)
        get_status, get_headers, _ = c.response()
        c.request("HEAD", path)
        c.sock.settimeout(5)
        status, headers, _ = c.response(head=True)
        assert status == get_status and headers["content-type"] == get_headers["content-type"], headers
        if path != "/metrics":  # the metrics change between the two requests
            assert headers.get("content-length") == get_headers.get("content-length")
        c.request("GET", "/healthz")  # no stray body bytes were sent: the next response parses
        assert c.response()[0] == 200 and c.buf == b""
    finally:
        c.close()


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("POST", "/healthz", {"GET", "HEAD"}), ("DELETE", "/metrics", {"GET", "HEAD"}), ("GET", "/v1/search", {"POST"}),
    ("PUT", "/v1/videos/1", {"GET", "HEAD", "DELETE"}), ("PATCH", "/v1/videos", {"GET", "HEAD", "POST"})])
def test_405_names_the_allowed_methods(server, method, path, allowed):
    c = Conn(server[1].port)
    try:
        c.request(method, path)
        got = c.response()
        assert json_error(got, 405)["code"] == "method_not_allowed"
        assert {m.strip() for m in got[1]["allow"].split(",")} == allowed, got[1]
    finally:
        c.close()


# minor: a video sent in a field named "FILE" is told where it belongs ----------------------------------
def test_file_field_name_is_case_sensitive_and_says_so(client):
    video = b"\x00\x00\x00\x18ftypmp42\xff\xfe" + bytes(range(256))  # not UTF-8 text
    r = client.post("/v1/videos", files={"FILE": ("a.mp4", video, "video/mp4")})
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] == "invalid_input", r.text
    assert "'file'" in err["message"] and "UTF-8" not in err["message"]


# minor: /docs is served from this server, nothing from a CDN ------------------------------------------
def test_docs_page_loads_nothing_from_the_network(client):
    r = client.get("/docs")
    assert r.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert assets and not [a for a in assets if "//" in a], assets  # every URL is on this server
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200 and len(got.content) > 100, asset
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: off


# minor: Host allow-list and Origin checks (DNS rebinding, cross-site form posts) --------------------------
def test_unknown_host_is_refused(server):
    c = Conn(server[1].port)
    try:
        c.request("GET", "/v1/videos", headers={"Host": "rebound.attacker.example:8000"})
        assert json_error(c.response(), 400)["code"] == "invalid_host"
        c2 = Conn(server[1].port)
        c2.request("GET", "/v1/videos", headers={"Host": f"localhost:{server[1].port}"})
        assert c2.response()[0] == 200
        c2.close()
    finally:
        c.close()


def test_allowed_hosts_default_follows_the_bind_address():
    loopback = Settings(host="127.0.0.1")
    assert set(loopback.effective_allowed_hosts) == {"127.0.0.1", "localhost", "::1"}
    assert Settings(host="0.0.0.0").effective_allowed_hosts == ["*"]
    assert Settings(host="0.0.0.0", allowed_hosts=["drca.internal"]).effective_allowed_hosts == ["drca.internal"]


def test_cross_site_posts_are_403_in_open_mode(client, checkpoint, tmp_path):
    evil = {"Origin": "https://attacker.example"}
    form = {"file": ("a.mp4", b"x" * 100, "video/mp4")}
    for r in (client.post("/v1/videos", files=form, headers=evil),
              client.post("/v1/search", json={"text": "a"}, headers=evil),
              client.post("/v1/search", json={"text": "a"}, headers={"Origin": "null"}),
              client.delete("/v1/videos/987654", headers=evil)):
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", r.text
    assert client.get("/v1/videos", headers=evil).status_code == 200  # reads are not state-changing
    same = {"Origin": "http://testserver"}  # the web app itself
    assert client.post("/v1/search", json={"text": "a", "k": 2}, headers=same).status_code == 200
    assert client.post("/v1/search", json={"text": "a", "k": 2}).status_code == 200  # no Origin: not a browser
    keyed = make_settings(checkpoint, tmp_path, text_search=False, api_keys=[KEY])
    with TestClient(create_app(keyed), raise_server_exceptions=False) as c:  # with keys a browser cannot post
        r = c.post("/v1/search", json={"video_id": 987654}, headers={**evil, "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 404, r.text


# F7: slow uploads (slowloris by drip): a minimum rate, a total deadline, a cap on bodies in flight -------
DRIP = {"body_timeout_s": 2.0, "body_min_rate_bytes_s": 2000.0, "body_deadline_s": 5.0, "max_concurrent_uploads": 3}


@pytest.fixture(scope="module")
def drip_server(checkpoint, tmp_path_factory):
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("drip"), port=free_port(), text_search=False,
                             header_timeout_s=5.0, idle_timeout_s=5.0, **DRIP)
    with running_server(settings) as srv:
        yield srv, settings


def _parts(settings) -> list:
    return list(settings.tmp_dir.glob("upload-*.part"))


def _start_upload(port: int, first: bytes = b"\0" * 3000) -> Conn:
    c = Conn(port)
    c.send(_upload_head(900_000) + PART + first)  # under max_upload_bytes
    return c


def _drip(c: Conn, chunk: bytes, every_s: float, limit_s: float) -> float:
    """Send `chunk` every `every_s` until the server answers (or closes); the seconds that took."""
    t0 = time.monotonic()
    c.sock.settimeout(every_s)
    while time.monotonic() - t0 < limit_s:
        try:
            c.send(chunk)
            if c.sock.recv(1, socket.MSG_PEEK):
                break
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    else:
        raise AssertionError(f"the server took the drip for {limit_s} s")
    c.sock.settimeout(10)
    return time.monotonic() - t0


def test_a_drip_below_the_minimum_rate_gets_408(drip_server, server_log):
    _, settings = drip_server
    c = _start_upload(settings.port, b"")
    try:  # one byte every 0.3 s: never a pause of body_timeout_s, far below the minimum rate
        elapsed = _drip(c, b"\0", 0.3, 30)
        status, headers, body = c.response()
        assert status == 408 and headers["connection"] == "close", body
        assert "B/s" in json.loads(body)["error"]["message"]
        assert elapsed < DRIP["body_timeout_s"] + 3  # cut off after the grace period
        closes_within(c, 5)
    finally:
        c.close()
    wait_until(lambda: not _parts(settings), 5, "the part file removed")
    assert "Traceback" not in server_log.text()


def test_a_fast_enough_but_endless_body_hits_the_deadline(drip_server):
    _, settings = drip_server
    c = _start_upload(settings.port)
    try:  # 4 KB every 0.2 s (20 KB/s): above the minimum rate, never done
        elapsed = _drip(c, b"\0" * 4000, 0.2, DRIP["body_deadline_s"] + 20)
        status, _, body = c.response()
        assert status == 408 and "deadline" in json.loads(body)["error"]["message"], body
        assert DRIP["body_deadline_s"] - 0.5 < elapsed < DRIP["body_deadline_s"] + 5
    finally:
        c.close()
    wait_until(lambda: not _parts(settings), 5, "the part file removed")


def test_uploads_past_the_cap_get_503_and_hold_nothing(drip_server, server_log):
    _, settings = drip_server
    held = [_start_upload(settings.port) for _ in range(DRIP["max_concurrent_uploads"])]
    try:
        wait_until(lambda: len(_parts(settings)) == len(held), 5, "every held upload spooling")
        for _ in range(20):  # past the cap: refused at once, before any byte of the body is read
            c = _start_upload(settings.port)
            try:
                c.sock.settimeout(5)
                status, headers, body = c.response()
                assert status == 503 and int(headers["retry-after"]) >= 1 and headers["connection"] == "close"
                assert json.loads(body)["error"]["code"] == "too_many_uploads"
            finally:
                c.close()
        assert len(_parts(settings)) == len(held)
        probe = Conn(settings.port)  # requests without a body are not held up
        probe.request("GET", "/healthz")
        assert probe.response()[0] == 200
        probe.close()
    finally:
        for c in held:
            c.close()
    wait_until(lambda: not _parts(settings), 5, "the held part files removed")

    def accepted() -> bool:  # the slots are free again once the held requests have finished
        c = Conn(settings.port)
        try:
            c.request("POST", "/v1/search", b'{"video_id": 987654}', {"Content-Type": "application/json"})
            return c.response()[0] == 404
        finally:
            c.close()

    wait_until(accepted, 5, "a new upload accepted", interval_s=0.2)
    assert "Traceback" not in server_log.text() and len(server_log.records) < 10, server_log.text()


# F1: a resolution switch mid-stream cannot slip past the pixel limit -------------------------------------
def test_a_mid_stream_resolution_switch_is_413(client, tmp_path):
    from tests.media.test_resolution_switch import switching_video

    video = switching_video(tmp_path, "h264")  # 64x48, then 640x480 (the test limit is 320x240)
    before = client.get("/v1/videos").json()["total"]
    for url in ("/v1/videos", "/v1/classify", "/v1/search"):
        r = client.post(url, files={"file": ("switch.mp4", video.read_bytes(), "video/mp4")})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "video_too_large" and "640x480" in r.json()["error"]["message"]
    assert client.get("/v1/videos").json()["total"] == before
