"""Vector-index benchmark: build time, memory, latency, QPS and recall@10 for every index kind.

Data: a Gaussian mixture of `--centres` centres in 256-d (spread so that neighbours are meaningful),
L2-normalised; queries are fresh draws from the same mixture (not from the base set). Ground truth is
exact inner-product search. Each kind is built with `indexer.faiss_index.build` (the code the service
uses) and searched with `indexer.faiss_index.search`.

    python -m benchmarks.index                 # 1,000,000 vectors (heavy: ~GBs of RAM, many minutes)
    python -m benchmarks.index --n 100000      # smaller
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks._env import write_result
from indexer import faiss_index
from indexer.faiss_index import IndexConfig

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--centres", type=int, default=2_000)
    p.add_argument(
        "--spread", type=float, default=0.6, help="per-dimension std around a unit-variance centre"
    )
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--singles", type=int, default=300)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default="flat,ivf_flat,ivf_pq,hnsw")
    p.add_argument("--nprobe", default="8,16,32,64")
    p.add_argument("--ef-search", default="32,64,128,256")
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--train-sample", type=int, default=160_000)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
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
        if kind in ("ivf_flat", "ivf_pq"):
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
