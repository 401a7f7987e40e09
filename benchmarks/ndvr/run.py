"""Run the NDVR benchmark on the service's own search path, with both baselines, in one run.

    python -m benchmarks.ndvr.run --bench /work/media/ndvr --distractors /work/media/ndvr-distractors \
        --checkpoint model/checkpoints/drca-cpu [--methods drca,thumb,vpdq] [--sizes 29,300,all] \
        [--setting KEY=VALUE ...] [--out benchmarks/results/ndvr.json] [--label TEXT]
        [--aggregations max,chamfer] [--no-view-subsets]

Database: the benchmark's originals, then the distractors (``benchmarks.ndvr.distractors``) in a seeded
random order; a database of size n is the first n of that list, so every size holds all 29 originals.

* ``drca``: **the service itself**, in this process: ``service.http.app.create_app`` with the service's default
  settings (``--setting`` changes one, e.g. ``--setting aggregation=chamfer``; the JSON records them). Every
  database video is uploaded with ``POST /v1/videos`` and indexed by the embedded worker into the FAISS
  index; the ingest rate is the database's seconds of video over the wall time from the first upload to
  the last finished job. Each query is sent once through ``POST /v1/search`` (multipart file, k=10): the
  route latency, the user's end-to-end number (spooling, decoding, embedding, search). Then the same
  query goes through the calls the route makes (``SearchService.embed_video_query``, then
  ``SearchService.video_query``) to rank the whole database, once per aggregation (``max``, the service's
  default, and ``chamfer``); smaller databases exclude the other videos (``exclude_ids``, as a client can).
  The index search time at k=10 over the whole database is reported per aggregation. ``--setting
  index=milvus`` runs the same on the Milvus backend (Milvus Lite in the data dir); ``--aggregations max
  --no-view-subsets`` ranks the database once per query instead of seven times, for a slower backend.
* ``thumb``: 16 frames, 16x16 grey, mean-centred, Chamfer of cosines (``baselines.py``).
* ``vpdq``: Meta's vPDQ hashes, query match fraction (Hamming <= 31, quality >= 50).

The baselines rank every database video by brute force. Their throughput is seconds of video per second
(queries and database) over the wall time of computing their descriptors; on a shared machine the CPU
time of this process is reported too. The JSON records the machine, versions, command, settings and the
checkpoint's path and sha256. ``--random-init PRESET`` replaces ``--checkpoint`` with an untrained network
(speed only; the JSON labels it UNTRAINED). ``--stem-alone`` serves the anchor "stem alone" built from
``--checkpoint``'s pretrained stem (``benchmarks.anchors``; the JSON labels it ANCHOR).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks._env import RESULTS, write_result
from benchmarks.ndvr.baselines import Method, ThumbnailMethod, VPDQMethod
from benchmarks.ndvr.build import Benchmark, load_benchmark
from benchmarks.ndvr.distractors import Distractors, load_distractors
from benchmarks.ndvr.metrics import evaluate
from model.digest import sha256_file

log = logging.getLogger(__name__)

METHODS = ("drca", "thumb", "vpdq")


@dataclass
class ServiceRun:
    """What the service path gave: per query, the scores of every database video (per aggregation), and
    the timings."""

    scores: dict[str, np.ndarray]  # aggregation -> (Q, N) scores; -inf where a video was not returned
    view_scores: dict[str, np.ndarray]  # "original+mirrored", ...: the default aggregation over those views only
    views: dict[str, list[str | None]]  # aggregation -> the view of each query's top hit
    boxes: list[list[int] | None]  # each query's "original" view box (the active picture), None: all
    route_latency_s: list[float]  # POST /v1/search (file upload, k=10), whole route, per query
    route_cpu_s: list[float]  # CPU time of this process (all threads: gateway, worker) during that call
    embed_s: list[float]  # SearchService.embed_video_query, per query
    search_s: dict[str, list[float]]  # aggregation -> SearchService.video_query(k=10), per query
    ingest: dict[str, Any]
    settings: dict[str, Any]


class ServiceMethod:
    """The service itself, in this process: `service.http.app.create_app` with the given settings (default:
    the service's defaults), database videos uploaded through `POST /v1/videos` and indexed by the
    embedded worker (FAISS), queries through the same `SearchService` calls as `POST /v1/search`."""

    name = "drca"

    def __init__(self, checkpoint: Path, overrides: dict[str, str], torch_threads: int = 0,
                 aggregations: tuple[str, ...] = ("max", "chamfer"), view_subsets: bool = True) -> None:
        self.checkpoint = checkpoint
        self.overrides = overrides
        self.torch_threads = torch_threads
        self.aggregations = aggregations
        self.view_subsets = view_subsets

    def run(self, database: list[str], queries: list[str], paths: dict[str, Path], seconds: float) -> ServiceRun:
        from fastapi.testclient import TestClient

        from service.http.app import create_app
        from service.search import VideoQuery
        from service.settings import Settings

        with tempfile.TemporaryDirectory(prefix="drca-ndvr-") as tmp:
            settings = Settings(checkpoint=self.checkpoint, data_dir=Path(tmp), text_search=False, device="cpu",
                                torch_threads=self.torch_threads, allowed_hosts=["testserver"], **self.overrides)
            app = create_app(settings)
            with TestClient(app) as client:
                ids, ingest = _ingest(client, database, paths, seconds)
                svc = app.state.service.search
                col = {vid: j for j, vid in enumerate(database)}
                aggs = self.aggregations
                scores = {a: np.full((len(queries), len(database)), -np.inf) for a in aggs}
                views: dict[str, list[str | None]] = {a: [] for a in aggs}
                boxes, route_s, route_cpu_s, embed_s = [], [], [], []
                search_s: dict[str, list[float]] = {a: [] for a in aggs}
                subsets = ([("original", *extra) for extra in _subsets(settings.query_views)]
                           if self.view_subsets else [])
                view_scores = {"+".join(v): np.full((len(queries), len(database)), -np.inf) for v in subsets}
                for qi, q in enumerate(tqdm(queries, desc="drca queries", unit="query")):
                    t0, c0 = time.perf_counter(), time.process_time()
                    with paths[q].open("rb") as f:
                        r = client.post("/v1/search", files={"file": (paths[q].name, f)}, data={"k": "10"})
                    route_s.append(time.perf_counter() - t0)
                    route_cpu_s.append(time.process_time() - c0)
                    if r.status_code != 200:
                        raise RuntimeError(f"{q}: POST /v1/search -> {r.status_code} {r.text[:300]}")
                    t0 = time.perf_counter()
                    query = svc.embed_video_query(str(paths[q]))
                    embed_s.append(time.perf_counter() - t0)
                    original = next((v for v in query.views if v.name == "original"), None)
                    boxes.append(original.box if original is not None else None)
                    for agg in aggs:
                        t0 = time.perf_counter()
                        svc.video_query(query, 10, None, set(), aggregation=agg)
                        search_s[agg].append(time.perf_counter() - t0)
                        ranked = svc.video_query(query, len(ids), None, set(), aggregation=agg)
                        for m in ranked:
                            scores[agg][qi, col[ids[m.hit.video_id]]] = m.hit.score
                        views[agg].append(ranked[0].view if ranked else None)
                    for subset in subsets:  # what each view adds: the same embeddings, fewer views searched
                        part = VideoQuery([v for v in query.views if v.name in subset])
                        for m in svc.video_query(part, len(ids), None, set()):
                            view_scores["+".join(subset)][qi, col[ids[m.hit.video_id]]] = m.hit.score
        return ServiceRun(scores, view_scores, views, boxes, route_s, route_cpu_s, embed_s, search_s, ingest,
                          json.loads(settings.model_dump_json(include=SETTINGS_RECORDED)))


def _subsets(names: list[str]) -> list[tuple[str, ...]]:
    """Every proper subset of the extra query views (the full set is the main result)."""
    out: list[tuple[str, ...]] = [()]
    for n in names:
        out += [(*o, n) for o in out]
    return [o for o in out if len(o) < len(names)]


#: the settings that decide what the benchmark measures, recorded in the JSON
SETTINGS_RECORDED = {"checkpoint", "index", "aggregation", "segment_fps", "batch_size", "decode_threads", "torch_threads",
                     "query_views", "remove_borders", "picture"}


def _ingest(client, database: list[str], paths: dict[str, Path], seconds: float,
            timeout_s: float = 7200.0) -> tuple[dict[int, str], dict[str, Any]]:
    """Upload every database video (`POST /v1/videos`), wait for every job; {video_id: id} and the rates."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    jobs: dict[int, str] = {}
    ids: dict[int, str] = {}
    for vid in tqdm(database, desc="upload", unit="video"):
        with paths[vid].open("rb") as f:
            r = client.post("/v1/videos", files={"file": (paths[vid].name, f)}, data={"external_id": vid})
        if r.status_code not in (200, 202):
            raise RuntimeError(f"{vid}: POST /v1/videos -> {r.status_code} {r.text[:300]}")
        body = r.json()
        if body["video_id"] in ids:  # the service keeps one video per content
            raise RuntimeError(f"{vid} has the same content as {ids[body['video_id']]}: the database would "
                               "hold one video fewer; rebuild the distractors (they drop identical files)")
        jobs[body["job_id"]] = vid
        ids[body["video_id"]] = vid
    failed: dict[str, str] = {}
    deadline = time.perf_counter() + timeout_s
    for job_id in tqdm(sorted(jobs), desc="index", unit="video"):  # the worker takes them in this order
        while (j := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"ingest job {job_id} not finished after {timeout_s:g} s")
            time.sleep(0.05)
        if j["status"] == "failed":
            failed[jobs[job_id]] = j.get("error") or "failed"
    if failed:
        raise RuntimeError(f"ingest failed for {len(failed)} videos: {dict(list(failed.items())[:5])}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return ids, {"videos": len(database), "video_seconds": round(seconds, 3), "wall_s": round(wall, 3),
                 "cpu_s": round(cpu, 3), "video_s_per_s": seconds / wall, "video_s_per_cpu_s": seconds / cpu}


def checkpoint_files_sha256(path: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint directory (or of the file itself)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = {}
    for f in files:
        out[f.relative_to(path).as_posix() if path.is_dir() else f.name] = sha256_file(f)
    return out


def random_checkpoint(path: Path, preset: str) -> Path:
    """An untrained checkpoint of ``preset`` (seed 0), for speed measurements only."""
    import torch

    from model.checkpoint import ModelCard, build_model, save_checkpoint
    from model.presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset(preset)
    names = [f"class_{i}" for i in range(cfg.head.num_classes)]
    card = ModelCard(preset=preset, class_names=names, training_data="none: random init, speed reference only")
    return save_checkpoint(path, build_model(cfg).eval(), card)


def make_baseline(name: str) -> Method:
    if name == "thumb":
        return ThumbnailMethod()
    if name == "vpdq":
        return VPDQMethod()
    raise SystemExit(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def describe_all(method: Method, videos: list[str], paths: dict[str, Path], seconds: float
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    desc: dict[str, np.ndarray] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    for vid in tqdm(videos, desc=method.name, unit="video"):
        desc[vid] = method.describe(paths[vid])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return desc, {"describe_wall_s": round(wall, 3), "describe_cpu_s": round(cpu, 3),
                  "throughput_video_s_per_s": seconds / wall, "video_s_per_cpu_s": seconds / cpu}


def database_order(bench: Benchmark, distractors: Distractors | None, seed: int) -> list[str]:
    """The originals, then the distractors in a seeded random order: a database of size n is the first n."""
    out = list(bench.set.database)
    if distractors is not None:
        extra = sorted(distractors.paths)
        out += [extra[i] for i in np.random.default_rng(seed).permutation(len(extra))]
    return out


def by_size(scores: np.ndarray, db: list[str], sizes: list[int], bench: Benchmark,
            keep_per_query: bool = True) -> dict[str, Any]:
    """mAP, R@1 and per-transform figures of the (Q, N) scores for each database size (the first n columns)."""
    nd = bench.set
    out = {}
    for n in sizes:
        res = asdict(evaluate(scores[:, :n], nd.queries, db[:n], nd.relevant, bench.transform))
        if not (keep_per_query and n == sizes[-1]):
            res.pop("per_query_ap")
        out[str(n)] = res
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2), "n": len(a)}


def view_counts(views: list[str | None], queries: list[str], transform: dict[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for q, v in zip(queries, views, strict=True):
        t = out.setdefault(transform[q], {})
        t[str(v)] = t.get(str(v), 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, type=Path, help="directory written by benchmarks.ndvr.build")
    parser.add_argument("--distractors", type=Path, default=None,
                        help="directory written by benchmarks.ndvr.distractors (added to the database)")
    parser.add_argument("--sizes", default="29,300,all",
                        help="database sizes to report (originals first, then distractors); 'all': everything")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--random-init", metavar="PRESET", default=None,
                        help="use an untrained network of this preset instead of --checkpoint (speed reference)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a service setting for the drca method (default: the service's defaults)")
    parser.add_argument("--seed", type=int, default=0, help="order of the distractors")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/ndvr.json")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--label", default="", help="what the checkpoint is, recorded in the JSON")
    parser.add_argument("--aggregations", default="max,chamfer",
                        help="the aggregations each query ranks the whole database with (default: both)")
    parser.add_argument("--no-view-subsets", action="store_true",
                        help="skip ranking with each subset of the query views (views_searched): a slower "
                             "backend (--setting index=milvus) then ranks the database once per aggregation")
    parser.add_argument("--stem-alone", action="store_true",
                        help="serve the anchor 'stem alone' built from --checkpoint's pretrained stem "
                             "(benchmarks.anchors) instead of the checkpoint itself")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("media.video", "httpx", "httpx2", "service", "indexer", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("media.video").setLevel(logging.ERROR)  # per-file timestamp warnings

    import torch

    load_at_start = os.getloadavg()
    bench = load_benchmark(args.bench)
    distractors = load_distractors(args.distractors) if args.distractors else None
    paths = {**bench.paths, **(distractors.paths if distractors else {})}
    durations = {**bench.durations, **(distractors.durations if distractors else {})}
    db = database_order(bench, distractors, args.seed)
    sizes = sorted({len(db) if s == "all" else min(int(s), len(db)) for s in args.sizes.split(",") if s})
    queries = list(bench.set.queries)
    overrides = {k: _setting_value(v) for k, v in (kv.split("=", 1) for kv in args.setting)}
    tmp = None
    if args.random_init:
        if args.checkpoint is not None:
            raise SystemExit("--checkpoint and --random-init exclude each other")
        tmp = tempfile.TemporaryDirectory(prefix="drca-random-")
        args.checkpoint = random_checkpoint(Path(tmp.name) / "ckpt", args.random_init)
        args.label = f"UNTRAINED: random init of {args.random_init} (seed 0); speed reference only"
    if args.stem_alone:
        from benchmarks.anchors import STEM_ALONE, stem_alone_checkpoint

        if args.checkpoint is None:
            raise SystemExit("--stem-alone needs --checkpoint (the network whose stem is served alone)")
        tmp = tempfile.TemporaryDirectory(prefix="drca-stem-")
        args.checkpoint = stem_alone_checkpoint(args.checkpoint, Path(tmp.name) / "ckpt")
        args.label = f"ANCHOR: {STEM_ALONE}" + (f" ({args.label})" if args.label else "")
    names = [m for m in args.methods.split(",") if m]
    db_seconds = sum(durations[v] for v in db)
    q_seconds = sum(durations[q] for q in queries)
    results: dict[str, Any] = {
        "bench": str(args.bench.resolve()),
        "distractors": str(args.distractors.resolve()) if args.distractors else None,
        "distractor_kinds": ({k: sum(1 for v in distractors.kind.values() if v == k)
                              for k in sorted(set(distractors.kind.values()))} if distractors else {}),
        "num_database": len(db), "sizes": sizes, "num_queries": len(queries),
        "database_video_seconds": round(db_seconds, 3), "query_video_seconds": round(q_seconds, 3),
        "transforms": sorted(set(bench.transform.values())),
        "load_average_at_start": load_at_start,  # (the environment's is taken when the JSON is written)
        "torch_threads": torch.get_num_threads() if not args.torch_threads else args.torch_threads,
        "extra_versions": {p: _version(p) for p in ("vpdq", "imageio-ffmpeg", "decord", "faiss-cpu")},
        "methods": {},
    }
    if args.checkpoint is not None:
        results["checkpoint"] = {"path": str(args.checkpoint.resolve()), "label": args.label,
                                 "sha256": checkpoint_files_sha256(args.checkpoint)}
    for name in names:
        if name == "drca":
            if args.checkpoint is None:
                raise SystemExit("--checkpoint is required for the drca method")
            aggregations = tuple(a for a in args.aggregations.split(",") if a)
            run = ServiceMethod(args.checkpoint, overrides, args.torch_threads, aggregations,
                                not args.no_view_subsets).run(db, queries, paths, db_seconds)
            for agg, scores in run.scores.items():
                results["methods"][f"drca_{agg}"] = {
                    "aggregation": agg, "default": agg == run.settings.get("aggregation"),
                    "by_size": by_size(scores, db, sizes, bench),
                    "search_latency": percentiles(run.search_s[agg]),
                    "top_hit_view": view_counts(run.views[agg], queries, bench.transform),
                }
            if run.view_scores:
                results["methods"][f"drca_{run.settings['aggregation']}"]["views_searched"] = {
                    name: by_size(sc, db, sizes, bench, keep_per_query=False) for name, sc in run.view_scores.items()}
            results["service"] = {
                "settings": run.settings, "ingest": run.ingest,
                "route_latency": percentiles(run.route_latency_s), "route_cpu": percentiles(run.route_cpu_s),
                "embed_latency": percentiles(run.embed_s),
                # where the tail comes from: the slowest queries' route time against their length
                "slowest_queries": [
                    {"query": q, "seconds": round(durations[q], 2), "route_ms": round(1000 * t, 1)}
                    for t, q in sorted(zip(run.route_latency_s, queries, strict=True), reverse=True)[:10]],
                "query_boxes": {q: b for q, b in zip(queries, run.boxes, strict=True) if b is not None},
            }
            continue
        method = make_baseline(name)
        desc, timing = describe_all(method, db + queries, paths, db_seconds + q_seconds)
        start = time.perf_counter()
        sim = method.similarity([desc[q] for q in queries], [desc[d] for d in db])
        results["methods"][name] = {"by_size": by_size(sim, db, sizes, bench),
                                    "match_wall_s": round(time.perf_counter() - start, 3), **timing}
    for name, r in results["methods"].items():
        top = r["by_size"][str(sizes[-1])]
        log.info("%s: mAP %.4f R@1 %.4f at %d videos", name, top["map"], top["recall_at_1"], sizes[-1])
    results["load_average_at_end"] = os.getloadavg()
    if tmp is not None:
        results["checkpoint"]["path"] = f"(temporary) random init of {args.random_init}"
        tmp.cleanup()
    path = write_result("ndvr.run", results, args.out or RESULTS / "ndvr.json")
    print_table(results)
    print(f"wrote {path}")
    return 0


def _setting_value(raw: str) -> Any:
    """JSON when it parses (`[]`, `false`, `["mirrored"]`), else the string (`chamfer`)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def print_table(results: dict[str, Any]) -> None:
    transforms = results["transforms"]
    for n in results["sizes"]:
        print(f"\n{n} database videos")
        print("| method | mAP | R@1 | " + " | ".join(transforms) + " |")
        print("|---" * (3 + len(transforms)) + "|")
        for name, r in results["methods"].items():
            x = r["by_size"][str(n)]
            cells = [f"{x['per_transform_map'].get(t, float('nan')):.3f}" for t in transforms]
            print(f"| {name} | {x['map']:.3f} | {x['recall_at_1']:.3f} | " + " | ".join(cells) + " |")
    if "service" in results:
        s = results["service"]
        print(f"route latency p50 {s['route_latency']['p50_ms']} ms p99 {s['route_latency']['p99_ms']} ms; "
              f"ingest {s['ingest']['video_s_per_s']:.1f} video-s/s")


if __name__ == "__main__":
    sys.exit(main())
