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
