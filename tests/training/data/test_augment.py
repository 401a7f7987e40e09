"""Training augmentations: shapes, exact maths where it is defined, seeded determinism."""

from __future__ import annotations

import pytest
import torch

from tests.media.media import Cfg, frames
from training.data import augment as T


def test_gaussian_blur_preserves_constant_and_smooths() -> None:
    x = torch.full((2, 3, 16, 16), 100.0)
    torch.testing.assert_close(T.gaussian_blur(x, 1.5), x)
    noisy = T.to_float_tchw(frames(2, 16, 16))
    assert T.gaussian_blur(noisy, 1.5).std() < noisy.std() / 2


def test_grayscale_equal_channels() -> None:
    y = T.grayscale(T.to_float_tchw(frames()))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, g: T.random_resized_crop(x, 24, g=g),
        lambda x, g: T.color_jitter(x, g=g),
        lambda x, g: T.overlay_patch(x, g),
        lambda x, g: T.picture_in_picture(x, g),
        lambda x, g: T.random_pad(x, g),
        lambda x, g: T.random_zoom(x, g),
    ],
    ids=["rrc", "jitter", "overlay", "pip", "pad", "zoom"],
)
def test_random_ops_seeded_range_and_shared_across_time(fn) -> None:
    # a clip of 3 identical frames must stay 3 identical frames: one draw per clip
    x = T.to_float_tchw(frames(1, 40, 56).expand(3, -1, -1, -1))
    a = fn(x, torch.Generator().manual_seed(5))
    b = fn(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.min() >= 0 and a.max() <= 255
    assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])
    c = fn(x, torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


def test_train_preprocess_all_augs() -> None:
    cfg = T.AugmentConfig(grayscale_p=1, blur_p=1, overlay_p=1, pip_p=1, pad_p=1, zoom_p=1, flip_p=1)
    g = torch.Generator().manual_seed(0)
    x = T.preprocess_train(frames(), Cfg(), cfg, g)
    assert x.shape == (3, 4, 32, 32) and x.min() >= -1 and x.max() <= 1
    y = T.preprocess_train(frames(), Cfg(), T.NEAR_DUPLICATE_AUGMENT, torch.Generator().manual_seed(0))
    assert y.shape == (3, 4, 32, 32)


def test_hflip_is_mirror() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert T.hflip(x).flatten().tolist() == [2.0, 1.0, 0.0, 5.0, 4.0, 3.0]


def test_hue_rotation_keeps_luma_and_is_identity_at_zero() -> None:
    from training.data.augment import adjust_hue, grayscale

    x = 100 + 50 * torch.rand(2, 3, 6, 6)  # in gamut after small rotations: no clamping
    torch.testing.assert_close(adjust_hue(x, 0.0), x, atol=1e-3, rtol=0)
    y = adjust_hue(x, 30.0)
    torch.testing.assert_close(grayscale(y), grayscale(x), atol=0.05, rtol=0)
    assert (y - x).abs().max() > 1.0  # the colours did change
    torch.testing.assert_close(adjust_hue(adjust_hue(x, 40.0), -40.0), x, atol=1e-2, rtol=0)
