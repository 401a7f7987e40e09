"""The one deterministic preprocessing path (torch only): layout, resize, crop or letterbox, normalisation.

Layouts: decoded frames are uint8 ``(T, H, W, C)`` RGB; every op below works on ``(T, C, H, W)`` in the
0-255 pixel range, float (batched over T, so one clip gets one random draw) or, for the geometry ops,
uint8; ``preprocess`` returns the normalised ``(C, T, H, W)`` clip the model takes (stack clips for
``(N, C, T, H, W)``).

Memory: ``preprocess`` resizes the decoded uint8 frames and converts only the ``img_size`` square to
float, so a large frame is never copied to float (a 4096x2304 frame would be 113 MB). The uint8 resize
rounds each pixel to an integer: against resizing in float, values differ by at most about one pixel
level of 255, and on average by a few hundredths of one on natural pictures and up to a third on random
pixels (tests/media/test_transforms.py pins both bounds); after the shipped checkpoint's normalisation (std
128) that is at most 0.008, on average at most 0.0025. With ``fit="crop"``, a frame longer than
``MAX_CROP_ASPECT`` times its short side is first centre-cropped to that aspect (only the centre square
is kept anyway): a 32x8192 frame no longer becomes 224x57,344 pixels.

``input_cfg`` is any object with ``img_size``, ``mean`` and ``std`` (``model.config.InputConfig``).
The training augmentations, built on these ops, live in ``training.data.augment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F


class InputSpec(Protocol):
    img_size: int
    mean: Sequence[float]
    std: Sequence[float]


Fit = Literal["crop", "letterbox"]

#: ``fit="crop"`` keeps the centre square: frames longer than this many times their short side are first
#: centre-cropped to this aspect ratio, which bounds the resized frame (ordinary ratios are untouched).
MAX_CROP_ASPECT = 8

#: Frames whose short side is more than this many times the model's ``img_size`` are decoded scaled down
#: to that short side (the decoder scales: `media.video.open_video`'s ``max_short_side``), so a 4K frame never
#: exists at full size; ``resize`` still does the final antialiased step, and smaller frames are decoded as
#: they are (bit-identical).
DECODE_SIZE_FACTOR = 2


def decode_short_side(img_size: int) -> int:
    """The short side frames are decoded at, at most, for a model that takes ``img_size`` squares."""
    return DECODE_SIZE_FACTOR * int(img_size)


# ------------------------------------------------------------------------------------ layout
def to_float_tchw(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(T, H, W, C)`` -> float32 ``(T, C, H, W)``, 0-255."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2).float()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel on ``(T, C, H, W)``."""
    m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def to_cthw(x: torch.Tensor) -> torch.Tensor:
    """``(T, C, H, W)`` -> ``(C, T, H, W)`` (contiguous)."""
    return x.permute(1, 0, 2, 3).contiguous()


# --------------------------------------------------------------------------------- geometry
def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of 0-255 ``(T, C, H, W)`` frames, float or uint8 (then rounded to
    uint8, with no float copy of the input)."""
    if (x.shape[-2], x.shape[-1]) == (height, width):
        return x
    if x.dtype == torch.uint8:  # torch's uint8 kernel (channels-last: decoded frames already are)
        x = x.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    # antialiased bilinear can overshoot by a hair: keep the 0-255 pixel range exact
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return y.clamp_(0.0, 255.0)


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Scale so the shorter side is ``size``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    if h <= w:
        return resize(x, size, max(size, round(w * size / h)))
    return resize(x, max(size, round(h * size / w)), size)


def cap_aspect(x: torch.Tensor, max_aspect: float) -> torch.Tensor:
    """The centre of ``(..., H, W)`` frames whose long side exceeds ``max_aspect`` times the short one, cut
    to that aspect ratio (a view); other frames as they are."""
    h, w = x.shape[-2:]
    if w > max_aspect * h:
        keep = max(1, int(max_aspect * h))
        left = (w - keep) // 2
        return x[..., left : left + keep]
    if h > max_aspect * w:
        keep = max(1, int(max_aspect * w))
        top = (h - keep) // 2
        return x[..., top : top + keep, :]
    return x


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from {w}x{h}")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def letterbox(x: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Resize the long side to ``size`` and pad the short side (centred) with ``fill``: a square."""
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = resize(x, nh, nw)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(x, (left, size - nw - left, top, size - nh - top), value=fill)


def preprocess(frames: torch.Tensor, input_cfg: InputSpec, fit: Fit = "crop") -> torch.Tensor:
    """Decoded uint8 ``(T, H, W, C)`` -> normalised float ``(C, T, img_size, img_size)``.

    ``fit="crop"`` (default, the training/test recipe): resize the short side to ``img_size``, centre
    crop (frames beyond ``MAX_CROP_ASPECT`` first cut to it). ``fit="letterbox"``: keep the whole frame, pad
    to square with the mean colour (0 after normalisation). Uint8 frames are resized as uint8 and only the
    result is converted to float (module docstring).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2) if frames.dtype == torch.uint8 else to_float_tchw(frames)
    size = int(input_cfg.img_size)
    if fit == "crop":
        x = center_crop(resize_short_side(cap_aspect(x, MAX_CROP_ASPECT), size), size).float()
    elif fit == "letterbox":
        x = letterbox(x, size, fill=0.0).float()
        x = normalize(x, input_cfg.mean, input_cfg.std)
        pad_mask = _pad_mask(frames.shape[1], frames.shape[2], size)
        return to_cthw(x.masked_fill(pad_mask, 0.0))
    else:
        raise ValueError(f"unknown fit {fit!r}")
    return to_cthw(normalize(x, input_cfg.mean, input_cfg.std))


def _pad_mask(h: int, w: int, size: int) -> torch.Tensor:
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    m = torch.ones(1, 1, size, size, dtype=torch.bool)
    m[..., top : top + nh, left : left + nw] = False
    return m
