"""`/v1/videos` (upload, list, get, delete) and `/v1/jobs/{id}`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from indexer import SegmentIndex
from service.backends.store import JobRecord, VideoRecord
from service.catalog import TOP_LABELS
from service.errors import ERRORS, BadRequest, InvalidInput
from service.http.deps import (
    ActiveDep,
    CatalogDep,
    JobIdPath,
    SettingsDep,
    VideoIdPath,
    loads_json,
    read_multipart,
)
from service.http.schemas import (
    MAX_ID,
    Int,
    JobResponse,
    LabelOut,
    SegmentOut,
    UploadResponse,
    VideoPage,
    VideoResponse,
)
from service.settings import Settings
from service.storage import SpooledUpload

if TYPE_CHECKING:
    from service.encoding.plan import VideoPlan

router = APIRouter(tags=["videos"])

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EXTERNAL_ID = 256

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "external_id": {"type": "string", "maxLength": _EXTERNAL_ID},
                        "metadata": {"type": "string", "description": "JSON object, e.g. {\"title\": ...}"},
                    },
                }
            }
        },
    }
}


def video_out(index: SegmentIndex, v: VideoRecord, with_segments: bool = True) -> VideoResponse:
    segments = []
    if with_segments and v.status == "indexed":
        stored = index.get(v.video_id)
        if stored is not None:
            segments = [SegmentOut(start=s.start, end=s.end) for s in stored.segments]
    return VideoResponse(
        video_id=v.video_id, external_id=v.external_id, sha256=v.content_hash, source_name=v.source_name,
        duration=v.duration, status=v.status, error=v.error, created_at=v.created_at,
        metadata=v.extra.get("metadata") or {}, labels=[LabelOut(name=lb.name, prob=lb.prob) for lb in v.labels[:TOP_LABELS]],
        segments=segments,
    )


def job_out(j: JobRecord) -> JobResponse:
    return JobResponse(job_id=j.job_id, video_id=j.video_id, status=j.status, error=j.error,
                       created_at=j.created_at, timings=j.timings)


async def validate_video(settings: Settings, clip_frames: int, upload: SpooledUpload) -> VideoPlan:
    """Probe + open the spooled upload with the service's limits (pixels, duration, `max_segments`,
    `min_bytes_per_segment`) and plan its segments, before anything is queued: the plan goes with the
    job (the worker does not probe or plan again). VideoError -> 4xx."""
    from service.encoding.plan import plan_video

    return await run_in_threadpool(plan_video, upload.path, upload.size, settings, clip_frames)


def parse_metadata(raw: str | None) -> dict | None:
    if raw is None or not raw.strip():
        return None
    meta = loads_json(raw, "metadata")
    if not isinstance(meta, dict):
        raise InvalidInput("metadata must be a JSON object")
    return meta


def parse_external_id(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    ext = raw.strip()
    if len(ext) > _EXTERNAL_ID or not ext.isprintable():  # no control, format (U+200B, U+202E) or DEL
        raise InvalidInput(f"external_id must be at most {_EXTERNAL_ID} printable characters "
                           "(no control or invisible formatting characters)")
    return ext


@router.post("/videos", response_model=UploadResponse, status_code=202, openapi_extra=UPLOAD_BODY,
             responses={200: {"model": UploadResponse, "description": "Same content already uploaded"}, **ERRORS})
async def upload_video(request: Request, catalog: CatalogDep, active: ActiveDep,
                       settings: SettingsDep) -> JSONResponse:
    """Store the upload (content-addressed by sha256) and queue its ingestion: 202 with the ids.
    The same content again returns the existing video and its latest job with 200."""
    form = await read_multipart(request, settings)
    try:
        if form.file is None:
            raise InvalidInput("missing the 'file' field (multipart/form-data)")
        external_id = parse_external_id(form.fields.get("external_id"))
        metadata = parse_metadata(form.fields.get("metadata"))
        if form.file.size == 0:
            raise BadRequest("the upload is empty (0 bytes)", code="empty_file")
        existing = await run_in_threadpool(catalog.find_by_hash, form.file.sha256)
        if existing is not None and existing.status != "failed":
            form.discard()
            reg = await run_in_threadpool(catalog.register, form.file, existing.duration or 0.0, external_id,
                                          metadata)
        else:
            plan = await validate_video(settings, active.clip_frames, form.file)
            reg = await run_in_threadpool(catalog.register, form.file, plan.duration, external_id, metadata, plan)
    except BaseException:
        form.discard()
        raise
    body = UploadResponse(video_id=reg.video.video_id, job_id=reg.job.job_id, status=reg.job.status,
                          created=reg.created)
    return JSONResponse(body.model_dump(), status_code=202 if reg.created else 200)


@router.head("/videos", include_in_schema=False)  # the GET answer without its body
@router.get("/videos", response_model=VideoPage, responses=ERRORS)
def list_videos(
    offset: Annotated[Int, Query(ge=0, le=MAX_ID)] = 0,  # Annotated: a `Query()` default drops Int's check
    limit: Annotated[Int, Query(ge=1, le=1000)] = 50,
    sha256: str | None = Query(None, description="Find the video with this content hash (lowercase hex)"),
    *,
    catalog: CatalogDep,
    active: ActiveDep,
) -> VideoPage:
    """Videos in upload order, paged; `?sha256=` looks one up by content (used by `drca ingest`)."""
    if sha256 is not None:
        if not _SHA256.match(sha256):
            raise InvalidInput("sha256 must be 64 lowercase hex characters")
        v = catalog.find_by_hash(sha256)
        videos = [v] if v is not None else []
        return VideoPage(total=len(videos), offset=0, limit=limit,
                         videos=[video_out(active.index, v, with_segments=False) for v in videos])
    videos = catalog.list_videos(offset=offset, limit=limit)
    return VideoPage(total=catalog.count_videos(), offset=offset, limit=limit,
                     videos=[video_out(active.index, v, with_segments=False) for v in videos])


@router.head("/videos/{video_id}", include_in_schema=False)  # the GET answer without its body
@router.get("/videos/{video_id}", response_model=VideoResponse, responses=ERRORS)
def get_video(video_id: VideoIdPath, catalog: CatalogDep, active: ActiveDep) -> VideoResponse:
    """Metadata, top-5 labels and indexed segments of one video."""
    return video_out(active.index, catalog.get_video(video_id))


@router.delete("/videos/{video_id}", status_code=204, responses=ERRORS)
def delete_video(video_id: VideoIdPath, catalog: CatalogDep) -> None:
    """Remove the video from the index, the metadata store and the file store."""
    catalog.delete(video_id)


@router.head("/jobs/{job_id}", include_in_schema=False)  # the GET answer without its body
@router.get("/jobs/{job_id}", response_model=JobResponse, responses=ERRORS)
def get_job(job_id: JobIdPath, catalog: CatalogDep) -> JobResponse:
    """An ingest job: `queued`, `running`, `done` or `failed` (with the reason) and per-stage timings."""
    return job_out(catalog.get_job(job_id))
