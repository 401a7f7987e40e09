"""The in-memory side of a text query at scale: the concept and metadata terms over every indexed video.

    python -m benchmarks.text_search [--videos 1000,10000,100000] [--classes 1000] [--repeats 30]

For each size: a `service.catalog.TextTable` of that many videos, each with `stored_labels` (64) class
probabilities and a 384-d metadata embedding, and a `service.concepts.ConceptBank` of `--classes` concepts
with two phrases each (name and description, as the ImageNet checkpoint's bank); then the time of
`service.search.side_scores` (the query's concept weights, the table's concept and metadata terms) plus
the top-`text_candidates` selection that `SearchService.text_query` makes, per query (median and p90 of
`--repeats`), and the table's memory. Random vectors: the work does not depend on their values. Not
included: the query's MiniLM embedding and the head term's index search (both independent of this
table; `benchmarks/service.py` measures a whole text query). Writes benchmarks/results/text_search.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks._env import write_result
from model.text import MINILM_DIM
from service.backends.store import Label, VideoRecord
from service.catalog import TextTable
from service.concepts import ConceptBank
from service.search import side_scores
from service.settings import Settings


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, MINILM_DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(n_videos: int, n_classes: int, repeats: int, settings: Settings, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    names = [f"class {i}" for i in range(n_classes)]
    bank = ConceptBank.build(names, lambda texts: unit(rng, len(texts)), [f"description {i}" for i in range(n_classes)])
    table = TextTable()
    k = min(settings.stored_labels, n_classes)
    meta = unit(rng, n_videos)
    for v in range(n_videos):
        idx = rng.choice(n_classes, k, replace=False)
        p = rng.dirichlet(np.ones(k))
        table.put(VideoRecord(video_id=v + 1, content_hash=str(v), labels=[Label(names[i], float(x)) for i, x in zip(idx, p, strict=True)],
                              extra={"text_embedding": meta[v].tolist()}))
    queries = unit(rng, repeats + 1)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        ids, total = side_scores(table, bank, q, settings)
        n_cand = settings.text_candidates
        top = np.argpartition(-total, n_cand - 1)[:n_cand] if len(ids) > n_cand else np.arange(len(ids))
        ids[top].tolist()
        times.append(time.perf_counter() - t0)
    times = times[1:]  # the first query maps the table's vocabulary onto the bank once
    nbytes = sum(a.nbytes for a in (table.video_ids, table.label_ids, table.label_probs, table.meta, table.has_meta))
    return {"videos": n_videos, "classes": n_classes, "stored_labels": k,
            "p50_ms": round(1000 * statistics.median(times), 3),
            "p90_ms": round(1000 * float(np.percentile(times, 90)), 3),
            "table_mb": round(nbytes / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", default="1000,10000,100000")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    settings = Settings()
    rows = [measure(int(n), args.classes, args.repeats, settings) for n in args.videos.split(",")]
    for r in rows:
        print(f"{r['videos']:>8} videos: p50 {r['p50_ms']:8.3f} ms  p90 {r['p90_ms']:8.3f} ms  table {r['table_mb']} MB")
    path = write_result("text_search", {"sizes": rows, "settings": {
        k: getattr(settings, k) for k in ("stored_labels", "text_candidates", "text_concept_temperature")}}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
