"""The vector index bundle: FAISS generations in the data dir (`index_dir`), or Milvus generations behind
the `segments` alias at `milvus_uri` (a Milvus Lite file, a `milvus-lite server` or a cluster). The one
place that picks the index backend (`settings.index`); `service/generations.py` opens and checks them."""

from __future__ import annotations

from pathlib import Path

from indexer import FaissGenerations, IndexConfig, IndexGenerations
from service.settings import Settings


def index_generations(settings: Settings, embed_dim: int) -> IndexGenerations:
    """The generations of the configured backend: FAISS directories beside `index_dir`, or Milvus
    collections behind the `segments` alias at `milvus_uri`."""
    if settings.index == "milvus":
        from indexer.milvus_index import MilvusConfig, MilvusGenerations

        token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        if "://" not in settings.milvus_location:  # a Milvus Lite file: its directory must exist (a new data dir)
            Path(settings.milvus_location).parent.mkdir(parents=True, exist_ok=True)
        return MilvusGenerations(MilvusConfig(uri=settings.milvus_location, dim=embed_dim, token=token,
                                              index_type=settings.milvus_index_type,
                                              flush_writes=settings.milvus_flush_writes))
    return FaissGenerations(settings.index_dir, IndexConfig(dim=embed_dim, allow_empty_recovery=True))


def index_location(settings: Settings) -> str:
    """Where the configured index lives (for messages)."""
    return settings.milvus_location if settings.index == "milvus" else str(settings.index_dir)
