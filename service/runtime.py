"""Everything one service process holds, opened and closed in order: store, index, broker, encoder,
worker. The embedded default runs all of them; the gateway role runs without the encoder and worker,
and the worker role (scale-out) without HTTP, and without an index except with Milvus (it writes there)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Literal

from indexer import SegmentIndex
from model.checkpoint import CheckpointError, CheckpointMissing, ModelCard, read_config_and_card
from service.broker import Broker, InProcessBroker
from service.catalog import Catalog
from service.generations import checkpoint_identity, finish_switch, open_index
from service.metrics import VIDEO_STATUSES, ServiceMetrics
from service.priority import QueriesInFlight
from service.settings import Settings
from service.storage import VideoStorage
from service.store import MetadataStore
from service.store.sqlite import SQLiteMetadataStore
from service.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

Role = Literal["embedded", "gateway", "worker"]


def read_card(checkpoint: Path) -> tuple[ModelCard, int, int]:
    """The checkpoint's card, embedding dim and clip length in frames, without loading its weights (the
    gateway needs only these)."""
    try:
        cfg, card = read_config_and_card(checkpoint)
    except CheckpointMissing:
        raise CheckpointError(
            f"no checkpoint at {checkpoint} (card.json/config.json missing); "
            "set DRCA_CHECKPOINT or --checkpoint to a checkpoint directory"
        ) from None
    if cfg.head.embed_dim <= 0:
        raise CheckpointError(f"{checkpoint}: the checkpoint has no embedding head")
    return card, cfg.head.embed_dim, cfg.input.num_frames


def encoder_threads(settings: Settings, role: Role, cores: int | None = None) -> int:
    """The model's intra-op threads: `torch_threads` when set; else, in the embedded service, all cores
    but one (so the gateway is never starved of CPU by the worker); else 0 (torch's default)."""
    if settings.torch_threads:
        return settings.torch_threads
    if role != "embedded":
        return 0
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


class ServiceRuntime:
    """`role`: `embedded` (gateway + worker + index, in-process broker), `gateway` (HTTP + this replica's
    index; the broker is Redis when `redis_url` is set, else in-process with no worker), or `worker`
    (encoder only; needs `redis_url`)."""

    def __init__(self, settings: Settings, role: Role = "embedded") -> None:
        if role == "worker" and not settings.redis_url:
            raise ValueError("a standalone worker needs redis_url")
        self.settings = settings
        self.role = role
        self.with_worker = role != "gateway"
        self.metrics = ServiceMetrics()
        self.card, self.embed_dim, self.clip_frames = read_card(Path(settings.checkpoint))
        self.class_names = list(self.card.class_names)
        self.store: MetadataStore | None = None
        self.index: SegmentIndex | None = None  # FAISS or Milvus (service/generations.py)
        self.generation: str | None = None  # the index generation it holds
        self.catalog: Catalog | None = None
        self.thumbnails: ThumbnailCache | None = None
        self.broker: Broker = InProcessBroker()
        self.redis = None  # the client, in the scale-out deployment
        self.follower = None  # VectorFollower: this gateway replica's FAISS index follows the vector stream
        self.changes = None  # ChangeFollower: with Milvus, this gateway's text table follows the changes
        self.rate_limiter = None  # RateLimiter, with rate_limit_per_s > 0
        self.auth_limiter = None  # AuthFailureLimiter, with API keys and auth_fail_limit_per_s > 0
        self.encoder = None
        self.worker = None
        self.reindex = None  # OnlineReindex (embedded role): POST /v1/admin/reindex
        self.on_switch: list = []  # called after an online reindex switched the index and the model
        self.queries = QueriesInFlight(settings.ingest_yield_max_s)  # the gateway's; the embedded worker yields
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.tmp_dir.mkdir(parents=True, exist_ok=True)
        if self.role != "worker":  # spooled uploads of a previous run: never acknowledged
            for stale in s.tmp_dir.glob("upload-*.part"):
                stale.unlink(missing_ok=True)

        storage = VideoStorage(s.videos_dir)
        if self.role != "worker" or self.shared_index:
            # CheckpointMismatch when another checkpoint made the index's vectors
            self.index, self.generation = open_index(s, checkpoint_identity(s.checkpoint, self.embed_dim))
        if self.role != "worker":
            self.thumbnails = ThumbnailCache(s.thumbnails_dir, s.video_limits, max_concurrent=s.decode_threads,
                                             max_bytes=s.thumbnail_cache_bytes)
        if s.redis_url:
            self._open_redis(storage)
        else:
            self.store = SQLiteMetadataStore(s.store_path)
            self.catalog = Catalog(self.store, self.index, storage, self.thumbnails, broker=self.broker,
                                   stored_labels=s.stored_labels)
        if self.generation is not None:  # a reindex that switched generations but had not written the labels
            finish_switch(s, self.store, self.generation)
        if self.role != "worker":
            self._open_limiters()
        self.metrics.add_state(self._videos_by_status, self.broker.queue_depth, self._index_size)
        if self.with_worker:
            from service.encoder import VideoEncoder
            from service.worker import EncoderWorker

            threads = encoder_threads(s, self.role)
            if threads and not s.torch_threads:
                import torch

                torch.set_num_threads(threads)
                log.info("encoder: %d torch threads (one core left to the gateway)", threads)
            self.encoder = VideoEncoder(s)
            queries = self.queries if self.role == "embedded" else None
            self.worker = EncoderWorker(self.encoder, self.broker, self.catalog, s, self.metrics, queries)
            self.worker.start()
        if not s.redis_url:
            requeued = self.catalog.unfinished_jobs()
            for job in requeued:
                self.broker.enqueue(job)
            if requeued:
                log.info("re-queued %d unfinished ingest jobs from the previous run", len(requeued))
        if self.role == "embedded":
            from service.reindex import OnlineReindex

            self.reindex = OnlineReindex(self)
            self.reindex.resume()

    def _open_redis(self, storage: VideoStorage) -> None:
        from service.redis_broker import RedisBroker, RedisLock, connect
        from service.store.redis import RedisMetadataStore
        from service.vector_stream import ChangeFollower, MilvusChangeLog, RedisVectorLog, VectorFollower

        s = self.settings
        self.redis = connect(s.redis_url)
        self.store = RedisMetadataStore(self.redis, s.redis_prefix)
        broker = RedisBroker(self.redis, s)
        self.broker = broker
        lock = RedisLock(self.redis, f"{s.redis_prefix}:lock:catalog")
        if self.shared_index:  # Milvus: workers write into it, gateways search it; no replica, no vectors in Redis
            writer = MilvusChangeLog(self.redis, s.redis_prefix, self.index, s.change_stream_maxlen)
            self.catalog = Catalog(self.store, writer, storage, self.thumbnails,
                                   broker=broker if self.role != "worker" else None, lock=lock,
                                   stored_labels=s.stored_labels)
            if self.role != "worker":
                self.changes = ChangeFollower(self.redis, s.redis_prefix, on_change=self.catalog.vector_applied,
                                              on_gap=self.catalog.reset_text_table)
                self.changes.start()
                self._sweeper = threading.Thread(target=self._sweep_loop, name="drca-requeue", daemon=True)
                self._sweeper.start()
        elif self.role == "worker":
            vectors = RedisVectorLog(self.redis, s.redis_prefix, self.embed_dim)
            self.catalog = Catalog(self.store, vectors, storage, None, broker=None, lock=lock,
                                   stored_labels=s.stored_labels)
        else:
            self.follower = VectorFollower(self.redis, s.redis_prefix, self.index)
            vectors = RedisVectorLog(self.redis, s.redis_prefix, self.embed_dim, follower=self.follower)
            self.catalog = Catalog(self.store, vectors, storage, self.thumbnails, broker=broker, lock=lock,
                                   stored_labels=s.stored_labels)
            self.follower.on_change = self.catalog.vector_applied
            self.follower.start()
            self._sweeper = threading.Thread(target=self._sweep_loop, name="drca-requeue", daemon=True)
            self._sweeper.start()
        broker.on_dead_letter = lambda job, reason: self.catalog.fail(job, reason, {})

    @property
    def shared_index(self) -> bool:
        """Scale-out on Milvus: one index that every gateway and worker opens (no per-gateway replica)."""
        return bool(self.settings.redis_url) and self.settings.index == "milvus"

    def _open_limiters(self) -> None:
        """The request and failed-authentication limits: in Redis when there is one (shared by every
        gateway replica), else in this process."""
        from service.ratelimit import AuthFailureLimiter, LocalBuckets, RateLimiter, RedisBuckets

        s = self.settings

        def buckets(name: str, rate: float, burst: int):
            if self.redis is not None:
                return RedisBuckets(self.redis, s.redis_prefix, name, rate, burst)
            return LocalBuckets(rate, burst)

        if s.rate_limit_per_s > 0:
            self.rate_limiter = RateLimiter(buckets("ratelimit", s.rate_limit_per_s, s.rate_limit_burst))
        if (s.api_keys or s.admin_keys) and s.auth_fail_limit_per_s > 0:
            self.auth_limiter = AuthFailureLimiter(
                buckets("authfail", s.auth_fail_limit_per_s, s.auth_fail_limit_burst))

    def _sweep_loop(self) -> None:
        """Queue the jobs that have no stream entry: a gateway died between creating a job and queueing
        it (before its 202). Queueing one twice is harmless: the second delivery finds it taken."""
        while True:
            try:
                for job in self.catalog.unfinished_jobs(reset_running=False):
                    if not self.broker.has_message(job.job_id):
                        log.info("queueing job %d of video %d (it had no stream entry)", job.job_id, job.video_id)
                        self.broker.enqueue(job)
            except Exception as e:
                log.warning("re-queue sweep: %s", e)
            if self._stop.wait(self.settings.reclaim_idle_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self.reindex is not None:
            self.reindex.stop()
        if self.worker is not None:
            self.worker.stop()
        self.broker.close()
        if self.follower is not None:
            self.follower.stop()
        if self.changes is not None:
            self.changes.stop()
        if self.index is not None:
            self.index.close()
        if self.store is not None:
            self.store.close()
        if self.redis is not None:
            self.redis.close()

    # scrape-time metrics ---------------------------------------------------------------------------
    def _videos_by_status(self) -> dict[str, int]:
        return {st: self.store.count_videos(st) for st in VIDEO_STATUSES} if self.store else {}

    def _index_size(self) -> tuple[int, int]:
        if self.index is None:
            return 0, 0
        st = self.index.stats()
        return st.videos, st.segments

    def workers_running(self) -> bool:
        if self.worker is not None:
            return self.worker.alive
        if self.redis is not None:
            try:
                return self.broker.workers_alive() > 0
            except Exception:
                return False
        return False

    @property
    def ready(self) -> bool:
        if self.index is None:
            return False
        if self.follower is not None:
            return self.follower.alive and self.follower.caught_up.is_set()
        if self.changes is not None:
            return self.changes.alive
        return not self.with_worker or (self.worker is not None and self.worker.alive)
