"""The service's video and ingest-job records, their life cycle, the `MetadataStore` protocol and its
errors. Implementations: `service.backends.sqlite.SQLiteMetadataStore` (embedded service) and
`service.backends.redis.store.RedisMetadataStore` (scale-out). A server database can replace them by
implementing `MetadataStore`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

VideoStatus = Literal["pending", "processing", "indexed", "failed", "deleted"]
JobStatus = Literal["queued", "running", "done", "failed"]
#: The statuses a stored video can be counted by: `deleted` is a record's end, and its record is removed.
VIDEO_STATUSES: tuple[VideoStatus, ...] = ("pending", "processing", "indexed", "failed")

# Allowed status transitions; anything else is a programming error in the caller.
VIDEO_TRANSITIONS: dict[str, set[str]] = {
    "pending": {"processing", "failed", "deleted"},
    "processing": {"indexed", "failed", "deleted"},
    "indexed": {"processing", "deleted"},
    "failed": {"pending", "processing", "deleted"},
    "deleted": set(),
}
JOB_TRANSITIONS: dict[str, set[str]] = {
    "queued": {"running", "failed"},
    "running": {"done", "failed", "queued"},
    "done": set(),
    "failed": {"queued"},
}


class StoreError(Exception):
    """Base class of every error a metadata store raises on purpose."""


class DuplicateContent(StoreError):
    """A video with this content hash (or external id) is already in the metadata store."""


class NotFound(StoreError, KeyError):
    """No video (or job) with this id."""


class InvalidTransition(StoreError):
    """A status change that the life cycle does not allow."""


@dataclass(frozen=True)
class Label:
    name: str
    prob: float


@dataclass(frozen=True)
class VideoRecord:
    video_id: int
    content_hash: str  # sha256 hex of the uploaded bytes, unique
    external_id: str | None = None
    source_name: str | None = None
    duration: float | None = None
    labels: list[Label] = field(default_factory=list)  # top-k with probabilities
    status: VideoStatus = "pending"
    error: str | None = None
    created_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    video_id: int
    status: JobStatus
    error: str | None
    created_at: float
    timings: dict[str, float]


class MetadataStore(Protocol):
    def create_video(
        self,
        content_hash: str,
        *,
        external_id: str | None = None,
        source_name: str | None = None,
        duration: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> VideoRecord: ...
    def get_video(self, video_id: int) -> VideoRecord: ...
    def find_by_hash(self, content_hash: str) -> VideoRecord | None: ...
    def find_by_external_id(self, external_id: str) -> VideoRecord | None: ...
    def list_videos(
        self, *, offset: int = 0, limit: int = 50, status: VideoStatus | None = None
    ) -> list[VideoRecord]: ...
    def count_videos(self, status: VideoStatus | None = None) -> int: ...
    def set_status(self, video_id: int, status: VideoStatus, error: str | None = None) -> VideoRecord: ...
    def update_video(
        self,
        video_id: int,
        *,
        duration: float | None = None,
        labels: list[Label] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> VideoRecord: ...
    def delete_video(self, video_id: int) -> None: ...
    def create_job(self, video_id: int) -> JobRecord: ...
    def get_job(self, job_id: int) -> JobRecord: ...
    def set_job_status(
        self,
        job_id: int,
        status: JobStatus,
        error: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> JobRecord: ...
    def jobs_for_video(self, video_id: int) -> list[JobRecord]: ...
    def close(self) -> None: ...
