"""Backends: where a deployment keeps its shared state. Each bundle builds the same parts (the `Backend`
protocol, service/backends/parts.py): the metadata store, the broker, the catalog lock, the rate-limit
buckets, how vectors are written and followed, and how unqueued jobs are recovered.

- `LocalBackend` (local.py): SQLite, the in-process broker, FAISS or a Milvus Lite file written directly;
- `RedisStreamBackend`, `RedisMilvusBackend` (redis/): the Redis store, broker and lock, with vectors
  through the stream each gateway's FAISS replica follows, or into one shared Milvus.

The store interface and records are in store.py (SQLite: sqlite.py; Redis: redis/store.py); the index
backend (FAISS or Milvus generations) in index.py. `backend_class` is the one place that picks a bundle.
"""

from __future__ import annotations

from service.backends.parts import Backend, BackendUnavailable
from service.settings import Settings

__all__ = ["Backend", "BackendUnavailable", "backend_class", "open_backend"]


def backend_class(settings: Settings) -> type[Backend]:
    """The bundle the settings ask for (nothing is opened)."""
    if not settings.redis_url:
        from service.backends.local import LocalBackend

        return LocalBackend
    from service.backends.redis import RedisMilvusBackend, RedisStreamBackend

    return RedisMilvusBackend if settings.index == "milvus" else RedisStreamBackend


def open_backend(settings: Settings) -> Backend:
    """The bundle the settings ask for, opened (`BackendUnavailable` when it cannot be reached)."""
    return backend_class(settings)(settings)
