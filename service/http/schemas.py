"""Request and response models of the HTTP API (pydantic v2). Field docs appear in the OpenAPI page."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from service.backends.store import JobStatus, VideoStatus

#: Ids are stored as signed 64-bit integers (SQLite, FAISS): anything outside 0..MAX_ID is 422, never
#: an overflow deeper down.
MAX_ID = 2**63 - 1

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)  # JSON's grammar


def parse_int(text: str) -> int:
    """An integer as the API writes one: ASCII decimal digits, an optional minus, no leading zeros.
    Python's `int()` also takes `+1`, ` 1`, `1_0` (ten), full-width and Arabic-Indic digits; pydantic's lax
    mode `1.0` and `true`. ValueError for all of those."""
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"must be an integer in plain decimal digits, got {text[:40]!r}")
    return int(text)  # ValueError past Python's 4300-digit limit


def parse_float(text: str) -> float:
    """A finite number as JSON writes one (ASCII digits, optional fraction and exponent); ValueError else."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"must be a number in plain decimal digits, got {text[:40]!r}")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _strict_int(value: object) -> object:
    if isinstance(value, str):
        return parse_int(value)  # paths, queries, forms
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {type(value).__name__}")  # JSON true, 1.0, ...
    return value


def _strict_float(value: object) -> object:
    if isinstance(value, str):
        return parse_float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    return value


#: An integer: a JSON integer, or a canonical decimal string (paths, queries, forms); never a bool or float.
Int = Annotated[int, BeforeValidator(_strict_int)]
#: A number: a JSON number or a decimal string; never a bool.
Number = Annotated[float, BeforeValidator(_strict_float)]
Id = Annotated[Int, Field(ge=0, le=MAX_ID)]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `video_too_large`")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class UploadResponse(BaseModel):
    video_id: int
    job_id: int
    status: JobStatus
    created: bool = Field(description="False when the same content was already uploaded (HTTP 200)")


class JobResponse(BaseModel):
    job_id: int
    video_id: int
    status: JobStatus
    error: str | None = None
    created_at: float
    timings: dict[str, float] = Field(description="Seconds per stage: queue_wait_s, open_s, decode_s, "
                                      "preprocess_s, views_s, forward_s, text_s, index_s, commit_s, total_s")


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
    status: VideoStatus
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
    k: Int = Field(5, ge=1, le=MAX_ID)


class ClassifyResponse(BaseModel):
    video_id: int | None = None
    labels: list[LabelOut]


class SearchRequest(BaseModel):
    """JSON search: `text`, or `video_id` (search with an indexed video's own segments)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, min_length=1, max_length=1000)
    video_id: Id | None = None
    k: Int = Field(10, ge=1, le=MAX_ID)
    min_score: Number | None = Field(None, ge=-1.0, le=10.0, description=(
        "Video queries: the match threshold, replacing the checkpoint's; of the top `k` hits, those whose "
        "`match_score` is below it are left out, so every hit returned is a copy. Text queries: hits whose "
        "`score` is below it are left out"))
    exclude_ids: list[Id] = Field(default_factory=list, max_length=1000)


class CopySpanOut(BaseModel):
    query_start: float = Field(description="Seconds in the query")
    query_end: float
    start: float = Field(description="Seconds in the indexed video")
    end: float
    score: float = Field(description="The best segment pair's score in the span: its cosine minus the query "
                         "segment's background bias (the hit's `match_score` scale)")


class SearchHit(BaseModel):
    video_id: int
    external_id: str | None
    score: float = Field(description="The ranking score: video queries, the cosine of the best segment pair "
                         "(comparable within one query); text queries, the weighted sum of docs/api.md")
    match_score: float | None = Field(None, description=(
        "Video queries: the score the copy decision is taken on, comparable across queries: the best segment "
        "pair's cosine minus the query segment's bias (the mean of its top_n cosines to the checkpoint's "
        "background set); equal to `score` when the checkpoint has no background set. null for text queries"))
    match: bool | None = Field(None, description="Video queries: a copy (`match_score` reaches the match "
                               "threshold: `match_threshold`); false: only similar. null for text queries")
    spans: list[CopySpanOut] = Field(default_factory=list, description=(
        "A copy's copied spans, located in both videos (consecutive matching segment pairs along one time "
        "offset), in query time order; empty unless `match`"))
    start: float | None = Field(description="Matched segment of the hit, seconds")
    end: float | None
    query_start: float | None = Field(None, description="Query segment of the best pair (video queries)")
    query_end: float | None = None
    view: str | None = Field(None, description="Video queries: the query view that matched, and that `spans` "
                             "are located in: `original` (the active picture, borders removed), `mirrored` (its "
                             "left-right mirror image) or `inner` (the inner picture of a picture-in-picture)")
    query_box: list[int] | None = Field(None, description="Video queries: the region of the query frame that "
                                        "was embedded, [x, y, width, height] in pixels; null: the whole frame")


class MatchThresholdOut(BaseModel):
    min_score: float = Field(description="A video hit whose `match_score` is at least this is a copy "
                             "(`match: true`)")
    source: Literal["request", "checkpoint"] = Field(description="The request's `min_score`, or the "
                                                     "threshold shipped in the checkpoint's card")
    false_positive_rate: float | None = Field(None, description="The checkpoint's: the share of queries with no "
                                              "copy in the index that matched at this threshold on its "
                                              "calibration set (null: provisional, or the request's threshold)")
    calibration: str | None = Field(None, description="The checkpoint's: the calibration set and command")


class SearchResponse(BaseModel):
    query: Literal["video", "text"]
    match_threshold: MatchThresholdOut | None = Field(None, description=(
        "The threshold that decided `match` (video queries); null for text queries, and when neither the "
        "request (`min_score`) nor the checkpoint has one: then no hit is a copy"))
    hits: list[SearchHit]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    index_open: bool
    worker_running: bool
    videos: int


class ReindexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(description="The new checkpoint directory, as the server's filesystem names it")


class ReindexStatus(BaseModel):
    state: Literal["idle", "running", "switched", "failed"]
    checkpoint: str | None = Field(description="The new checkpoint (absolute path on the server)")
    generation: str | None = Field(description="The index generation being filled; current after the switch")
    videos: int = Field(description="Indexed videos the new generation must hold")
    done: int = Field(description="Of them, in the new generation")
    embedded: int = Field(description="Re-embedded by this run (the rest by an interrupted one)")
    failed: int
    video_seconds: float = Field(description="Seconds of video re-embedded by this run")
    seconds: float = Field(description="Since the reindex started (until the switch)")
    error: str | None = None
