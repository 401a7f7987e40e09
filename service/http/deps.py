"""Request dependencies shared by the routes: their typed collaborators (the catalog, the search
service, the active generation, the settings, ... of the role the app serves, `service.roles.Service`),
API-key auth, and body parsing."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ValidationError

from service.active import ActiveGeneration
from service.catalog import Catalog
from service.errors import (
    AdminDisabled,
    BadRequest,
    Forbidden,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from service.http.schemas import MAX_ID, Int, parse_int
from service.metrics import ServiceMetrics
from service.priority import QueriesInFlight
from service.ratelimit import AuthFailureLimiter, Limits
from service.roles import Service
from service.search import SearchService
from service.settings import Settings
from service.storage import UploadForm, parse_upload
from service.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32  # nesting of arrays/objects in a JSON body or the `metadata` field
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, headers and small fields beside the file

#: A video or job id in a path: 0..2^63-1 (422 otherwise).
VideoIdPath = Annotated[Int, Path(ge=0, le=MAX_ID, description="A video id")]
JobIdPath = Annotated[Int, Path(ge=0, le=MAX_ID, description="A job id")]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def _running(request: Request) -> Service | None:
    return getattr(request.app.state, "service", None)


def service(request: Request) -> Service:
    """The role the app serves; 503 until it has started."""
    svc = _running(request)
    if svc is None:
        raise NotReady("the service is starting")
    return svc


def settings(request: Request) -> Settings:
    return request.app.state.settings


def metrics(request: Request) -> ServiceMetrics:
    """The app's metrics (served whether or not the service has started)."""
    return request.app.state.metrics


def catalog(svc: Annotated[Service, Depends(service)]) -> Catalog:
    return svc.catalog


def search(svc: Annotated[Service, Depends(service)]) -> SearchService:
    return svc.search


def active(svc: Annotated[Service, Depends(service)]) -> ActiveGeneration:
    """The active generation, taken once for the request (an online reindex may swap it meanwhile)."""
    return svc.active.current


def queries(svc: Annotated[Service, Depends(service)]) -> QueriesInFlight:
    return svc.queries


def thumbnails(svc: Annotated[Service, Depends(service)]) -> ThumbnailCache:
    return svc.thumbnails


CatalogDep = Annotated[Catalog, Depends(catalog)]
SearchDep = Annotated[SearchService, Depends(search)]
ActiveDep = Annotated[ActiveGeneration, Depends(active)]
SettingsDep = Annotated[Settings, Depends(settings)]
QueriesDep = Annotated[QueriesInFlight, Depends(queries)]
ThumbnailsDep = Annotated[ThumbnailCache, Depends(thumbnails)]
MetricsDep = Annotated[ServiceMetrics, Depends(metrics)]


def _limits(request: Request) -> Limits:
    svc = _running(request)
    return svc.limits if svc is not None else Limits(None, None)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _presented_key(request: Request, what: str, placeholder: str) -> tuple[str, AuthFailureLimiter | None, str]:
    """The bearer token of the request, after the client address's failed-key limit (429 past it); 401
    without one. Returns (token, the limiter, the address) so a wrong key can be counted."""
    limiter = _limits(request).auth
    address = client_address(request)
    if limiter is not None:
        limiter.check(address)
    token = _bearer(request)
    if token is None:
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <{placeholder}>'",
                           headers={"WWW-Authenticate": "Bearer"})
    return token, limiter, address


def _wrong_key(limiter: AuthFailureLimiter | None, address: str, what: str) -> Unauthorized:
    """A wrong key, counted against the client address."""
    if limiter is not None:
        limiter.failed(address)
    return Unauthorized(f"invalid {what}", headers={"WWW-Authenticate": "Bearer"})


def require_api_key(request: Request) -> None:
    """When API keys are configured, `Authorization: Bearer <key>` must name one (constant-time compare).
    Wrong keys are counted per client address (`AuthFailureLimiter`): past the limit, 429."""
    keys = settings(request).api_keys
    if not keys:
        return
    token, limiter, address = _presented_key(request, "API key", "key")
    if not _one_of(token, keys):
        raise _wrong_key(limiter, address, "API key")


def require_admin_key(request: Request) -> None:
    """The admin routes (`/v1/admin/*`): 403 `admin_disabled` unless admin keys are configured, whatever the
    request holds (never open, whatever `api_keys` is); then `Authorization: Bearer <admin key>`: 401 without
    a key or with a wrong one (counted like a wrong API key), 403 with an API key."""
    s = settings(request)
    if not s.admin_keys:
        raise AdminDisabled("the admin routes are off on this server; they need an admin key, separate from "
                            "the API keys (DRCA_ADMIN_KEYS or DRCA_ADMIN_KEYS_FILE)")
    token, limiter, address = _presented_key(request, "admin key", "admin key")
    if _one_of(token, s.admin_keys):
        return
    if _one_of(token, s.api_keys):
        raise Forbidden("an API key does not open the admin routes: send an admin key")
    raise _wrong_key(limiter, address, "admin key")


def _one_of(token: str, keys: list) -> bool:
    """Whether `token` is one of the SecretStr `keys`, compared against every one in constant time (so the
    timing does not reveal which one matched)."""
    given, ok = token.encode(), False
    for key in keys:
        ok |= hmac.compare_digest(given, key.get_secret_value().encode())
    return ok


def rate_limit(request: Request) -> None:
    """With `rate_limit_per_s` > 0: one token per `/v1` call, per API key (checked by `require_api_key`,
    which runs first) or, without keys, per client address (a bearer token is then unchecked, so anyone
    could send a new one each time), from a bucket in this process (embedded) or in Redis, shared by every
    gateway replica."""
    limiter = _limits(request).rate
    if limiter is None:
        return
    token = _bearer(request) if settings(request).api_keys else None
    limiter.check("key:" + token if token else "addr:" + client_address(request))


def admin_rate_limit(request: Request) -> None:
    """The admin routes that read files (`POST /v1/admin/reindex`): one token per call from the admin key's
    bucket (`admin_rate_limit_per_s`, `admin_rate_limit_burst`); `require_admin_key` has checked the key."""
    limiter = _limits(request).admin
    if limiter is not None:
        limiter.check("admin:" + (_bearer(request) or ""))


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_multipart(request: Request, settings: Settings) -> UploadForm:
    limit = settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the upload ({length} bytes) exceeds the limit of {limit} bytes")
    return await parse_upload(request.headers.get("content-type", ""), request.stream(), settings.tmp_dir, limit)


async def read_json(request: Request, accepted: str = "application/json") -> dict[str, Any]:
    """The JSON object of the request body; 415 naming what the route takes (`accepted`) for any other
    content type, 400 for malformed JSON, 413 past `MAX_JSON_BYTES`, 422 for JSON that is not an object."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        got = f"got {ctype[:80]}" if ctype else "no Content-Type was given"
        raise UnsupportedMediaType(f"send {accepted} ({got})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise PayloadTooLarge(f"JSON body exceeds {MAX_JSON_BYTES} bytes")
    data = loads_json(bytes(body), "the JSON body")
    if not isinstance(data, dict):
        raise InvalidInput("the JSON body must be an object")
    return data


def validated(model: type[M], data: dict) -> M:
    """`data` as the request model `model`; 422 naming each bad field (at most 5), unknown ones included
    (the request models forbid extra fields)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]]
        raise InvalidInput("; ".join(parts)) from None


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def loads_json(raw: bytes | str, what: str) -> Any:
    """Parse client JSON: 400 for anything malformed, nested deeper than `MAX_JSON_DEPTH`, integers past
    Python's digit limit, NaN/Infinity or numbers that overflow a float (they could not be sent back)."""
    try:
        data = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"{what} is not valid JSON: {e}") from None
    except ValueError as e:  # a 4300+ digit integer, a non-finite number, or bytes that are not UTF-8
        why = "an integer has too many digits" if "integer string conversion" in str(e) else str(e)[:120]
        raise BadRequest(f"{what} is not acceptable JSON: {why}") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return data


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        deepest = max(deepest, d)
        if d <= MAX_JSON_DEPTH:
            stack.extend((c, d + 1) for c in children)
    return deepest


def check_k(k: int, settings: Settings) -> int:
    if not 1 <= k <= settings.max_k:
        raise InvalidInput(f"k must be between 1 and {settings.max_k}, got {k}")
    return k


def form_value(fields: dict[str, str], name: str, parse: Callable[[str], T]) -> T | None:
    """A form field parsed with `parse` (`parse_int`, `parse_float`); None when it is absent or blank;
    422 naming the field when `parse` refuses it."""
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return parse(raw)
    except ValueError as e:
        raise InvalidInput(f"form field '{name}' {e}") from None


def form_ids(fields: dict[str, str], name: str) -> list[int]:
    """Comma-separated integers (`1,2, 3`); 422 naming the field otherwise."""
    raw = fields.get(name, "").strip()
    if not raw:
        return []
    try:
        return [parse_int(x.strip()) for x in raw.split(",") if x.strip()]
    except ValueError as e:
        raise InvalidInput(f"form field '{name}': every id {e}") from None
