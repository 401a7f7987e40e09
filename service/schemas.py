"""Request and response models of the HTTP API (pydantic v2). Field docs appear in the OpenAPI page."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Ids are stored as signed 64-bit integers (SQLite, FAISS): anything outside 0..MAX_ID is 422, never
#: an overflow deeper down.
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=0, le=MAX_ID)]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `video_too_large`")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class UploadResponse(BaseModel):
    video_id: int
    job_id: int
    status: Literal["queued", "running", "done", "failed"]
    created: bool = Field(description="False when the same content was already uploaded (HTTP 200)")


class JobResponse(BaseModel):
    job_id: int
    video_id: int
    status: Literal["queued", "running", "done", "failed"]
    error: str | None = None
    created_at: float
    timings: dict[str, float] = Field(description="Seconds per stage: queue_wait_s, decode_s, forward_s, ...")


class LabelOut(BaseModel):
    name: str
    prob: float


class SegmentOut(BaseModel):
    start: float
    end: float


class VideoResponse(BaseModel):
    video_id: int
    external_id: str | None
    sha256: str
    source_name: str | None
    duration: float | None
    status: Literal["pending", "processing", "indexed", "failed", "deleted"]
    error: str | None = None
    created_at: float
    metadata: dict[str, Any] = Field(default_factory=dict)
    labels: list[LabelOut] = Field(default_factory=list, description="Top-5 classes (video-level)")
    segments: list[SegmentOut] = Field(default_factory=list, description="Indexed segments, seconds")


class VideoPage(BaseModel):
    total: int
    offset: int
    limit: int
    videos: list[VideoResponse]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video_id: Id
    k: int = Field(5, ge=1, le=MAX_ID)


class ClassifyResponse(BaseModel):
    video_id: int | None = None
    labels: list[LabelOut]


class SearchRequest(BaseModel):
    """JSON search: `text`, or `video_id` (search with an indexed video's own segments)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, min_length=1, max_length=1000)
    video_id: Id | None = None
    k: int = Field(10, ge=1, le=MAX_ID)
    min_score: float | None = Field(None, ge=-1.0, le=10.0)
    exclude_ids: list[Id] = Field(default_factory=list, max_length=1000)


class SearchHit(BaseModel):
    video_id: int
    external_id: str | None
    score: float
    start: float | None = Field(description="Matched segment of the hit, seconds")
    end: float | None
    query_start: float | None = Field(None, description="Query segment of the best pair (video queries)")
    query_end: float | None = None
    view: str | None = Field(None, description="Video queries: the query view that matched: `original` (the "
                             "active picture, borders removed) or `mirrored` (its left-right mirror image)")
    query_box: list[int] | None = Field(None, description="Video queries: the region of the query frame that "
                                        "was embedded, [x, y, width, height] in pixels; null: the whole frame")


class SearchResponse(BaseModel):
    query: Literal["video", "text"]
    hits: list[SearchHit]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    index_open: bool
    worker_running: bool
    videos: int
