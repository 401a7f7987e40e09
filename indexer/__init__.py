"""drca indexer: segment vectors aggregated per video, in FAISS (durable log + snapshots) or Milvus
(`indexer.milvus_index`, imported on use: it loads pymilvus), behind one contract (`indexer.backend`)."""

from indexer.backend import FaissGenerations, IndexGenerations, SegmentIndex
from indexer.errors import (
    DamagedIndex,
    IncompatibleIndex,
    IndexClosed,
    IndexerError,
    IndexLocked,
    InvalidVectors,
    RecoveryError,
)
from indexer.faiss_index import IndexConfig
from indexer.index import IndexStats, Span, StoredVideo, VideoHit, VideoIndex

__all__ = [
    "DamagedIndex",
    "FaissGenerations",
    "IncompatibleIndex",
    "IndexClosed",
    "IndexConfig",
    "IndexGenerations",
    "IndexStats",
    "IndexerError",
    "IndexLocked",
    "InvalidVectors",
    "RecoveryError",
    "SegmentIndex",
    "Span",
    "StoredVideo",
    "VideoHit",
    "VideoIndex",
]
