"""Typed service errors and their one mapping to HTTP: `{"error": {"code": ..., "message": ...}}`.

Every error a client can cause is a `ServiceError` (or a `VideoError` / indexer error translated by
`to_service_error`), so handlers never build responses themselves.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from indexer.errors import IndexerError, InvalidVectors
from media.video import (
    EmptyVideo,
    NoVideoStream,
    VideoDecodeError,
    VideoError,
    VideoTooLarge,
    VideoTooLong,
    VideoUnavailable,
)
from service.backends.store import NotFound, StoreError
from service.http.schemas import ErrorResponse

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class AdminDisabled(ServiceError):
    """The admin routes on a server without admin keys (settings.admin_keys)."""

    status, code = 403, "admin_disabled"


class InvalidHost(ServiceError):
    status, code = 400, "invalid_host"


class ForbiddenOrigin(ServiceError):
    status, code = 403, "forbidden_origin"


class NotFoundError(ServiceError):
    status, code = 404, "not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """A body in a content type the route does not take (the message says which it takes)."""

    status, code = 415, "unsupported_media_type"


class RequestTimeout(ServiceError):
    status, code = 408, "request_timeout"


class ClientDisconnected(ServiceError):
    """The client went away (or its body could not be framed) before the request was read: nothing can be
    answered. Counted as 499 (nginx's "client closed request") in the metrics, never as a 5xx."""

    status, code = 499, "client_disconnected"


class VideoTooSparse(ServiceError):
    """Too many segments for the file's size (`min_bytes_per_segment`): little upload, much worker time."""

    status, code = 422, "video_too_sparse"


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class WorkerUnavailable(ServiceError):
    status, code = 503, "worker_unavailable"


class TooManyUploads(ServiceError):
    status, code = 503, "too_many_uploads"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class TextSearchDisabled(ServiceError):
    status, code = 503, "text_search_disabled"


class ModelSwitched(ServiceError):
    """An online reindex switched the model twice while one query was embedded and searched: the server's
    state, not the client's request (`Retry-After`: it can be sent again at once)."""

    status, code = 503, "model_switched"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


TEXT_SEARCH_OFF = "text search is disabled on this server (text_search=false: no text encoder is loaded)"


class BrokerUnavailable(ServiceError):
    status, code = 503, "broker_unavailable"


#: The error responses every route documents in the OpenAPI schema (the body is always `ErrorResponse`).
ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)}

#: Redis could not be reached (scale-out deployment): passing, the request can be retried.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError)


_VIDEO_ERRORS: list[tuple[type[VideoError], int, str]] = [
    (EmptyVideo, 422, "empty_video"),
    (NoVideoStream, 422, "no_video_stream"),
    (VideoTooLarge, 413, "video_too_large"),
    (VideoTooLong, 422, "video_too_long"),
    (VideoDecodeError, 422, "undecodable_video"),
    (VideoUnavailable, 422, "video_unavailable"),
]


def to_service_error(exc: BaseException) -> ServiceError:
    """The one translation of library errors into service errors."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ClientDisconnect):
        return ClientDisconnected("the client disconnected before its request was read")
    if isinstance(exc, TRANSIENT_ERRORS):
        return BrokerUnavailable(f"Redis is unreachable: {exc}")
    if isinstance(exc, VideoError):
        for cls, status, code in _VIDEO_ERRORS:
            if isinstance(exc, cls):
                return ServiceError(exc.reason, status=status, code=code)
        return ServiceError(exc.reason, status=422, code="invalid_video")
    if isinstance(exc, NotFound):
        return NotFoundError(str(exc.args[0]) if exc.args else "not found")
    if isinstance(exc, InvalidVectors):
        return InvalidInput(str(exc))
    if isinstance(exc, IndexerError):
        return ServiceError(f"index error: {exc}", status=500, code="index_error")
    if isinstance(exc, StoreError):
        return ServiceError(f"metadata store error: {exc}", status=500, code="store_error")
    return ServiceError("internal error", status=500, code="internal_error")


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(err: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(err.code, err.message), status_code=err.status, headers=err.headers)


#: The HTTP methods the service knows: a 405's `Allow` header names some of them, and request metrics label
#: each by name (any other method is counted as `other`).
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers on the request's path (RFC 9110 15.5.6: a 405 says
    them). Asked of each route through Starlette's public `matches`, so routers included with a prefix
    count too."""
    routes = request.app.router.routes
    return [m for m in METHODS
            if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: every error leaves as the typed JSON body, never as an HTML 500."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(VideoError)
    async def _video(_: Request, exc: VideoError) -> JSONResponse:
        return error_response(to_service_error(exc))

    @app.exception_handler(IndexerError)
    @app.exception_handler(StoreError)
    async def _library(_: Request, exc: Exception) -> JSONResponse:
        err = to_service_error(exc)
        if err.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        return error_response(err)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # the response goes nowhere; the status is for the metrics and the access log
        log.debug("client %s went away during %s %s", request.client, request.method, request.url.path)
        return error_response(to_service_error(exc))

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _redis(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unreachable: %s", exc)
        return error_response(to_service_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error_response(InvalidInput("; ".join(parts) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every route of this path, not only the first one Starlette tried
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(ServiceError(str(exc.detail), status=exc.status_code, code=code, headers=headers))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(ServiceError("internal error", status=500, code="internal_error"))
