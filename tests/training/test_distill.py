"""Distillation: the KL objective learns, camera paths render what they claim, the teacher cache is built
once and split by the committed rule, and a tiny `drca train distill` run writes an ImageNet checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import load_checkpoint
from model.config import apply_overrides
from model.drca import DRCA
from model.efficientnet import EfficientNetLite0
from tests.training.test_trainers import TINY_MODEL
from training.data.distill import (
    ClipCacheConfig,
    MotionConfig,
    Split,
    build_clip_cache,
    camera_path,
    is_heldout_image,
    load_split,
    render,
)
from training.distill import DistillConfig, distill_kl, teacher_targets, train_distill

TINY_DISTILL = (*TINY_MODEL, "model.head.num_classes=1000", "model.head.pool=mean")


def _tiny_model() -> DRCA:
    return DRCA(apply_overrides(DistillConfig(), TINY_DISTILL).model)


def test_one_distillation_step_lowers_the_kl_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    x = torch.randn(4, 3, 4, 32, 32)
    target = teacher_targets(torch.randn(4, 3, 1000) * 4, temperature=2.0)
    assert torch.allclose(target.sum(-1), torch.ones(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = distill_kl(model(x).logits, target, 2.0)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = distill_kl(model(x).logits, target, 2.0)
    assert after < before - 1e-4, (before.item(), after.item())
    # the KL is zero when the student matches the teacher's distribution
    logits = torch.log(target) * 2.0
    assert distill_kl(logits, target, 2.0).abs() < 1e-4


def test_distill_kl_matches_a_hand_computed_value() -> None:
    """T^2 * KL(target || softmax(student / T)), averaged over the batch (not summed, not per class).

    T = 2; row 1: student logits (2, 0, 0) -> softmax(1, 0, 0) = (e, 1, 1) / (e + 2), target (0.5, 0.25, 0.25):
    KL = 0.5 ln(0.5 (e + 2) / e) + 0.5 ln(0.25 (e + 2)) = 0.0117239...; row 2: logits 0 -> (1/3, 1/3, 1/3),
    target (0.1, 0.2, 0.7): KL = 0.1 ln 0.3 + 0.2 ln 0.6 + 0.7 ln 2.1 = 0.2967937...;
    loss = 2^2 * (0.0117239 + 0.2967937) / 2 = 0.6170354."""
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    assert distill_kl(student, target, 2.0).item() == pytest.approx(0.6170354, abs=1e-6)
    assert distill_kl(student, target, 1.0).item() == pytest.approx(
        (0.5 * np.log(0.5 / (np.exp(2) / (np.exp(2) + 2))) + 0.5 * np.log(0.25 * (np.exp(2) + 2))
         + 0.2967937361) / 2, abs=1e-6)  # T = 1: no scaling, student logits taken as they are


def test_a_camera_path_without_motion_is_the_whole_square_frame() -> None:
    img = torch.rand(1, 3, 60, 60) * 255
    still = MotionConfig(scale=(1.0, 1.0), max_zoom=1.0, max_pan=0.0, max_rotation=0.0)
    mats = camera_path(60, 60, 4, still, np.random.default_rng(0))
    out = render(img, mats, 60)
    assert out.shape == (4, 3, 60, 60)
    torch.testing.assert_close(out, img.expand(4, -1, -1, -1), atol=0.01, rtol=0)
    # a path with motion moves: its first and last frames differ
    moving = camera_path(60, 80, 4, MotionConfig(max_rotation=20.0), np.random.default_rng(1))
    assert not torch.allclose(moving[0], moving[-1])
    half = camera_path(60, 60, 2, MotionConfig(scale=(0.5, 0.5), max_zoom=1.0, max_rotation=0.0),
                       np.random.default_rng(2))
    assert torch.allclose(half[:, 0, 0], torch.tensor(0.5)) and torch.allclose(half[:, 1, 1], torch.tensor(0.5))


def _real_dir(root: Path, n: int = 6) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(48 + 8 * i, 64, 3), dtype=np.uint8)
        p = root / "images" / f"gen__{i}.png"
        Image.fromarray(arr).save(p)
        images.append({"file": f"images/{p.name}", "source": "gen", "package": "gen", "package_version": "1",
                       "original_path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                       "bytes": p.stat().st_size, "width": 64, "height": 48 + 8 * i})
    (root / "manifest.json").write_text(json.dumps({"videos": [], "images": images}))
    return root


class _CountingTeacher(EfficientNetLite0):
    calls = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().features(x)


def test_clip_cache_holds_student_frames_and_teacher_logits_and_is_built_once(tmp_path: Path) -> None:
    real = _real_dir(tmp_path / "real")
    split = Split(frozenset(), 0.5)
    cfg = ClipCacheConfig(num_frames=4, student_size=32, teacher_size=48, teacher_frames=(0, 3), heldout_images=8)
    teacher = _CountingTeacher().eval()
    cache = build_clip_cache(real, tmp_path / "clips", teacher, cfg, split, chunk=4)
    manifest = json.loads((real / "manifest.json").read_text())["images"]
    held = {m["file"] for m in manifest if is_heldout_image(m["sha256"], 0.5)}
    assert {c.file for c in cache.clips if c.split == "heldout"} == held
    assert len(cache.clips) == 6
    assert cache.frames.shape == (6, 4, 32, 32, 3) and cache.frames.dtype == np.uint8
    assert cache.logits.shape == (6, 2, 1000) and cache.features.shape == (6, 1280)
    assert cache.frames[:].std() > 10  # real pixels, not an empty memmap
    calls = _CountingTeacher.calls
    again = build_clip_cache(real, tmp_path / "clips", teacher, cfg, split)
    assert _CountingTeacher.calls == calls  # the teacher did not run again
    torch.testing.assert_close(again.logits, cache.logits)


def test_committed_split() -> None:
    split = load_split()
    assert len(split.heldout_videos) == 7 and split.image_fraction == pytest.approx(0.2)
    fracs = [is_heldout_image(hashlib.sha256(str(i).encode()).hexdigest(), 0.2) for i in range(2000)]
    assert 0.17 < np.mean(fracs) < 0.23


def test_train_distill_tiny_writes_an_imagenet_checkpoint(tmp_path: Path) -> None:
    real = _real_dir(tmp_path / "real", n=10)
    weights = tmp_path / "teacher.pth"
    torch.save(EfficientNetLite0().state_dict(), weights)
    cfg = apply_overrides(DistillConfig(), [
        *TINY_DISTILL, f"data.real_dir={real}", f"data.teacher_weights={weights}", "data.teacher_sha256=",
        "data.clips.num_frames=4", "data.clips.student_size=32", "data.clips.teacher_size=48",
        "data.clips.teacher_frames=0,3", "data.batch_size=4", "data.num_workers=0", "solver.epochs=1",
        "run.threads=1", "run.log_every=1", f"run.out_dir={tmp_path / 'run'}",
    ])
    ckpt = load_checkpoint(train_distill(cfg))
    assert len(ckpt.card.class_names) == 1000 and ckpt.card.class_names[207] == "golden retriever"
    assert ckpt.card.class_descriptions[207].startswith("golden retriever; ")
    assert "heldout_still_top1_in_top5" in ckpt.card.metrics
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("kd" in r and "nce" in r for r in records)
    assert (tmp_path / "run" / "last.pt").exists()
