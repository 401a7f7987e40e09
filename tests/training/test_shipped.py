"""`drca train shipped` end to end with tiny settings: synth data, a given real folder, both training runs,
evaluation, and a checkpoint that the service can load (embedding, classifier and text heads, a card)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from media.video import ffmpeg_exe
from model.checkpoint import load_checkpoint
from tests.training.test_trainers import TINY_MODEL
from training.shipped import ShippedConfig, build_shipped


def _real_folder(root: Path) -> Path:
    videos = root / "videos"
    videos.mkdir(parents=True)
    for name, src in (("a", "testsrc2=size=96x64:rate=10:duration=3"), ("b", "mandelbrot=size=96x64:rate=10")):
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", src, "-t", "3", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(videos / f"{name}.mp4")], check=True)
    (root / "manifest.json").write_text(json.dumps({"videos": [
        {"file": f"videos/{n}.mp4", "source": "generated", "package": "", "package_version": "",
         "original_path": "", "sha256": "", "bytes": 0, "duration_s": 3.0, "fps": 10.0, "frames": 30,
         "width": 96, "height": 64} for n in ("a", "b")]}))
    return root


def test_shipped_pipeline_tiny(tmp_path: Path) -> None:
    real = _real_folder(tmp_path / "real")
    cfg = ShippedConfig(work_dir=str(tmp_path / "work"), out=str(tmp_path / "ckpt"), seed=1,
                        synth_videos_per_class=3, real_dir=str(real),
                        synth_overrides=(("num_classes", 4), ("width", 64), ("height", 48), ("fps", 10),
                                         ("min_seconds", 1.0), ("max_seconds", 1.5)))
    small = ("data.cache.short_side=40", "data.cache.window_frames=8", "data.num_workers=0", "data.batch_size=4",
             "solver.epochs=1", "run.threads=1")
    out = build_shipped(cfg, command="drca train shipped (test)",
                        extra=((*TINY_MODEL, "model.backbone.stem=patch", "model.head.pool=mean", *small),
                               (*TINY_MODEL, "model.backbone.stem=patch", "model.head.pool=mean", *small),
                               ("data.batch_size=4", "data.num_workers=0", "solver.epochs=1", "run.threads=1")))
    ck = load_checkpoint(out)
    assert ck.text_head is not None and ck.config.head.num_classes == 4 and ck.config.head.embed_dim == 16
    assert len(ck.card.class_names) == 4 and ck.card.seed == 1
    assert ck.card.commands == ["drca train shipped (test)"]
    assert "synth_test_top1" in ck.card.metrics and ck.card.wall_time_s > 0
    assert "2 real videos" in ck.card.training_data
    # the linear probe left the embedding of the retrieval run exactly as it was
    emb = load_checkpoint(tmp_path / "work" / "retrieval" / "checkpoint").model.state_dict()
    for name, value in ck.model.state_dict().items():
        if not name.startswith("cls_head"):
            assert torch.equal(value, emb[name]), name
