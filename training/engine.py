"""What every trainer shares: devices and DDP, optimiser and schedule, the step, resume, metric logs, plots.

A trainer (classify, retrieval, text) supplies a model, a loader, and a `loss_fn(batch) -> (loss, logs)`;
`fit` runs the epochs. Distributed data-parallel is on when the process was started by `torchrun`
(`WORLD_SIZE > 1`): gloo on CPU, NCCL on GPU. Resume state is `last.pt`, a dict of tensors and plain
values loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from model.drca import DRCA
from training.config import Precision, RunConfig, SolverConfig

log = logging.getLogger(__name__)

STATE = "last.pt"
METRICS = "metrics.jsonl"
PLOT = "curves.png"


# --------------------------------------------------------------------------- processes and devices


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when started by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(run: RunConfig) -> torch.device:
    if run.device == "cpu" or (run.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cuda":
        raise ValueError(f"run.precision={precision} needs a GPU; use fp32 (or auto) on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def seed_everything(seed: int, rank: int = 0) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def setup(run: RunConfig) -> tuple[torch.device, Dist]:
    """The start of every trainer: device, process group (under torchrun), CPU threads, seeds."""
    device = resolve_device(run)
    d = init_distributed(device)
    if run.threads:
        torch.set_num_threads(run.threads)
    seed_everything(run.seed, d.rank)
    return device, d


def finish(d: Dist) -> None:
    """The end of every trainer: wait for rank 0's checkpoint, leave the process group."""
    if d.enabled:
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: float, d: Dist) -> float:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world_size


# --------------------------------------------------------------------------- optimiser and schedule


def param_groups(model: nn.Module, solver: SolverConfig, no_decay: set[str]) -> list[dict[str, Any]]:
    """Weight decay on every parameter but the named ones (`no_decay`: cls token, position and time
    embeddings), as the seed's solvers; with `solver.decay_norm_and_bias=false` not on biases and norm
    weights (1-d tensors) either.

    The DCCM ScoreNet gets `solver.score_net_lr_mult` times the learning rate.
    """
    groups: dict[tuple[bool, float], list[Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = name.split(".")[-1] not in no_decay and name not in no_decay
        decay = decay and (solver.decay_norm_and_bias or p.ndim > 1)
        mult = solver.score_net_lr_mult if ".score_net." in f".{name}" else 1.0
        groups.setdefault((decay, mult), []).append(p)
    return [
        {"params": ps, "weight_decay": solver.weight_decay if decay else 0.0, "lr_mult": mult}
        for (decay, mult), ps in groups.items()
    ]


def build_optimizer(groups: list[dict[str, Any]], solver: SolverConfig) -> torch.optim.Optimizer:
    for g in groups:
        g["lr"] = solver.lr * g["lr_mult"]
    if solver.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=solver.lr, momentum=solver.momentum, nesterov=solver.nesterov)
    return torch.optim.AdamW(groups, lr=solver.lr, betas=solver.betas)


def lr_factor(solver: SolverConfig, epoch_progress: float) -> float:
    """Learning-rate multiplier at a fractional epoch, as mmcv's LrUpdaterHook: the step or cosine schedule
    over all epochs (cosine from epoch 0 to `epochs`), scaled during the first `warmup_epochs` by a linear
    warm-up from `warmup_start` to 1."""
    if solver.schedule == "step":
        f = solver.gamma ** sum(epoch_progress >= m for m in solver.milestones)
    else:
        t = min(max(epoch_progress / max(solver.epochs, 1e-8), 0.0), 1.0)
        f = solver.min_lr_ratio + (1 - solver.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if solver.warmup_epochs > 0 and epoch_progress < solver.warmup_epochs:
        f *= solver.warmup_start + (1 - solver.warmup_start) * epoch_progress / solver.warmup_epochs
    return f


def set_lr(optimizer: torch.optim.Optimizer, solver: SolverConfig, epoch_progress: float) -> float:
    f = lr_factor(solver, epoch_progress)
    for g in optimizer.param_groups:
        g["lr"] = solver.lr * g.get("lr_mult", 1.0) * f
    return solver.lr * f


# --------------------------------------------------------------------------- logs and plots


class MetricLog:
    """Append-only JSONL of metric records (one per line), written by rank 0."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def rewind(self, state: TrainState) -> None:
        """Keep only what `state` contains: a run killed mid-epoch logged steps (and maybe a torn last line)
        that the resumed run does again."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn by the kill
            if rec.get("kind") == "train" and rec.get("step", 0) > state.step:
                continue
            if rec.get("kind") in ("epoch", "eval") and rec.get("epoch", 0) > state.epoch:
                continue
            kept.append(line + "\n")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)


def plot_curves(metrics_path: Path, out: Path) -> None:
    """A PNG with the training loss per step and every evaluation metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = MetricLog(metrics_path).read()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    keys = sorted({k for r in evals for k, v in r.items() if isinstance(v, int | float) and k not in ("epoch", "time")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in evals if k in r]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("evaluation metric")
    if keys:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps completed


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
               extra: dict[str, Any] | None = None) -> None:
    """Atomically write the resume state (tensors and plain values only)."""
    payload = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[TrainState, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    log.info("resumed from %s at epoch %d, step %d", path, payload["epoch"], payload["step"])
    return TrainState(epoch=payload["epoch"], step=payload["step"]), payload.get("extra", {})


def start_training(model: nn.Module, solver: SolverConfig, out_dir: Path,
                   resume: bool) -> tuple[torch.optim.Optimizer, TrainState]:
    """The optimizer over `model`'s parameter groups, and the state to start from: `out_dir/last.pt` when
    resuming and it exists, else a fresh one."""
    optimizer = build_optimizer(param_groups(model, solver, model.no_weight_decay()), solver)
    state = TrainState()
    if resume and (out_dir / STATE).exists():
        state, _ = load_state(out_dir / STATE, model, optimizer)
    return optimizer, state


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


LossFn = Callable[[Any], tuple[Tensor, dict[str, float]]]
EvalFn = Callable[[int], dict[str, float]]


def fit(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Any],
    loss_fn: LossFn,
    solver: SolverConfig,
    run: RunConfig,
    out_dir: Path,
    d: Dist,
    device: torch.device,
    state: TrainState,
    evaluate: EvalFn | None = None,
    set_epoch: Callable[[int], None] | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
) -> TrainState:
    """Run epochs `state.epoch .. solver.epochs`, saving `last.pt` after each (rank 0)."""
    from tqdm import tqdm

    metrics = MetricLog(out_dir / METRICS, enabled=d.is_main)
    metrics.rewind(state)
    amp = autocast_dtype(run.precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    if run.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, run.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError("the training set is empty (or smaller than one batch)")
    params = [p for p in model.parameters() if p.requires_grad]

    while state.epoch < solver.epochs:
        epoch = state.epoch
        if set_epoch is not None:
            set_epoch(epoch)
        model.train()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{solver.epochs}", disable=not d.is_main,
                   dynamic_ncols=True, leave=False)
        running, seen, t0 = 0.0, 0, time.perf_counter()
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch:
                break
            lr = set_lr(optimizer, solver, epoch + i / steps_per_epoch)
            ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
            with ctx:
                loss, logs = loss_fn(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {state.step}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(params, solver.grad_clip)) if solver.grad_clip > 0 else None
            )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            state.step += 1
            running += loss.item()
            seen += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.2e}")
            if state.step % run.log_every == 0 or i == steps_per_epoch - 1:
                rec = {"kind": "train", "epoch": epoch, "step": state.step, "loss": loss.item(), "lr": lr, **logs}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                metrics.write(rec)
        bar.close()
        state.epoch += 1
        epoch_loss = all_reduce_mean(running / max(seen, 1), d)
        summary = {"kind": "epoch", "epoch": epoch + 1, "loss": epoch_loss, "seconds": time.perf_counter() - t0}
        metrics.write(summary)
        log.info("epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, solver.epochs, epoch_loss, summary["seconds"])
        last = state.epoch == solver.epochs
        if evaluate is not None and ((run.eval_every and state.epoch % run.eval_every == 0) or last):
            model.eval()
            result = evaluate(state.epoch)
            if d.is_main:
                metrics.write({"kind": "eval", "epoch": state.epoch, **result})
                log.info("eval after epoch %d: %s", state.epoch,
                         ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        if d.is_main:
            save_state(out_dir / STATE, model, optimizer, state, extra_state() if extra_state else None)
            plot_curves(out_dir / METRICS, out_dir / PLOT)
        if d.enabled:
            dist.barrier()
    return state


def prepare_run_dir(out_dir: str, config: Any, d: Dist) -> Path:
    """Create the run folder and record the full config (rank 0)."""
    path = Path(out_dir)
    if d.is_main:
        path.mkdir(parents=True, exist_ok=True)
        from dataclasses import asdict

        (path / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    if d.enabled:
        dist.barrier()
    return path


# --------------------------------------------------------------------------- shared set-up


def make_loader(dataset: Any, batch_size: int, num_workers: int, d: Dist, shuffle: bool, seed: int,
                drop_last: bool) -> torch.utils.data.DataLoader:
    """A DataLoader that shards across DDP ranks. Its order is a function of (seed, epoch) only
    (`DistributedSampler.set_epoch`, with one replica when not distributed), so a resumed run sees the
    same batches as one that was never interrupted."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, generator=g, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available())


def epoch_setter(loader: torch.utils.data.DataLoader) -> Callable[[int], None]:
    """Tell the sampler (shuffling) and the dataset (augmentation seeds) which epoch it is."""

    def set_epoch(epoch: int) -> None:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)

    return set_epoch


def init_from_checkpoint(model: DRCA, ckpt_dir: str) -> list[str]:
    """Copy every tensor of a drca checkpoint that has a counterpart of the same shape; return the names
    left as initialised.

    This is the fine-tuning path (e.g. the seed's K8 -> K4 schedule, or a classifier over new classes).
    Tensors are matched as the seed's `load_from` matches them: by the reference code's names, in which
    layer i is layer i whether or not it comes after the DCCM. So a K8 (uncompressed) checkpoint fills
    every layer of a K4 network; what the K8 network has no counterpart for (the DCCM, the low-resolution
    spatial attention of the align layers) stays as initialised.
    """
    from model.checkpoint import read_config_and_card, read_weights
    from model.seed import shared_names

    src = read_weights(ckpt_dir, include_text_head=False)
    src_cfg, _ = read_config_and_card(ckpt_dir)
    by_shared = {shared: src[k] for k, shared in shared_names(src_cfg).items() if k in src}
    own = model.state_dict()
    usable = {}
    for k, shared in shared_names(model.cfg).items():
        v = by_shared.get(shared)
        if v is not None and v.shape == own[k].shape:
            usable[k] = v
    model.load_state_dict(usable, strict=False)
    fresh = sorted(k for k in own if k not in usable)
    log.info("initialised %d tensors from %s; %d left as initialised%s", len(usable), ckpt_dir, len(fresh),
             f" ({', '.join(fresh[:6])}{'...' if len(fresh) > 6 else ''})" if fresh else "")
    return fresh


def command_line() -> str:
    import shlex
    import sys

    return "drca " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("drca") else shlex.join(sys.argv)


def wrap_ddp(model: DRCA, d: Dist) -> nn.Module:
    """DistributedDataParallel when distributed. With mean pooling the cls-token path gets no gradient, so
    unused parameters are allowed then."""
    if not d.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=model.cfg.head.pool == "mean")
