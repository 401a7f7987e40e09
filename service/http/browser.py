"""Browser-facing checks, for what a web page in someone's browser could make it send here.

- **Host allow-list** (`allowed_hosts`): a request whose `Host` is not on the list is 400 `invalid_host`.
  This stops DNS rebinding: a page on `attacker.example` whose name is re-pointed at 127.0.0.1 reaches a
  loopback-only service, but its requests still carry `Host: attacker.example`.
- **Origin** (state-changing methods, open mode only): a `POST`, `PUT`, `PATCH` or `DELETE` whose `Origin`
  is not this server's own (the `Host` it was sent to) is 403 `forbidden_origin`. Browsers send `Origin`
  with every cross-site form post or fetch, so another site cannot upload, delete or run queries through a
  visitor's browser. With API keys the check is not needed (a cross-site page cannot add the
  `Authorization` header without a CORS preflight, which this server never grants) and is skipped. A
  request without `Origin` (curl, scripts, `drca ingest`) is not a browser's cross-site request.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ForbiddenOrigin, InvalidHost, ServiceError, error_response

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_name(host: str) -> str:
    """The name in a `Host` value, without its port: `[::1]:8000` -> `::1`, `Example.org:80` -> `example.org`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, allowed: list[str]) -> bool:
    """`*` allows any; `*.example.org` any subdomain of example.org; otherwise the exact name."""
    name = host_name(host)
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Whether the `Origin` header names the server the request was sent to (scheme-default ports equal)."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False  # "null" (sandboxed pages, file: URLs) and anything unparsable
    try:
        origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
        target = urlsplit(f"{scheme}://{host}")
        target_port = target.port or _DEFAULT_PORTS.get(scheme, 80)
    except ValueError:  # a port that is not a number
        return False
    return (parts.hostname, origin_port) == (target.hostname, target_port)


class BrowserGuardMiddleware:
    """400 for a `Host` not in `allowed_hosts`; in open mode, 403 for a cross-site state-changing request."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], check_origin: bool) -> None:
        self.app, self.allowed_hosts, self.check_origin = app, allowed_hosts, check_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in (b"host", b"origin")}
        host = headers.get(b"host", b"").decode("latin-1")
        error: ServiceError | None = None
        if not host_allowed(host, self.allowed_hosts):
            error = InvalidHost(f"the Host {host[:100]!r} is not served here (setting allowed_hosts)")
        elif self.check_origin and scope["method"] in STATE_CHANGING and b"origin" in headers:
            origin = headers[b"origin"].decode("latin-1")
            if not same_origin(origin, host, scope.get("scheme", "http")):
                error = ForbiddenOrigin(f"a {scope['method']} from the web page at {origin[:100]!r} is not "
                                        "allowed: only this server's own pages may change its state")
        if error is not None:
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
