"""Round 3's findings against a real `drca serve` process (black-box: HTTP over loopback sockets only, the
server's settings from its environment), where tests/service/test_hardening*.py test them through the
in-process app:

- F1: a resolution switch mid-stream cannot slip past the pixel limit (413);
- F3: in open mode the request limit is per client address, whatever bearer token is sent;
- F5: a multipart boundary past 256 characters is a 400;
- F8: a tiny file of many segments is refused before anything is queued (422);
- integers: non-canonical, boolean, float, huge and negative integers are 4xx everywhere.

One server for the module. Its request limit (`rate_limit_burst` per address) is on, so each test sends
from its own loopback address (127.0.0.x: the server sees each as another client). After each test the
server's /metrics must show no 5xx answer and its log no traceback.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.media.test_resolution_switch import switching_video
from tests.procs import HttpServer
from tests.service.media import tiny_checkpoint
from tests.service.rawhttp import Conn, json_error
from tests.service.test_hardening import BIG, HUGE_ID
from tests.service.test_hardening3 import NOT_INTEGERS
from tests.service.test_hardening4 import still_video

pytestmark = pytest.mark.slow  # the server's start alone takes 10-40 s on a shared 2-core machine

BURST = 20  # requests per client address before the limit (rate_limit_burst), at 0.001 tokens/s after
MAX_PIXELS = 320 * 240
ROUTES = ("/v1/videos", "/v1/classify", "/v1/search")
_addresses = itertools.count(2)


class Served:
    def __init__(self, server: HttpServer, data_dir: Path) -> None:
        self.server, self.data_dir = server, data_dir
        self.port = server.port
        self.settings = Settings(data_dir=data_dir)  # the defaults the server runs with, where not set below

    def client(self, source: str) -> httpx.Client:
        """An HTTP client that connects from `source` (a loopback address)."""
        return httpx.Client(base_url=self.server.url, timeout=60,
                            transport=httpx.HTTPTransport(local_address=source))

    def errors_5xx(self) -> dict[str, float]:
        """The server's count of 5xx answers per route and status (from /metrics, which is not rate-limited)."""
        text = httpx.get(self.server.url + "/metrics", timeout=30).text
        found = re.findall(r'drca_request_seconds_count\{method="[A-Z]+",route="([^"]+)",status="(5\d\d)"\} (\S+)',
                           text)
        return {f"{route} {status}": float(n) for route, status, n in found}

    def log(self) -> str:
        return self.server.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("blackbox")
    ckpt = tiny_checkpoint(root / "ckpt")
    env = {"DRCA_CHECKPOINT": str(ckpt), "DRCA_DATA_DIR": str(root / "data"), "DRCA_DEVICE": "cpu",
           "DRCA_TORCH_THREADS": "1", "DRCA_MAX_WAIT_MS": "5", "DRCA_TEXT_SEARCH": "false",
           "DRCA_MAX_PIXELS": str(MAX_PIXELS), "DRCA_MAX_DURATION_S": "4000", "DRCA_MAX_UPLOAD_BYTES": "1000000",
           "DRCA_RATE_LIMIT_PER_S": "0.001", "DRCA_RATE_LIMIT_BURST": str(BURST)}
    server = HttpServer([], root / "serve.log", env)
    server.start()
    try:
        yield Served(server, root / "data")
    finally:
        server.stop()


@pytest.fixture()
def address(served: Served) -> Iterator[str]:
    """This test's own client address; and what it made the server do: no 5xx answer, no traceback logged."""
    errors, logged = served.errors_5xx(), len(served.log())
    yield f"127.0.0.{next(_addresses)}"
    served.server.check_alive()
    assert served.errors_5xx() == errors
    log = served.log()[logged:]
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def _total(c: httpx.Client) -> int:
    r = c.get("/v1/videos")
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _stored(served: Served) -> list[Path]:
    """Files the server keeps for uploads: the videos and any spooled upload left over."""
    videos = [p for p in served.settings.videos_dir.rglob("*") if p.is_file()]
    return videos + list(served.settings.tmp_dir.glob("upload-*"))


# F1 ------------------------------------------------------------------------------------------------
def test_a_mid_stream_resolution_switch_is_413(served, address, tmp_path):
    video = switching_video(tmp_path, "h264")  # 64x48, then 640x480 (the limit is 320x240)
    with served.client(address) as c:
        before = _total(c)
        for url in ROUTES:
            r = c.post(url, files={"file": ("switch.mp4", video.read_bytes(), "video/mp4")})
            assert r.status_code == 413, (url, r.text)
            err = r.json()["error"]
            assert err["code"] == "video_too_large" and "640x480" in err["message"], err
        assert _total(c) == before
    assert _stored(served) == []


# F3 ------------------------------------------------------------------------------------------------
def _get_with_token(port: int, source: str, token: str) -> tuple[int, dict[str, str], bytes]:
    c = Conn(port, source=source)
    try:
        c.request("GET", "/v1/videos", headers={"Authorization": f"Bearer {token}"})
        return c.response()
    finally:
        c.close()


def test_open_mode_rate_limit_is_per_address_whatever_the_token(served, address):
    answers = [_get_with_token(served.port, address, f"token-{i}") for i in range(BURST + 3)]
    assert [a[0] for a in answers] == [200] * BURST + [429] * 3
    for got in answers[BURST:]:
        assert json_error(got, 429)["code"] == "rate_limited" and int(got[1]["retry-after"]) >= 1
    neighbour = f"127.0.0.{next(_addresses)}"  # another client address has its own bucket
    assert _get_with_token(served.port, neighbour, "token-0")[0] == 200


# F5 ------------------------------------------------------------------------------------------------
def test_an_overlong_multipart_boundary_is_400(served, address):
    boundary = "b" * 300
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--{boundary}--\r\n'.encode()
    for url in ROUTES:
        c = Conn(served.port, source=address)
        try:
            c.request("POST", url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
            err = json_error(c.response(), 400)
            assert err["code"] == "bad_request" and "boundary" in err["message"], (url, err)
        finally:
            c.close()


# F8 ------------------------------------------------------------------------------------------------
def test_a_tiny_file_of_many_segments_is_422_before_queueing(served, address, tmp_path):
    video = still_video(tmp_path / "still.mp4", 1000)  # 250 segments of the tiny checkpoint's 4 s
    size = video.stat().st_size
    assert size < 250 * served.settings.min_bytes_per_segment  # the case under test
    with served.client(address) as c:
        before = _total(c)
        for url in ROUTES:
            r = c.post(url, files={"file": ("still.mp4", video.read_bytes(), "video/mp4")})
            assert r.status_code == 422, (url, r.text)
            err = r.json()["error"]
            assert err["code"] == "video_too_sparse", err
            assert re.search(r"has 2\d\d segments", err["message"]) and f"{size} bytes" in err["message"], err
        assert _total(c) == before  # nothing registered, so nothing queued
    assert _stored(served) == []  # nor stored


# integers --------------------------------------------------------------------------------------------
def _code(r: httpx.Response) -> int:
    assert r.headers["content-type"] == "application/json", r.text
    assert r.json()["error"]["code"], r.text
    return r.status_code


@pytest.mark.parametrize("raw", NOT_INTEGERS)
def test_non_canonical_integers_are_422_everywhere(served, address, raw):
    form = {"x": ("x", b"x")}
    with served.client(address) as c:
        assert _code(c.get(f"/v1/videos/{raw}")) == 422
        assert _code(c.get(f"/v1/jobs/{raw}")) == 422
        assert _code(c.get("/v1/videos", params={"offset": raw})) == 422
        assert _code(c.get("/v1/videos", params={"limit": raw})) == 422
        assert _code(c.post("/v1/search", data={"video_id": raw}, files=form)) == 422
        assert _code(c.post("/v1/search", data={"video_id": "1", "k": raw}, files=form)) == 422
        if raw.strip() == raw:  # spaces around the commas of a list are allowed
            assert _code(c.post("/v1/search", data={"video_id": "1", "exclude_ids": f"2, {raw}"}, files=form)) == 422
        assert _code(c.post("/v1/classify", data={"video_id": raw}, files=form)) == 422


JSON_NOT_INTEGERS = ['{"video_id": 1.0}', '{"video_id": true}', '{"video_id": "+1"}', '{"video_id": 1, "k": true}',
                     '{"video_id": 1, "k": 2.0}', '{"video_id": 1, "exclude_ids": [false]}',
                     '{"video_id": 1, "min_score": true}']


def test_json_booleans_and_floats_are_not_integers(served, address):
    with served.client(address) as c:
        for body in JSON_NOT_INTEGERS:
            for path in ("/v1/search", "/v1/classify"):
                if path == "/v1/classify" and ("k" in body or "_score" in body or "exclude" in body):
                    continue
                r = c.post(path, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", (path, body, r.text)


# huge and negative integers: a 4xx with a JSON body, and the connection stays usable
def _obj(**raw: str) -> str:
    """A JSON object from raw (unquoted, unchecked) JSON values."""
    return "{" + ", ".join(f'"{k}": {v}' for k, v in raw.items()) + "}"


HUGE_AND_NEGATIVE = [
    ("POST", "/v1/search", _obj(video_id=HUGE_ID), 422),
    ("POST", "/v1/search", _obj(video_id="1", exclude_ids=f"[{HUGE_ID}]"), 422),
    ("POST", "/v1/search", _obj(video_id="1", k=BIG), 400),  # past Python's int() digit limit
    ("POST", "/v1/search", _obj(video_id="1", k="-1"), 422),
    ("POST", "/v1/classify", _obj(video_id=HUGE_ID), 422),
    ("POST", "/v1/classify", _obj(video_id="9" * 4000), 422),
    ("POST", "/v1/classify", _obj(video_id="-1"), 422),
    ("GET", f"/v1/videos/{HUGE_ID}", "", 422),
    ("DELETE", f"/v1/videos/{HUGE_ID}", "", 422),
    ("GET", f"/v1/videos/{HUGE_ID}/thumbnail", "", 422),
    ("GET", f"/v1/videos/{HUGE_ID}/content", "", 422),
    ("GET", f"/v1/jobs/{HUGE_ID}", "", 422),
    ("GET", f"/v1/videos/{BIG}", "", 422),
    ("GET", "/v1/videos/-1", "", 422),
    ("GET", "/v1/jobs/-1", "", 422),
    ("GET", "/v1/videos?offset=" + str(10**20), "", 422),
    ("GET", "/v1/videos?offset=-1", "", 422),
    ("GET", "/v1/videos?limit=-1", "", 422),
]


def test_huge_and_negative_integers_are_4xx_and_keep_the_connection(served, address):
    assert len(HUGE_AND_NEGATIVE) < BURST
    c = Conn(served.port, source=address)
    try:
        for method, path, body, status in HUGE_AND_NEGATIVE:
            c.request(method, path, body.encode(), {"Content-Type": "application/json"} if body else None)
            got = c.response()
            json_error(got, status)
            assert got[1].get("connection") != "close", (method, path)
            c.request("GET", "/healthz")  # the same connection still serves
            assert c.response()[0] == 200
    finally:
        c.close()


def test_canonical_integers_still_work(served, address):
    with served.client(address) as c:
        assert c.get("/v1/videos", params={"offset": "0", "limit": "10"}).status_code == 200
        assert c.get("/v1/videos/987654321").status_code == 404
        r = c.post("/v1/search", json={"video_id": 987654321, "k": 3, "exclude_ids": [0, 10], "min_score": 0.5})
        assert r.status_code == 404, r.text  # parsed, then the video is not there
        r = c.post("/v1/search", data={"video_id": "987654321", "k": "10", "min_score": "0.5"},
                   files={"x": ("x", b"x")})
        assert r.status_code == 404, r.text
        assert json.loads(c.get("/v1/jobs/987654321").text)["error"]["code"] == "not_found"
