"""A standalone encoder worker (`drca worker`, scale-out): takes ingest jobs and inference requests from
the shared broker and writes vectors through the backend (the vector stream, or the shared Milvus)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

from service.active import Active, ActiveGeneration, identity_of, read_serving_checkpoint
from service.backends import open_backend
from service.backends.parts import Part, nothing
from service.backends.store import VIDEO_STATUSES
from service.broker import Broker
from service.catalog import Catalog
from service.encoding.encoder import VideoEncoder
from service.encoding.worker import NO_REINDEX, EncoderWorker
from service.generations import finish_switch
from service.metrics import ServiceMetrics
from service.roles.base import Role, index_size
from service.settings import Settings
from service.storage import VideoStorage


class Worker(Role):
    def __init__(self, *, settings: Settings, metrics: ServiceMetrics, active: Active, catalog: Catalog,
                 broker: Broker, worker: EncoderWorker, parts: Sequence[Part],
                 closers: Sequence[Callable[[], None]]) -> None:
        super().__init__(parts, closers)
        self.settings = settings
        self.metrics = metrics
        self.active = active
        self.catalog = catalog
        self.broker = broker
        self.worker = worker

    @property
    def alive(self) -> bool:
        return self.worker.alive


def build_worker(settings: Settings, metrics: ServiceMetrics | None = None) -> Worker:
    """The checkpoint read once (weights loaded from those bytes), the backend's writer (with a shared
    Milvus: its index, checked against the checkpoint), the catalog without a broker (a worker queues
    nothing), then the broker, which marks a job given up after too many deliveries failed."""
    metrics = metrics or ServiceMetrics()
    files = read_serving_checkpoint(settings.checkpoint, weights=True)
    with ExitStack() as stack:
        backend = open_backend(settings)
        stack.callback(backend.close)
        vectors = backend.worker_vectors(identity_of(files))
        stack.callback(vectors.close)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        active = Active(ActiveGeneration.of(files, vectors.generation, vectors.index, VideoEncoder(settings, files)))
        catalog = Catalog(backend.store, vectors.writer, VideoStorage(settings.videos_dir), None, broker=None,
                          lock=backend.catalog_lock(), stored_labels=settings.stored_labels)
        finish_switch(settings, catalog, vectors.generation)  # a switch whose labels were not written
        broker = backend.broker(on_dead_letter=lambda job, reason: catalog.fail(job, reason, {}))
        stack.pop_all()
    metrics.add_state(lambda: catalog.count_by_status(VIDEO_STATUSES), broker.queue_depth,
                      lambda: index_size(vectors.index))
    worker = EncoderWorker(active, broker, catalog, settings, metrics, None, NO_REINDEX)
    return Worker(settings=settings, metrics=metrics, active=active, catalog=catalog, broker=broker, worker=worker,
                  parts=[Part(nothing, broker.close), Part(worker.start, worker.stop)],
                  closers=[vectors.close, backend.close])
