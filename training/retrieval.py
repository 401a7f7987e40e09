"""`drca train retrieval`: self-supervised near-duplicate learning (the seed's retrieval recipe).

Every cached window of every training video is an instance (`training.data.datasets`). Each step takes
`batch_size` instances and `views` clips of each (own sub-span, temporal jitter and strong near-duplicate
augmentation: crop, flip, letterbox, overlay, picture-in-picture, blur, grey...); clips of the same
instance are positives. Loss: MultiSimilarityLoss with a MultiSimilarityMiner and a cross-batch memory
(pytorch-metric-learning). With `loss.ce_weight > 0`, each step also takes `batch_size` labelled clips
(classification augmentation, no flip) for a cross-entropy term, so one run trains the embedding and the
classifier of the shipped checkpoint together.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from media.video import has_video_extension
from model.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from model.drca import DRCA
from training import engine
from training.classify import list_prefix, resolve_classes
from training.config import RetrievalConfig
from training.data.annotations import load_video_list
from training.data.datasets import ClipDataset, FrameCache, InstanceDataset
from training.losses import MetricLoss

log = logging.getLogger(__name__)


def training_videos(cfg: RetrievalConfig) -> tuple[list[Path], list[int]]:
    """Paths and labels (-1: unlabelled) of the labelled list and the extra folder."""
    paths: list[Path] = []
    labels: list[int] = []
    if cfg.data.train_list:
        records = load_video_list(cfg.data.train_list, list_prefix(cfg.data.train_list, cfg.data.data_prefix))
        paths += [r.path for r in records]
        labels += [r.label for r in records]
    if cfg.data.extra_videos:
        folder = Path(cfg.data.extra_videos)
        if not folder.is_dir():
            raise ValueError(f"data.extra_videos={folder} is not a folder")
        extra = sorted(p for p in folder.rglob("*") if has_video_extension(p))
        if not extra:
            raise ValueError(f"data.extra_videos={folder} has no videos")
        paths += extra
        labels += [-1] * len(extra)
    if not paths:
        raise ValueError("no training videos: set data.train_list and/or data.extra_videos")
    return paths, labels


def train_retrieval(cfg: RetrievalConfig, resume: bool = True) -> Path:
    """Train; returns the directory of the final drca checkpoint (`<out_dir>/checkpoint`)."""
    device, d = engine.setup(cfg.run)
    if cfg.model.head.embed_dim <= 0:
        raise ValueError("model.head.embed_dim must be > 0 for retrieval training")
    use_ce = cfg.loss.ce_weight > 0
    classes: list[str] = []
    if use_ce:
        if not cfg.data.train_list:
            raise ValueError("loss.ce_weight > 0 needs a labelled data.train_list")
        classes = resolve_classes(cfg.data.train_list, cfg.data.classes_file)
        cfg = replace(cfg, model=replace(cfg.model, head=replace(cfg.model.head, num_classes=len(classes))))
    out_dir = engine.prepare_run_dir(cfg.run.out_dir, cfg, d)
    paths, labels = training_videos(cfg)
    if use_ce and any(y >= len(classes) for y in labels):
        raise ValueError(f"{cfg.data.train_list}: a label is outside the {len(classes)} classes")
    cache = FrameCache(paths, labels, cfg.data.cache, progress=d.is_main)
    inp = cfg.model.input
    dataset = InstanceDataset(cache, inp, inp.num_frames, cfg.data.views, cfg.data.augment, cfg.run.seed,
                              cfg.data.min_span)
    loader = engine.make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, d, shuffle=True,
                                seed=cfg.run.seed, drop_last=True)
    ce_batches = None
    if use_ce:
        ce_set = ClipDataset(cache, inp, inp.num_frames, cfg.data.ce_augment, cfg.run.seed + 1)
        ce_loader = engine.make_loader(ce_set, cfg.data.batch_size, cfg.data.num_workers, d, shuffle=True,
                                       seed=cfg.run.seed + 1, drop_last=True)
        ce_batches = itertools.cycle(ce_loader) if len(ce_loader) else None

    model = DRCA(cfg.model)
    card = ModelCard(preset=cfg.model.name, class_names=classes)
    if cfg.init_from:
        engine.init_from_checkpoint(model, cfg.init_from)
        card = load_checkpoint(cfg.init_from).card
        if use_ce:
            card = card.model_copy(update={"class_names": classes})
    if model.cls_head is not None and not use_ce:
        model.cls_head.requires_grad_(False)
    if cfg.model.backbone.frame_choice == "wo_diff_rank" and model.dccm is not None and model.dccm.score_net:
        model.dccm.score_net.requires_grad_(False)
    model.to(device)
    metric_loss = MetricLoss(cfg.loss, cfg.model.head.embed_dim).to(device)
    optimizer, state = engine.start_training(model, cfg.solver, out_dir, resume)
    net = engine.wrap_ddp(model, d)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        views, inst, _ = batch
        b, v = views.shape[:2]
        x = views.flatten(0, 1)
        ce_y = None
        if ce_batches is not None:
            ce_x, ce_y = next(ce_batches)
            x = torch.cat([x, ce_x])
        out = net(x.to(device, non_blocking=True))
        ids = (inst + d.rank * len(dataset)).repeat_interleave(v).to(device)  # unique across ranks
        emb = out.embedding[: b * v]
        loss = metric_loss(emb, ids, v)
        logs = {"metric_loss": loss.item()}
        if ce_y is not None:
            logits, y = out.logits[b * v :].float(), ce_y.to(device)
            ce = F.cross_entropy(logits, y)
            loss = loss + cfg.loss.ce_weight * ce
            logs |= {"ce": ce.item(), "train_acc": (logits.argmax(-1) == y).float().mean().item()}
        with torch.no_grad():  # how often a clip's nearest other clip in the batch is its own instance
            e = emb.float()
            sim = e @ e.T
            sim.fill_diagonal_(-2)
            logs["batch_r1"] = (ids[sim.argmax(dim=1)] == ids).float().mean().item()
        return loss, logs

    t0 = time.time()
    engine.fit(model=net, optimizer=optimizer, loader=loader, loss_fn=loss_fn, solver=cfg.solver, run=cfg.run,
               out_dir=out_dir, d=d, device=device, state=state, set_epoch=engine.epoch_setter(loader))
    ckpt = out_dir / "checkpoint"
    if d.is_main:
        card = card.model_copy(update={
            "commands": [*card.commands, engine.command_line()],
            "training_data": "; ".join(x for x in (card.training_data, cfg.data.train_list, cfg.data.extra_videos) if x),
            "seed": cfg.run.seed,
            "wall_time_s": round((card.wall_time_s or 0) + time.time() - t0, 1),
        })
        save_checkpoint(ckpt, model.cpu().eval(), card)
        log.info("wrote %s", ckpt)
    engine.finish(d)
    return ckpt
