"""What every backend bundle builds (the `Backend` protocol) and the small parts it hands a role."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from indexer import SegmentIndex

if TYPE_CHECKING:
    from service.active import Active
    from service.backends.buckets import Buckets
    from service.backends.redis.reindex import RedisOnlineReindex
    from service.backends.store import MetadataStore
    from service.broker import Broker, IngestJob
    from service.catalog import Catalog, LiveTextTable, VectorWriter
    from service.generations import CheckpointIdentity


class BackendUnavailable(Exception):
    """The backend cannot be reached or used (the message says which and why)."""


class Follower(Protocol):
    """A thread that keeps this process's view of the index or text table current."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True)
class Part:
    """Something a role starts (in its order) and stops (in reverse) with it."""

    start: Callable[[], None]
    stop: Callable[[], None]


def nothing() -> None:
    """A part's start or stop that has nothing to do."""


@dataclass(frozen=True)
class Vectors:
    """How a gateway writes segment vectors (`writer`: what its catalog writes through) and what keeps the
    index it searches, and its text table, current (`followers`, started and stopped with it)."""

    writer: VectorWriter
    followers: tuple[Follower, ...] = ()

    def ready(self) -> bool:
        return all(f.ready for f in self.followers)


@dataclass(frozen=True)
class WorkerVectors:
    """How a standalone worker writes segment vectors, and the index generation it holds open (a shared
    Milvus; none when it writes to the vector stream)."""

    writer: VectorWriter
    index: SegmentIndex | None = None
    generation: str | None = None
    close: Callable[[], None] = field(default=nothing)


class Backend(Protocol):
    """The parts a deployment keeps its shared state in. `workers_in_process`: the broker lives in this
    process, so encoder workers can only run here (the embedded service); else they are other processes."""

    workers_in_process: ClassVar[bool]
    store: MetadataStore

    def broker(self, on_dead_letter: Callable[[IngestJob, str], None] | None = None) -> Broker:
        """A new broker; `on_dead_letter(job, reason)` for a job given up after too many deliveries."""
        ...

    def catalog_lock(self) -> AbstractContextManager: ...

    def buckets(self, name: str, rate: float, burst: int) -> Buckets:
        """Rate-limit token buckets named `name` (shared by every gateway of the deployment)."""
        ...

    def gateway_vectors(self, active: Active, text: LiveTextTable) -> Vectors: ...

    def worker_vectors(self, identity: CheckpointIdentity) -> WorkerVectors: ...

    def recovery(self, catalog: Catalog, broker: Broker) -> Part:
        """How a gateway gets acknowledged jobs that are not queued (after a crash) queued again."""
        ...

    def prepare_index(self, identity: CheckpointIdentity) -> None:
        """Before a serving role opens its index: what the deployment says its generation is (Redis: an
        online reindex may have switched it; `CheckpointMismatch` for a process on the old checkpoint)."""
        ...

    def gateway_reindex(self, catalog: Catalog, broker: Broker, active: Active,
                        on_switch: tuple[Callable[[], None], ...] = ()) -> RedisOnlineReindex | None:
        """A gateway's online reindex (Redis: service/backends/redis/reindex.py); None where there is none."""
        ...

    def close(self) -> None: ...
