"""Vector-index benchmarks: every FAISS index kind (the default mode), and the service's index backends
(FAISS against Milvus Lite) with the cost of a reindex (`--backends`, issue 21).

**Index kinds** (no `--backends`): data is a Gaussian mixture of `--centres` centres in 256-d (spread so that
neighbours are meaningful), L2-normalised; queries are fresh draws from the same mixture (not from the base
set). Ground truth is exact inner-product search. Each kind is built with `indexer.faiss_index.build` (the
code the service uses) and searched with `indexer.faiss_index.search`.

    python -m benchmarks.index                 # 1,000,000 vectors (heavy: ~GBs of RAM, many minutes)
    python -m benchmarks.index --n 100000      # smaller

**Backends** (`--backends`; JSON: `benchmarks/results/index_backends.json`, `--out` overrides):

    python -m benchmarks.index --backends faiss,faiss-hnsw,milvus-lite --sizes 10000,100000,1000000 --reindex

Every backend gets the same vectors at each size: seeded random unit vectors of `--dim` (1280, the shipped
model's embedding size), or the rows of `--embeddings FILE.npy`, grouped in order into videos of
`--segments-per-video` segments on average (uniform in [mean/2, 3*mean/2], the last video cut to the
size). Video ids are 0..V-1; segment i of a video spans [i, i+1) seconds (spans do not affect search).
Queries (`--queries`, the same for every backend) are near-duplicates of stored videos: `--query-segments`
consecutive segments of a randomly chosen video, each plus Gaussian noise of norm `--query-noise` (0.75:
cosine about 0.8 to its original), re-normalised. With random vectors everything but the source video
is noise (similarities about 0 +- 1/sqrt(dim)): the hard case for approximate indexes.

**Real embeddings, grown** (`--embeddings FILE.npy` written by `benchmarks.embed_videos`: the shipped
model's embeddings of real clips and of their near-duplicate copies, every query view, with `FILE.tsv`
naming each row's video, segment, view and the videos it is a copy of). The residual of every
(copy segment, original segment) pair (the copy's view nearest to any of its originals' segments, minus
that segment) is fitted by a Gaussian (their mean, their top 64 principal components, the rest isotropic;
`results.backends.growth`). A size past the file's rows grows it: rows 0..rows-1 are the file's, every
later video is a copy of a run of consecutive real rows from a random start, each row plus `--grow-scale`
x a residual draw, re-normalised. Queries are then a stored run plus `--query-residual-scale` x a residual
draw per segment (not `--query-noise`). So the grown corpus has the real embeddings' distribution and
near-duplicates as close as the real ones, not Gaussian clusters.

**Widths** (`--widths full,compact --reduction CKPT`): `compact` runs every backend again on the same
vectors reduced by the checkpoint's reduction (`drca train reduce`; `model.reduction.apply_reduction`,
after the growth, which happens at the file's width), under `<backend>@<dim>`; with it
`recall_at_10_vs_full_width` is the recall against the exact top 10 at the full width (what the
reduction itself costs), `recall_at_10` the one against the exact top 10 at the compact width.

Each (backend, size) runs in its own spawned process, so peak RSS is its own, and a crash, `--timeout-s` or
the `--max-rss-gb` guard (default: 85% of the memory available at the start) stops that size only: the
error, the stage and how far it got (`progress`: vectors added, add rate so far, queries done) go into the
JSON, `results.backends.stopped.<name>` names the size, and the backend's larger sizes are skipped. Backends:
- `faiss`: the service's `VideoIndex` with the service's config (`IndexConfig(dim, allow_empty_recovery=True)`,
  kind `auto`: exact `flat` below 200,000 segments, `ivf_flat` from there, fsync'd log);
- `faiss-flat`, `faiss-ivf`, `faiss-ivf-sq8`, `faiss-ivf-pq`, `faiss-hnsw`: the same with `kind` `flat`,
  `ivf_flat`, `ivf_sq8` (8-bit scalar codes: a quarter of the bytes), `ivf_pq` (`pq_m` x `pq_nbits` codes)
  or `hnsw` (M 32, efConstruction 80, efSearch 96). IVF kinds start exact and are trained (then retrained
  at each doubling) in the background as the index grows, as in the service; `ready_s` waits for the last;
- `milvus-lite`: `MilvusVideoIndex` on a Milvus Lite file in a temp dir (HNSW, M 32, efConstruction 200,
  ef 96, one flush per add call), in this process (Milvus Lite 3.x runs in process: its memory is in the
  RSS).
`--faiss-set key=value` / `--milvus-set key=value` (repeatable) change a setting of `IndexConfig` /
`MilvusConfig` (e.g. `nprobe=64`, `ef_search=128`); `--milvus-timeout-s` / `--milvus-max-rss-gb` give
Milvus Lite its own budget: it goes as far as it can in it, and `stopped` says where it stopped.

Figures per backend and size (`results.backends.sizes[i].backends.<name>`):
- `add_vectors_per_s`: segment vectors / wall seconds of adding every video through the path the worker
  uses, `add_video(video_id, segments, vectors)` once per video (`--add-batch B`: `add_videos` of B videos,
  the Redis replica's path); FAISS fsyncs each call, Milvus upserts (and deletes stale segments, counted
  strongly). `add_call_p50_ms`/`add_call_p99_ms`: per call. `ready_s`: after the last add, until the
  index serves its final kind (FAISS's background rebuild, e.g. IVF training past 200,000; 0 for Milvus);
- `query_p50_ms`/`query_p99_ms`/`qps`: one `search(vectors (Q, D), k=10, query_segments, aggregation="max")`
  per query, as `/v1/search` calls it for one view (after `--warmup` untimed ones), one at a time, with
  `--threads` FAISS threads;
- `recall_at_10`: mean over queries of |returned videos & exact top-10 videos| / 10, the exact top 10 from
  brute force in numpy over every stored segment (max aggregation; `ground_truth_s` per size);
- `peak_rss_mib`: the process's peak resident memory (VmHWM) for that run, which includes the process's
  imports (`baseline_rss_mib`, measured before the index is opened) and one block of input vectors;
  `index_rss_mib` = peak - baseline; `disk_mib`: the index's files afterwards.

**Reindex** (`--reindex`; `results.reindex.<backend>.offline|online`): a data dir with `--reindex-videos` generated videos
(`--reindex-seconds` s each, Game of Life, ffmpeg from `imageio_ffmpeg`) indexed by the embedded service
(`TestClient(create_app(...))`) with a tiny random checkpoint (tests.service.media.tiny_checkpoint: 16-d, so
the model costs almost nothing: this measures the pipeline, not the shipped model; `--reindex-checkpoints
OLD,NEW` measures real ones), per `--reindex-backends`:
- `offline`: `service.reindex.reindex` (what `drca reindex --checkpoint NEW` runs) OLD -> NEW, no server:
  `video_s_per_s` = seconds of video re-embedded / wall seconds of the whole call (encoder load, decode,
  embed, labels, adds, switch). Searches cannot run during it: it holds the index (a server is refused);
- `online`: the service started with NEW, `POST /v1/admin/reindex` back to OLD (the worker path and queue):
  `video_s_per_s` from the route's status (video seconds / seconds until the switch), and the latency of
  `POST /v1/search {"video_id", "k": 10}` (in process, through `TestClient`) before the reindex
  (`search_before_*`, `--reindex-searches` of them) and while it runs (`search_during_*`, requests that both
  started and ended with the state `running`; all must answer 200). Searches and the reindex share the CPU,
  as in a deployment. `answers` classifies every answer from the POST until the switch as the old
  generation's (equal hits and scores to the last answer before), the new one's (equal to the first after
  the switch) or `other`; `one_generation` is true when there is no `other` and no old answer after a new
  one. The videos are all uploaded, then waited for (a batch upload's queue).
Not measured: `drca reindex --server URL` over real HTTP (the same route), a Redis deployment, a Milvus
server or cluster (no Milvus beyond Lite runs here).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks._env import RESULTS, write_result
from indexer import faiss_index
from indexer.faiss_index import IndexConfig
from indexer.index import Span

log = logging.getLogger("benchmarks.index")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def mixture(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        which = rng.integers(0, len(centres), m)
        x = centres[which] + spread * rng.standard_normal((m, centres.shape[1]), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + m] = x
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


def measure(index, kind, cfg, queries, truth, k, singles, batches, batch, threads) -> dict[str, Any]:
    found = faiss_index.search(index, kind, cfg, queries, k)[1]
    lat = []
    faiss.omp_set_num_threads(1)  # one thread per single query (a server runs many in parallel)
    for q in queries[:singles]:
        t = time.perf_counter()
        faiss_index.search(index, kind, cfg, q[None], k)
        lat.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(threads)
    blat = []
    for b in range(batches):
        qb = queries[(b * batch) % len(queries) :][:batch]
        t = time.perf_counter()
        faiss_index.search(index, kind, cfg, qb, k)
        blat.append(time.perf_counter() - t)
    lat_ms, blat_ms = np.array(lat) * 1e3, np.array(blat) * 1e3
    return {
        "recall_at_10": round(recall_at(found, truth, k), 4),
        "single_p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
        "single_p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
        "single_qps": round(len(lat) / sum(lat), 1),
        "batch64_p50_ms": round(float(np.percentile(blat_ms, 50)), 3),
        "batch64_p99_ms": round(float(np.percentile(blat_ms, 99)), 3),
        "batch64_qps": round(batch * len(blat) / sum(blat), 1),
    }


# --- backends: FAISS against Milvus Lite, and reindex (issue 21) ------------------------------------------

#: FAISS backends: the service's `VideoIndex` with `IndexConfig.kind` (None: its default, `auto`)
FAISS_KINDS: dict[str, str | None] = {"faiss": None, "faiss-flat": "flat", "faiss-ivf": "ivf_flat",
                                      "faiss-ivf-sq8": "ivf_sq8", "faiss-ivf-pq": "ivf_pq", "faiss-hnsw": "hnsw"}
BACKENDS = (*FAISS_KINDS, "milvus-lite")
SEGMENT_S = 1.0  # each segment's span (seconds); spans do not affect search


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class Residuals:
    """The near-duplicate residuals of real embeddings (a copy's segment minus its original's), as a
    Gaussian matched to them: their mean, their covariance in its top `components` principal directions,
    and the rest of their variance spread evenly over every dimension. `draw` samples it."""

    mean: np.ndarray  # (D,)
    basis: np.ndarray  # (r, D): principal directions, each scaled by its standard deviation
    iso: float  # standard deviation per dimension of the remainder
    pairs: int  # the real (copy, original) segment pairs it was fitted on
    norm_median: float  # the median norm of those real residuals

    @classmethod
    def fit(cls, residuals: np.ndarray, components: int = 64) -> Residuals:
        r = np.asarray(residuals, dtype=np.float64)
        if len(r) < 2:
            raise ValueError(f"{len(r)} near-duplicate pairs: at least 2 are needed to fit the residuals")
        mean = r.mean(axis=0)
        _, s, vt = np.linalg.svd(r - mean, full_matrices=False)
        var = s**2 / (len(r) - 1)
        k = min(components, len(var))
        iso = float(np.sqrt(var[k:].sum() / r.shape[1]))
        basis = vt[:k] * np.sqrt(var[:k])[:, None]
        return cls(mean.astype(np.float32), basis.astype(np.float32), iso, len(r),
                   float(np.median(np.linalg.norm(r, axis=1))))

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal((n, len(self.basis)), dtype=np.float32)
        noise = rng.standard_normal((n, len(self.mean)), dtype=np.float32) * np.float32(self.iso)
        return self.mean + z @ self.basis + noise

    def describe(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "components": len(self.basis), "real_norm_median": round(self.norm_median, 4),
                "model": "Gaussian: the real residuals' mean and top principal components, the rest of their "
                         "variance isotropic"}


def near_duplicate_residuals(x: np.ndarray, table: Path) -> np.ndarray:
    """The residuals of the near-duplicate pairs in an `embed_videos` file: for each segment of a video
    that has `origins`, its view nearest (cosine) to any original-view segment of those videos, minus that
    segment (what the service's search matches). (pairs, D) float32; none when no row has origins."""
    import csv

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if len(rows) != len(x):
        raise ValueError(f"{table} has {len(rows)} rows for the {len(x)} vectors of its .npy")
    originals: dict[str, list[int]] = {}
    segments: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        if r["view"] == "original":
            originals.setdefault(r["video"], []).append(i)
        if r["origins"]:
            segments.setdefault((r["video"], r["segment"]), []).append(i)
    out = []
    for (video, _), idx in segments.items():
        cand = [j for o in rows[idx[0]]["origins"].split(",") for j in originals.get(o, []) if o != video]
        if not cand:
            continue
        sims = x[idx] @ x[cand].T
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        out.append(x[idx[a]] - x[cand[b]])
    return np.array(out, dtype=np.float32).reshape(-1, x.shape[1])


@dataclasses.dataclass(frozen=True)
class Corpus:
    """`n` unit segment vectors of `dim`, grouped in order into videos of `counts[v]` segments; generated
    block by block (seeded per block) or read from an `.npy` file, never all in memory at once.

    From a file of real embeddings with its `embed_videos` table (`residuals`), the corpus grows past the
    file: row i < rows is the file's row i; every video after them is a near-duplicate copy of a run of
    consecutive real rows from a random start, each row plus a residual draw times `grow_scale`.
    `reduction` (mean, projection): every vector is generated at the file's width, then reduced
    (`model.reduction.apply_reduction`): `dim` is then the reduced size."""

    n: int
    dim: int
    seed: int
    counts: np.ndarray  # (V,) segments per video, summing to n
    embeddings: str | None = None
    block_videos: int = 256
    rows: int = 0  # real rows in `embeddings`
    residuals: Residuals | None = None
    grow_scale: float = 1.0
    reduction: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def make(
        cls, n: int, dim: int, seed: int = 0, mean_segments: int = 20, embeddings: str | None = None,
        grow_scale: float = 1.0, reduction: str | None = None,
    ) -> Corpus:
        rows, residuals = 0, None
        if embeddings:
            rows, dim = np.load(embeddings, mmap_mode="r").shape
            table = Path(embeddings).with_suffix(".tsv")
            if n > rows:
                if not table.is_file():
                    raise ValueError(f"{embeddings} holds {rows} vectors, fewer than the size {n}, and has no "
                                     f"{table.name} (benchmarks.embed_videos) to grow them by near-duplicates")
                found = near_duplicate_residuals(np.load(embeddings).astype(np.float32), table)
                if not len(found):
                    raise ValueError(f"{embeddings} holds {rows} vectors, fewer than the size {n}, and {table.name} "
                                     "names no near-duplicate pair to grow them by (embed_videos --relevance)")
                residuals = Residuals.fit(found)
        rng = np.random.default_rng(seed)
        lo, hi = max(1, mean_segments // 2), max(1, mean_segments + mean_segments // 2)
        counts = rng.integers(lo, hi + 1, n // lo + 1)  # enough videos for n segments, a prefix kept
        ends = np.cumsum(counts)
        v = int(np.searchsorted(ends, n)) + 1
        counts = counts[:v].copy()
        counts[-1] -= int(ends[v - 1]) - n
        red = None
        if reduction:
            red = read_reduction(reduction)
            if red[1].shape[1] != dim:
                raise ValueError(f"{reduction} reduces {red[1].shape[1]}-d vectors, the corpus is {dim}-d")
            dim = red[1].shape[0]
        return cls(n, dim, seed, counts, embeddings, rows=rows, residuals=residuals, grow_scale=grow_scale,
                   reduction=red)

    @property
    def videos(self) -> int:
        return len(self.counts)

    @property
    def full_dim(self) -> int:
        return self.dim if self.reduction is None else int(self.reduction[1].shape[1])

    @functools.cached_property
    def offsets(self) -> np.ndarray:  # (V + 1,) first row of each video
        return np.concatenate([[0], np.cumsum(self.counts)])

    def reduce(self, x: np.ndarray) -> np.ndarray:
        if self.reduction is None:
            return x
        from model.reduction import apply_reduction

        return apply_reduction(x, *self.reduction)

    def block(self, b: int) -> tuple[int, np.ndarray]:
        """Block `b`: (its first video, the vectors of its videos (rows, dim) float32, unit norm)."""
        v0, x = self.block_full(b)
        return v0, self.reduce(x)

    def block_full(self, b: int) -> tuple[int, np.ndarray]:
        """Block `b` before the reduction (the file's width)."""
        v0, v1 = b * self.block_videos, min((b + 1) * self.block_videos, self.videos)
        r0, r1 = int(self.offsets[v0]), int(self.offsets[v1])
        if self.embeddings:
            data = np.load(self.embeddings, mmap_mode="r")
            x = np.array(data[r0 : min(r1, self.rows)], dtype=np.float32)
            if r1 > self.rows:  # grown: near-duplicate copies of runs of real rows
                rng = np.random.default_rng([self.seed, b, 1])
                grown = []
                for v in range(v0, v1):
                    a, e = max(int(self.offsets[v]), self.rows), int(self.offsets[v + 1])
                    if e <= a:
                        continue
                    idx = (int(rng.integers(self.rows)) + np.arange(e - a)) % self.rows
                    base = _unit(np.array(data[np.sort(idx)], dtype=np.float32))[np.argsort(np.argsort(idx))]
                    grown.append(base + self.grow_scale * self.residuals.draw(e - a, rng))
                x = np.concatenate([x, *grown])
        else:
            x = np.random.default_rng([self.seed, b]).standard_normal((r1 - r0, self.full_dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return v0, x

    @property
    def blocks(self) -> int:
        return -(-self.videos // self.block_videos)

    def iter_videos(self):
        """(video_id, spans, vectors (S, dim)) for every video, in order."""
        for b in range(self.blocks):
            v0, x = self.block(b)
            base = int(self.offsets[v0])
            for v in range(v0, min(v0 + self.block_videos, self.videos)):
                a, e = int(self.offsets[v]) - base, int(self.offsets[v + 1]) - base
                yield v, [Span(i * SEGMENT_S, (i + 1) * SEGMENT_S) for i in range(e - a)], x[a:e]


@dataclasses.dataclass(frozen=True)
class Queries:
    source: np.ndarray  # (nq,) the stored video each query was made from
    vectors: np.ndarray  # (total query segments, dim) float32, unit norm
    starts: np.ndarray  # (nq + 1,) each query's first row in `vectors`
    first_segment: np.ndarray  # (nq,) the source segment each query starts at

    def __len__(self) -> int:
        return len(self.source)

    def get(self, i: int) -> tuple[np.ndarray, list[Span]]:
        a, e = int(self.starts[i]), int(self.starts[i + 1])
        s0 = int(self.first_segment[i])
        return self.vectors[a:e], [Span((s0 + j) * SEGMENT_S, (s0 + j + 1) * SEGMENT_S) for j in range(e - a)]


def make_queries(corpus: Corpus, nq: int, segments: int, noise: float, seed: int = 1,
                 residual_scale: float = 1.0) -> Queries:
    """Near-duplicates of stored videos: `segments` consecutive segments of a random video, each plus
    Gaussian noise of norm `noise` (random vectors), or plus `residual_scale` times a draw of the real
    near-duplicate residuals (a grown corpus of real embeddings), re-normalised (then reduced)."""
    rng = np.random.default_rng(seed)
    source = np.sort(rng.choice(corpus.videos, nq, replace=nq > corpus.videos))
    parts, firsts, cached = [], [], (-1, None)
    for v in source.tolist():
        b = v // corpus.block_videos
        if cached[0] != b:
            cached = (b, corpus.block_full(b))
        v0, x = cached[1]
        base = int(corpus.offsets[v0])
        a, e = int(corpus.offsets[v]) - base, int(corpus.offsets[v + 1]) - base
        q = min(segments, e - a)
        s0 = int(rng.integers(0, e - a - q + 1))
        if corpus.residuals is not None:
            y = x[a + s0 : a + s0 + q] + residual_scale * corpus.residuals.draw(q, rng)
        else:
            y = x[a + s0 : a + s0 + q] + rng.standard_normal((q, corpus.full_dim), dtype=np.float32) * (
                noise / np.sqrt(corpus.full_dim)
            )
        parts.append(corpus.reduce(y / np.linalg.norm(y, axis=1, keepdims=True)))
        firsts.append(s0)
    starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    return Queries(source, np.concatenate(parts).astype(np.float32), starts, np.array(firsts))


def read_reduction(checkpoint: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A reduced checkpoint's (mean, projection) (`model.reduction`), read from its weights file."""
    from safetensors import safe_open

    from model.reduction import MEAN, PROJECTION

    path = Path(checkpoint) / "model.safetensors"
    try:
        with safe_open(str(path), framework="numpy") as f:
            if MEAN not in f.keys() or PROJECTION not in f.keys():  # noqa: SIM118 - not a dict
                raise ValueError(f"{checkpoint} has no reduction ({MEAN}, {PROJECTION}): fit one with drca "
                                 "train reduce")
            return f.get_tensor(MEAN).astype(np.float32), f.get_tensor(PROJECTION).astype(np.float32)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def exact_top_videos(corpus: Corpus, queries: Queries, k: int) -> np.ndarray:
    """(nq, k) the exact top-k video ids per query by brute force (numpy): a video's score is its best
    (query segment, video segment) inner product (`aggregation="max"`), ties by lower video id."""
    scores = np.empty((corpus.videos, len(queries)), dtype=np.float32)
    qt = np.ascontiguousarray(queries.vectors.T)
    for b in range(corpus.blocks):
        v0, x = corpus.block(b)
        v1 = min(v0 + corpus.block_videos, corpus.videos)
        sims = x @ qt  # (rows, total query segments)
        per_query = np.maximum.reduceat(sims, queries.starts[:-1], axis=1)  # (rows, nq)
        rows = corpus.offsets[v0:v1] - corpus.offsets[v0]
        scores[v0:v1] = np.maximum.reduceat(per_query, rows, axis=0)
    kk = min(k, corpus.videos)
    out = np.empty((len(queries), kk), dtype=np.int64)
    ids = np.arange(corpus.videos)
    for i in range(len(queries)):
        s = scores[:, i]
        top = np.argpartition(-s, kk - 1)[:kk] if kk < len(s) else ids
        out[i] = top[np.lexsort((top, -s[top]))]
    return out


def open_backend(name: str, dim: int, workdir: Path, overrides: tuple[str, ...] = ()):
    """The index the service would open for `name`, in `workdir` (returns (index, its settings));
    `overrides`: `key=value` settings of its config (`IndexConfig` or `MilvusConfig`)."""
    from indexer import VideoIndex
    from model.config import apply_overrides

    if name in FAISS_KINDS:
        kind = FAISS_KINDS[name]
        cfg = IndexConfig(dim=dim, allow_empty_recovery=True, **({"kind": kind} if kind else {}))
        cfg = apply_overrides(cfg, list(overrides))
        settings = {
            k: getattr(cfg, k)
            for k in (
                "kind",
                "auto_threshold",
                "auto_kind",
                "nlist",
                "nprobe",
                "pq_m",
                "pq_nbits",
                "hnsw_m",
                "ef_construction",
                "ef_search",
                "fsync",
            )
        }
        return VideoIndex.open(workdir / "index", cfg), settings
    if name == "milvus-lite":
        from indexer.milvus_index import MilvusConfig, MilvusVideoIndex

        mcfg = MilvusConfig(uri=str(workdir / "milvus.db"), dim=dim, index_type="HNSW")
        mcfg = apply_overrides(mcfg, list(overrides))
        settings = {k: getattr(mcfg, k) for k in ("index_type", "hnsw_m", "ef_construction", "ef_search",
                                                  "flush_writes")}
        return MilvusVideoIndex.open(mcfg, "segments_bench"), settings
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(xs) * 1e3, q)), 3)


def measure_backend(
    name: str,
    corpus: Corpus,
    queries: Queries,
    truth: np.ndarray,
    workdir: Path,
    k: int = 10,
    add_batch: int = 1,
    warmup: int = 5,
    threads: int = 1,
    progress: Path | None = None,
    overrides: tuple[str, ...] = (),
    truth_full: np.ndarray | None = None,
) -> dict[str, Any]:
    """One backend at one size (see the module docstring for each figure). An exception is recorded, with
    the stage it happened in and the vectors added by then, instead of raised. `progress`: a file that
    says how far it got (rewritten every 10 s), for a run that is killed. `truth_full`: a reduced corpus's
    exact top-k at the full width (`recall_at_10_vs_full_width`)."""
    last, seen = [time.monotonic()], {}

    def report(stage: str, force: bool = False, **more: Any) -> None:
        seen.update(more)
        if progress is not None and (force or time.monotonic() - last[0] >= 10):
            last[0] = time.monotonic()
            progress.write_text(json.dumps({"stage": stage, "rss_mib": _mib(rss_bytes()), **seen}))

    faiss.omp_set_num_threads(threads)
    gc.collect()
    reset_peak_rss()
    out: dict[str, Any] = {"baseline_rss_mib": _mib(rss_bytes())}
    stage, added, index = "open", 0, None
    t0 = time.perf_counter()
    try:
        index, out["settings"] = open_backend(name, corpus.dim, workdir, overrides)
        stage = "add"
        report("add", True)
        calls: list[float] = []
        batch: list = []
        t0 = time.perf_counter()
        for item in corpus.iter_videos():
            batch.append(item)
            if len(batch) >= add_batch:
                t = time.perf_counter()
                index.add_videos(batch) if add_batch > 1 else index.add_video(*batch[0])
                calls.append(time.perf_counter() - t)
                added += sum(len(b[2]) for b in batch)
                batch = []
                report(
                    "add",
                    vectors_added=added,
                    add_s=round(time.perf_counter() - t0, 1),
                    add_vectors_per_s_so_far=round(added / (time.perf_counter() - t0), 1),
                )
        if batch:
            t = time.perf_counter()
            index.add_videos(batch)
            calls.append(time.perf_counter() - t)
            added += sum(len(b[2]) for b in batch)
        add_s = time.perf_counter() - t0
        t = time.perf_counter()
        if hasattr(index, "wait_for_rebuild"):
            index.wait_for_rebuild()
        out.update(
            add_s=round(add_s, 2),
            add_vectors_per_s=round(corpus.n / add_s, 1),
            add_call_p50_ms=_pct(calls, 50),
            add_call_p99_ms=_pct(calls, 99),
            ready_s=round(time.perf_counter() - t, 2),
        )
        report("count", True, **out)
        stage = "count"
        stats = index.stats()
        out.update(kind=stats.kind, segments=index.count_segments(), videos=len(index))
        if out["segments"] != corpus.n:
            raise RuntimeError(f"{out['segments']} segments stored, {corpus.n} added")
        stage = "query"
        report("query", True, segments=out["segments"], kind=out["kind"])
        for i in range(min(warmup, len(queries))):
            vecs, spans = queries.get(i)
            index.search(vecs, k=k, query_segments=spans, aggregation="max")
        lat, hits, hits_full = [], 0, 0
        for i in range(len(queries)):
            vecs, spans = queries.get(i)
            t = time.perf_counter()
            found = index.search(vecs, k=k, query_segments=spans, aggregation="max")
            lat.append(time.perf_counter() - t)
            report("query", queries_done=i + 1, query_p50_ms_so_far=_pct(lat, 50))
            got = {h.video_id for h in found[:k]}
            hits += len(got & set(truth[i].tolist()))
            if truth_full is not None:
                hits_full += len(got & set(truth_full[i].tolist()))
        out.update(
            query_p50_ms=_pct(lat, 50),
            query_p99_ms=_pct(lat, 99),
            qps=round(len(lat) / sum(lat), 1),
            recall_at_10=round(hits / (truth.shape[1] * len(queries)), 4),
        )
        if truth_full is not None:
            out["recall_at_10_vs_full_width"] = round(hits_full / (truth_full.shape[1] * len(queries)), 4)
        stage = "close"
        index.close()
        index = None
        out["disk_mib"] = _mib(_dir_bytes(workdir))
    except Exception as e:  # where a backend cannot go: recorded, not raised
        log.exception("%s at %d vectors failed in %s", name, corpus.n, stage)
        out.update(error=f"{type(e).__name__}: {e}"[:2000], stage=stage, vectors_added=added)
        if index is not None:
            with contextlib.suppress(Exception):
                index.close()
    peak = peak_rss_bytes()
    out.update(peak_rss_mib=_mib(peak), index_rss_mib=_mib(peak - out["baseline_rss_mib"] * 2**20))
    return out


def _child(spec: dict[str, Any], data: str, result: str, progress: str) -> None:
    """The body of one isolated run: the corpus is rebuilt from its seed (the same vectors)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with np.load(data) as z:
        queries = Queries(z["source"], z["vectors"], z["starts"], z["first_segment"])
        truth = z["truth"]
        truth_full = z["truth_full"] if "truth_full" in z.files else None
    corpus = Corpus.make(spec["n"], spec["dim"], spec["seed"], spec["mean_segments"], spec["embeddings"],
                         spec.get("grow_scale", 1.0), spec.get("reduction"))
    out = measure_backend(
        spec["backend"],
        corpus,
        queries,
        truth,
        Path(spec["workdir"]),
        spec["k"],
        spec["add_batch"],
        spec["warmup"],
        spec["threads"],
        Path(progress),
        tuple(spec.get("overrides", ())),
        truth_full,
    )
    Path(result).write_text(json.dumps(out))


def _child_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_isolated(
    spec: dict[str, Any],
    queries: Queries,
    truth: np.ndarray,
    tmp: Path,
    timeout_s: float = 0,
    max_rss_bytes: int = 0,
    truth_full: np.ndarray | None = None,
) -> dict[str, Any]:
    """`measure_backend` in a spawned process: its own peak RSS; a crash, `timeout_s` or the RSS guard
    (`max_rss_bytes`, the process is killed before the machine runs out) end that run with an error."""
    import multiprocessing

    data, result, progress = tmp / "data.npz", tmp / "result.json", tmp / "progress.json"
    np.savez(
        data,
        source=queries.source,
        vectors=queries.vectors,
        starts=queries.starts,
        first_segment=queries.first_segment,
        truth=truth,
        **({"truth_full": truth_full} if truth_full is not None else {}),
    )
    proc = multiprocessing.get_context("spawn").Process(
        target=_child, args=(spec, str(data), str(result), str(progress))
    )
    t0 = time.monotonic()
    proc.start()
    why, peak_seen = None, 0
    while proc.is_alive():
        rss = _child_rss(proc.pid)
        peak_seen = max(peak_seen, rss)
        if max_rss_bytes and rss > max_rss_bytes:
            why = f"stopped: RSS {_mib(rss)} MiB passed the --max-rss-gb guard ({_mib(max_rss_bytes)} MiB)"
        elif timeout_s and time.monotonic() - t0 > timeout_s:
            why = f"stopped: still running after the --timeout-s of {timeout_s:.0f} s"
        if why:
            proc.kill()
            proc.join()
            break
        proc.join(0.5)
    if why is None and result.exists():
        return json.loads(result.read_text())
    if why is None:
        code = proc.exitcode
        why = (
            f"the process was killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
            if code and code < 0
            else f"the process exited with code {code} and no result"
        )
    got = json.loads(progress.read_text()) if progress.exists() else {}  # how far it got (<= 10 s old)
    return {
        "error": why,
        "stage": got.pop("stage", "unknown"),
        "progress": got,
        "peak_rss_seen_mib": _mib(peak_seen),
        "seconds": round(time.monotonic() - t0, 1),
    }


def compare_backends(
    backends: list[str],
    sizes: list[int],
    dim: int = 1280,
    seed: int = 0,
    mean_segments: int = 20,
    nq: int = 300,
    query_segments: int = 8,
    query_noise: float = 0.75,
    k: int = 10,
    add_batch: int = 1,
    warmup: int = 5,
    threads: int = 1,
    embeddings: str | None = None,
    isolate: bool = True,
    timeout_s: float = 0,
    max_rss_bytes: int = 0,
    on_result=None,
    grow_scale: float = 1.0,
    query_residual_scale: float = 1.0,
    reduction: str | None = None,
    widths: tuple[str, ...] = ("full",),
    overrides: dict[str, tuple[str, ...]] | None = None,
    budgets: dict[str, tuple[float, int]] | None = None,
) -> dict[str, Any]:
    """Every backend at every size (and width) on the same vectors; a backend that fails at a size is not
    run at the larger ones (`stopped`). `isolate=False` runs in this process (tests).

    `widths`: "full" (the vectors as they are) and/or "compact" (reduced by the checkpoint `reduction`:
    results under `<backend>@<dim>`). `overrides`: per backend, `key=value` settings of its config.
    `budgets`: per backend, (timeout_s, max_rss_bytes) instead of the common ones."""
    import tempfile

    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r} (known: {', '.join(BACKENDS)})")
    for w in widths:
        if w not in ("full", "compact"):
            raise ValueError(f"unknown width {w!r} (full, compact)")
    if "compact" in widths and not reduction:
        raise ValueError("the compact width needs --reduction CHECKPOINT (a checkpoint with a reduction)")
    overrides, budgets = overrides or {}, budgets or {}
    res: dict[str, Any] = {
        "dim": dim,
        "seed": seed,
        "k": k,
        "mean_segments_per_video": mean_segments,
        "data": f"rows of {embeddings}" if embeddings else "seeded random unit vectors (N(0, I), normalised)",
        "queries": nq,
        "query_segments": query_segments,
        "query_noise": query_noise,
        "add_batch": add_batch,
        "faiss_threads": threads,
        "isolated_processes": isolate,
        "sizes": [],
        "stopped": {},
    }
    if reduction:
        res["reduction"] = str(reduction)
    if overrides:
        res["overrides"] = {b: list(o) for b, o in overrides.items()}
    if budgets:
        res["budgets"] = {b: {"timeout_s": t, "max_rss_mib": _mib(r)} for b, (t, r) in budgets.items()}
    for n in sorted(sizes):
        full = Corpus.make(n, dim, seed, mean_segments, embeddings, grow_scale)
        res["dim"] = full.dim
        if full.residuals is not None and "growth" not in res:
            res["growth"] = {"real_rows": full.rows, "grow_scale": grow_scale,
                             "query_residual_scale": query_residual_scale, "residuals": full.residuals.describe(),
                             "note": "rows past the file are near-duplicate copies of runs of real rows (each "
                                     "plus grow_scale x a residual draw); queries add query_residual_scale x a "
                                     "residual draw to a stored run (query_noise is not used)"}
        corpora: dict[str, Corpus] = {}
        if "full" in widths:
            corpora[""] = full
        if "compact" in widths:
            compact = Corpus.make(n, dim, seed, mean_segments, embeddings, grow_scale, reduction)
            res["compact_dim"] = compact.dim
            corpora[f"@{compact.dim}"] = compact
        entry: dict[str, Any] = {"n": n, "videos": full.videos, "backends": {}}
        res["sizes"].append(entry)
        truth_full = None
        for suffix, corpus in corpora.items():
            queries = make_queries(corpus, nq, query_segments, query_noise, seed + 1, query_residual_scale)
            t = time.perf_counter()
            truth = exact_top_videos(corpus, queries, k)
            entry["ground_truth_s" + (f"{suffix.replace('@', '_')}" if suffix else "")] = round(
                time.perf_counter() - t, 2)
            if not suffix:
                truth_full = truth
            elif "full" not in widths:  # the full-width truth, for recall_at_10_vs_full_width
                truth_full = exact_top_videos(full, make_queries(full, nq, query_segments, query_noise, seed + 1,
                                                                 query_residual_scale), k)
            for b in backends:
                key = b + suffix
                if key in res["stopped"]:
                    entry["backends"][key] = {"skipped": f"failed at {res['stopped'][key]['size']} vectors"}
                    continue
                log.info("%s at %d vectors (%d videos)", key, n, corpus.videos)
                with tempfile.TemporaryDirectory(prefix=f"index-{b}-{n}-") as tmp:
                    spec = {
                        "backend": b,
                        "n": n,
                        "dim": dim,
                        "seed": seed,
                        "mean_segments": mean_segments,
                        "embeddings": embeddings,
                        "grow_scale": grow_scale,
                        "reduction": reduction if suffix else None,
                        "overrides": list(overrides.get(b, ())),
                        "workdir": str(Path(tmp) / "index"),
                        "k": k,
                        "add_batch": add_batch,
                        "warmup": warmup,
                        "threads": threads,
                    }
                    Path(spec["workdir"]).mkdir()
                    ref = truth_full if suffix else None
                    if isolate:
                        t_s, rss = budgets.get(b, (timeout_s, max_rss_bytes))
                        r = run_isolated(spec, queries, truth, Path(tmp), t_s, rss, ref)
                    else:
                        r = measure_backend(b, corpus, queries, truth, Path(spec["workdir"]), k, add_batch, warmup,
                                            threads, None, tuple(overrides.get(b, ())), ref)
                entry["backends"][key] = r
                log.info("%s at %d: %s", key, n, r)
                if "error" in r:
                    res["stopped"][key] = {"size": n, "error": r["error"], "stage": r.get("stage")}
                if on_result is not None:
                    on_result(res)
    return res


# --- reindex ----------------------------------------------------------------------------------------------


def _wait_job(client, job_id: int, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s} s")


def _ingest(client, paths: list[Path]) -> list[int]:
    """Upload every video (the queue fills as a batch upload would), then wait for every job."""
    posted = []
    for path in paths:
        with open(path, "rb") as f:
            r = client.post("/v1/videos", files={"file": (path.name, f, "video/mp4")})
        if r.status_code not in (200, 202):
            raise RuntimeError(f"upload of {path.name}: {r.status_code} {r.text}")
        posted.append((path, r.json()))
    for path, body in posted:
        job = _wait_job(client, body["job_id"])
        if job["status"] != "done":
            raise RuntimeError(f"ingest of {path.name} failed: {job}")
    return [body["video_id"] for _, body in posted]


def _answer(r) -> tuple | None:
    """A search answer's identity: its hits' (video id, score to 4 places); None unless 200."""
    if r.status_code != 200:
        return None
    return tuple((h["video_id"], round(h["score"], 4)) for h in r.json()["hits"])


def _latency(xs: list[float], prefix: str) -> dict[str, Any]:
    if not xs:
        return {f"{prefix}_searches": 0}
    return {f"{prefix}_searches": len(xs), f"{prefix}_p50_ms": _pct(xs, 50), f"{prefix}_p99_ms": _pct(xs, 99)}


def measure_reindex(
    workdir: Path,
    backend: str = "faiss",
    videos: int = 4,
    seconds: int = 6,
    size: int = 64,
    searches_before: int = 200,
    checkpoints: tuple[Path, Path] | None = None,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Offline `drca reindex` OLD -> NEW, then an online reindex NEW -> OLD with searches during it, on one
    data dir of generated videos (module docstring). Errors are recorded, not raised."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from service.active import read_serving_checkpoint
    from service.http.app import create_app
    from service.reindex import reindex
    from service.settings import Settings
    from tests.service.media import distinct_videos, tiny_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    if checkpoints is None:
        old = tiny_checkpoint(workdir / "ckpt-old")
        new = tiny_checkpoint(workdir / "ckpt-new", ["alpha", "beta", "gamma", "delta", "epsilon"], seed=1)
        which = "two tiny random checkpoints (tests.service.media.tiny_checkpoint, 16-d)"
    else:
        old, new = checkpoints
        which = f"{old} and {new}"
    out: dict[str, Any] = {
        "backend": backend,
        "videos": videos,
        "seconds_per_video": seconds,
        "frame_size": size,
        "checkpoints": which,
    }
    stage = "videos"
    try:
        paths = distinct_videos(workdir / "videos", videos, seconds=seconds, size=size)
        settings = Settings(
            checkpoint=old,
            data_dir=workdir / f"data-{backend}",
            device="cpu",
            batch_size=8,
            max_wait_ms=5,
            decode_threads=1,
            torch_threads=1,
            text_search=False,
            query_views=[],
            index="milvus" if backend == "milvus-lite" else "faiss",
            allowed_hosts=["testserver"],
        )
        stage = "ingest"
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            ids = _ingest(c, paths)
        stage = "offline"
        summary = reindex(settings, read_serving_checkpoint(new, weights=True), progress=False)
        out["offline"] = {
            "videos": summary.videos,
            "embedded": summary.embedded,
            "seconds": round(summary.seconds, 3),
            "video_seconds": round(summary.video_seconds, 3),
            "video_s_per_s": round(summary.video_seconds / summary.seconds, 3),
            "searches_during": "none: the offline reindex holds the index (a server is refused)",
        }
        stage = "online"
        # the admin route needs an admin key and the checkpoint's directory allowed (docs/api.md)
        online = settings.model_copy(update={"checkpoint": new, "admin_keys": [SecretStr("bench-admin")],
                                             "admin_checkpoint_dirs": [Path(old).resolve().parent]})
        with TestClient(create_app(online), raise_server_exceptions=False) as c:
            c.headers["Authorization"] = "Bearer bench-admin"
            query = {"video_id": ids[0], "k": 10}
            before, during, errors, answers = [], [], 0, []
            for _ in range(searches_before):
                t = time.perf_counter()
                r = c.post("/v1/search", json=query)
                before.append(time.perf_counter() - t)
                errors += r.status_code != 200
            old_answer = _answer(r)
            r = c.post("/v1/admin/reindex", json={"checkpoint": str(old)})
            if r.status_code != 202:
                raise RuntimeError(f"POST /v1/admin/reindex: {r.status_code} {r.text}")
            deadline = time.monotonic() + timeout_s
            while True:
                s0 = c.get("/v1/admin/reindex").json()["state"]
                t = time.perf_counter()
                r = c.post("/v1/search", json=query)
                dt = time.perf_counter() - t
                s1 = c.get("/v1/admin/reindex").json()["state"]
                if s0 == s1 == "running":
                    during.append(dt)
                    errors += r.status_code != 200
                answers.append(_answer(r))
                if s1 in ("switched", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the online reindex did not switch within {timeout_s} s")
            status = c.get("/v1/admin/reindex").json()
            new_answer = _answer(c.post("/v1/search", json=query))
        # every answer during the reindex is the old generation's, then the new one's, never back
        kinds = ["old" if a == old_answer else "new" if a == new_answer else "other" for a in answers]
        first_new = kinds.index("new") if "new" in kinds else len(kinds)
        if status["state"] != "switched":
            raise RuntimeError(f"online reindex: {status}")
        out["online"] = {
            "videos": status["videos"],
            "embedded": status["embedded"],
            "seconds": status["seconds"],
            "video_seconds": status["video_seconds"],
            "video_s_per_s": round(status["video_seconds"] / status["seconds"], 3),
            **_latency(before, "search_before"),
            **_latency(during, "search_during"),
            "search_errors": errors,
            "answers": {k: kinds.count(k) for k in ("old", "new", "other")},
            "old_after_new": kinds[first_new:].count("old"),
            "one_generation": kinds.count("other") == 0 and "old" not in kinds[first_new:]
                              and old_answer != new_answer,
        }
    except Exception as e:
        log.exception("reindex (%s) failed in %s", backend, stage)
        out.update(error=f"{type(e).__name__}: {e}"[:2000], stage=stage)
    return out


def _backend_main(args: argparse.Namespace) -> None:
    import tempfile

    out = args.out or RESULTS / "index_backends.json"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    max_rss = int(args.max_rss_gb * 2**30) if args.max_rss_gb else 0
    if not args.max_rss_gb:  # default: leave the machine 15% of what was available at the start
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                max_rss = int(int(line.split()[1]) * 1024 * 0.85)
    results: dict[str, Any] = {}
    if backends:
        results["note"] = (
            "timings on whatever else the machine runs (see load_average_at_start); peak_rss_mib "
            "is VmHWM of the process that ran one (backend, size), reset at its start; runs stop at "
            f"{_mib(max_rss)} MiB RSS (--max-rss-gb) so that the machine keeps memory"
        )

    def save(res: dict[str, Any]) -> None:
        results["backends"] = res
        write_result("index", results, out)

    if backends:
        overrides = {b: tuple(args.faiss_set) for b in backends if b in FAISS_KINDS and args.faiss_set}
        if args.milvus_set:
            overrides["milvus-lite"] = tuple(args.milvus_set)
        budgets = {}
        if args.milvus_timeout_s or args.milvus_max_rss_gb:
            budgets["milvus-lite"] = (args.milvus_timeout_s or args.timeout_s,
                                      int(args.milvus_max_rss_gb * 2**30) if args.milvus_max_rss_gb else max_rss)
        save(
            compare_backends(
                backends,
                sizes,
                args.dim,
                args.seed,
                args.segments_per_video,
                args.queries,
                args.query_segments,
                args.query_noise,
                10,
                args.add_batch,
                args.warmup,
                args.threads,
                args.embeddings,
                True,
                args.timeout_s,
                max_rss,
                save,
                grow_scale=args.grow_scale,
                query_residual_scale=args.query_residual_scale,
                reduction=args.reduction,
                widths=tuple(w.strip() for w in args.widths.split(",") if w.strip()),
                overrides=overrides,
                budgets=budgets,
            )
        )
    if args.reindex:
        cks = None
        if args.reindex_checkpoints:
            a, b = args.reindex_checkpoints.split(",")
            cks = (Path(a), Path(b))
        results["reindex"] = {}
        for b in [x.strip() for x in args.reindex_backends.split(",") if x.strip()]:
            with tempfile.TemporaryDirectory(prefix=f"reindex-{b}-") as tmp:
                results["reindex"][b] = measure_reindex(
                    Path(tmp),
                    b,
                    args.reindex_videos,
                    args.reindex_seconds,
                    args.reindex_size,
                    searches_before=args.reindex_searches,
                    checkpoints=cks,
                )
            log.info("reindex %s: %s", b, results["reindex"][b])
            write_result("index", results, out)
    path = write_result("index", results, out)
    log.info("wrote %s", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--centres", type=int, default=2_000)
    p.add_argument(
        "--spread", type=float, default=0.6, help="per-dimension std around a unit-variance centre"
    )
    p.add_argument("--queries", type=int, default=None, help="default 1,000 (kinds), 300 (backends)")
    p.add_argument("--singles", type=int, default=300)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default="flat,ivf_flat,ivf_sq8,ivf_pq,hnsw")
    p.add_argument("--nprobe", default="8,16,32,64")
    p.add_argument("--ef-search", default="32,64,128,256")
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--train-sample", type=int, default=160_000)
    p.add_argument("--out", default=None)
    b = p.add_argument_group("backends (issue 21): with --backends or --reindex, instead of the index kinds")
    b.add_argument("--backends", default="", help=f"comma-separated, of {','.join(BACKENDS)}")
    b.add_argument("--sizes", default="10000,100000", help="segment vectors, comma-separated")
    b.add_argument(
        "--dim", dest="dim", type=int, default=None, help="(backends: default 1280, the shipped model's)"
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--segments-per-video", type=int, default=20, help="mean; uniform in [mean/2, 3*mean/2]")
    b.add_argument(
        "--embeddings", default=None, help="an .npy (N, D) of real embeddings instead of random ones"
    )
    b.add_argument(
        "--grow-scale", type=float, default=1.0,
        help="--embeddings past its rows: each grown row is a real row plus this x a near-duplicate residual draw",
    )
    b.add_argument(
        "--query-residual-scale", type=float, default=1.0,
        help="--embeddings: queries are stored runs plus this x a residual draw (instead of --query-noise)",
    )
    b.add_argument(
        "--reduction", default=None,
        help="a checkpoint with a reduction (drca train reduce): the compact width applies it to the vectors",
    )
    b.add_argument("--widths", default="full", help="full and/or compact (needs --reduction), comma-separated")
    b.add_argument("--faiss-set", action="append", default=[],
                   help="key=value of IndexConfig for every FAISS backend (repeatable), e.g. nprobe=64")
    b.add_argument("--milvus-set", action="append", default=[],
                   help="key=value of MilvusConfig (repeatable), e.g. ef_search=128")
    b.add_argument("--milvus-timeout-s", type=float, default=0, help="milvus-lite's own --timeout-s")
    b.add_argument("--milvus-max-rss-gb", type=float, default=0, help="milvus-lite's own --max-rss-gb")
    b.add_argument("--query-segments", type=int, default=8)
    b.add_argument("--query-noise", type=float, default=0.75)
    b.add_argument("--add-batch", type=int, default=1, help="videos per add call (1: the worker's add_video)")
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--timeout-s", type=float, default=0, help="per (backend, size) run; 0: none")
    b.add_argument(
        "--max-rss-gb",
        type=float,
        default=0,
        help="stop a run past this RSS (default 85%% of MemAvailable at the start)",
    )
    b.add_argument("--reindex", action="store_true", help="also measure drca reindex (offline and online)")
    b.add_argument("--reindex-backends", default="faiss,milvus-lite")
    b.add_argument("--reindex-videos", type=int, default=8)
    b.add_argument("--reindex-seconds", type=int, default=10)
    b.add_argument(
        "--reindex-size", type=int, default=64, help="frame width and height of the generated videos"
    )
    b.add_argument("--reindex-checkpoints", default=None, help="OLD,NEW instead of two tiny random ones")
    b.add_argument("--reindex-searches", type=int, default=200, help="searches timed before the online reindex")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.backends or args.reindex:
        args.queries = args.queries or 300
        args.dim = args.dim or 1280
        _backend_main(args)
        return
    args.dim = args.dim or 256
    args.queries = args.queries or 1_000
    faiss.omp_set_num_threads(args.threads)
    k = 10
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.centres, args.dim), dtype=np.float32)
    base = mixture(args.n, centres, args.spread, rng)
    queries = mixture(args.queries, centres, args.spread, rng)
    ids = np.arange(args.n, dtype=np.int64)
    cfg = IndexConfig(
        dim=args.dim,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        train_sample=args.train_sample,
        use_gpu=False,
    )
    log.info("data ready: %d x %d, %d queries", args.n, args.dim, args.queries)

    t = time.perf_counter()
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(base)
    truth = exact.search(queries, k)[1]
    del exact
    log.info("ground truth in %.1fs", time.perf_counter() - t)

    results: dict[str, Any] = {
        "n": args.n,
        "dim": args.dim,
        "centres": args.centres,
        "spread": args.spread,
        "queries": args.queries,
        "k": k,
        "faiss_version": faiss.__version__,
        "faiss_threads": args.threads,
        "note": "timings taken on a shared 2-core machine with other jobs running (under load); "
        "single queries run with 1 faiss thread, batches and builds with faiss_threads",
        "kinds": {},
    }
    out = args.out
    for kind in args.kinds.split(","):
        gc.collect()
        r0 = rss_bytes()
        t = time.perf_counter()
        index = faiss_index.build(kind, cfg, base, ids)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t
        mem = rss_bytes() - r0
        entry: dict[str, Any] = {"build_s": round(build_s, 2), "rss_delta_mib": round(mem / 2**20, 1)}
        if kind in faiss_index.IVF_KINDS:
            entry["nlist"] = faiss_index.ivf_nlist(cfg, args.n)
            sweep = []
            for nprobe in [int(x) for x in args.nprobe.split(",")]:
                faiss.extract_index_ivf(index).nprobe = nprobe
                c = dataclasses.replace(cfg, nprobe=nprobe)
                sweep.append(
                    {
                        "nprobe": nprobe,
                        **measure(
                            index, kind, c, queries, truth, k, args.singles, args.batches, 64, args.threads
                        ),
                    }
                )
            entry["sweep"] = sweep
        elif kind == "hnsw":
            entry.update(M=cfg.hnsw_m, ef_construction=cfg.ef_construction)
            sweep = []
            for ef in [int(x) for x in args.ef_search.split(",")]:
                c = dataclasses.replace(cfg, ef_search=ef)
                sweep.append(
                    {
                        "ef_search": ef,
                        **measure(
                            index, kind, c, queries, truth, k, args.singles, args.batches, 64, args.threads
                        ),
                    }
                )
            entry["sweep"] = sweep
        else:
            entry.update(
                measure(index, kind, cfg, queries, truth, k, args.singles, args.batches, 64, args.threads)
            )
        results["kinds"][kind] = entry
        log.info("%s: %s", kind, entry)
        del index
        write_result("index", results, out)
    exact_qps = results["kinds"].get("flat", {}).get("single_qps")
    if exact_qps:
        best = None
        for kind, e in results["kinds"].items():
            for row in e.get("sweep", []):
                if row["recall_at_10"] >= 0.95 and row["single_qps"] >= 10 * exact_qps:
                    cand = {"kind": kind, **row, "speedup_vs_exact": round(row["single_qps"] / exact_qps, 1)}
                    if best is None or cand["single_qps"] > best["single_qps"]:
                        best = cand
        results["target_met_by"] = best
    path = write_result("index", results, out)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
