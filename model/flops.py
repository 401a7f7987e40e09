"""Exact FLOP counts with torch.utils.flop_counter.

torch's counter counts 2 FLOPs per multiply-add. The seed (mmengine / fvcore) counts one multiply-add as
one FLOP, so `gmacs` is the number to compare with the paper; both are reported. The count covers every
matmul and convolution, attention's QK^T and AV included (the model is run with explicit attention
matmuls, `use_sdpa=False`, which is the same maths as scaled_dot_product_attention).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.checkpoint import build_model
from model.config import DRCAConfig
from model.presets import uncompressed


@dataclass(frozen=True)
class FlopReport:
    name: str
    shape: tuple[int, ...]
    params: int
    flops: int  # torch.utils.flop_counter convention: 2 per multiply-add
    uncompressed_flops: int

    @property
    def gmacs(self) -> float:
        """GFLOPs in the seed's convention (one multiply-add = one FLOP)."""
        return self.flops / 2e9

    @property
    def ratio(self) -> float:
        return self.flops / self.uncompressed_flops


def _count(cfg: DRCAConfig, shape: tuple[int, ...]) -> tuple[int, int]:
    cfg = replace(cfg, backbone=replace(cfg.backbone, use_sdpa=False))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.zeros(shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def count_flops(cfg: DRCAConfig, shape: tuple[int, ...] | None = None) -> FlopReport:
    if shape is None:
        shape = (1, 3, cfg.input.num_frames, cfg.input.img_size, cfg.input.img_size)
    if len(shape) != 5:
        raise ValueError(f"shape must be B C T H W, got {shape}")
    b, c, t, h, w = shape
    if h != w:
        raise ValueError("only square inputs are supported")
    cfg = replace(cfg, input=replace(cfg.input, num_frames=t, img_size=h))
    flops, params = _count(cfg, shape)
    base = _count(uncompressed(cfg), shape)[0] if cfg.compressed and uncompressed(cfg) != cfg else flops
    return FlopReport(name=cfg.name, shape=tuple(shape), params=params, flops=flops, uncompressed_flops=base)
