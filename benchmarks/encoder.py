"""Encoder throughput: clips/s with and without compression (the FLOPs claim): drca-s-k4-224 against
drca-s-224, and the shipped drca-lite0-224 (K=4) against the same network with every frame kept (K=8);
and the other CPU presets. Then the serving runtime: the shipped network in torch eager and in OpenVINO.

    python -m benchmarks.encoder [--threads 2] [--seconds 20]
    python -m benchmarks.encoder --runtime-only [--threads 1] [--seconds 20]

Presets (`results.presets`, `results.summary`): eval mode, torch.inference_mode, random-initialised
weights (speed does not depend on the weights), at each preset's own input size. Each compressed network
and its uncompressed twin are timed interleaved (one forward pass of each in turn, at each batch size),
so that on a shared machine both see the same load. Each pass is timed in wall-clock time and in this
process's CPU time (`time.process_time`, all threads): on a machine shared with other jobs the wall-clock
time measures the contention as much as the model, the CPU time much less so (with one thread, none of
it is spent waiting for a descheduled sibling thread).

The serving runtime (`results.runtime`; with `--runtime-only` the only section, written to
benchmarks/results/encoder-runtime.json so that the full file keeps its presets): the shipped checkpoint
(model/checkpoints/drca-lite0, its weights through the checkpoint loader) as `K4`, and its twin that
keeps every frame (`model.presets.uncompressed`, the same weights) as `K8`, each run by the service's
own runners (`service.encoding.inference.open_runner`: `TorchRunner`, and `OpenVINORunner` compiled
into a temporary cache dir), in torch eager, OpenVINO f32 (the default CPU path) and, where the CPU
has bf16 instructions, OpenVINO bf16 (not the default: it fails the quality gate; opt-in only). At
batch 1 and at the service batch sizes (`Settings().batch_size_for` each runtime), random normalised clips, all of them
round robin (one pass of each in turn) for `--seconds` at each batch; `--threads` threads for torch and
for OpenVINO (default 1 here, whatever the presets use: then CPU time is the cost of a clip, whatever else
the machine runs).
The JSON paths (N: the batch; NET: K4 or K8; RT: torch, openvino_f32, openvino_bf16):
- `results.runtime.runs.batch_N.NET.RT`: `wall_ms_per_clip`, `cpu_ms_per_clip` (medians over the
  passes, divided by N), `clips_per_s`, `iterations`, and the achieved f32 rate: `gflops_per_core_wall`
  (2 x MACs of a clip / wall time per clip / threads) with `peak_fraction_wall`, and
  `gflops_per_cpu_second` (2 x MACs / CPU time) with `peak_fraction_cpu`;
- `results.runtime.speedup_cpu.batch_N` (and `speedup_wall`, and `speedup_cpu_bf16` where measured):
  torch's CPU ms per clip / OpenVINO f32's, for the shipped network (K4);
- `results.runtime.k4_vs_k8.RT.batch_N.cpu` and `.wall`: K8's time per clip / K4's (what the DCCM
  saves; `results.runtime.k4_vs_k8_implied_by_flops` is the FLOPs ratio);
- `results.runtime.gflops_per_clip.NET`: 2 x MACs of one clip (`model.flops.count_flops`);
- `results.runtime.peak`: this machine's f32 peak per core (from /proc/cpuinfo's flags and clock), with
  the assumption behind it.
Writes benchmarks/results/encoder.json (or `--out`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks._env import RESULTS, write_result
from model import SHIPPED_CHECKPOINT
from model.checkpoint import build_model, load_checkpoint_files, read_checkpoint
from model.config import DRCAConfig
from model.flops import count_flops
from model.presets import get_preset, uncompressed
from service.encoding.inference import open_runner, supports_bf16
from service.settings import Settings

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


# ------------------------------------------------------------------------------------- the serving runtime
BF16_NOTE = "not the default: fails the quality gate (opt-in, runtime_precision=bf16)"


@dataclass
class Network:
    """One network as the service runs it: the module (eval mode, on the CPU), its config, and the sha256
    of its checkpoint's weights file (the runtime's cache key)."""

    net: nn.Module
    cfg: DRCAConfig
    weights_sha256: str


def shipped_pair(checkpoint: Path = SHIPPED_CHECKPOINT) -> dict[str, Network]:
    """`K4`: the checkpoint's network as loaded by the service; `K8`: its twin that keeps every frame,
    with the same weights."""
    files = read_checkpoint(checkpoint)
    k4 = load_checkpoint_files(files).model.eval()
    full_cfg = uncompressed(files.config)
    k8 = build_model(full_cfg)
    k8.load_state_dict(k4.state_dict())
    return {"K4": Network(k4, files.config, files.sha256), "K8": Network(k8.eval(), full_cfg, files.sha256)}


def f32_peak(cpuinfo: str, lscpu_max_mhz: float | None = None) -> dict[str, object]:
    """One core's f32 peak (GFLOP/s) from /proc/cpuinfo's text: its vector flags give the flops per cycle,
    its `cpu MHz` (else lscpu's maximum) the clock. The FMA-unit counts are assumptions, written out."""
    first = cpuinfo.split("\n\n")[0]

    def field(name: str) -> str:
        m = re.search(rf"^{name}\s*:\s*(.*)$", first, re.MULTILINE)
        return m.group(1).strip() if m else ""

    flags, vendor, family = set(field("flags").split()), field("vendor_id"), field("cpu family")
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)]
    clock_mhz, clock_from = (statistics.mean(mhz), "/proc/cpuinfo cpu MHz") if mhz else (lscpu_max_mhz, "lscpu")
    amd_family = int(family) if vendor == "AuthenticAMD" and family.isdigit() else None
    if "avx512f" in flags and amd_family == 25:
        isa, per_cycle = "avx512f", 32
        assumption = ("AMD Zen 4 (family 25 with AVX-512): the 512-bit FMA is double-pumped on 256-bit units, "
                      "2 FMA pipes x 8 f32 lanes x 2 flops = 32 flops/cycle")
    elif "avx512f" in flags:
        isa, per_cycle = "avx512f", 64
        assumption = "AVX-512 with two 512-bit FMA units: 2 x 16 f32 lanes x 2 flops = 64 flops/cycle"
    elif {"avx2", "fma"} <= flags:
        isa, per_cycle = "avx2+fma", 32
        assumption = "AVX2 with two 256-bit FMA units: 2 x 8 f32 lanes x 2 flops = 32 flops/cycle"
    elif "avx" in flags:
        isa, per_cycle = "avx", 16
        assumption = "AVX without FMA: one 256-bit add and one 256-bit multiply per cycle = 16 flops/cycle"
    else:
        isa, per_cycle = "sse", 8
        assumption = "SSE: one 128-bit add and one 128-bit multiply per cycle = 8 flops/cycle"
    gflops = per_cycle * clock_mhz / 1e3 if clock_mhz else None
    return {"cpu_model": field("model name"), "vendor": vendor, "cpu_family": family, "isa": isa,
            "flops_per_cycle_per_core": per_cycle, "clock_mhz": clock_mhz, "clock_from": clock_from,
            "gflops_per_core": gflops,
            "assumption": assumption + f"; at the clock {clock_from} reports (turbo may run higher)"}


def this_machines_peak() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lscpu_max = None
    if "cpu MHz" not in cpuinfo:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
            m = re.search(r"CPU max MHz:\s*([\d.]+)", out)
            lscpu_max = float(m.group(1)) if m else None
        except (OSError, subprocess.SubprocessError):
            pass
    return f32_peak(cpuinfo, lscpu_max)


def round_robin(calls: dict[str, Callable[[], object]], seconds: float, min_rounds: int,
                 warmup: int) -> dict[str, tuple[list[float], list[float]]]:
    """Each call once in turn (wall and process CPU seconds of each), for `seconds` and at least
    `min_rounds` rounds, after `warmup` untimed rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in calls}
    deadline = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < deadline or rounds < min_rounds:
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            times[name][0].append(time.perf_counter() - start)
            times[name][1].append(time.process_time() - start_cpu)
        rounds += 1
    return times


def runtime_section(networks: dict[str, Network], batches: tuple[int, ...], seconds: float, threads: int,
                    min_rounds: int = 3, warmup: int = 2, bf16: bool | None = None) -> dict[str, object]:
    """The networks (`K4` and `K8`) in torch eager and OpenVINO (f32; bf16 where the CPU has it, unless
    `bf16` says otherwise) through the service's runners, round robin at each batch (the module
    docstring has the JSON layout)."""
    torch.set_num_threads(threads)
    bf16 = supports_bf16() if bf16 is None else bf16
    precisions = ("f32", "bf16") if bf16 else ("f32",)
    peak = this_machines_peak()
    flops = {name: count_flops(n.cfg).flops for name, n in networks.items()}
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="drca-openvino-") as cache:
        runners = {}
        for name, n in networks.items():
            runners[(name, "torch")] = open_runner(Settings(runtime="torch"), n.net, n.cfg, torch.device("cpu"),
                                                   n.weights_sha256)
            for precision in precisions:
                settings = Settings(runtime="openvino", runtime_precision=precision, runtime_cache_dir=Path(cache))
                runners[(name, f"openvino_{precision}")] = open_runner(settings, n.net, n.cfg, torch.device("cpu"),
                                                                       n.weights_sha256)
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            inputs = {name: torch.randn([batch, 3, n.cfg.input.num_frames] + [n.cfg.input.img_size] * 2, generator=g)
                      for name, n in networks.items()}
            calls = {f"{name}/{rt}": (lambda r=runner, x=inputs[name]: r(x)) for (name, rt), runner in runners.items()}
            timed = round_robin(calls, seconds, min_rounds, warmup)
            per_batch: dict[str, dict] = {name: {} for name in networks}
            for key, (wall, cpu) in timed.items():
                name, rt = key.split("/")
                wall_s, cpu_s = statistics.median(wall) / batch, statistics.median(cpu) / batch
                rate_wall, rate_cpu = flops[name] / wall_s / threads / 1e9, flops[name] / cpu_s / 1e9
                run = {"iterations": len(wall), "wall_ms_per_clip": wall_s * 1e3, "cpu_ms_per_clip": cpu_s * 1e3,
                       "clips_per_s": 1 / wall_s, "gflops_per_core_wall": rate_wall, "gflops_per_cpu_second": rate_cpu}
                if peak["gflops_per_core"]:
                    run["peak_fraction_wall"] = rate_wall / peak["gflops_per_core"]
                    run["peak_fraction_cpu"] = rate_cpu / peak["gflops_per_core"]
                if rt == "openvino_bf16":
                    run["note"] = BF16_NOTE
                per_batch[name][rt] = run
                log.info("%-3s %-13s batch %-3d %8.1f ms/clip  %8.1f CPU ms/clip  %6.1f GFLOP/s per core", name, rt,
                         batch, run["wall_ms_per_clip"], run["cpu_ms_per_clip"], rate_wall)
            runs[f"batch_{batch}"] = per_batch
    return {
        "network": networks["K4"].cfg.name,
        "threads": threads,
        "seconds_per_batch": seconds,
        "batches": list(batches),
        "interleaved": "every network x runtime, one forward pass each in turn, at each batch",
        "compile": "service.encoding.inference.open_runner (the service's runners), a temporary cache dir",
        "bf16": BF16_NOTE if bf16 else "not measured: this CPU has no bf16 instructions",
        "gflops_per_clip": {name: f / 1e9 for name, f in flops.items()},
        "peak": peak,
        "runs": runs,
        **runtime_summary(runs, flops),
    }


def runtime_summary(runs: dict[str, dict], flops: dict[str, int]) -> dict[str, object]:
    """The speed-ups of `runtime_section`'s runs: OpenVINO over torch for K4, and K4 over K8 per runtime."""
    def ratio(a: dict, b: dict, key: str) -> float:
        return a[key] / b[key]

    out: dict[str, dict] = {"speedup_cpu": {}, "speedup_wall": {}, "k4_vs_k8": {}}
    for batch, nets in runs.items():
        torch_k4 = nets["K4"]["torch"]
        out["speedup_cpu"][batch] = ratio(torch_k4, nets["K4"]["openvino_f32"], "cpu_ms_per_clip")
        out["speedup_wall"][batch] = ratio(torch_k4, nets["K4"]["openvino_f32"], "wall_ms_per_clip")
        if "openvino_bf16" in nets["K4"]:
            out.setdefault("speedup_cpu_bf16", {})[batch] = ratio(torch_k4, nets["K4"]["openvino_bf16"],
                                                                  "cpu_ms_per_clip")
        for rt in nets["K4"]:
            out["k4_vs_k8"].setdefault(rt, {})[batch] = {
                "cpu": ratio(nets["K8"][rt], nets["K4"][rt], "cpu_ms_per_clip"),
                "wall": ratio(nets["K8"][rt], nets["K4"][rt], "wall_ms_per_clip"),
            }
    for name, figures in out.items():
        log.info("%s: %s", name, figures)
    return {**out, "k4_vs_k8_implied_by_flops": flops["K8"] / flops["K4"]}


def service_batches() -> tuple[int, ...]:
    """Batch 1 and the service's batch sizes (`batch_size`, or each runtime's default when it is unset)."""
    s = Settings()
    return tuple(sorted({1, s.batch_size_for("openvino"), s.batch_size_for("torch")}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="Threads (default: torch's own count for the presets, 1 for the serving runtime).")
    parser.add_argument("--seconds", type=float, default=20.0, help="Timed seconds per measurement.")
    parser.add_argument("--runtime-only", action="store_true",
                        help="Only the serving-runtime section (into benchmarks/results/encoder-runtime.json).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runtime_threads = args.threads or 1
    if args.runtime_only:
        section = runtime_section(shipped_pair(), service_batches(), args.seconds, runtime_threads)
        path = write_result("encoder", {"runtime": section}, args.out or RESULTS / "encoder-runtime.json")
        log.info("wrote %s", path)
        return
    args.threads = args.threads or torch.get_num_threads()
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
    runtime = runtime_section(shipped_pair(), service_batches(), args.seconds, runtime_threads)
    path = write_result("encoder", {"presets": results, "summary": summary, "runtime": runtime}, args.out)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
