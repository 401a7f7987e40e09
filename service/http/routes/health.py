"""`/healthz` (process up), `/readyz` (index open and, embedded, the worker running; scale-out, this
replica's index caught up with the vector stream), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.http.deps import MetricsDep
from service.http.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.head("/healthz", include_in_schema=False)  # the GET answer without its body
@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.head("/readyz", include_in_schema=False)  # the GET answer without its body
@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request) -> JSONResponse:
    svc = getattr(request.app.state, "service", None)
    if svc is None:  # starting
        body = Readiness(ready=False, model_loaded=False, index_open=False, worker_running=False, videos=0)
    else:
        body = Readiness(**svc.readiness())
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.head("/metrics", include_in_schema=False)  # the GET answer without its body
@router.get("/metrics", response_class=Response)
def metrics(service_metrics: MetricsDep) -> Response:
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)
