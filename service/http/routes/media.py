"""`/v1/videos/{id}/thumbnail` (a cached JPEG frame) and `/v1/videos/{id}/content` (the stored file, with
HTTP range requests so a browser can seek)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from service.backends.store import NotFound
from service.catalog import Catalog
from service.errors import ERRORS, BadRequest, NotFoundError, ServiceError
from service.http.deps import CatalogDep, ThumbnailsDep, VideoIdPath

router = APIRouter(tags=["videos"])

#: What browsers are told about each stored extension (see `media.video.VIDEO_EXTENSIONS`).
MEDIA_TYPES = {
    "mp4": "video/mp4", "m4v": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
    "mkv": "video/x-matroska", "avi": "video/x-msvideo", "mpg": "video/mpeg", "mpeg": "video/mpeg",
    "ts": "video/mp2t", "flv": "video/x-flv", "wmv": "video/x-ms-wmv", "3gp": "video/3gpp", "ogv": "video/ogg",
    "mts": "video/mp2t", "ogg": "video/ogg", "asf": "video/x-ms-asf", "dv": "video/x-dv", "vob": "video/mpeg",
}
_RANGE_SPEC = re.compile(r"^(\d*)-(\d*)$", re.ASCII)  # not other scripts' digits, which int() reads
_MAX_RANGES = 16
_MAX_DIGITS = 18  # byte positions up to 10^18 - 1: far past any stored file, never an overflow


class RangeNotSatisfiable(ServiceError):
    status, code = 416, "range_not_satisfiable"


def check_range(header: str, size: int) -> None:
    """Refuse a malformed or unsatisfiable `Range` header with a JSON error (400 / 416), before
    `FileResponse` serves it. Accepts `bytes=a-b`, `bytes=a-`, `bytes=-n` and lists of them."""
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise BadRequest("Range: only 'bytes=start-end' ranges are supported")
    parts = [p.strip() for p in specs.split(",")]
    if len(parts) > _MAX_RANGES:
        raise BadRequest(f"Range: at most {_MAX_RANGES} ranges per request")
    for part in parts:
        m = _RANGE_SPEC.match(part)
        if m is None or part == "-":
            raise BadRequest(f"Range: malformed range {part[:40]!r}")
        first, last = m.group(1), m.group(2)
        if max(len(first), len(last)) > _MAX_DIGITS:
            raise BadRequest(f"Range: byte positions have at most {_MAX_DIGITS} digits")
        start = int(first) if first else max(0, size - int(last))  # a suffix longer than the file: all of it
        if first and last and int(last) < start:
            raise BadRequest(f"Range: the range {part!r} ends before it starts")
        if not 0 <= start < size:
            raise RangeNotSatisfiable(f"Range: {part!r} is outside the file ({size} bytes)",
                                      headers={"Content-Range": f"bytes */{size}"})


def _stored_file(catalog: Catalog, video_id: int) -> tuple[Path, float | None]:
    video = catalog.get_video(video_id)  # NotFound -> 404
    path = Path(video.extra.get("path", ""))
    if not path.is_file():
        raise NotFoundError(f"the file of video {video_id} is no longer stored")
    return path, video.duration


@router.head("/videos/{video_id}/thumbnail", include_in_schema=False)
@router.get("/videos/{video_id}/thumbnail", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "JPEG, at most 320 pixels wide"}, **ERRORS})
async def get_thumbnail(
    video_id: VideoIdPath,
    t: float = Query(0.0, ge=0, le=1e7, description="Seconds into the video (rounded to 1 s, clamped)"),
    *,
    catalog: CatalogDep,
    thumbnails: ThumbnailsDep,
) -> Response:
    """The frame at `t` seconds as a JPEG; rendered on first request, then served from the cache."""
    path, duration = await run_in_threadpool(_stored_file, catalog, video_id)
    jpeg = await run_in_threadpool(thumbnails.get, video_id, path, t, duration)
    try:
        await run_in_threadpool(catalog.get_video, video_id)
    except NotFound:  # deleted while it was rendered: do not leave its thumbnail behind
        thumbnails.drop(video_id)
        raise
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.head("/videos/{video_id}/content", include_in_schema=False)
@router.get("/videos/{video_id}/content", response_class=FileResponse, responses={
    200: {"content": {"video/mp4": {}}, "description": "The stored file"},
    206: {"description": "The requested byte range(s)"},
    416: {"description": "The range is outside the file"}, **ERRORS})
async def get_content(video_id: VideoIdPath, request: Request, catalog: CatalogDep) -> FileResponse:
    """The stored upload, byte for byte. Honours `Range` (206), so browsers can seek."""
    path, _ = await run_in_threadpool(_stored_file, catalog, video_id)
    ext = path.suffix.lstrip(".").lower()
    response = FileResponse(path, media_type=MEDIA_TYPES.get(ext, "application/octet-stream"),
                            headers={"Cache-Control": "private, max-age=3600"}, stat_result=path.stat())
    header = request.headers.get("range")
    if header is not None and range_applies(request.headers.get("if-range"), response):
        check_range(header, response.stat_result.st_size)
    return response


def range_applies(if_range: str | None, response: FileResponse) -> bool:
    """RFC 9110 13.1.5: with `If-Range`, the range applies only if the validator is the file's current
    (strong) ETag or Last-Modified date; otherwise the whole file is sent (200), as `FileResponse` does."""
    if if_range is None:
        return True
    return not if_range.startswith("W/") and if_range in (response.headers.get("etag"),
                                                          response.headers.get("last-modified"))
