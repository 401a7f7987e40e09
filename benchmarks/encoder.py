"""Encoder throughput: clips/s of drca-s-224 vs drca-s-k4-224 (the FLOPs claim) and the CPU presets.

    python -m benchmarks.encoder [--threads 2] [--seconds 20]

Eval mode, torch.inference_mode, random-initialised weights (speed does not depend on the weights), at
each preset's own input size. Writes benchmarks/results/encoder.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from benchmarks._env import write_result
from model.drca import DRCA
from model.flops import count_flops
from model.presets import get_preset

log = logging.getLogger("benchmarks.encoder")


def measure(name: str, batch: int, seconds: float) -> dict[str, float]:
    cfg = get_preset(name)
    torch.manual_seed(0)
    model = DRCA(cfg).eval()
    x = torch.randn(batch, 3, cfg.input.num_frames, cfg.input.img_size, cfg.input.img_size)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    per_batch = statistics.median(times)
    return {
        "batch": batch,
        "iterations": len(times),
        "median_s_per_batch": per_batch,
        "clips_per_s": batch / per_batch,
        "ms_per_clip": per_batch / batch * 1e3,
    }


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
    for name, batches in (("drca-s-224", (1, 4)), ("drca-s-k4-224", (1, 4)), ("drca-cpu-112", (1, 16)),
                          ("drca-cpu", (1, 16))):
        flops = count_flops(get_preset(name))
        entry = {
            "gmacs": flops.gmacs,
            "params_m": flops.params / 1e6,
            "flops_ratio_vs_uncompressed": flops.ratio,
            "runs": [measure(name, b, args.seconds) for b in batches],
        }
        results[name] = entry
        for run in entry["runs"]:
            log.info(
                "%-14s batch %-3d %8.2f clips/s  %8.1f ms/clip",
                name,
                run["batch"],
                run["clips_per_s"],
                run["ms_per_clip"],
            )
    speedups = {}
    for i, batch in enumerate((1, 4)):
        base = results["drca-s-224"]["runs"][i]["clips_per_s"]
        k4 = results["drca-s-k4-224"]["runs"][i]["clips_per_s"]
        speedups[f"batch_{batch}"] = k4 / base
    summary = {
        "k4_measured_speedup": speedups,
        "k4_flops_ratio": results["drca-s-k4-224"]["flops_ratio_vs_uncompressed"],
        "k4_speedup_implied_by_flops": 1 / results["drca-s-k4-224"]["flops_ratio_vs_uncompressed"],
        "threads": args.threads,
    }
    log.info(
        "K4 speed-up over no compression: %s (FLOPs imply %.2fx)",
        {k: round(v, 2) for k, v in speedups.items()},
        summary["k4_speedup_implied_by_flops"],
    )
    path = write_result("encoder", {"presets": results, "summary": summary}, args.out)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
