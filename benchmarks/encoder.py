"""Encoder throughput: clips/s with and without compression (the FLOPs claim): drca-s-k4-224 against
drca-s-224, and the shipped drca-lite0-224 (K=4) against the same network with every frame kept (K=8);
and the other CPU presets.

    python -m benchmarks.encoder [--threads 2] [--seconds 20]

Eval mode, torch.inference_mode, random-initialised weights (speed does not depend on the weights), at
each preset's own input size. Each compressed network and its uncompressed twin are timed interleaved
(one forward pass of each in turn, at each batch size), so that on a shared machine both see the same load. Each pass is
timed in wall-clock time and in this process's CPU time (`time.process_time`, all threads): on a
machine shared with other jobs the wall-clock time measures the contention as much as the model, the CPU
time much less so (with one thread, none of it is spent waiting for a descheduled sibling thread).
Writes benchmarks/results/encoder.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch

from benchmarks._env import write_result
from model.checkpoint import build_model
from model.config import DRCAConfig
from model.flops import count_flops
from model.presets import get_preset, uncompressed

UNCOMPRESSED_LITE0 = "drca-lite0-224 (K=8)"


def _config(name: str) -> DRCAConfig:
    return uncompressed(get_preset("drca-lite0-224")) if name == UNCOMPRESSED_LITE0 else get_preset(name)

log = logging.getLogger("benchmarks.encoder")


def measure(names: tuple[str, ...], batch: int, seconds: float) -> dict[str, dict[str, float]]:
    """Time the presets' forward passes in turn (round robin) for `seconds`; one result per preset."""
    models, inputs = {}, {}
    for name in names:
        cfg = _config(name)
        torch.manual_seed(0)
        models[name] = build_model(cfg).eval()
        inputs[name] = torch.randn(batch, 3, cfg.input.num_frames, cfg.input.img_size, cfg.input.img_size)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            for _ in range(2):
                models[name](inputs[name])
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or min(map(len, times.values())) < 3:
            for name in names:
                start, start_cpu = time.perf_counter(), time.process_time()
                models[name](inputs[name])
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    out = {}
    for name in names:
        per_batch = statistics.median(times[name])
        out[name] = {
            "batch": batch,
            "iterations": len(times[name]),
            "median_s_per_batch": per_batch,
            "clips_per_s": batch / per_batch,
            "ms_per_clip": per_batch / batch * 1e3,
            "cpu_ms_per_clip": statistics.median(cpu[name]) / batch * 1e3,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=20.0, help="Timed seconds per measurement.")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    results: dict[str, dict] = {}
    pairs = {"drca-s": ("drca-s-224", "drca-s-k4-224"), "drca-lite0": (UNCOMPRESSED_LITE0, "drca-lite0-224")}
    groups = (*((pair, (1, 4)) for pair in pairs.values()), (("drca-cpu-112",), (1, 16)), (("drca-cpu",), (1, 16)))
    for names, batches in groups:
        runs = [measure(names, b, args.seconds) for b in batches]
        for name in names:
            flops = count_flops(_config(name))
            results[name] = {
                "gmacs": flops.gmacs,
                "params_m": flops.params / 1e6,
                "flops_ratio_vs_uncompressed": flops.ratio,
                "runs": [r[name] for r in runs],
            }
            for run in results[name]["runs"]:
                log.info("%-14s batch %-3d %8.2f clips/s  %8.1f ms/clip  %8.1f CPU ms/clip", name, run["batch"],
                         run["clips_per_s"], run["ms_per_clip"], run["cpu_ms_per_clip"])
    summary: dict[str, object] = {
        "threads": args.threads,
        "interleaved": "each compressed network and its uncompressed twin, one forward pass each in turn",
        "load_average_at_end": list(os.getloadavg()),
    }
    for family, (base_name, k4_name) in pairs.items():
        speedups, cpu_speedups = {}, {}
        for i, batch in enumerate((1, 4)):
            base, k4 = results[base_name]["runs"][i], results[k4_name]["runs"][i]
            speedups[f"batch_{batch}"] = k4["clips_per_s"] / base["clips_per_s"]
            cpu_speedups[f"batch_{batch}"] = base["cpu_ms_per_clip"] / k4["cpu_ms_per_clip"]
        ratio = results[k4_name]["flops_ratio_vs_uncompressed"]
        summary[family] = {"k4_measured_speedup": speedups, "k4_measured_speedup_cpu_time": cpu_speedups,
                           "k4_flops_ratio": ratio, "k4_speedup_implied_by_flops": 1 / ratio}
        log.info("%s K4 speed-up over no compression: wall %s, CPU time %s (FLOPs imply %.2fx)", family,
                 {k: round(v, 2) for k, v in speedups.items()}, {k: round(v, 2) for k, v in cpu_speedups.items()},
                 1 / ratio)
    path = write_result("encoder", {"presets": results, "summary": summary}, args.out)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
