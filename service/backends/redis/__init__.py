"""The Redis bundle (the scale-out deployment): the Redis store, broker, catalog lock and rate-limit
buckets, shared by every gateway replica and worker; and the vectors, either through the stream that every
gateway's own FAISS replica follows (`RedisStreamBackend`) or into one shared Milvus, announced on a change
stream for the gateways' text tables (`RedisMilvusBackend`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import redis

from service.active import Active
from service.backends.buckets import Buckets
from service.backends.parts import BackendUnavailable, Part, Vectors, WorkerVectors
from service.backends.redis.broker import RedisBroker, RedisLock, connect
from service.backends.redis.buckets import RedisBuckets
from service.backends.redis.store import RedisMetadataStore
from service.backends.redis.streams import ChangeFollower, MilvusChangeLog, RedisVectorLog, VectorFollower
from service.broker import Broker, IngestJob
from service.catalog import Catalog, LiveTextTable
from service.generations import CheckpointIdentity, open_index
from service.settings import Settings

log = logging.getLogger(__name__)


def check_reachable(url: str) -> None:
    """`BackendUnavailable` at once (5 s at most) when Redis cannot be used at `url`; the service's own
    client retries for about 20 s, which is for riding out a restart, not for a wrong URL."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        client.ping()
        client.close()
    except (ValueError, redis.RedisError) as e:
        raise BackendUnavailable(f"cannot use Redis at {url}: {e}") from None


class RequeueSweeper:
    """Queue the jobs that have no stream entry: a gateway died between creating a job and queueing it
    (before its 202). Queueing one twice is harmless: the second delivery finds it taken."""

    def __init__(self, catalog: Catalog, broker: RedisBroker, interval_s: float) -> None:
        self.catalog, self.broker, self.interval_s = catalog, broker, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drca-requeue", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                for job in self.catalog.unfinished_jobs(reset_running=False):
                    if not self.broker.has_message(job.job_id):
                        log.info("queueing job %d of video %d (it had no stream entry)", job.job_id, job.video_id)
                        self.broker.enqueue(job)
            except Exception as e:
                log.warning("re-queue sweep: %s", e)
            if self._stop.wait(self.interval_s):
                return


class RedisBackend:
    workers_in_process = False

    def __init__(self, settings: Settings) -> None:
        check_reachable(settings.redis_url)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.prefix = settings.redis_prefix
        self.redis = connect(settings.redis_url)
        self.store = RedisMetadataStore(self.redis, self.prefix)

    def broker(self, on_dead_letter: Callable[[IngestJob, str], None] | None = None) -> Broker:
        return RedisBroker(self.redis, self.settings, on_dead_letter=on_dead_letter)

    def catalog_lock(self) -> AbstractContextManager:
        return RedisLock(self.redis, f"{self.prefix}:lock:catalog")

    def buckets(self, name: str, rate: float, burst: int) -> Buckets:
        return RedisBuckets(self.redis, self.prefix, name, rate, burst)

    def recovery(self, catalog: Catalog, broker: RedisBroker) -> Part:
        sweeper = RequeueSweeper(catalog, broker, self.settings.reclaim_idle_s)
        return Part(sweeper.start, sweeper.stop)

    def close(self) -> None:
        self.store.close()
        self.redis.close()


class RedisStreamBackend(RedisBackend):
    """Vectors through `<prefix>:vectors`: workers append, each gateway applies them to its own FAISS
    replica (service/backends/redis/streams.py)."""

    def gateway_vectors(self, active: Active, text: LiveTextTable) -> Vectors:
        follower = VectorFollower(self.redis, self.prefix, active.current.index, on_change=text.applied)
        return Vectors(RedisVectorLog(self.redis, self.prefix, active.current.embed_dim, follower=follower),
                       (follower,))

    def worker_vectors(self, identity: CheckpointIdentity) -> WorkerVectors:
        return WorkerVectors(RedisVectorLog(self.redis, self.prefix, identity.embed_dim))


class RedisMilvusBackend(RedisBackend):
    """One Milvus that workers write and gateways search (no replica, no vectors in Redis); its changes
    are announced on `<prefix>:changes` for the gateways' text tables."""

    def gateway_vectors(self, active: Active, text: LiveTextTable) -> Vectors:
        changes = ChangeFollower(self.redis, self.prefix, on_change=text.applied, on_gap=text.reset)
        writer = MilvusChangeLog(self.redis, self.prefix, active.current.index, self.settings.change_stream_maxlen)
        return Vectors(writer, (changes,))

    def worker_vectors(self, identity: CheckpointIdentity) -> WorkerVectors:
        index, generation = open_index(self.settings, identity)  # CheckpointMismatch: another checkpoint's
        writer = MilvusChangeLog(self.redis, self.prefix, index, self.settings.change_stream_maxlen)
        return WorkerVectors(writer, index, generation, index.close)
