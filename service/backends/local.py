"""The local bundle (the embedded service): the SQLite store, the in-process broker and catalog lock,
in-process rate-limit buckets, and the active index (FAISS, or a Milvus Lite file) written directly."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from indexer import Span
from service.active import Active
from service.backends.buckets import Buckets, LocalBuckets
from service.backends.parts import Part, Vectors, WorkerVectors, nothing
from service.backends.sqlite import SQLiteMetadataStore
from service.broker import Broker, IngestJob, InProcessBroker
from service.catalog import Catalog, LiveTextTable
from service.generations import CheckpointIdentity
from service.settings import Settings

log = logging.getLogger(__name__)


class ActiveIndex:
    """The catalog's index writes in one process: into the active generation's index, whichever that is
    when the write is made (an online reindex swaps it)."""

    def __init__(self, active: Active) -> None:
        self.active = active

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None:
        self.active.current.index.add_video(video_id, segments, vectors)

    def delete_video(self, video_id: int) -> bool:
        return self.active.current.index.delete_video(video_id)


class LocalBackend:
    workers_in_process = True

    def __init__(self, settings: Settings) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.store = SQLiteMetadataStore(settings.store_path)

    def broker(self, on_dead_letter: Callable[[IngestJob, str], None] | None = None) -> Broker:
        return InProcessBroker()  # nothing is delivered twice in process: no dead letters

    def catalog_lock(self) -> AbstractContextManager:
        return threading.RLock()

    def buckets(self, name: str, rate: float, burst: int) -> Buckets:
        return LocalBuckets(rate, burst)

    def gateway_vectors(self, active: Active, text: LiveTextTable) -> Vectors:
        return Vectors(ActiveIndex(active))

    def worker_vectors(self, identity: CheckpointIdentity) -> WorkerVectors:
        raise ValueError("a standalone worker needs redis_url")

    def prepare_index(self, identity: CheckpointIdentity) -> None:
        """Nothing to adopt: the data dir's generation pointer is this process's own."""

    def gateway_reindex(self, catalog: Catalog, broker: Broker, active: Active, on_switch=()) -> None:
        """A gateway alone on the local backend has no worker to reindex with (the embedded service does)."""
        return None

    def recovery(self, catalog: Catalog, broker: Broker) -> Part:
        def requeue() -> None:
            jobs = catalog.unfinished_jobs()
            for job in jobs:
                broker.enqueue(job)
            if jobs:
                log.info("re-queued %d unfinished ingest jobs from the previous run", len(jobs))

        return Part(requeue, nothing)

    def close(self) -> None:
        self.store.close()
