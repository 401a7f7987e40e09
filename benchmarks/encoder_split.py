"""Where the stem is split, and what the DCCM then saves: the shipped network (`drca-lite0-224`, K=4)
against its twin that keeps every frame (K=8, `model.presets.uncompressed`), at several `stem_split`
values (the MBConv blocks that run on every frame at full size before the DCCM; the shipped one is 5).

    python -m benchmarks.encoder_split [--splits 5,3,1] [--seconds 15]

For each split: the MACs of K4 and K8 (`model.flops.count_flops`) and their ratio, and the CPU time per
clip of each in OpenVINO f32 on one thread (the service's own compile, `compile_openvino`, into a
temporary cache), batch 1, the two networks interleaved (`benchmarks.encoder.round_robin`: one pass of
each in turn) for `--seconds`.
Weights are random (speed does not depend on them; the shipped weights exist only for split 5), so this
says what moving the split would buy before retraining at it (`drca train shipped`), not what the
retrained network would score.

JSON (`benchmarks/results/encoder_split.json`): `results.splits.S` for each split S: `gmacs.K4`,
`gmacs.K8`, `flops_ratio` (K8 / K4), `cpu_ms_per_clip.K4`, `.K8` (medians), `measured_ratio`
(K8 / K4 in CPU time) and `passes`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks._env import write_result
from benchmarks.encoder import round_robin
from model.config import DRCAConfig

log = logging.getLogger(__name__)
SHIPPED = Path(__file__).resolve().parents[1] / "model" / "checkpoints" / "drca-lite0"


def measure_split(shipped: DRCAConfig, split: int, seconds: float, cache: Path) -> dict:
    from model.checkpoint import build_model
    from model.flops import count_flops
    from model.presets import uncompressed
    from service.encoding.inference import OpenVINORunner, compile_openvino

    cfg = replace(shipped, backbone=replace(shipped.backbone, stem_split=split))
    runners, gmacs = {}, {}
    for name, c in (("K4", cfg), ("K8", uncompressed(cfg))):
        torch.manual_seed(0)
        net = build_model(c).eval()
        gmacs[name] = count_flops(c).gmacs
        key = f"random-split{split}-{name}".ljust(16, "0")  # the cache key of a random network
        runners[name] = OpenVINORunner(compile_openvino(net, c, key, cache / f"{split}-{name}", "f32", 1))
    clip = torch.randn(1, 3, cfg.input.num_frames, cfg.input.img_size, cfg.input.img_size)
    timed = round_robin({name: functools.partial(run, clip) for name, run in runners.items()}, seconds,
                        min_rounds=3, warmup=1)
    cpu = {name: t[1] for name, t in timed.items()}
    ms = {name: 1000 * float(np.median(v)) for name, v in cpu.items()}
    return {"gmacs": gmacs, "flops_ratio": gmacs["K8"] / gmacs["K4"], "cpu_ms_per_clip": ms,
            "measured_ratio": ms["K8"] / ms["K4"], "passes": len(cpu["K4"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", default="5,3,1", help="stem_split values (MBConv blocks before the DCCM)")
    parser.add_argument("--seconds", type=float, default=15.0, help="interleaved timing per split")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/encoder_split.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from model.checkpoint import read_config_and_card

    torch.set_num_threads(1)
    shipped, _ = read_config_and_card(SHIPPED)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="drca-split-") as tmp:
        for split in (int(s) for s in args.splits.split(",") if s):
            results[str(split)] = r = measure_split(shipped, split, args.seconds, Path(tmp))
            log.info("stem_split %d: K4 %.1f ms, K8 %.1f ms a clip: %.2fx (FLOPs %.2fx)", split,
                     r["cpu_ms_per_clip"]["K4"], r["cpu_ms_per_clip"]["K8"], r["measured_ratio"], r["flops_ratio"])
    path = write_result("encoder_split", {"shipped_split": shipped.backbone.stem_split, "threads": 1, "runtime": "openvino f32",
                                          "splits": results}, args.out)
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
