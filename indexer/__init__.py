"""drca indexer: segment vectors in FAISS aggregated per video, durable log + snapshots, metadata store."""

from indexer.errors import IndexClosed, IndexerError, IndexLocked, InvalidVectors, RecoveryError
from indexer.faiss_index import IndexConfig
from indexer.index import IndexStats, Span, StoredVideo, VideoHit, VideoIndex

__all__ = [
    "IndexClosed",
    "IndexConfig",
    "IndexStats",
    "IndexerError",
    "IndexLocked",
    "InvalidVectors",
    "RecoveryError",
    "Span",
    "StoredVideo",
    "VideoHit",
    "VideoIndex",
]
