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

from indexer import SegmentIndex
from service.active import Active
from service.backends.buckets import Buckets
from service.backends.parts import BackendUnavailable, Part, Vectors, WorkerVectors
from service.backends.redis.broker import RedisBroker, RedisLock, connect
from service.backends.redis.buckets import RedisBuckets
from service.backends.redis.generation import DeploymentGenerations
from service.backends.redis.reindex import (
    GenerationIndexes,
    MilvusGenerations,
    RedisOnlineReindex,
    RedisReindexJobs,
    StreamGenerations,
)
from service.backends.redis.store import RedisMetadataStore
from service.backends.redis.streams import ChangeFollower, MilvusChangeLog, RedisVectorLog, VectorFollower
from service.broker import Broker, IngestJob
from service.catalog import Catalog, LiveTextTable
from service.generations import CheckpointIdentity, index_generations, open_index
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

    def prepare_index(self, identity: CheckpointIdentity) -> None:
        """Before a gateway opens its index: `CheckpointMismatch` when an online reindex switched the
        deployment to another checkpoint."""
        DeploymentGenerations(self.redis, self.prefix).check(identity)

    def _generations(self):
        raise NotImplementedError

    def gateway_reindex(self, catalog: Catalog, broker: RedisBroker, active: Active,
                        on_switch: tuple[Callable[[], None], ...] = ()) -> RedisOnlineReindex:
        """The gateway's online reindex (service/backends/redis/reindex.py), after `gateway_vectors`."""
        return RedisOnlineReindex(self.settings, self.redis, catalog, broker, active, self._generations(), on_switch)

    def worker_reindex(self, active: Active) -> RedisReindexJobs:
        """The worker's side of the online reindex, after `worker_vectors`."""
        return RedisReindexJobs(self.settings, self.redis, active, self._generations())

    def close(self) -> None:
        self.store.close()
        self.redis.close()


class RedisStreamBackend(RedisBackend):
    """Vectors through `<prefix>:vectors`: workers append, each gateway applies them to its own FAISS
    replica (service/backends/redis/streams.py)."""

    _writer: RedisVectorLog | None = None
    _follower: VectorFollower | None = None

    def prepare_index(self, identity: CheckpointIdentity) -> None:
        """Also: when the deployment switched generations while this gateway was away, the new one is made
        current in its replica (created empty if need be: its follower fills it from the stream)."""
        super().prepare_index(identity)
        tag, recorded = DeploymentGenerations(self.redis, self.prefix).current()
        if not tag:
            return
        gens = index_generations(self.settings, recorded.embed_dim)
        try:
            name, previous = gens.name_for(tag), gens.current()
            if previous == name:
                return
            index = gens.open(name)
            try:
                if "checkpoint_sha256" not in index.metadata():
                    index.set_metadata({**recorded.as_metadata(), "previous": previous})
            finally:
                index.close()
            gens.switch(name)
            log.info("the deployment serves generation %s since an online reindex: made current in this replica",
                     name)
            if gens.exists(previous):
                gens.drop(previous)
        finally:
            gens.close()

    def gateway_vectors(self, active: Active, text: LiveTextTable) -> Vectors:
        tag = DeploymentGenerations(self.redis, self.prefix).current_tag()
        follower = VectorFollower(self.redis, self.prefix, active.current.index, on_change=text.applied, tag=tag)
        self._follower = follower
        self._writer = RedisVectorLog(self.redis, self.prefix, active.current.embed_dim, follower=follower)
        return Vectors(self._writer, (follower,))

    def worker_vectors(self, identity: CheckpointIdentity) -> WorkerVectors:
        DeploymentGenerations(self.redis, self.prefix).check(identity)
        return WorkerVectors(RedisVectorLog(self.redis, self.prefix, identity.embed_dim))

    def _generations(self) -> StreamGenerations:
        return StreamGenerations(self.settings, self.redis, self._writer, self._follower)


class RedisMilvusBackend(RedisBackend):
    """One Milvus that workers write and gateways search (no replica, no vectors in Redis); its changes
    are announced on `<prefix>:changes` for the gateways' text tables."""

    indexes: GenerationIndexes | None = None

    def _open_generation(self, tag: str) -> SegmentIndex:
        """This process's handle on generation `tag` (the current one, or the one a reindex fills)."""
        deployment = DeploymentGenerations(self.redis, self.prefix)
        current, identity = deployment.current()
        dim = identity.embed_dim if tag == current and identity is not None else \
            int(self.redis.hget(f"{self.prefix}:reindex", "embed_dim") or 0)
        gens = index_generations(self.settings, dim)
        try:
            return gens.open(gens.name_for(tag))
        finally:
            gens.close()

    def _change_log(self, index: SegmentIndex) -> MilvusChangeLog:
        self.indexes = GenerationIndexes(DeploymentGenerations(self.redis, self.prefix).current_tag(), index,
                                         self._open_generation)
        return MilvusChangeLog(self.redis, self.prefix, index, self.settings.change_stream_maxlen,
                               indexes=self.indexes.get)

    def gateway_vectors(self, active: Active, text: LiveTextTable) -> Vectors:
        changes = ChangeFollower(self.redis, self.prefix, on_change=text.applied, on_gap=text.reset)
        return Vectors(self._change_log(active.current.index), (changes,))

    def worker_vectors(self, identity: CheckpointIdentity) -> WorkerVectors:
        DeploymentGenerations(self.redis, self.prefix).check(identity)
        index, generation = open_index(self.settings, identity)  # CheckpointMismatch: another checkpoint's
        writer = self._change_log(index)
        return WorkerVectors(writer, index, generation, self.indexes.close)

    def _generations(self) -> MilvusGenerations:
        return MilvusGenerations(self.settings, self.indexes)
