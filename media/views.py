"""What part of the picture is embedded: border removal, the inner picture of a picture-in-picture, views.

All functions take decoded uint8 frames ``(T, H, W, C)`` (RGB) and work in pixel coordinates of those
frames; a box is ``Box(x, y, w, h)``.

**Borders** (`active_box`). Letterbox, pillarbox and any constant-colour padding. A row (column) at the
edge of the frame belongs to a border when it is flat over all the given frames: its pixels' standard
deviation (over width and time) is below `BorderConfig.flat_std` in every channel and its mean colour is
within `BorderConfig.colour_tol` of the outermost row's. Borders are scanned from each edge inwards; the
active picture is what is left. Borders thinner than `min_fraction` of the side are ignored (encoder
noise at the edge), and a result smaller than `min_active` of a side is refused (a flat video is not
all border).

**Inner picture** (`inner_box`). A picture-in-picture copy shows the video scaled down over some other
background. Its edges are straight lines that stay put while the video plays: the time-averaged
horizontal and vertical gradients have strong lines at the inner picture's sides. Every rectangle whose
sides lie on the strongest column and row lines is scored by its weakest side (mean gradient along that
side over the frame's median gradient); rectangles scoring at least `edge_ratio`, covering between
`min_area` and `max_area` of the frame, are convincing, and the largest of those close to the best
score is the inner picture (edges of the content can close smaller rectangles inside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Picture = Literal["rgb", "grey"]


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def is_full(self, width: int, height: int) -> bool:
        return (self.x, self.y, self.w, self.h) == (0, 0, width, height)


STAT_SAMPLES = 160  # pixels per line used for a border line's statistics


@dataclass(frozen=True)
class BorderConfig:
    flat_std: float = 6.0  # 0-255: a border row/column is this flat in every channel (over pixels and time)
    colour_tol: float = 10.0  # and this close to the outermost row's mean colour
    min_fraction: float = 0.02  # thinner borders are ignored
    min_active: float = 0.3  # the active picture keeps at least this much of each side


@dataclass(frozen=True)
class InnerConfig:
    min_side: float = 0.2  # the inner picture is at least this fraction of each side
    max_area: float = 0.7  # and covers at most this fraction of the frame
    min_area: float = 0.06
    edge_ratio: float = 4.0  # its weakest side's mean gradient over the frame's median gradient
    keep_fraction: float = 0.3  # rectangles this close to the strongest count as convincing
    candidates: int = 10  # strongest column and row edge lines tried as sides
    work_width: int = 160  # detection runs on frames downscaled to this width


def crop(frames: torch.Tensor, box: Box) -> torch.Tensor:
    """``(T, H, W, C)`` -> the box's pixels."""
    return frames[:, box.y : box.y + box.h, box.x : box.x + box.w]


def mirror(frames: torch.Tensor) -> torch.Tensor:
    """Left-right mirror image of ``(T, H, W, C)`` frames."""
    return frames.flip(2)


def _flat_run(mean: torch.Tensor, std: torch.Tensor, cfg: BorderConfig) -> int:
    """How many leading lines (rows or columns; ``mean``/``std`` are (L, C)) are flat border lines."""
    ref = mean[0]
    ok = (std <= cfg.flat_std).all(dim=1) & ((mean - ref).abs() <= cfg.colour_tol).all(dim=1)
    bad = (~ok).nonzero()
    return int(bad[0]) if len(bad) else len(ok)


def active_box(frames: torch.Tensor, cfg: BorderConfig = BorderConfig()) -> Box:
    """The picture inside constant-colour borders (the whole frame when there are none)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    # every row's statistics over a column subsample (and every column's over a row subsample): the
    # border lines stay exact while the cost stays that of a ~STAT_SAMPLES-pixel line
    cs_, rs_ = max(1, w // STAT_SAMPLES), max(1, h // STAT_SAMPLES)
    rows = frames[:, :, ::cs_].permute(1, 0, 2, 3).reshape(h, -1, 3).float()  # (H, T*W', C)
    cols = frames[:, ::rs_].permute(2, 0, 1, 3).reshape(w, -1, 3).float()  # (W, T*H', C)
    rm, rs = rows.mean(1), rows.std(1, correction=0)
    cm, cs = cols.mean(1), cols.std(1, correction=0)
    top = _flat_run(rm, rs, cfg)
    bottom = _flat_run(rm.flip(0), rs.flip(0), cfg)
    left = _flat_run(cm, cs, cfg)
    right = _flat_run(cm.flip(0), cs.flip(0), cfg)
    top, bottom = (v if v >= cfg.min_fraction * h else 0 for v in (top, bottom))
    left, right = (v if v >= cfg.min_fraction * w else 0 for v in (left, right))
    bh, bw = h - top - bottom, w - left - right
    if bh < cfg.min_active * h:
        top, bottom, bh = 0, 0, h
    if bw < cfg.min_active * w:
        left, right, bw = 0, 0, w
    return Box(left, top, bw, bh)


def _local_maxima(profile: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` strongest local maxima of a 1-d profile."""
    p = profile
    left = torch.cat([p.new_full((1,), -1.0), p[:-1]])
    right = torch.cat([p[1:], p.new_full((1,), -1.0)])
    idx = ((p >= left) & (p >= right) & (p > 0)).nonzero().flatten()
    return idx[p[idx].argsort(descending=True)[:count]]


def inner_box(frames: torch.Tensor, cfg: InnerConfig = InnerConfig()) -> Box | None:
    """The inner picture of a picture-in-picture frame, or None when there is no convincing one."""
    _, h, w, _ = frames.shape
    scale = min(1.0, cfg.work_width / w)
    step = max(1, int(w // (2 * cfg.work_width)))  # subsample to ~2x the work size before any float copy
    grey = (frames[:, ::step, ::step].float() @ torch.tensor([0.299, 0.587, 0.114])).unsqueeze(1)  # (T, 1, H', W')
    sh, sw = max(8, round(h * scale)), max(8, round(w * scale))
    if (grey.shape[-2], grey.shape[-1]) != (sh, sw):
        grey = F.interpolate(grey, size=(sh, sw), mode="area")
    g = grey[:, 0]
    gx = (g[:, :, 1:] - g[:, :, :-1]).abs().mean(0)  # (sh, sw-1): the edge between columns i and i+1
    gy = (g[:, 1:, :] - g[:, :-1, :]).abs().mean(0)  # (sh-1, sw)
    typical = float(torch.cat([gx.flatten(), gy.flatten()]).median()) + 1.0
    xs = _local_maxima(gx.mean(0), cfg.candidates)
    ys = _local_maxima(gy.mean(1), cfg.candidates)
    if len(xs) < 2 or len(ys) < 2:
        return None
    # side strengths of every candidate rectangle from running sums along each edge line
    cx = torch.cat([gx.new_zeros(1, gx.shape[1]), gx.cumsum(0)])  # (sh+1, sw-1): sum of rows < y
    cy = torch.cat([gy.new_zeros(gy.shape[0], 1), gy.cumsum(1)], dim=1)  # (sh-1, sw+1)
    x0, x1 = torch.meshgrid(xs, xs, indexing="ij")
    y0, y1 = torch.meshgrid(ys, ys, indexing="ij")
    xp = (x0 < x1) & (x1 - x0 >= cfg.min_side * sw)
    yp = (y0 < y1) & (y1 - y0 >= cfg.min_side * sh)
    x0, x1, y0, y1 = x0[xp], x1[xp], y0[yp], y1[yp]
    if not len(x0) or not len(y0):
        return None
    X0, Y0 = x0[:, None], y0[None, :]
    X1, Y1 = x1[:, None], y1[None, :]
    ny, nx = (Y1 - Y0).float(), (X1 - X0).float()
    left = (cx[Y1 + 1, X0] - cx[Y0 + 1, X0]) / ny  # pixels y0+1 .. y1 of the edge column x0
    right = (cx[Y1 + 1, X1] - cx[Y0 + 1, X1]) / ny
    top = (cy[Y0, X1 + 1] - cy[Y0, X0 + 1]) / nx  # pixels x0+1 .. x1 of the edge row y0
    bottom = (cy[Y1, X1 + 1] - cy[Y1, X0 + 1]) / nx
    strength = torch.stack([left, right, top, bottom]).amin(0) / typical  # (pairs of x, pairs of y)
    area = nx * ny / (sw * sh)
    ok = (strength >= cfg.edge_ratio) & (area >= cfg.min_area) & (area <= cfg.max_area)
    if not ok.any():
        return None
    best = float(strength[ok].max())
    # edges of the content itself can close a smaller rectangle inside the inner picture: of the
    # convincing rectangles, take the largest
    close = ok & (strength >= cfg.keep_fraction * best)
    i, j = divmod(int(torch.where(close, area, -1.0).flatten().argmax()), area.shape[1])
    # an edge sits between pixels i and i+1: the inner picture spans pixels x0+1 .. x1 (work scale)
    bx, by = round((int(x0[i]) + 1) / scale), round((int(y0[j]) + 1) / scale)
    bw, bh = round(int(x1[i] - x0[i]) / scale), round(int(y1[j] - y0[j]) / scale)
    return Box(bx, by, min(bw, w - bx), min(bh, h - by))


def grey_normalised(clip: torch.Tensor, std: float = 0.5) -> torch.Tensor:
    """A photometric normal form of a preprocessed clip ``(C, T, H, W)``: each frame's luma (ITU-R 601),
    standardised to mean 0 and standard deviation ``std`` (a flat frame stays 0), in all three channels.
    Grey copies, hue and saturation changes (which leave luma alone) and brightness/contrast changes
    (affine in luma, up to clipping) give the same clip."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=clip.dtype).view(3, 1, 1, 1)
    y = (clip * w).sum(0)  # (T, H, W)
    mean = y.mean(dim=(1, 2), keepdim=True)
    dev = y.std(dim=(1, 2), keepdim=True, correction=0)
    y = torch.where(dev > 1e-3, (y - mean) / dev.clamp_min(1e-3) * std, torch.zeros_like(y))
    return y.unsqueeze(0).expand(3, -1, -1, -1).contiguous()
