"""`drca train classify`: supervised classification with cross-entropy (the paper's Mini-Kinetics recipe)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from model.checkpoint import ModelCard, save_checkpoint
from model.drca import DRCA
from training import engine
from training.config import ClassifyConfig
from training.data.annotations import load_video_list
from training.data.datasets import ClipDataset, FrameCache
from training.metrics import classification_metrics

log = logging.getLogger(__name__)


def list_prefix(video_list: str, data_prefix: str) -> Path:
    """The folder a list's paths are relative to: ``data_prefix``, or the list's own folder."""
    return Path(data_prefix) if data_prefix else Path(video_list).parent


def resolve_classes(train_list: str, classes_file: str = "") -> list[str]:
    """Class names, one per line: ``classes_file`` or the ``classes.txt`` next to the training list."""
    path = Path(classes_file) if classes_file else Path(train_list).parent / "classes.txt"
    if not path.is_file():
        raise ValueError(f"class names file {path} not found (set data.classes_file)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"{path}: need at least 2 distinct class names, one per line")
    return names


def train_classify(cfg: ClassifyConfig, resume: bool = True) -> Path:
    """Train; returns the directory of the final drca checkpoint (`<out_dir>/checkpoint`)."""
    from training.evaluate import predict

    device, d = engine.setup(cfg.run)
    if not cfg.data.train_list:
        raise ValueError("data.train_list is required (an mmaction video list: `path label` per line)")
    classes = resolve_classes(cfg.data.train_list, cfg.data.classes_file)
    cfg = replace(cfg, model=replace(cfg.model, head=replace(cfg.model.head, num_classes=len(classes))))
    out_dir = engine.prepare_run_dir(cfg.run.out_dir, cfg, d)

    records = load_video_list(cfg.data.train_list, list_prefix(cfg.data.train_list, cfg.data.data_prefix))
    bad = [r for r in records if r.label >= len(classes)]
    if bad:
        raise ValueError(f"{cfg.data.train_list}: label {bad[0].label} of {bad[0].path} is outside the "
                         f"{len(classes)} classes")
    inp = cfg.model.input
    cache = FrameCache([r.path for r in records], [r.label for r in records], cfg.data.cache, progress=d.is_main)
    train_set = ClipDataset(cache, inp, inp.num_frames, cfg.data.augment, cfg.run.seed, cfg.data.min_span)
    loader = engine.make_loader(train_set, cfg.data.batch_size, cfg.data.num_workers, d, shuffle=True,
                                seed=cfg.run.seed, drop_last=True)
    val_loader = None
    if cfg.data.val_list and d.is_main:
        val = load_video_list(cfg.data.val_list, list_prefix(cfg.data.val_list, cfg.data.data_prefix))
        val_cache = FrameCache([r.path for r in val], [r.label for r in val], cfg.data.cache, progress=False)
        val_loader = engine.make_loader(ClipDataset(val_cache, inp, inp.num_frames, None), cfg.data.batch_size,
                                        0, engine.Dist(), shuffle=False, seed=0, drop_last=False)

    model = DRCA(cfg.model)
    if cfg.init_from:
        engine.init_from_checkpoint(model, cfg.init_from)
    elif cfg.freeze_backbone:
        raise ValueError("freeze_backbone needs init_from (the checkpoint whose network is frozen)")
    if cfg.freeze_backbone:
        model.requires_grad_(False)
        model.cls_head.requires_grad_(True)
    if model.embed_head is not None:  # not trained by cross-entropy
        model.embed_head.requires_grad_(False)
    if cfg.model.backbone.frame_choice == "wo_diff_rank" and model.dccm is not None and model.dccm.score_net:
        model.dccm.score_net.requires_grad_(False)  # hard top-k: no gradient reaches the ScoreNet
    model.to(device)
    optimizer, state = engine.start_training(model, cfg.solver, out_dir, resume)
    net = engine.wrap_ddp(model, d)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if cfg.freeze_backbone:  # eval mode: batch-norm statistics and drop-path stay as trained
            net.eval()
        logits = net(x).logits.float()
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        return loss, {"train_acc": (logits.argmax(-1) == y).float().mean().item()}

    last_eval: dict[str, float] = {}

    def evaluate(epoch: int) -> dict[str, float]:
        nonlocal last_eval
        if val_loader is None:
            return {}
        scores, labels = predict(model, val_loader, device)
        last_eval = classification_metrics(scores, labels, len(classes))
        return last_eval

    t0 = time.time()
    engine.fit(model=net, optimizer=optimizer, loader=loader, loss_fn=loss_fn, solver=cfg.solver, run=cfg.run,
               out_dir=out_dir, d=d, device=device, state=state, evaluate=evaluate,
               set_epoch=engine.epoch_setter(loader))
    ckpt = out_dir / "checkpoint"
    if d.is_main:
        card = ModelCard(
            preset=cfg.model.name, class_names=classes, training_data=cfg.data.train_list,
            commands=[engine.command_line()], seed=cfg.run.seed, wall_time_s=round(time.time() - t0, 1),
            metrics={f"val_{k}": v for k, v in last_eval.items()},
        )
        save_checkpoint(ckpt, model.cpu().eval(), card)
        log.info("wrote %s", ckpt)
    engine.finish(d)
    return ckpt
