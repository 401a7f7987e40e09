"""Training augmentations (torch only), applied identically to every frame of a clip.

Every op works on float ``(T, C, H, W)`` in the 0-255 pixel range (batched over T, so one clip gets one
random draw); ``preprocess_train`` is the training counterpart of ``media.transforms.preprocess``.
Random ops take a ``torch.Generator`` so a seed reproduces a clip exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from media.transforms import InputSpec, center_crop, normalize, resize, to_cthw, to_float_tchw


# ----------------------------------------------------------------------------- augmentations
def _uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator | None, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    g: torch.Generator | None = None,
) -> torch.Tensor:
    """One crop box (area fraction in ``scale``, aspect in ``ratio``) for all T frames, resized to square."""
    h, w = x.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, math.log(ratio[0]), math.log(ratio[1])))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = _randint(g, 0, h - ch), _randint(g, 0, w - cw)
            return resize(x[..., top : top + ch, left : left + cw], size, size)
    side = min(h, w)  # fallback: the central square
    return resize(center_crop(x, side), size, size)


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return (x * factor).clamp(0, 255)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 255)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    gray = grayscale(x)
    return ((x - gray) * factor + gray).clamp(0, 255)


# RGB <-> YIQ (NTSC): a hue shift is a rotation of the I/Q chroma plane around the luma axis Y.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def adjust_hue(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the hue of 0-255 ``(T, 3, H, W)`` frames by ``degrees`` (YIQ chroma rotation), clamped."""
    a = math.radians(degrees)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    m = (_YIQ2RGB @ rot @ _RGB2YIQ).to(x.dtype)
    return torch.einsum("ij,tjhw->tihw", m, x).clamp(0, 255)


def color_jitter(
    x: torch.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    g: torch.Generator | None = None,
) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn once per clip from ``[1-v, 1+v]``, random order."""
    ops = [
        (adjust_brightness, brightness),
        (adjust_contrast, contrast),
        (adjust_saturation, saturation),
    ]
    order = torch.randperm(len(ops), generator=g).tolist()
    for i in order:
        fn, v = ops[i]
        if v > 0:
            x = fn(x, _uniform(g, max(0.0, 1 - v), 1 + v))
    return x


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, repeated over the 3 channels."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True).expand_as(x)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding), same kernel for every frame and channel."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, (min(x.shape[-2:]) - 1))
    if radius < 1:
        return x
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    t, c, h, w = x.shape
    y = x.reshape(t * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(t, c, h, w)


def overlay_patch(
    x: torch.Tensor,
    g: torch.Generator | None = None,
    max_area: float = 0.15,
    text_like: bool = True,
) -> torch.Tensor:
    """Paste a fixed box (a logo / caption stand-in) at a random place on every frame.

    With ``text_like`` the box carries a random pattern of light "glyph" blocks on a dark band, which is
    what burned-in subtitles and watermarks look like at this resolution.
    """
    t, c, h, w = x.shape
    bw = max(2, round(w * _uniform(g, 0.2, 0.8)))
    bh = max(2, min(h, round(max_area * h * w / bw)))
    top, left = _randint(g, 0, h - bh), _randint(g, 0, w - bw)
    color = torch.rand(3, generator=g) * 255
    box = color.view(3, 1, 1).expand(3, bh, bw).clone()
    if text_like:
        cols = max(1, bw // 6)
        rows = max(1, bh // 8)
        glyphs = torch.rand(rows, cols, generator=g) < 0.5
        mask = F.interpolate(glyphs[None, None].float(), size=(bh, bw), mode="nearest")[0, 0].bool()
        box = torch.where(mask, 255.0 - box, box * 0.3)
    out = x.clone()
    out[:, :, top : top + bh, left : left + bw] = box
    return out


def picture_in_picture(
    x: torch.Tensor,
    g: torch.Generator | None = None,
    scale: tuple[float, float] = (0.4, 0.8),
) -> torch.Tensor:
    """Shrink the video and place it on a random background (flat colour or smooth noise)."""
    t, c, h, w = x.shape
    s = _uniform(g, *scale)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if bool(torch.rand((), generator=g) < 0.5):
        bg = (torch.rand(3, generator=g) * 255).view(1, 3, 1, 1).expand(t, 3, h, w)
    else:
        coarse = torch.rand(1, 3, 4, 4, generator=g) * 255
        bg = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).expand(t, 3, h, w)
    out = bg.clone()
    top, left = _randint(g, 0, h - nh), _randint(g, 0, w - nw)
    out[:, :, top : top + nh, left : left + nw] = resize(x, nh, nw)
    return out


def random_pad(x: torch.Tensor, g: torch.Generator | None = None, max_frac: float = 0.25) -> torch.Tensor:
    """Black bars (letterbox or pillarbox) of random thickness, output the same size as the input."""
    t, c, h, w = x.shape
    if bool(torch.rand((), generator=g) < 0.5):
        pad = round(h * _uniform(g, 0.05, max_frac) / 2)
        inner = resize(x, max(1, h - 2 * pad), w)
        return F.pad(inner, (0, 0, pad, h - inner.shape[-2] - pad))
    pad = round(w * _uniform(g, 0.05, max_frac) / 2)
    inner = resize(x, h, max(1, w - 2 * pad))
    return F.pad(inner, (pad, w - inner.shape[-1] - pad, 0, 0))


def random_zoom(x: torch.Tensor, g: torch.Generator | None = None, min_keep: float = 0.6) -> torch.Tensor:
    """Centre crop keeping a random fraction of each side, resized back to the input size."""
    h, w = x.shape[-2:]
    keep = _uniform(g, min_keep, 1.0)
    ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(x[..., top : top + ch, left : left + cw], h, w)


def downscale(x: torch.Tensor, g: torch.Generator | None = None, scale: tuple[float, float] = (0.25, 0.6)) -> torch.Tensor:
    """Shrink by a random factor and scale back up: the detail a low-resolution copy loses."""
    h, w = x.shape[-2:]
    s = _uniform(g, *scale)
    small = resize(x, max(8, round(h * s)), max(8, round(w * s)))
    return resize(small, h, w).clamp(0, 255)


def jpeg(x: torch.Tensor, g: torch.Generator | None = None, quality: tuple[int, int] = (15, 60)) -> torch.Tensor:
    """Re-encode every frame as a JPEG of one random quality (the blocking and ringing of a re-encode)."""
    import io

    import numpy as np
    from PIL import Image

    q = _randint(g, *quality)
    out = []
    for frame in x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=q)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.dtype)


# ------------------------------------------------------------------------------ the recipes
@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentations, applied identically to every frame of a clip. Defaults in one place.

    The temporal half of augmentation (a random clip offset) is the sampler's train mode
    (``SampleFrames(test_mode=False)`` / ``uniform_sample(test_mode=False)``).
    """

    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0  # max hue rotation in degrees, drawn from [-hue, hue] with the colour jitter
    # near-duplicate robustness (0 disables each)
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    overlay_p: float = 0.0
    pip_p: float = 0.0
    pad_p: float = 0.0
    zoom_p: float = 0.0
    downscale_p: float = 0.0
    jpeg_p: float = 0.0


NEAR_DUPLICATE_AUGMENT = AugmentConfig(
    hue=90.0, grayscale_p=0.25, blur_p=0.3, overlay_p=0.4, pip_p=0.2, pad_p=0.25, zoom_p=0.2
)


def _p(g: torch.Generator | None, p: float) -> bool:
    return p > 0 and bool(torch.rand((), generator=g) < p)


def augment(x: torch.Tensor, size: int, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """float ``(T, C, H, W)`` 0-255 -> augmented float ``(T, C, size, size)`` 0-255."""
    if _p(g, cfg.pip_p):
        x = picture_in_picture(x, g)
    if _p(g, cfg.pad_p):
        x = random_pad(x, g)
    if _p(g, cfg.zoom_p):
        x = random_zoom(x, g)
    x = random_resized_crop(x, size, cfg.crop_scale, cfg.crop_ratio, g)
    if _p(g, cfg.flip_p):
        x = hflip(x)
    if _p(g, cfg.jitter_p):
        x = color_jitter(x, cfg.brightness, cfg.contrast, cfg.saturation, g)
        if cfg.hue > 0:
            x = adjust_hue(x, _uniform(g, -cfg.hue, cfg.hue))
    if _p(g, cfg.grayscale_p):
        x = grayscale(x)
    if _p(g, cfg.blur_p):
        x = gaussian_blur(x, _uniform(g, *cfg.blur_sigma))
    if _p(g, cfg.overlay_p):
        x = overlay_patch(x, g)
    if _p(g, cfg.downscale_p):
        x = downscale(x, g)
    if _p(g, cfg.jpeg_p):
        x = jpeg(x, g)
    return x


def preprocess_train(
    frames: torch.Tensor,
    input_cfg: InputSpec,
    cfg: AugmentConfig = AugmentConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    g: torch.Generator | None = None,
) -> torch.Tensor:
    """Training counterpart of ``preprocess``: uint8 ``(T, H, W, C)`` -> normalised ``(C, T, S, S)``."""
    x = augment(to_float_tchw(frames), int(input_cfg.img_size), cfg, g)
    return to_cthw(normalize(x, input_cfg.mean, input_cfg.std))
