"""Run the NDVR benchmark: mAP, R@1, per-transform mAP and throughput for each method, in one run.

    python -m benchmarks.ndvr.run --bench /work/media/ndvr --checkpoint PATH \\
        [--methods drca,thumb,vpdq] [--out benchmarks/results/ndvr.json] [--label TEXT]

``--random-init PRESET`` instead of ``--checkpoint`` runs the drca method on an untrained network of that
preset (seed 0): its speed is the real network's, its retrieval numbers mean nothing, and the JSON says so.

Methods (``baselines.py`` describes the two baselines exactly):

* ``drca``: the checkpoint through ``service.encoder.VideoEncoder``, i.e. exactly what the service does:
  the retrieval segment protocol (``segment_fps`` frames per second, clips of the model's frame count,
  one L2-normalised embedding per segment); video similarity is Chamfer (mean over the query's segments of
  the best cosine against the database video's segments).
* ``thumb``: 16 frames, 16x16 grey, mean-centred, Chamfer of cosines.
* ``vpdq``: Meta's vPDQ hashes, query match fraction (Hamming <= 31, quality >= 50).

Throughput is seconds of video per second: the total duration of all videos (queries and database)
divided by the wall time of computing their descriptors (decoding included, matching not). On a shared
machine the wall time depends on the other jobs, so the CPU time of this process over the same work (all
its threads: decoder, torch, vpdq's pool) is reported too, as video seconds per CPU second. The matching
time is reported separately. Every method runs in this one process, one after the other, on the same
machine. The JSON records the machine, versions, the command and the checkpoint's path and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks._env import RESULTS, write_result
from benchmarks.ndvr.baselines import Method, ThumbnailMethod, VPDQMethod, chamfer_matrix
from benchmarks.ndvr.build import Benchmark, load_benchmark
from benchmarks.ndvr.metrics import evaluate

log = logging.getLogger(__name__)

METHODS = ("drca", "thumb", "vpdq")


class DRCAMethod:
    """The service's encoder: ``decode`` -> segment clips -> ``forward`` -> (S, E) embeddings."""

    name = "drca"

    def __init__(self, checkpoint: Path, torch_threads: int = 0) -> None:
        from service.encoder import VideoEncoder
        from service.settings import Settings

        self.settings = Settings(checkpoint=checkpoint, text_search=False, device="cpu",
                                 torch_threads=torch_threads)
        self.encoder = VideoEncoder(self.settings)

        self.decode_s = 0.0  # wall time split of describe(): decoding + preprocessing, and the network
        self.forward_s = 0.0

    def describe(self, path: Path) -> np.ndarray:
        start = time.perf_counter()
        clips = self.encoder.decode(path).clips  # (S, C, T, H, W)
        mid = time.perf_counter()
        step = self.settings.batch_size
        parts = [self.encoder.forward(clips[i : i + step])[0] for i in range(0, len(clips), step)]
        self.decode_s += mid - start
        self.forward_s += time.perf_counter() - mid
        return np.concatenate(parts).astype(np.float32)  # (S, E), L2-normalised

    def timings(self) -> dict[str, float]:
        return {"decode_wall_s": round(self.decode_s, 3), "forward_wall_s": round(self.forward_s, 3)}

    def similarity(self, queries: list[np.ndarray], database: list[np.ndarray]) -> np.ndarray:
        return chamfer_matrix(queries, database)


def checkpoint_files_sha256(path: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint directory (or of the file itself)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = {}
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[f.relative_to(path).as_posix() if path.is_dir() else f.name] = h.hexdigest()
    return out


def random_checkpoint(path: Path, preset: str) -> Path:
    """An untrained checkpoint of ``preset`` (seed 0), for speed measurements only."""
    import torch

    from model.checkpoint import ModelCard, save_checkpoint
    from model.drca import DRCA
    from model.presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset(preset)
    names = [f"class_{i}" for i in range(cfg.head.num_classes)]
    card = ModelCard(preset=preset, class_names=names, training_data="none: random init, speed reference only")
    return save_checkpoint(path, DRCA(cfg).eval(), card)


def make_method(name: str, checkpoint: Path | None, torch_threads: int) -> Method:
    if name == "drca":
        if checkpoint is None:
            raise SystemExit("--checkpoint is required for the drca method")
        return DRCAMethod(checkpoint, torch_threads)
    if name == "thumb":
        return ThumbnailMethod()
    if name == "vpdq":
        return VPDQMethod()
    raise SystemExit(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def run_method(method: Method, bench: Benchmark) -> dict[str, Any]:
    nd = bench.set
    videos = list(nd.database) + list(nd.queries)
    desc: dict[str, np.ndarray] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    for vid in tqdm(videos, desc=method.name, unit="video"):
        desc[vid] = method.describe(bench.paths[vid])
    describe_s = time.perf_counter() - start
    describe_cpu_s = time.process_time() - cpu_start
    start = time.perf_counter()
    sim = method.similarity([desc[q] for q in nd.queries], [desc[d] for d in nd.database])
    match_s = time.perf_counter() - start
    res = evaluate(sim, nd.queries, nd.database, nd.relevant, bench.transform)
    seconds = sum(bench.durations[v] for v in videos)
    out = asdict(res)
    out.update({
        "describe_wall_s": round(describe_s, 3),
        "match_wall_s": round(match_s, 3),
        "video_seconds": round(seconds, 3),
        "throughput_video_s_per_s": seconds / describe_s,
        "describe_cpu_s": round(describe_cpu_s, 3),
        "video_s_per_cpu_s": seconds / describe_cpu_s,
        "descriptor_rows_mean": float(np.mean([len(d) for d in desc.values()])),
        "load_average_after": os.getloadavg(),
    })
    if hasattr(method, "timings"):
        out.update(method.timings())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, type=Path, help="directory written by benchmarks.ndvr.build")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--random-init", metavar="PRESET", default=None,
                        help="use an untrained network of this preset instead of --checkpoint (speed reference)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/ndvr.json")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--label", default="", help="what the checkpoint is, recorded in the JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("media.video").setLevel(logging.ERROR)  # per-file timestamp warnings

    import torch

    load_at_start = os.getloadavg()
    bench = load_benchmark(args.bench)
    tmp = None
    if args.random_init:
        if args.checkpoint is not None:
            raise SystemExit("--checkpoint and --random-init exclude each other")
        tmp = tempfile.TemporaryDirectory(prefix="drca-random-")
        args.checkpoint = random_checkpoint(Path(tmp.name) / "ckpt", args.random_init)
        args.label = f"UNTRAINED: random init of {args.random_init} (seed 0); speed reference only"
    names = [m for m in args.methods.split(",") if m]
    results: dict[str, Any] = {
        "bench": str(args.bench.resolve()),
        "num_database": len(bench.set.database),
        "num_queries": len(bench.set.queries),
        "transforms": sorted(set(bench.transform.values())),
        "load_average_at_start": load_at_start,  # (the environment's is taken when the JSON is written)
        "torch_threads": torch.get_num_threads() if not args.torch_threads else args.torch_threads,
        "extra_versions": {p: _version(p) for p in ("vpdq", "imageio-ffmpeg", "decord")},
        "methods": {},
    }
    if args.checkpoint is not None:
        results["checkpoint"] = {"path": str(args.checkpoint.resolve()), "label": args.label,
                                 "sha256": checkpoint_files_sha256(args.checkpoint)}
    for name in names:
        method = make_method(name, args.checkpoint, args.torch_threads)
        log.info("%s: describing %d videos", name, len(bench.set.database) + len(bench.set.queries))
        results["methods"][name] = run_method(method, bench)
        r = results["methods"][name]
        log.info("%s: mAP %.4f R@1 %.4f, %.1f video-s/s, %.1f video-s/CPU-s", name, r["map"], r["recall_at_1"],
                 r["throughput_video_s_per_s"], r["video_s_per_cpu_s"])
    results["load_average_at_end"] = os.getloadavg()
    if tmp is not None:
        results["checkpoint"]["path"] = f"(temporary) random init of {args.random_init}"
        tmp.cleanup()
    path = write_result("ndvr.run", results, args.out or RESULTS / "ndvr.json")
    print_table(results)
    print(f"wrote {path}")
    return 0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def print_table(results: dict[str, Any]) -> None:
    methods = results["methods"]
    transforms = results["transforms"]
    print("| method | mAP | R@1 | video-s/s | " + " | ".join(transforms) + " |")
    print("|---" * (4 + len(transforms)) + "|")
    for name, r in methods.items():
        cells = [f"{r['per_transform_map'].get(t, float('nan')):.3f}" for t in transforms]
        print(f"| {name} | {r['map']:.3f} | {r['recall_at_1']:.3f} | {r['throughput_video_s_per_s']:.1f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
