"""Administration: the online reindex (`drca reindex --server URL --checkpoint NEW` calls these).

`POST /v1/admin/reindex` starts re-embedding every stored video with another checkpoint into a new index
generation, through the service's own worker and queue (service/reindex.py, `OnlineReindex`), or, on a Redis
deployment, through the workers and the job stream (service/backends/redis/reindex.py, `RedisOnlineReindex`);
searches keep using the current generation until the switch. `GET /v1/admin/reindex` reports its progress. Both are
off unless admin keys are configured, and then need an admin key (`require_admin_key`, wired in app.py);
the POST is rate-limited per admin key (`admin_rate_limit`); the checkpoint must lie in an allowed directory
and is checked off the request threads (service/admin_checkpoint.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.active import identity_of
from service.admin_checkpoint import vet_in_background
from service.catalog import Conflict
from service.errors import ERRORS
from service.http.deps import admin_rate_limit, read_json, service, validated
from service.http.schemas import ReindexRequest, ReindexStatus
from service.reindex import OnlineReindex, ReindexError
from service.roles import Service

if TYPE_CHECKING:
    from service.backends.redis.reindex import RedisOnlineReindex

router = APIRouter(tags=["admin"])


ServiceDep = Annotated[Service, Depends(service)]


def _reindexer(svc: Service) -> OnlineReindex | RedisOnlineReindex:
    if svc.reindex is None:
        raise Conflict("this gateway has no encoder worker to reindex with; run `drca reindex --checkpoint NEW` "
                       "on its data dir, or reindex through the embedded service")
    return svc.reindex


@router.post("/admin/reindex", response_model=ReindexStatus, status_code=202, responses=ERRORS,
             dependencies=[Depends(admin_rate_limit)])
async def start_reindex(request: Request, svc: ServiceDep) -> JSONResponse:
    """Start re-embedding every indexed video with `checkpoint` (202 with the progress); the same
    checkpoint again while it runs answers its progress; 409 when another reindex runs or the index is
    already made by that checkpoint, 422 when it is not a checkpoint in an allowed directory (one message
    that names no path) or the body has another field, 415 for a body that is not JSON, 429 past the admin
    rate limit, 503 when checking it takes too long. The checkpoint's identity is read first (a weights file
    hashed before is not read again); its weights only when a reindex to it starts."""
    body = validated(ReindexRequest, await read_json(request))
    reindex = _reindexer(svc)
    try:
        checked = await vet_in_background(svc.settings, body.checkpoint, weights=False)
        status = await run_in_threadpool(lambda: reindex.answer(identity_of(checked)))  # (resolves its path)
        if status is None:
            files = await vet_in_background(svc.settings, body.checkpoint)  # read with its weights, hashed again
            status = await run_in_threadpool(reindex.start, files)
    except ReindexError as e:
        raise Conflict(str(e)) from None
    return JSONResponse(ReindexStatus(**status).model_dump(), status_code=202)


@router.head("/admin/reindex", include_in_schema=False)  # the GET answer without its body
@router.get("/admin/reindex", response_model=ReindexStatus, responses=ERRORS)
def reindex_status(svc: ServiceDep) -> ReindexStatus:
    return ReindexStatus(**_reindexer(svc).status())
