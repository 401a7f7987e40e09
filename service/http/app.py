"""The FastAPI app factory. `create_app(settings)` gives the embedded service: gateway, encoder worker
and indexer in one process, or a gateway replica with Redis (the role is built and started in the
lifespan, so the app object itself is cheap; `drca serve` builds it before and hands it in)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from service.errors import METHODS, ServiceError, error_response, install_error_handlers
from service.http.browser import BrowserGuardMiddleware
from service.http.deps import rate_limit, require_admin_key, require_api_key
from service.http.routes import admin, health, inference, media, videos
from service.http.server import BodyLimitsMiddleware
from service.metrics import ServiceMetrics
from service.roles import Service, build_server
from service.settings import Settings

log = logging.getLogger(__name__)

#: The web app (plain HTML, CSS and JavaScript modules; no build step), served at `/`.
STATIC_DIR = Path(__file__).resolve().parent / "static"


#: The OpenAPI page: Swagger UI from the `swagger-ui-bundle` package's files, served at /docs-assets.
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drca API</title>
<link rel="icon" href="/docs-assets/favicon-32x32.png"><link rel="stylesheet" href="/docs-assets/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: '{openapi_url}', dom_id: '#swagger-ui', layout: 'BaseLayout', deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis]});</script>
</body></html>
"""

class _LatencyMiddleware:
    """Request latency by route template (`/v1/videos/{video_id}`, not the raw path). Every label has a
    bounded set of values, whatever clients send: the known methods or `other`, the app's route templates
    or `unmatched`, and the status code. Each 500 sent is also an ERROR record naming the request (its
    `http_status` attribute is 500; the test suite fails a test that gets one: tests/internal_errors.py)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def _send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if status["code"] == 500:  # one record per internal error sent, whichever layer answered
                    log.error("%.20s %.200r answered 500", scope["method"], scope["path"],
                              extra={"http_status": 500})
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            if path is None:
                path = "unmatched"
            elif scope["path"].startswith("/v1/") and not path.startswith("/v1/"):
                path = "/v1" + path  # routers included with a prefix report their own path
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.request_latency.labels(method, path, str(status["code"])).observe(
                time.perf_counter() - t0)


class _UnexpectedErrorMiddleware:
    """An unexpected exception becomes the JSON 500 here, inside the app, and the connection stays open.
    (Starlette's outermost handler answers too, but then re-raises, and uvicorn drops the keep-alive
    connection, so the client's next request on it fails.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def _send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except Exception:
            if started:  # half a response is out: only closing the connection can say it failed
                raise
            log.exception("unhandled error")
            await error_response(ServiceError("internal error"))(scope, receive, send)


def create_app(settings: Settings | None = None, with_worker: bool = True, service: Service | None = None) -> FastAPI:
    """The service `build_server` assembles: embedded, or a gateway replica when the backend is Redis (its
    workers are `drca worker` processes); a gateway alone with `with_worker=False`. `service`: one already
    built from these settings (`drca serve` builds it first, so a bad checkpoint or index is one line)."""
    settings = settings or Settings()
    metrics = service.metrics if service is not None else ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service or build_server(settings, metrics, with_worker)
        svc.start()
        app.state.service = svc
        svc.search.warm_up()  # the concept bank, once per checkpoint
        log.info("drca service ready (data dir %s, %d videos indexed)", settings.data_dir,
                 svc.readiness()["videos"])
        try:
            yield
        finally:
            app.state.service = None
            svc.stop()

    app = FastAPI(
        title="drca",
        version="1",
        description="DRCA video classification, near-duplicate and text search. Errors: "
        '`{"error": {"code": ..., "message": ...}}`. See docs/api.md.',
        lifespan=lifespan,
        docs_url=None,  # served below from local assets (FastAPI's own page loads Swagger UI from a CDN)
        redoc_url=None,  # ReDoc has no local bundle here: off
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    install_error_handlers(app)
    app.include_router(health.router)
    v1 = [Depends(require_api_key), Depends(rate_limit)]
    app.include_router(videos.router, prefix="/v1", dependencies=v1)
    app.include_router(media.router, prefix="/v1", dependencies=v1)
    app.include_router(inference.router, prefix="/v1", dependencies=v1)
    # the admin routes need an admin key, not an API key (off without one: service/deps.py)
    app.include_router(admin.router, prefix="/v1", dependencies=[Depends(require_admin_key), Depends(rate_limit)])

    @app.head("/", include_in_schema=False)
    @app.get("/", include_in_schema=False)
    def web_app() -> FileResponse:
        """The web UI; it calls the public `/v1` API only (with the API key the user enters, if any)."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI on the OpenAPI schema, its script and style from the `swagger-ui-bundle` package
        (served at /docs-assets), so the page loads nothing from the network."""
        return HTMLResponse(DOCS_PAGE.replace("{openapi_url}", str(app.openapi_url)))

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    app.add_middleware(BodyLimitsMiddleware, pause_s=settings.body_timeout_s,
                       min_rate=settings.body_min_rate_bytes_s, deadline_s=settings.body_deadline_s,
                       max_bodies=settings.max_concurrent_uploads)
    app.add_middleware(BrowserGuardMiddleware, allowed_hosts=settings.effective_allowed_hosts,
                       check_origin=not settings.api_keys)
    app.add_middleware(_UnexpectedErrorMiddleware)
    app.add_middleware(_LatencyMiddleware, metrics=app.state.metrics)  # outermost: sees every status
    return app
