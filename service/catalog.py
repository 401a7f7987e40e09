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
gateway and worker with the Redis store, a `RedisLock` and, as `index`, `RedisVectorLog` (the durable
stream that every gateway replica's FAISS index follows) or `MilvusChangeLog` (writes into the one Milvus,
announced to the gateways' text tables); service/backends/redis/streams.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from indexer import SegmentIndex, Span
from service.backends.store import (
    DuplicateContent,
    JobRecord,
    Label,
    MetadataStore,
    NotFound,
    VideoRecord,
    VideoStatus,
)
from service.broker import Broker, IngestJob
from service.concepts import concept_scores
from service.errors import ServiceError
from service.storage import SpooledUpload, VideoStorage
from service.thumbnails import ThumbnailCache

if TYPE_CHECKING:
    from service.encoding.plan import VideoPlan

log = logging.getLogger(__name__)

PAGE = 500  # records per store read when walking every video of a status

TOP_LABELS = 5  # labels a video shows (GET /v1/videos); it stores `stored_labels` of them


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


def top_labels(probs: np.ndarray, class_names: list[str], n: int) -> list[Label]:
    """The `n` most probable classes of a video's probabilities (C,), best first: what its record stores."""
    top = np.argsort(-probs, kind="stable")[:n]
    return [Label(class_names[i], round(float(probs[i]), 6)) for i in top]


class TextTable:
    """What text search reads per indexed video, packed for vectorised scoring: its stored class
    probabilities (`label_ids` into `vocab`, the class names seen so far; id 0 pads a short row) and the
    sentence embedding of its metadata. A slot per video; a dropped video's slot is reused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.vocab: list[str] = [""]  # id 0: padding
        self._vocab_id: dict[str, int] = {}
        self._slot: dict[int, int] = {}
        self._free: list[int] = []
        self.video_ids = np.zeros(0, dtype=np.int64)  # (S,) -1: a free slot
        self.label_ids = np.zeros((0, 0), dtype=np.int32)  # (S, K)
        self.label_probs = np.zeros((0, 0), dtype=np.float32)  # (S, K)
        self.meta = np.zeros((0, 0), dtype=np.float32)  # (S, D)
        self.has_meta = np.zeros(0, dtype=bool)  # (S,)
        self._map_names: tuple[str, ...] | None = None  # the bank `_map` maps the vocabulary into
        self._map = np.full(1, -1, dtype=np.int64)
        self._map_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slot)

    def put(self, video: VideoRecord) -> None:
        emb = video.extra.get("text_embedding")
        with self._lock:
            slot = self._slot.get(video.video_id)
            if slot is None:
                slot = self._free.pop() if self._free else self._grow()
                self._slot[video.video_id] = slot
            self.video_ids[slot] = video.video_id
            self._set_labels(slot, video.labels)
            self.meta[slot] = 0.0
            self.has_meta[slot] = False
            if emb:
                row = np.asarray(emb, dtype=np.float32)
                if not self.meta.shape[1]:  # the first metadata embedding fixes the width
                    self.meta = np.zeros((len(self.video_ids), row.shape[0]), dtype=np.float32)
                if row.shape[0] == self.meta.shape[1]:
                    self.meta[slot] = row
                    self.has_meta[slot] = True
                else:
                    log.warning("video %d: metadata embedding of %d dims, expected %d; not used",
                                video.video_id, row.shape[0], self.meta.shape[1])

    def drop(self, video_id: int) -> None:
        with self._lock:
            slot = self._slot.pop(video_id, None)
            if slot is None:
                return
            self.video_ids[slot] = -1
            self.label_probs[slot] = 0.0
            self.meta[slot] = 0.0
            self.has_meta[slot] = False
            self._free.append(slot)

    def _grow(self) -> int:
        n = len(self.video_ids)
        cap = max(64, 2 * n)
        self.video_ids = np.concatenate([self.video_ids, np.full(cap - n, -1, dtype=np.int64)])
        self.label_ids = np.vstack([self.label_ids, np.zeros((cap - n, self.label_ids.shape[1]), np.int32)])
        self.label_probs = np.vstack([self.label_probs, np.zeros((cap - n, self.label_probs.shape[1]), np.float32)])
        self.meta = np.vstack([self.meta, np.zeros((cap - n, self.meta.shape[1]), np.float32)])
        self.has_meta = np.concatenate([self.has_meta, np.zeros(cap - n, dtype=bool)])
        self._free.extend(range(cap - 1, n, -1))
        return n

    def _set_labels(self, slot: int, labels: list[Label]) -> None:
        k = len(labels)
        if k > self.label_ids.shape[1]:
            pad = k - self.label_ids.shape[1]
            self.label_ids = np.pad(self.label_ids, ((0, 0), (0, pad)))
            self.label_probs = np.pad(self.label_probs, ((0, 0), (0, pad)))
        self.label_ids[slot] = 0
        self.label_probs[slot] = 0.0
        for j, lb in enumerate(labels):
            vid = self._vocab_id.get(lb.name)
            if vid is None:
                vid = self._vocab_id[lb.name] = len(self.vocab)
                self.vocab.append(lb.name)
            self.label_ids[slot, j] = vid
            self.label_probs[slot, j] = lb.prob

    def scores(self, concepts: tuple[str, ...], weights: np.ndarray | None,
               query: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For every video: (video_ids, concept scores, metadata cosines, has metadata). `weights` (C,) are
        a query's weights of the `concepts` (a bank's names; a stored class not among them weighs 0),
        `query` its sentence embedding; a side that is None gives zeros. Free slots are scored too (they
        hold zeros) and dropped at the end, so nothing large is copied."""
        with self._lock:
            n = len(self.video_ids)
            concept = np.zeros(n, dtype=np.float32)
            if weights is not None and self.label_ids.shape[1]:
                m = self._concept_map(concepts)
                w = np.where(m >= 0, np.asarray(weights, dtype=np.float32)[np.maximum(m, 0)], np.float32(0))
                concept = concept_scores(w, self.label_ids, self.label_probs)
            meta = np.zeros(n, dtype=np.float32)
            if query is not None and self.meta.shape[1] == np.shape(query)[0]:
                # einsum, not BLAS: one thread (see ConceptBank.similarities)
                meta = np.einsum("sd,d->s", self.meta, np.asarray(query, dtype=np.float32))
            live = self.video_ids >= 0
            return self.video_ids[live], concept[live], meta[live], self.has_meta[live]

    def _concept_map(self, concepts: tuple[str, ...]) -> np.ndarray:
        """vocabulary id -> index in `concepts` (-1: none, and for the padding id 0); extended as the
        vocabulary grows, rebuilt for another bank."""
        if self._map_names is not concepts:
            self._map_names, self._map = concepts, np.full(1, -1, dtype=np.int64)
            self._map_index = {n: i for i, n in enumerate(concepts)}
        if len(self._map) < len(self.vocab):
            tail = [self._map_index.get(n, -1) for n in self.vocab[len(self._map):]]
            self._map = np.concatenate([self._map, np.asarray(tail, dtype=np.int64)])
        return self._map


def iter_videos(store: MetadataStore, status: VideoStatus) -> Iterator[VideoRecord]:
    """Every video of `status`, a page of `PAGE` records at a time (`Catalog.videos`)."""
    offset = 0
    while True:
        page = store.list_videos(offset=offset, limit=PAGE, status=status)
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


class LiveTextTable:
    """The catalog's text table, kept current: built from the store at the first text query, then
    updated by the catalog's writes and, in a scale-out gateway, by the vector or change stream's entries
    written by other processes (`applied`); `reset` drops it (rebuilt at the next query)."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._table: TextTable | None = None

    def put(self, video: VideoRecord) -> None:
        with self._lock:
            if self._table is not None:
                self._table.put(video)

    def drop(self, video_id: int) -> None:
        with self._lock:
            if self._table is not None:
                self._table.drop(video_id)

    def applied(self, video_id: int, added: bool) -> None:
        """A write from the vector or change stream was applied here: follow it."""
        if not added:
            self.drop(video_id)
            return
        try:
            self.put(self._store.get_video(video_id))
        except NotFound:
            self.drop(video_id)

    def reset(self) -> None:
        with self._lock:
            self._table = None

    def table(self) -> TextTable:
        with self._lock:
            if self._table is None:
                table = TextTable()
                for v in iter_videos(self._store, "indexed"):
                    table.put(v)
                self._table = table
            return self._table


class VectorWriter(Protocol):
    """The index writes the catalog makes: the index itself (`SegmentIndex`: FAISS or Milvus), or, in the
    scale-out deployment, `RedisVectorLog` (FAISS replicas) or `MilvusChangeLog` (one shared Milvus)."""

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None: ...
    def delete_video(self, video_id: int) -> bool: ...


class Catalog:
    """`index`: where segment vectors are written (the active index, or a stream in the scale-out
    deployment); `broker`: where new jobs are queued (None: a worker's catalog, which queues none);
    `text`: the text table, shared with the stream followers that keep it current (a new one by default)."""

    def __init__(self, store: MetadataStore, index: VectorWriter | SegmentIndex, storage: VideoStorage,
                 thumbnails: ThumbnailCache | None = None, broker: Broker | None = None,
                 lock: AbstractContextManager | None = None, stored_labels: int = TOP_LABELS,
                 text: LiveTextTable | None = None) -> None:
        self.store = store
        self.stored_labels = stored_labels  # class probabilities kept per video (the top this many)
        self.index = index
        self.storage = storage
        self.thumbnails = thumbnails
        self.broker = broker
        self._lock = lock if lock is not None else threading.RLock()
        self.text = text if text is not None else LiveTextTable(store)

    @property
    def lock(self) -> AbstractContextManager:
        """The lock every catalog write holds (an online reindex's commits and switch hold it too)."""
        return self._lock

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

    def videos(self, status: VideoStatus) -> Iterator[VideoRecord]:
        """Every video of `status` (read a page at a time)."""
        return iter_videos(self.store, status)

    def count_by_status(self, statuses: tuple[str, ...]) -> dict[str, int]:
        return {st: self.store.count_videos(st) for st in statuses}

    def get_job(self, job_id: int) -> JobRecord:
        """The job record; `NotFound` (HTTP 404) when there is none."""
        return self.store.get_job(job_id)

    # uploads ------------------------------------------------------------------------------------
    def register(self, upload: SpooledUpload, duration: float, external_id: str | None,
                 metadata: dict[str, Any] | None, plan: VideoPlan | None = None) -> Registered:
        """Keep the upload and create its video + job, or return the existing video for this content.
        A previously failed video gets a new job (its file is re-tried). `plan`: the upload's segment plan,
        queued with its job (the worker does not probe or plan the file again)."""
        with self._lock:
            existing = self.store.find_by_hash(upload.sha256)
            if existing is not None:
                upload.discard()
                return self._existing(existing, plan)
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
            self._queue(reg, plan)
            return reg

    def _queue(self, reg: Registered, plan: VideoPlan | None) -> None:
        if self.broker is not None:
            self.broker.enqueue(replace(self.job_for(reg.video, reg.job), plan=plan))

    def _existing(self, video: VideoRecord, plan: VideoPlan | None) -> Registered:
        jobs = self.store.jobs_for_video(video.video_id)
        if video.status == "failed":
            video = self.store.set_status(video.video_id, "pending")
            job = self.store.create_job(video.video_id)
            reg = Registered(video, job, created=True)
            self._queue(reg, plan)
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
            for v in list(self.videos(status)):
                jobs = self.store.jobs_for_video(v.video_id)
                if not jobs:
                    jobs = [self.store.create_job(v.video_id)]
                job = jobs[-1]
                if job.status == "running" and reset_running:
                    job = self.store.set_job_status(job.job_id, "queued")
                if job.status == "queued":
                    out.append(self.job_for(v, job))
        return sorted(out, key=lambda j: j.job_id)

    # worker side --------------------------------------------------------------------------------
    def start(self, job: IngestJob) -> VideoRecord | None:
        """Mark the job running and return its video (the worker reads it from here, once); None when it
        should be skipped: its video was deleted meanwhile, or it already finished, or another worker runs
        it. A job redelivered after its worker died (`attempt` > 1, still `running`) is taken over."""
        with self._lock:
            try:
                video = self.store.get_video(job.video_id)
                current = self.store.get_job(job.job_id)
            except NotFound:
                return None
            taken_over = current.status == "running" and job.attempt > 1
            if current.status != "queued" and not taken_over:
                return None
            if video.status == "pending":
                video = self.store.set_status(job.video_id, "processing")
            if not taken_over:
                wait = round(time.time() - current.created_at, 4)  # acknowledged -> taken by a worker
                self.store.set_job_status(job.job_id, "running", timings={"queue_wait_s": wait})
            return video

    def complete(self, job: IngestJob, segments: list[Span], vectors: np.ndarray, probs: np.ndarray | None,
                 class_names: list[str], duration: float, text_embedding: np.ndarray | None,
                 timings: dict[str, float], still_current: Callable[[], bool] | None = None,
                 before_done: Callable[[dict[str, float]], None] | None = None) -> bool:
        """Record a finished job: labels, all its segments in one durable index add, status. False (nothing
        written) when `still_current` says, under the lock, that the vectors' model is no longer the index's
        (an online reindex switched meanwhile). Adds to `timings` (and records with the job): `index_s` (the
        durable index add), `commit_s` (the rest of this call, the lock's wait included, up to the job's
        own record) and `total_s` (upload acknowledged -> done); `before_done` sees them just before the job
        is marked done (so whoever sees it done sees what was recorded)."""
        t_start = time.perf_counter()
        labels = top_labels(probs, class_names, self.stored_labels) if probs is not None else []
        extra: dict[str, Any] = {"segments": len(segments)}
        if text_embedding is not None:
            extra["text_embedding"] = [round(float(x), 6) for x in text_embedding]
        with self._lock:
            if still_current is not None and not still_current():
                return False
            try:  # labels first: whoever sees the vectors (a replica's follower) can read them
                video = self.store.update_video(job.video_id, duration=duration, labels=labels, extra=extra)
            except NotFound:
                log.info("video %d was deleted while job %d ran; dropping its result", job.video_id, job.job_id)
                return True
            t0 = time.perf_counter()
            self.index.add_video(job.video_id, segments, vectors)  # all segments, one durable write
            index_s = time.perf_counter() - t0
            if video.status != "indexed":
                self.store.set_status(job.video_id, "indexed")
            created = self.store.get_job(job.job_id).created_at
            timings.update(index_s=round(index_s, 4), commit_s=round(time.perf_counter() - t_start - index_s, 4),
                           total_s=round(time.time() - created, 4))  # total: upload acknowledged -> done
            if before_done is not None:
                before_done(timings)
            self.store.set_job_status(job.job_id, "done", timings=timings)
            self.text.put(video)
            return True

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
            self.text.drop(video_id)

    def relabel(self, labels: dict[int, list[Label]]) -> None:
        """Replace the stored labels of these videos (a reindex recomputed them); deleted ones are skipped."""
        for vid, lbs in labels.items():
            try:
                self.store.update_video(vid, labels=lbs)
            except NotFound:  # deleted meanwhile
                continue

    # text search side table ---------------------------------------------------------------------
    def vector_applied(self, video_id: int, added: bool) -> None:
        """A gateway replica's index applied a write from the vector stream: follow it in the text table."""
        self.text.applied(video_id, added)

    def reset_text_table(self) -> None:
        """Forget the text table; the next text query rebuilds it from the store."""
        self.text.reset()

    def text_table(self) -> TextTable:
        return self.text.table()
