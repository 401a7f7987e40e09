"""A standalone encoder worker (`drca worker`, scale-out): takes ingest jobs and inference requests from
the shared broker and writes vectors through the backend (the vector stream, or the shared Milvus); and an
online reindex's jobs, with the new checkpoint it loads itself (service/backends/redis/reindex.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

from service.active import Active, ActiveGeneration, identity_of, read_serving_checkpoint
from service.backends import open_backend
from service.backends.parts import Part, nothing
from service.backends.store import VIDEO_STATUSES
from service.broker import Broker, IngestJob
from service.catalog import Catalog
from service.encoding.encoder import VideoEncoder
from service.encoding.worker import EncoderWorker
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
        vectors = backend.worker_vectors(identity_of(files))  # CheckpointMismatch: the deployment switched
        stack.callback(vectors.close)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        active = Active(ActiveGeneration.of(files, vectors.generation, vectors.index, VideoEncoder(settings, files)))
        reindex = backend.worker_reindex(active)  # the online reindex's jobs, and the switch of this worker's model
        catalog = Catalog(backend.store, vectors.writer, VideoStorage(settings.videos_dir), None, broker=None,
                          lock=reindex.lock(backend.catalog_lock()), stored_labels=settings.stored_labels)
        reindex.bind(catalog)
        finish_switch(settings, catalog, vectors.generation)  # a switch whose labels were not written

        def dead_letter(job: IngestJob, reason: str) -> None:
            if job.generation is not None:
                reindex.failed(job, reason)
            else:
                catalog.fail(job, reason, {})

        broker = backend.broker(on_dead_letter=dead_letter)
        stack.pop_all()
    metrics.add_state(lambda: catalog.count_by_status(VIDEO_STATUSES), broker.queue_depth,
                      lambda: index_size(active.current.index))
    worker = EncoderWorker(active, broker, catalog, settings, metrics, None, reindex)
    return Worker(settings=settings, metrics=metrics, active=active, catalog=catalog, broker=broker, worker=worker,
                  parts=[Part(nothing, broker.close), Part(reindex.start, reindex.stop), Part(worker.start, worker.stop)],
                  closers=[vectors.close, backend.close])
