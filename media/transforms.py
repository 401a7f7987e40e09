"""The one deterministic preprocessing path (torch only): layout, resize, crop or letterbox, normalisation.

Layouts: decoded frames are uint8 ``(T, H, W, C)`` RGB; every op below works on float ``(T, C, H, W)``
in the 0-255 pixel range (batched over T, so one clip gets one random draw), and ``preprocess`` returns
the normalised ``(C, T, H, W)`` clip the model takes (stack clips for ``(N, C, T, H, W)``).

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
    """Bilinear (antialiased) resize of 0-255 ``(T, C, H, W)`` frames."""
    if (x.shape[-2], x.shape[-1]) == (height, width):
        return x
    # antialiased bilinear can overshoot by a hair: keep the 0-255 pixel range exact
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return y.clamp_(0.0, 255.0)


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Scale so the shorter side is ``size``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    if h <= w:
        return resize(x, size, max(size, round(w * size / h)))
    return resize(x, max(size, round(h * size / w)), size)


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
    crop. ``fit="letterbox"``: keep the whole frame, pad to square with the mean colour (0 after
    normalisation).
    """
    x = to_float_tchw(frames)
    size = int(input_cfg.img_size)
    if fit == "crop":
        x = center_crop(resize_short_side(x, size), size)
    elif fit == "letterbox":
        x = letterbox(x, size, fill=0.0)
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
