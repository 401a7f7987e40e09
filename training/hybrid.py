"""Train the DRCA layers of the pretrained-stem network (`model.hybrid`) on the stem cache.

The stem (EfficientNet-Lite0 from the teacher's wheel, with its ImageNet classifier) is frozen, so every
step reads its outputs from `training.data.stem_cache` instead of running it. Two objectives on one
network, as `training.distill`:

- **distillation**: ``temperature**2 * KL(teacher || student)`` (`training.distill.distill_kl`) between the
  clip logits and the teacher's clip distribution: the mean over the anchor's frames of the teacher's
  softmax at 224 px (the stem's full-size pooled feature through its own classifier), for the anchor
  and for its near-duplicate copy (a copy keeps the anchor's labels);
- **near-duplicate InfoNCE** on the embedding: the anchor and its copy are positives, the other clips
  of the batch (``batch_size - 1`` real negatives each way) negatives.

Evaluation after each epoch, on the held-out still clips (never trained on) and beside the stem alone
(the frame mean of its pooled feature, no DRCA layers): top-1 agreement with the teacher, the teacher's
top-1 in the top-5, and copy -> anchor retrieval (recall@1, mAP) among the held-out clips.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from model.config import DRCAConfig
from model.hybrid import HybridDRCA, StemOutputs
from model.presets import get_preset
from training import engine
from training.config import RunConfig, SolverConfig
from training.data.distill import SPLIT_FILE
from training.data.stem_cache import STEM_FIELDS, StemCache
from training.distill import distill_kl
from training.losses import symmetric_info_nce
from training.teacher import WEIGHTS_SHA256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HybridLossConfig:
    temperature: float = 2.0
    kd_weight: float = 1.0
    copy_kd_weight: float = 0.5  # the copy's labels against the anchor's teacher distribution
    nce_weight: float = 1.0
    nce_temperature: float = 0.05


def _solver() -> SolverConfig:
    return SolverConfig(optimizer="adamw", lr=5e-4, weight_decay=0.05, epochs=8, schedule="cosine",
                        warmup_epochs=0.3, min_lr_ratio=0.02, grad_clip=1.0)


@dataclass(frozen=True)
class HybridTrainConfig:
    model: DRCAConfig = field(default_factory=lambda: get_preset("drca-lite0-224"))
    cache_dir: str = ""
    split_file: str = str(SPLIT_FILE)  # the held-out real videos and the still fraction (committed)
    teacher_sha256: str = WEIGHTS_SHA256  # the stem/teacher weights file must have this sha256 ("" skips)
    batch_size: int = 64
    loss: HybridLossConfig = field(default_factory=HybridLossConfig)
    solver: SolverConfig = field(default_factory=_solver)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/shipped/train", log_every=5))


class StemPairs(Dataset):
    """Item: the anchor's and the copy's stem outputs (10 float32 tensors, `STEM_FIELDS` order each)."""

    def __init__(self, cache: StemCache, indices: list[int], seed: int = 0) -> None:
        self.cache, self.indices, self.seed, self.epoch = cache, indices, seed, 0
        self.copies = cache.shapes["early"][0] - 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        c = self.indices[i]
        copy = 1 + (self.seed + self.epoch + c) % self.copies
        return tuple(torch.from_numpy(self.cache.fields[k][c, v].astype(np.float32))
                     for v in (0, copy) for k in STEM_FIELDS)


def teacher_distribution(model: HybridDRCA, pooled_full: Tensor, temperature: float) -> Tensor:
    """(B, T, 1280) full-size pooled stem features -> the teacher's clip distribution (B, 1000)."""
    with torch.no_grad():
        return (model.stem._fc(pooled_full) / temperature).softmax(-1).mean(dim=1)


def _stem(tensors: tuple[Tensor, ...]) -> StemOutputs:
    return StemOutputs(**dict(zip(STEM_FIELDS, tensors, strict=True)))


def start_training(model: HybridDRCA, solver: SolverConfig, out_dir: Path,
                   resume: bool) -> tuple[torch.optim.Optimizer, engine.TrainState]:
    """Freeze the whole stem (its ImageNet classifier too: the teacher's labels stay the teacher's), then
    `engine.start_training`: the optimizer over what is left, the DRCA layers."""
    for p in model.stem.parameters():
        p.requires_grad_(False)
    return engine.start_training(model, solver, out_dir, resume)


def hybrid_loss(model: HybridDRCA, anchor: StemOutputs, copy: StemOutputs,
                lc: HybridLossConfig) -> tuple[Tensor, dict[str, float]]:
    """One batch's objective (module docstring): anchors and their copies through the network together,
    the distillation of both against the anchor's teacher distribution, and InfoNCE between them."""
    both = StemOutputs(**{k: torch.cat([getattr(anchor, k), getattr(copy, k)]) for k in STEM_FIELDS})
    out = model.forward_stem(both)
    b = anchor.early.shape[0]
    target = teacher_distribution(model, anchor.pooled_full, lc.temperature)
    kd = distill_kl(out.logits[:b], target, lc.temperature)
    kd_copy = distill_kl(out.logits[b:], target, lc.temperature)
    nce = symmetric_info_nce(out.embedding[:b], out.embedding[b:], lc.nce_temperature)
    loss = lc.kd_weight * kd + lc.copy_kd_weight * kd_copy + lc.nce_weight * nce
    return loss, {"kd": kd.item(), "kd_copy": kd_copy.item(), "nce": nce.item()}


@torch.no_grad()
def evaluate(model: HybridDRCA, cache: StemCache, indices: list[int], batch: int = 32) -> dict[str, float]:
    """Held-out clips: label agreement with the teacher and copy -> anchor retrieval, model and stem alone."""
    was_training = model.training
    model.eval()
    emb = {"anchor": [], "copy": [], "stem_anchor": [], "stem_copy": []}
    agree, in5, stem_agree = [], [], []
    for s in range(0, len(indices), batch):
        idx = indices[s : s + batch]
        a, c = cache.outputs(idx, 0), cache.outputs(idx, 1)
        oa, oc = model.forward_stem(a), model.forward_stem(c)
        teacher = model.stem._fc(a.pooled_full).softmax(-1).mean(1).argmax(-1)
        agree.append((oa.logits.argmax(-1) == teacher).float())
        in5.append((oa.logits.topk(5, dim=-1).indices == teacher[:, None]).any(-1).float())
        stem_agree.append((model.stem._fc(a.pooled_full.mean(1)).argmax(-1) == teacher).float())
        emb["anchor"].append(oa.embedding)
        emb["copy"].append(oc.embedding)
        emb["stem_anchor"].append(F.normalize(a.pooled_full.mean(1), dim=-1))
        emb["stem_copy"].append(F.normalize(c.pooled_full.mean(1), dim=-1))
    e = {k: torch.cat(v) for k, v in emb.items()}
    out = {"heldout_top1_agree": torch.cat(agree).mean().item(), "heldout_top1_in_top5": torch.cat(in5).mean().item(),
           "heldout_stem_top1_agree": torch.cat(stem_agree).mean().item()}
    for name, (q, d) in {"": (e["copy"], e["anchor"]), "stem_": (e["stem_copy"], e["stem_anchor"])}.items():
        sims = q @ d.T
        rank = (sims > sims.diagonal()[:, None]).sum(1)  # anchors scored above the true one
        out[f"heldout_{name}copy_r1"] = (rank == 0).float().mean().item()
        out[f"heldout_{name}copy_map"] = (1.0 / (rank + 1).float()).mean().item()  # one relevant item: mAP = MRR
    model.train(was_training)
    return out


def train_hybrid(cfg: HybridTrainConfig, model: HybridDRCA, resume: bool = True) -> HybridDRCA:
    """Train ``model``'s DRCA layers (its stem frozen) on the cache; returns it in eval mode."""
    device, d = engine.setup(cfg.run)
    out_dir = engine.prepare_run_dir(cfg.run.out_dir, cfg, d)
    cache = StemCache(cfg.cache_dir)
    train_idx, held_idx = cache.indices("train"), cache.indices("heldout")
    log.info("stem cache: %d training clips, %d held-out", len(train_idx), len(held_idx))
    dataset = StemPairs(cache, train_idx, cfg.run.seed)
    loader = engine.make_loader(dataset, cfg.batch_size, 0, d, shuffle=True, seed=cfg.run.seed, drop_last=True)
    optimizer, state = start_training(model, cfg.solver, out_dir, resume)

    def loss_fn(batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
        n = len(STEM_FIELDS)
        return hybrid_loss(model, _stem(batch[:n]), _stem(batch[n:]), cfg.loss)

    if held_idx and state.epoch == 0 and d.is_main:  # the starting point: the stem's own answers, untrained layers
        engine.MetricLog(out_dir / engine.METRICS).write({"kind": "eval", "epoch": 0,
                                                          **evaluate(model, cache, held_idx)})
    t0 = time.time()
    engine.fit(model=model, optimizer=optimizer, loader=loader, loss_fn=loss_fn, solver=cfg.solver, run=cfg.run,
               out_dir=out_dir, d=d, device=device, state=state,
               evaluate=(lambda _epoch: evaluate(model, cache, held_idx)) if held_idx else None,
               set_epoch=engine.epoch_setter(loader))
    log.info("trained the DRCA layers in %.0f s", time.time() - t0)
    engine.finish(d)
    return model.eval()


def last_eval(out_dir: str | Path) -> dict[str, float]:
    """The last evaluation record of a run (``metrics.jsonl``)."""
    rows = [r for r in engine.MetricLog(Path(out_dir) / engine.METRICS).read() if r.get("kind") == "eval"]
    return {k: round(v, 4) for k, v in (rows[-1] if rows else {}).items() if k.startswith("heldout_")}
