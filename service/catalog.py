"""The catalog: the one place that changes videos, keeping the metadata store, the vector index and the
stored files consistent.

Order of writes (why nothing acknowledged is lost and nothing is half-indexed):

- upload: file moved into place -> video row + job row committed (SQLite, synchronous=FULL) -> job
  queued on the broker -> 202. On restart, every video still `pending`/`processing` has its job re-queued
  (`unfinished_jobs`).
- ingest done: labels/duration -> all segments of the video in ONE durable index add -> video `indexed`
  -> job `done`. A crash in between re-runs the job; the add is an upsert, so nothing is indexed twice.
- ingest failed: video and job `failed` with the reason; nothing was added to the index.
- delete: index delete (durable) -> store rows -> file -> cached thumbnails.
A lock serialises these, so a delete racing a finishing job cannot leave vectors behind. Embedded, it is
a thread lock and `index` is the `VideoIndex`; in the scale-out deployment the same code runs in every
gateway and worker with the Redis store, a `RedisLock` and `RedisVectorLog` as `index` (the durable
stream that every gateway replica's index follows; service/vector_stream.py).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from indexer import Span, VideoIndex
from service.broker import Broker, IngestJob
from service.errors import ServiceError
from service.storage import SpooledUpload, VideoStorage
from service.store import DuplicateContent, JobRecord, Label, MetadataStore, NotFound, VideoRecord
from service.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

TOP_LABELS = 5


class Conflict(ServiceError):
    status, code = 409, "conflict"


@dataclass
class Registered:
    video: VideoRecord
    job: JobRecord
    created: bool  # False: the same content was already there


def metadata_text(video: VideoRecord) -> str:
    """The text a video's metadata contributes to text search: external id, title, description."""
    meta = video.extra.get("metadata") or {}
    parts = [video.external_id or ""]
    for key in ("title", "description"):
        v = meta.get(key)
        if isinstance(v, str):
            parts.append(v)
    return " . ".join(p.strip() for p in parts if p and p.strip())


class TextTable:
    """Per indexed video: top class probabilities and the metadata's sentence embedding (text search)."""

    def __init__(self) -> None:
        self.labels: dict[int, list[Label]] = {}
        self.meta: dict[int, np.ndarray] = {}

    def put(self, video: VideoRecord) -> None:
        self.labels[video.video_id] = list(video.labels)
        emb = video.extra.get("text_embedding")
        if emb:
            self.meta[video.video_id] = np.asarray(emb, dtype=np.float32)
        else:
            self.meta.pop(video.video_id, None)

    def drop(self, video_id: int) -> None:
        self.labels.pop(video_id, None)
        self.meta.pop(video_id, None)


class VectorWriter(Protocol):
    """The index writes the catalog makes: `VideoIndex` itself, or `RedisVectorLog` (scale-out)."""

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None: ...
    def delete_video(self, video_id: int) -> bool: ...


class Catalog:
    def __init__(self, store: MetadataStore, index: VectorWriter | VideoIndex, storage: VideoStorage,
                 thumbnails: ThumbnailCache | None = None, broker: Broker | None = None,
                 lock: AbstractContextManager | None = None) -> None:
        self.store = store
        self.index = index
        self.storage = storage
        self.thumbnails = thumbnails
        self.broker = broker  # where new jobs are queued (None: a worker-only catalog)
        self._lock = lock if lock is not None else threading.RLock()
        self._text_lock = threading.Lock()
        self._text: TextTable | None = None

    # reads (routes, search and the worker read records here, never from the store directly) -----------
    def get_video(self, video_id: int) -> VideoRecord:
        """The video record; `NotFound` (HTTP 404) when there is none."""
        return self.store.get_video(video_id)

    def find_by_hash(self, content_hash: str) -> VideoRecord | None:
        return self.store.find_by_hash(content_hash)

    def list_videos(self, *, offset: int = 0, limit: int = 50) -> list[VideoRecord]:
        return self.store.list_videos(offset=offset, limit=limit)

    def count_videos(self) -> int:
        return self.store.count_videos()

    def get_job(self, job_id: int) -> JobRecord:
        """The job record; `NotFound` (HTTP 404) when there is none."""
        return self.store.get_job(job_id)

    # uploads ------------------------------------------------------------------------------------
    def register(self, upload: SpooledUpload, duration: float, external_id: str | None,
                 metadata: dict[str, Any] | None) -> Registered:
        """Keep the upload and create its video + job, or return the existing video for this content.
        A previously failed video gets a new job (its file is re-tried)."""
        with self._lock:
            existing = self.store.find_by_hash(upload.sha256)
            if existing is not None:
                upload.discard()
                return self._existing(existing)
            if external_id is not None:
                other = self.store.find_by_external_id(external_id)
                if other is not None:
                    upload.discard()
                    raise Conflict(f"external_id {external_id!r} already belongs to video {other.video_id}")
            path = self.storage.keep(upload)
            try:
                video = self.store.create_video(
                    upload.sha256, external_id=external_id, source_name=upload.filename, duration=duration,
                    extra={"metadata": metadata or {}, "path": str(path), "size": upload.size},
                )
            except DuplicateContent as e:
                raise Conflict(str(e)) from None
            job = self.store.create_job(video.video_id)
            reg = Registered(video, job, created=True)
            self._queue(reg)
            return reg

    def _queue(self, reg: Registered) -> None:
        if self.broker is not None:
            self.broker.enqueue(self.job_for(reg.video, reg.job))

    def _existing(self, video: VideoRecord) -> Registered:
        jobs = self.store.jobs_for_video(video.video_id)
        if video.status == "failed":
            self.store.set_status(video.video_id, "pending")
            job = self.store.create_job(video.video_id)
            reg = Registered(self.store.get_video(video.video_id), job, created=True)
            self._queue(reg)
            return reg
        return Registered(video, jobs[-1], created=False)

    def job_for(self, video: VideoRecord, job: JobRecord) -> IngestJob:
        return IngestJob(job_id=job.job_id, video_id=video.video_id, path=str(video.extra["path"]))

    def unfinished_jobs(self, reset_running: bool = True) -> list[IngestJob]:
        """Jobs to (re-)queue after a restart: every video acknowledged but not yet indexed or failed.
        `reset_running=False` (scale-out: other workers may be running jobs now) leaves running jobs alone."""
        with self._lock:
            return self._unfinished_jobs(reset_running)

    def _unfinished_jobs(self, reset_running: bool) -> list[IngestJob]:
        out = []
        for status in ("processing", "pending"):
            offset = 0
            while True:
                page = self.store.list_videos(offset=offset, limit=500, status=status)
                for v in page:
                    jobs = self.store.jobs_for_video(v.video_id)
                    if not jobs:
                        jobs = [self.store.create_job(v.video_id)]
                    job = jobs[-1]
                    if job.status == "running" and reset_running:
                        job = self.store.set_job_status(job.job_id, "queued")
                    if job.status == "queued":
                        out.append(self.job_for(v, job))
                if len(page) < 500:
                    break
                offset += 500
        return sorted(out, key=lambda j: j.job_id)

    # worker side --------------------------------------------------------------------------------
    def start(self, job: IngestJob) -> bool:
        """Mark the job running; False when it should be skipped: its video was deleted meanwhile, or it
        already finished, or another worker runs it. A job redelivered after its worker died
        (`attempt` > 1, still `running`) is taken over."""
        with self._lock:
            try:
                video = self.store.get_video(job.video_id)
                current = self.store.get_job(job.job_id)
            except NotFound:
                return False
            taken_over = current.status == "running" and job.attempt > 1
            if current.status != "queued" and not taken_over:
                return False
            if video.status == "pending":
                self.store.set_status(job.video_id, "processing")
            if not taken_over:
                wait = round(time.time() - current.created_at, 4)  # acknowledged -> taken by a worker
                self.store.set_job_status(job.job_id, "running", timings={"queue_wait_s": wait})
            return True

    def complete(self, job: IngestJob, segments: list[Span], vectors: np.ndarray, probs: np.ndarray | None,
                 class_names: list[str], duration: float, text_embedding: np.ndarray | None,
                 timings: dict[str, float]) -> None:
        labels = []
        if probs is not None:
            top = np.argsort(-probs)[:TOP_LABELS]
            labels = [Label(class_names[i], round(float(probs[i]), 6)) for i in top]
        extra: dict[str, Any] = {"segments": len(segments)}
        if text_embedding is not None:
            extra["text_embedding"] = [round(float(x), 6) for x in text_embedding]
        with self._lock:
            try:
                self.store.get_video(job.video_id)
            except NotFound:
                log.info("video %d was deleted while job %d ran; dropping its result", job.video_id, job.job_id)
                return
            # labels first: whoever sees the vectors (a replica's follower) can read them
            video = self.store.update_video(job.video_id, duration=duration, labels=labels, extra=extra)
            t0 = time.perf_counter()
            self.index.add_video(job.video_id, segments, vectors)  # all segments, one durable write
            timings = {**timings, "index_s": round(time.perf_counter() - t0, 4)}
            if video.status != "indexed":
                self.store.set_status(job.video_id, "indexed")
            created = self.store.get_job(job.job_id).created_at
            timings = {**timings, "total_s": round(time.time() - created, 4)}  # upload acknowledged -> done
            self.store.set_job_status(job.job_id, "done", timings=timings)
            self._text_put(video)

    def fail(self, job: IngestJob, reason: str, timings: dict[str, float]) -> None:
        with self._lock:
            try:
                video = self.store.get_video(job.video_id)
                if video.status in ("pending", "processing"):
                    self.store.set_status(job.video_id, "failed", error=reason)
                if self.store.get_job(job.job_id).status in ("queued", "running"):
                    self.store.set_job_status(job.job_id, "failed", error=reason, timings=timings)
            except NotFound:
                return

    # deletes ------------------------------------------------------------------------------------
    def delete(self, video_id: int) -> None:
        with self._lock:
            video = self.store.get_video(video_id)  # NotFound -> 404
            self.index.delete_video(video_id)
            self.store.delete_video(video_id)
            if self.store.find_by_hash(video.content_hash) is None:
                self.storage.remove(video.content_hash)
            if self.thumbnails is not None:
                self.thumbnails.drop(video_id)
            self._text_drop(video_id)

    # text search side table ---------------------------------------------------------------------
    def _text_put(self, video: VideoRecord) -> None:
        with self._text_lock:
            if self._text is not None:
                self._text.put(video)

    def _text_drop(self, video_id: int) -> None:
        with self._text_lock:
            if self._text is not None:
                self._text.drop(video_id)

    def vector_applied(self, video_id: int, added: bool) -> None:
        """A gateway replica's index applied a write from the vector stream: follow it in the text table."""
        if not added:
            self._text_drop(video_id)
            return
        try:
            self._text_put(self.store.get_video(video_id))
        except NotFound:
            self._text_drop(video_id)

    def text_table(self) -> TextTable:
        with self._text_lock:
            if self._text is None:
                table = TextTable()
                offset = 0
                while True:
                    page = self.store.list_videos(offset=offset, limit=1000, status="indexed")
                    for v in page:
                        table.put(v)
                    if len(page) < 1000:
                        break
                    offset += 1000
                self._text = table
            return self._text
