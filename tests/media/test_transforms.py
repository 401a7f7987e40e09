"""Preprocessing: shapes, exact maths where it is defined."""

from __future__ import annotations

import pytest
import torch

from media import transforms as T
from tests.media.media import Cfg, frames


def test_preprocess_crop_layout_and_range() -> None:
    x = T.preprocess(frames(), Cfg())
    assert x.shape == (3, 4, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_preprocess_constant_colour_maps_exactly() -> None:
    f = torch.zeros(2, 40, 60, 3, dtype=torch.uint8)
    f[..., 0], f[..., 1], f[..., 2] = 255, 0, 127
    x = T.preprocess(f, Cfg())
    torch.testing.assert_close(x[0], torch.ones_like(x[0]))
    torch.testing.assert_close(x[1], -torch.ones_like(x[1]))
    torch.testing.assert_close(x[2], torch.full_like(x[2], (127 - 127.5) / 127.5))


def test_preprocess_keeps_frame_order_and_channels() -> None:
    f = torch.zeros(3, 32, 32, 3, dtype=torch.uint8)
    for t in range(3):
        f[t, ..., t] = 255  # frame t is pure channel t
    x = T.preprocess(f, Cfg())  # (C, T, H, W)
    for t in range(3):
        assert x[t, t].mean() == 1.0 and x[(t + 1) % 3, t].mean() == -1.0


def test_resize_short_side_and_center_crop() -> None:
    x = T.to_float_tchw(frames(h=48, w=96))
    y = T.resize_short_side(x, 24)
    assert y.shape[-2:] == (24, 48)
    z = T.center_crop(torch.arange(36.0).view(1, 1, 6, 6), 2)
    assert z.flatten().tolist() == [14.0, 15.0, 20.0, 21.0]
    with pytest.raises(ValueError):
        T.center_crop(x, 100)


def test_letterbox_pads_short_side() -> None:
    x = torch.full((1, 3, 20, 40), 200.0)
    y = T.letterbox(x, 40, fill=0.0)
    assert y.shape == (1, 3, 40, 40)
    assert y[..., :10, :].abs().sum() == 0 and y[..., 30:, :].abs().sum() == 0
    torch.testing.assert_close(y[..., 10:30, :], torch.full((1, 3, 20, 40), 200.0))
    out = T.preprocess(torch.full((2, 20, 40, 3), 255, dtype=torch.uint8), Cfg(img_size=40), fit="letterbox")
    assert out.shape == (3, 2, 40, 40)
    assert out[:, :, :10].abs().sum() == 0 and torch.allclose(out[:, :, 10:30], torch.ones(1))


def test_bad_frames_shape_rejected() -> None:
    with pytest.raises(ValueError):
        T.preprocess(torch.zeros(4, 8, 8, dtype=torch.uint8), Cfg())


def test_accepts_model_input_config() -> None:
    from model.config import InputConfig

    x = T.preprocess(frames(8), InputConfig(num_frames=8, img_size=32))
    assert x.shape == (3, 8, 32, 32)


# issue 27, G4: uint8 resize before float, aspect capped ---------------------------------------------------
def _float_path(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The preprocessing before the uint8 resize: the whole frame to float, then resized (0-255, (C, T, S, S))."""
    return T.to_cthw(T.center_crop(T.resize_short_side(T.to_float_tchw(frames), size), size))


@pytest.mark.parametrize(("h", "w"), [(240, 320), (720, 1280), (480, 270), (64, 64), (40, 60), (2304, 4096)])
def test_the_uint8_resize_stays_within_a_pixel_level_of_the_float_path(h: int, w: int) -> None:
    """Random pixels (the worst case for rounding): at most about one level of 255 apart, a third of one on
    average; a model sees a difference of at most 1/std (1/128 for the shipped checkpoint)."""
    f = frames(4, h, w)
    got = T.preprocess(f, Cfg(img_size=32, mean=(0.0,) * 3, std=(1.0,) * 3))  # 0-255
    diff = (got - _float_path(f, 32)).abs()
    assert float(diff.max()) <= 1.01 and float(diff.mean()) <= 0.35, (float(diff.max()), float(diff.mean()))


def test_a_frame_within_the_aspect_cap_is_not_cropped_first() -> None:
    f = frames(2, 16, 16 * T.MAX_CROP_ASPECT)
    assert T.cap_aspect(f.permute(0, 3, 1, 2), T.MAX_CROP_ASPECT).shape[-2:] == (16, 16 * T.MAX_CROP_ASPECT)
    inside = T.preprocess(f, Cfg(img_size=32))
    uncapped = T.normalize(_float_path(f, 32).permute(1, 0, 2, 3), Cfg().mean, Cfg().std).permute(1, 0, 2, 3)
    assert float((inside - uncapped).abs().max()) <= 1.01 / 127.5


@pytest.mark.parametrize(("h", "w"), [(32, 8192), (8192, 32), (1, 4000)])
def test_an_extreme_aspect_ratio_keeps_its_centre(h: int, w: int) -> None:
    """Past the cap the frame is cut to it around its centre first: the centre square is what the uncapped
    path keeps too (within the resize's rounding), and the result has the model's shape."""
    f = frames(2, h, w, seed=1)
    out = T.preprocess(f, Cfg(img_size=32, mean=(0.0,) * 3, std=(1.0,) * 3))
    assert out.shape == (3, 2, 32, 32)
    short = min(h, w)
    if short >= 8:  # the uncapped float path, for comparison (small enough here at img_size 32)
        ref = _float_path(f, 32)
        assert float((out - ref).abs().mean()) <= 2.0, float((out - ref).abs().mean())


def test_preprocessing_a_32x8192_clip_takes_little_memory() -> None:
    """The shipped input (8 frames, 224x224): a 32x8192 clip once became 224x57,344 float pixels a frame
    (about 1.2 GB for the clip); its peak memory growth is now a few MB. Measured in a fresh process by the
    kernel's peak-RSS mark (reset just before the call)."""
    import subprocess
    import sys

    from tests.procs import ROOT

    script = """
import torch
from pathlib import Path
from media import transforms as T
from model.config import InputConfig

def status(field):
    line = next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith(field + ':'))
    return int(line.split()[1]) / 1024

cfg = InputConfig(num_frames=8, img_size=224)
T.preprocess(torch.zeros(8, 64, 48, 3, dtype=torch.uint8), cfg)  # warm up: kernels, thread pools
growth = []
for shape in ((8, 8192, 32, 3), (8, 32, 8192, 3), (8, 64, 4000, 3)):
    frames = torch.randint(0, 256, shape, dtype=torch.uint8)
    Path('/proc/self/clear_refs').write_text('5')
    before = status('VmRSS')
    out = T.preprocess(frames, cfg)
    assert out.shape == (3, 8, 224, 224), out.shape
    growth.append(status('VmHWM') - before)
    del frames, out
print(max(growth))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    growth_mb = float(done.stdout.split()[-1])
    assert growth_mb < 40, f"peak memory grew by {growth_mb:.0f} MB"
