"""Building FAISS indexes for one configured kind, and the one tiny GPU hook.

Every kind searches by inner product on L2-normalised vectors (cosine similarity). Ids given to FAISS
are the indexer's internal 64-bit segment ids. `flat` is wrapped in `IndexIDMap2`, IVF kinds carry ids
themselves (and both support `remove_ids`); HNSW cannot remove, so `VideoIndex` keeps a tombstone set
for it and compacts on rebuild.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf_flat", "ivf_sq8", "ivf_pq", "hnsw"]
ConcreteKind = Literal["flat", "ivf_flat", "ivf_sq8", "ivf_pq", "hnsw"]
#: the inverted-file kinds: trained on a sample, retrained as the index grows. `ivf_sq8` stores each
#: component in 8 bits (a quarter of the float32 bytes), `ivf_pq` `pq_m` codes of `pq_nbits` bits
IVF_KINDS: tuple[ConcreteKind, ...] = ("ivf_flat", "ivf_sq8", "ivf_pq")


@dataclass(frozen=True)
class IndexConfig:
    """Every knob of the vector index, with its default, in one place."""

    dim: int = 256  # the checkpoint's embedding size (model HeadConfig.embed_dim); the service passes it
    kind: IndexKind = "auto"
    # `auto`: exact search below this many segments, `auto_kind` at or above it.
    auto_threshold: int = 200_000
    auto_kind: ConcreteKind = "ivf_flat"  # see docs/indexer.md: meets the recall/speed target
    # IVF: nlist=None picks 4*sqrt(n) (clamped so every list gets >= 39 training points).
    nlist: int | None = None
    nprobe: int = 32
    pq_m: int = 32  # sub-quantisers for ivf_pq (dim must be divisible by it)
    pq_nbits: int = 8  # bits per sub-quantiser code
    train_sample: int = 200_000  # at most this many vectors train the IVF quantiser
    # HNSW
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 96
    # Rebuild (background): IVF retrains when the index has grown this much since training;
    # HNSW compacts when this fraction of its vectors are tombstones.
    retrain_growth: float = 2.0
    max_tombstone_fraction: float = 0.2
    # Durability
    fsync: bool = True
    snapshot_every: int = 10_000  # log records between background snapshots (0: only explicit)
    allow_empty_recovery: bool = False
    use_gpu: bool = True  # only has an effect when faiss-gpu and a GPU are present

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.kind not in ("auto", "flat", *IVF_KINDS, "hnsw"):
            raise ValueError(f"unknown index kind {self.kind!r}")
        if (self.kind == "ivf_pq" or self.auto_kind == "ivf_pq") and self.dim % self.pq_m:
            raise ValueError(f"dim {self.dim} is not divisible by pq_m {self.pq_m}")


def concrete_kind(cfg: IndexConfig, n: int) -> ConcreteKind:
    """The kind to build for `n` live segments."""
    if cfg.kind == "auto":
        return cfg.auto_kind if n >= cfg.auto_threshold else "flat"
    return cfg.kind


def ivf_nlist(cfg: IndexConfig, n: int) -> int:
    if cfg.nlist is not None:
        return cfg.nlist
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def min_train_size(cfg: IndexConfig, kind: ConcreteKind, n: int) -> int:
    """Segments needed before `kind` can be trained; below it the index stays exact."""
    if kind in IVF_KINDS:
        need = ivf_nlist(cfg, n)
        if kind == "ivf_pq":
            need = max(need, 2**cfg.pq_nbits)  # every PQ codebook entry needs a training point
        return need
    return 0


def build(kind: ConcreteKind, cfg: IndexConfig, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A new index of `kind` holding `vectors` (N, D) float32 normalised, with int64 `ids` (N,)."""
    d = cfg.dim
    n = len(vectors)
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    elif kind in IVF_KINDS:
        nlist = ivf_nlist(cfg, n)
        codes = {"ivf_flat": "Flat", "ivf_sq8": "SQ8", "ivf_pq": f"PQ{cfg.pq_m}x{cfg.pq_nbits}"}[kind]
        spec = f"IVF{nlist},{codes}"
        index = faiss.index_factory(d, spec, ip)
        if n < min_train_size(cfg, kind, n):
            raise ValueError(
                f"{kind} needs at least {min_train_size(cfg, kind, n)} vectors to train, got {n}"
            )
        sample = vectors
        if n > cfg.train_sample:
            pick = np.random.default_rng(0).choice(n, cfg.train_sample, replace=False)
            sample = vectors[np.sort(pick)]
        index.train(sample)
        faiss.extract_index_ivf(index).nprobe = cfg.nprobe
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, cfg.hnsw_m, ip)
        inner.hnsw.efConstruction = cfg.ef_construction
        inner.hnsw.efSearch = cfg.ef_search
        index = faiss.IndexIDMap(inner)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if n:
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return maybe_to_gpu(index, cfg)


def search(index: faiss.Index, kind: ConcreteKind, cfg: IndexConfig, queries: np.ndarray, k: int):
    """k-NN with the configured search-time parameters; HNSW's efSearch is raised to at least k."""
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=max(cfg.ef_search, k))
        return index.search(queries, k, params=params)
    return index.search(queries, k)


def supports_remove(kind: ConcreteKind, index: faiss.Index) -> bool:
    """HNSW cannot remove, and GPU indexes don't support `remove_ids`: those use tombstones."""
    return kind != "hnsw" and not on_gpu(index)


# --- GPU: the only place that knows about it. Same code path otherwise. -----------------------------


def on_gpu(index: faiss.Index) -> bool:
    return getattr(index, "_drca_resources", None) is not None


def maybe_to_gpu(index: faiss.Index, cfg: IndexConfig) -> faiss.Index:
    """Move a searchable index to GPU 0 when faiss-gpu and a GPU are present (HNSW stays on CPU)."""
    if not cfg.use_gpu or not hasattr(faiss, "index_cpu_to_gpu") or faiss.get_num_gpus() == 0:
        return index
    if isinstance(faiss.downcast_index(index.index if hasattr(index, "index") else index), faiss.IndexHNSW):
        return index
    try:
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, 0, index)
        gpu._drca_resources = res  # keep the resources alive as long as the index
        return gpu
    except RuntimeError as exc:  # unsupported index type on GPU: stay on CPU
        log.warning("could not move index to GPU, staying on CPU: %s", exc)
        return index
