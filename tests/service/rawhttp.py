"""A real server (`drca serve`'s uvicorn configuration, in a thread) and raw HTTP/1.1 connections to it,
for what only a socket can see: framing, timeouts, closed connections, forwarded headers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from service.http.app import create_app
from service.http.server import server_config
from service.settings import Settings


class Conn:
    """One raw keep-alive HTTP/1.1 connection: send bytes, read whole responses."""

    def __init__(self, port: int, timeout_s: float = 20.0, source: str | None = None) -> None:
        """`source`: the client's own loopback address (e.g. 127.0.0.2), for per-address limits."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        head = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **(headers or {})}
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
        self.send("\r\n".join(lines).encode() + body)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next response; `head`: the answer to a HEAD request (no body, whatever Content-Length says)."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response (got {self.buf[:200]!r})")
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
        n = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed mid-body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (reads what is left first)."""
        try:
            while self._fill():
                pass
        except (ConnectionResetError, TimeoutError):
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def json_error(status_headers_body: tuple[int, dict[str, str], bytes], status: int) -> dict:
    got, headers, body = status_headers_body
    assert got == status, body
    assert headers["content-type"] == "application/json", headers
    err = json.loads(body)["error"]
    assert err["code"] and err["message"]
    return err


def closes_within(c: Conn, seconds: float) -> None:
    c.sock.settimeout(seconds)
    assert c.closed(), f"the server kept the connection open for more than {seconds} s"


@contextmanager
def running_server(settings: Settings, **config: object) -> Iterator[uvicorn.Server]:
    """`drca serve`'s server (service.http.server.server_config) for `settings`, until the block ends."""
    srv = uvicorn.Server(server_config(create_app(settings), settings, log_level="warning", **config))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        srv.should_exit = True
        raise AssertionError("server not ready")
    try:
        yield srv
    finally:
        srv.should_exit = True
        thread.join(30)
