"""The HTTP server: uvicorn (h11) with three timeouts and JSON errors for malformed HTTP.

uvicorn on its own waits for ever for the rest of a request's headers and for a stalled body, so a
slowloris client holds connections (and spooled uploads) open indefinitely. Here:

- `header_timeout_s`: the request line and headers must be complete within this many seconds of the
  connection opening or of the previous response; otherwise 408 (JSON) and the connection is closed;
- `body_timeout_s`, `body_min_rate_bytes_s`, `body_deadline_s`, `max_concurrent_uploads`: how a request body
  may arrive (`BodyLimitsMiddleware`, in the app): the longest pause, the minimum average rate, the total
  deadline (408 with `Connection: close`, and a half-spooled upload is deleted), and how many bodies are
  received at once (503 with `Retry-After` past it);
- `idle_timeout_s`: uvicorn's keep-alive timeout, for a connection that sends no new request.

A request h11 cannot parse (bad request line or header, a body longer than its `Content-Length`, a bad
chunk size, ...) gets the JSON error body like every other error, instead of uvicorn's plain-text 400, and
the connection is closed. So is a request with both `Content-Length` and `Transfer-Encoding` (RFC 9112
6.1): h11 alone would frame it by `Transfer-Encoding` and go on to what follows on the connection, which is
how a request is smuggled past a proxy that framed it by `Content-Length`.

Forwarded headers (`X-Forwarded-For`, `X-Forwarded-Proto`) are read only from the addresses in the
`trusted_proxies` setting (none by default), whatever uvicorn's own default or `FORWARDED_ALLOW_IPS` say.
"""

from __future__ import annotations

import asyncio
import json
import time

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import RequestTimeout, TooManyUploads, error_body, error_response
from service.settings import Settings

MAX_INCOMPLETE_EVENT_SIZE = 16 * 1024  # uvicorn's (and h11's) default: request line + headers, bytes


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps(error_body(code, message)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _StrictConnection(h11.Connection):
    """h11 that also refuses a request framed two ways (`Content-Length` and `Transfer-Encoding`)."""

    def next_event(self):  # type: ignore[no-untyped-def]
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name.lower() for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding", error_status_hint=400)
        return event


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout, strict framing and JSON errors for what h11 refuses."""

    header_timeout_s = 10.0  # set per server by `protocol_class`

    def __init__(self, config: uvicorn.Config, *args: object, **kwargs: object) -> None:
        super().__init__(config, *args, **kwargs)  # type: ignore[arg-type]
        self.conn = _StrictConnection(h11.SERVER, config.h11_max_incomplete_event_size or MAX_INCOMPLETE_EVENT_SIZE)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm_header_timer()  # a request's headers are in: the app (and the body timeout) take over

    def on_response_complete(self) -> None:
        self._arm_header_timer()  # first: the parent may go straight on to a pipelined request
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        partial = self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]
        if partial:  # part of a request line or headers: say why before closing
            self.transport.write(_raw_error(
                408, "Request Timeout", "request_timeout",
                f"the request headers were not complete within {self.header_timeout_s:g} s"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_error(
            400, "Bad Request", "bad_request",
            "malformed HTTP request (request line, headers or framing, e.g. a body longer than its "
            "Content-Length, a bad chunk size, or both Content-Length and Transfer-Encoding)"))
        self.transport.close()


def protocol_class(settings: Settings) -> type[H11Protocol]:
    return type("DrcaH11Protocol", (_Protocol,), {"header_timeout_s": settings.header_timeout_s})


class BodyLimitsMiddleware:
    """How long and how slowly a client may take to send a request body, and how many bodies are
    received at once (`docs/api.md`, Timeouts):

    - a pause between two pieces longer than `pause_s`: 408;
    - once `pause_s` seconds have been spent waiting for the body, an average rate under `min_rate` bytes
      per second of that waiting: 408 (a drip of a byte now and then never pauses for long);
    - the whole body not in within `deadline_s` of the request's start: 408;
    - `max_bodies` requests already receiving a body: 503 with `Retry-After` at once, before a byte of the
      body is read (so no part file is opened).

    Each 408 carries `Connection: close`; a half-spooled upload is deleted by its parser. Only the time
    spent waiting for the client counts towards its rate, not the time the app takes between reads. Once
    the body is complete, `receive` (waiting for a disconnect) is passed through."""

    def __init__(self, app: ASGIApp, pause_s: float, min_rate: float, deadline_s: float, max_bodies: int) -> None:
        self.app, self.pause_s, self.min_rate, self.deadline_s = app, pause_s, min_rate, deadline_s
        self.max_bodies = max_bodies
        self.receiving = 0  # requests whose body is being received (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        if self.receiving >= self.max_bodies:
            retry = max(1, round(self.pause_s))
            await error_response(TooManyUploads(
                f"{self.max_bodies} uploads are being received already; retry in {retry} s",
                headers={"Retry-After": str(retry), "Connection": "close"}))(scope, receive, send)
            return
        self.receiving += 1
        holding, body_done = True, False
        started, waited, received = time.monotonic(), 0.0, 0

        def release() -> None:
            nonlocal holding, body_done
            body_done = True
            if holding:
                holding = False
                self.receiving -= 1

        def refuse(why: str) -> RequestTimeout:
            release()
            return RequestTimeout(why, headers={"Connection": "close"})

        async def _receive() -> Message:
            nonlocal waited, received
            if body_done:
                return await receive()
            left = self.deadline_s - (time.monotonic() - started)
            t0 = time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.pause_s, left)))
            except TimeoutError:
                if left <= self.pause_s:
                    raise refuse(f"the request body was not complete within the deadline of "
                                 f"{self.deadline_s:g} s") from None
                raise refuse(f"the request body stalled for more than {self.pause_s:g} s") from None
            waited += time.monotonic() - t0
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                release()
            elif waited > self.pause_s and received < self.min_rate * waited:
                raise refuse(f"the request body arrives at {received / waited:.0f} B/s, below the minimum of "
                             f"{self.min_rate:g} B/s")
            return message

        try:
            await self.app(scope, _receive, send)
        finally:
            release()


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


def server_config(app: ASGIApp, settings: Settings, **kw: object) -> uvicorn.Config:
    """The uvicorn configuration `drca serve` runs with (tests start the same server in a thread)."""
    return uvicorn.Config(app, host=settings.host, port=settings.port, http=protocol_class(settings),
                          timeout_keep_alive=settings.idle_timeout_s, timeout_graceful_shutdown=30,
                          proxy_headers=bool(settings.trusted_proxies),
                          forwarded_allow_ips=list(settings.trusted_proxies), **kw)


def run(app: ASGIApp, settings: Settings) -> None:
    uvicorn.Server(server_config(app, settings, log_level="info")).run()
