"""The serving roles' shared assembly, and the gateway replica: HTTP in front of the catalog, search and
this replica's view of the index; its encoder workers are other processes (`drca worker`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model.checkpoint import CheckpointFiles
from service.active import Active, ActiveGeneration, identity_of, read_serving_checkpoint
from service.backends import Backend, open_backend
from service.backends.parts import Part, Vectors, nothing
from service.backends.store import VIDEO_STATUSES
from service.broker import Broker
from service.catalog import Catalog, LiveTextTable
from service.generations import finish_switch, open_index
from service.metrics import ServiceMetrics
from service.priority import QueriesInFlight
from service.ratelimit import Limits
from service.roles.base import Role, index_size
from service.search import SearchService
from service.settings import Settings
from service.storage import VideoStorage
from service.thumbnails import ThumbnailCache

if TYPE_CHECKING:
    from service.backends.redis.reindex import RedisOnlineReindex
    from service.encoding.worker import EncoderWorker
    from service.reindex import OnlineReindex

log = logging.getLogger(__name__)


class Service(Role):
    """What `drca serve` runs and the routes are given: the embedded service (with its own `worker` and
    online `reindex`) or a gateway replica (no worker: its workers are other processes; on Redis, the
    deployment's online `reindex`)."""

    def __init__(self, *, settings: Settings, metrics: ServiceMetrics, active: Active, catalog: Catalog,
                 search: SearchService, broker: Broker, queries: QueriesInFlight, thumbnails: ThumbnailCache,
                 limits: Limits, vectors: Vectors, reindex: OnlineReindex | RedisOnlineReindex | None,
                 worker: EncoderWorker | None,
                 checks: Sequence[Callable[[], bool]], workers_running: Callable[[], bool],
                 parts: Sequence[Part], closers: Sequence[Callable[[], None]]) -> None:
        super().__init__(parts, closers)
        self.settings = settings
        self.metrics = metrics
        self.active = active
        self.catalog = catalog
        self.search = search
        self.broker = broker
        self.queries = queries
        self.thumbnails = thumbnails
        self.limits = limits
        self.vectors = vectors
        self.reindex = reindex
        self.worker = worker
        self._checks = tuple(checks)
        self._workers_running = workers_running

    def ready(self) -> bool:
        return self.vectors.ready() and all(check() for check in self._checks)

    def workers_running(self) -> bool:
        try:
            return self._workers_running()
        except Exception:  # e.g. Redis unreachable: no worker can be counted
            return False

    def readiness(self) -> dict[str, bool | int]:
        """What `/readyz` reports."""
        current = self.active.current
        return {"ready": self.ready(), "model_loaded": current.encoder is not None,
                "index_open": current.index is not None, "worker_running": self.workers_running(),
                "videos": len(current.index) if current.index is not None else 0}


@dataclass(frozen=True)
class Front:
    """The parts every serving role has, built on a backend around the active generation."""

    backend: Backend
    active: Active
    broker: Broker
    queries: QueriesInFlight
    thumbnails: ThumbnailCache
    vectors: Vectors
    catalog: Catalog
    search: SearchService
    limits: Limits
    recovery: Part

    @classmethod
    def build(cls, settings: Settings, metrics: ServiceMetrics, backend: Backend, active: Active) -> Front:
        s = settings
        s.tmp_dir.mkdir(parents=True, exist_ok=True)
        for stale in s.tmp_dir.glob("upload-*.part"):  # spooled uploads of a previous run: never acknowledged
            stale.unlink(missing_ok=True)
        broker = backend.broker()
        thumbnails = ThumbnailCache(s.thumbnails_dir, s.video_limits, max_concurrent=s.decode_threads,
                                    max_bytes=s.thumbnail_cache_bytes)
        text = LiveTextTable(backend.store)
        vectors = backend.gateway_vectors(active, text)
        catalog = Catalog(backend.store, vectors.writer, VideoStorage(s.videos_dir), thumbnails, broker=broker,
                          lock=backend.catalog_lock(), stored_labels=s.stored_labels, text=text)
        finish_switch(s, catalog, active.current.generation)  # a switch whose labels were not written
        metrics.add_state(lambda: catalog.count_by_status(VIDEO_STATUSES), broker.queue_depth,
                          lambda: index_size(active.current.index))
        return cls(backend, active, broker, QueriesInFlight(s.ingest_yield_max_s), thumbnails, vectors, catalog,
                   SearchService(s, catalog, broker, active), Limits.of(s, backend.buckets),
                   backend.recovery(catalog, broker))

    def parts(self, *inner: Part) -> list[Part]:
        """Start order: the followers, the broker (closed after what uses it stops), the recovery, then
        the `inner` parts (a worker, a reindex)."""
        followers = [Part(f.start, f.stop) for f in self.vectors.followers]
        return [*followers, Part(nothing, self.broker.close), self.recovery, *inner]

    def closers(self) -> list[Callable[[], None]]:
        active = self.active
        return [lambda: active.current.index.close(), self.backend.close]


def open_serving(settings: Settings, files: CheckpointFiles, stack: ExitStack) -> tuple[Backend, ActiveGeneration]:
    """The backend and the active index of a serving role (`CheckpointMismatch` when the index holds
    another checkpoint's vectors); closed by `stack` if the build fails."""
    backend = open_backend(settings)
    stack.callback(backend.close)
    backend.prepare_index(identity_of(files))
    # where the workers are in process the index is the only copy of the stored videos' vectors: a current
    # generation gone while the store holds indexed videos is refused (`MissingGeneration`), not made anew
    indexed = (lambda: backend.store.count_videos("indexed")) if backend.workers_in_process else None
    index, generation = open_index(settings, identity_of(files), indexed)
    stack.callback(index.close)
    return backend, ActiveGeneration.of(files, generation, index, encoder=None)


def build_gateway(settings: Settings, metrics: ServiceMetrics | None = None) -> Service:
    """A gateway replica (or, on the local backend, a gateway alone with no worker): the checkpoint's card
    and identity only (its weights are hashed, not loaded)."""
    metrics = metrics or ServiceMetrics()
    files = read_serving_checkpoint(settings.checkpoint, weights=False)
    with ExitStack() as stack:
        backend, generation = open_serving(settings, files, stack)
        front = Front.build(settings, metrics, backend, Active(generation))
        stack.pop_all()
    broker = front.broker
    reindex = front.backend.gateway_reindex(front.catalog, broker, front.active, on_switch=(front.search.reset,))
    inner = (Part(reindex.resume, reindex.stop),) if reindex is not None else ()
    return Service(settings=settings, metrics=metrics, active=front.active, catalog=front.catalog,
                   search=front.search, broker=broker, queries=front.queries, thumbnails=front.thumbnails,
                   limits=front.limits, vectors=front.vectors, reindex=reindex, worker=None, checks=(),
                   workers_running=lambda: broker.workers_alive() > 0, parts=front.parts(*inner),
                   closers=front.closers())
