"""`drca synth`: a synthetic labelled video data set that needs both appearance and motion.

Each class is a (shape, motion) pair. Every shape appears with opposite motions (right/left, up/down,
clockwise/anticlockwise, growing/shrinking) in different classes, and every motion appears with several
shapes, so neither one frame nor a colour statistic identifies the class: colours, sizes, start
positions, speeds, backgrounds (gradient, smoothed noise, stripes, checkers), distractor objects and a
small camera jitter are all random per video. The main object spans 30-45% of the short side and its
motion is clear across 8 frames spread over the clip (rotation stays under 30 deg/s so that a square's
90-degree symmetry cannot alias the direction even at 1.3 s between sampled frames).

Everything is a function of the seed: video ``i`` of class ``c`` draws from
``numpy.random.default_rng([seed, c, i])``, so the output does not depend on the number of worker
processes or their scheduling. Frames are encoded as H.264 yuv420p mp4 by the ffmpeg from
``imageio_ffmpeg`` with fixed x264 settings, one thread and bit-exact muxing, so the bytes are
reproducible on the same ffmpeg build.

Output layout (``OUT``):
    videos/<class>_<index>.mp4
    classes.txt                  one class name per line; line i is label i
    train.txt, val.txt, test.txt mmaction video lists (``videos/x.mp4 label``; data_prefix = OUT)
    captions.jsonl               {"video", "label", "class", "split", "caption"} per video
    synth.json                   the configuration and the split sizes
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from enum import StrEnum
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data.annotations import VideoRecord, write_video_list

logger = logging.getLogger(__name__)


class SynthError(RuntimeError):
    """Bad synth configuration or output folder, or ffmpeg failed."""


class Shape(StrEnum):
    SQUARE = "square"
    TRIANGLE = "triangle"
    CROSS = "cross"
    CIRCLE = "circle"


class Motion(StrEnum):
    RIGHT = "right"
    LEFT = "left"
    UP = "up"
    DOWN = "down"
    CLOCKWISE = "clockwise"
    ANTICLOCKWISE = "anticlockwise"
    GROW = "grow"
    SHRINK = "shrink"


# Ordered so that any prefix of an even length holds complete opposite pairs; the default 12 classes are
# {square, triangle, cross} x {right, left, clockwise, anticlockwise}. A circle never rotates (invisible).
_ROTATING = (Shape.SQUARE, Shape.TRIANGLE, Shape.CROSS)
CLASS_TABLE: tuple[tuple[Shape, Motion], ...] = (
    *((s, m) for s in _ROTATING for m in (Motion.RIGHT, Motion.LEFT, Motion.CLOCKWISE, Motion.ANTICLOCKWISE)),
    *((s, m) for s in _ROTATING for m in (Motion.UP, Motion.DOWN, Motion.GROW, Motion.SHRINK)),
    *((Shape.CIRCLE, m) for m in (Motion.RIGHT, Motion.LEFT, Motion.UP, Motion.DOWN, Motion.GROW, Motion.SHRINK)),
)

_MOTION_TEXT = {
    Motion.RIGHT: "moves from left to right",
    Motion.LEFT: "moves from right to left",
    Motion.UP: "moves upwards",
    Motion.DOWN: "moves downwards",
    Motion.CLOCKWISE: "rotates clockwise",
    Motion.ANTICLOCKWISE: "rotates anticlockwise",
    Motion.GROW: "grows larger",
    Motion.SHRINK: "shrinks",
}

# Named colours (RGB 0-255): the caption names the one the object colour was drawn around.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (240, 140, 20), "yellow": (235, 220, 40), "green": (40, 180, 60),
    "cyan": (40, 210, 220), "blue": (40, 70, 220), "purple": (140, 50, 200), "magenta": (220, 50, 180),
    "white": (240, 240, 240), "black": (20, 20, 20), "brown": (130, 80, 40), "pink": (245, 160, 190),
}


class Background(StrEnum):
    GRADIENT = "gradient"
    NOISE = "noise"
    STRIPES = "stripes"
    CHECKER = "checker"


_BACKGROUND_TEXT = {
    Background.GRADIENT: "a smooth colour gradient",
    Background.NOISE: "a blotchy noise texture",
    Background.STRIPES: "a striped",
    Background.CHECKER: "a checkered",
}


def class_name(shape: Shape, motion: Motion) -> str:
    return f"{shape}_{motion}"


@dataclass(frozen=True)
class SynthConfig:
    num_classes: int = 12
    videos_per_class: int = 50
    seed: int = 0
    width: int = 160
    height: int = 120
    fps: int = 25
    min_seconds: float = 3.0
    max_seconds: float = 6.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    crf: int = 20

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(CLASS_TABLE):
            raise SynthError(f"num_classes must be in [2, {len(CLASS_TABLE)}], got {self.num_classes}")
        if self.videos_per_class < 1:
            raise SynthError(f"videos_per_class must be >= 1, got {self.videos_per_class}")
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise SynthError(f"size must be even and at least 32x32 (H.264 yuv420p), got {self.width}x{self.height}")
        if not 1 <= self.fps <= 120:
            raise SynthError(f"fps must be in [1, 120], got {self.fps}")
        if not 0.2 <= self.min_seconds <= self.max_seconds <= 600:
            raise SynthError(f"need 0.2 <= min_seconds <= max_seconds <= 600, got {self.min_seconds}, {self.max_seconds}")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise SynthError("val_fraction and test_fraction must be >= 0 and sum to < 1")

    @property
    def classes(self) -> list[str]:
        return [class_name(s, m) for s, m in CLASS_TABLE[: self.num_classes]]


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video; drawn from ``default_rng([seed, label, index])``."""

    label: int
    index: int
    file: str  # relative to OUT


@dataclass(frozen=True)
class SynthResult:
    out: Path
    num_classes: int
    num_videos: int
    split_sizes: dict[str, int]


# --------------------------------------------------------------------------------------------- rendering


def _inside(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of points inside the unit shape; ``u`` right, ``v`` up, in object coordinates."""
    if shape is Shape.SQUARE:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape is Shape.CIRCLE:
        return u * u + v * v <= 1.0
    if shape is Shape.CROSS:
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.0) & (av <= 0.3)) | ((au <= 0.3) & (av <= 1.0))
    # Equilateral triangle, circumradius 1, apex up: three half-planes at distance 0.5 from the centre.
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = -math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
    return inside


def _background(kind: Background, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """A float (h, w, 3) background in [0, 1] and its caption phrase."""
    c1, c2 = rng.uniform(0.1, 0.9, size=3), rng.uniform(0.1, 0.9, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind is Background.GRADIENT:
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind is Background.NOISE:
        gh, gw = max(2, h // 16), max(2, w // 16)
        coarse = rng.uniform(0, 1, size=(gh, gw)).astype(np.float32)
        # Bilinear upsampling of a coarse grid gives soft blotches.
        ys, xs = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        t = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y1][:, x0] * fy * (1 - fx)
             + coarse[y0][:, x1] * (1 - fy) * fx + coarse[y1][:, x1] * fy * fx)
    elif kind is Background.STRIPES:
        a, period = rng.uniform(0, math.pi), rng.uniform(8, 24)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
    else:
        cell = int(rng.integers(8, 20))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    t = t[..., None]
    img = c1 * (1 - t) + c2 * t
    img += rng.normal(0, 0.02, size=img.shape)  # fine grain so flat areas are not trivially compressible
    return np.clip(img, 0, 1).astype(np.float32), _BACKGROUND_TEXT[kind]


def _pick_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple[str, np.ndarray]:
    """A palette colour (jittered) that contrasts with the background mean."""
    names = list(PALETTE)
    order = rng.permutation(len(names))
    best = names[order[0]]
    for i in order:
        rgb = np.asarray(PALETTE[names[i]], dtype=np.float32) / 255
        if np.abs(rgb - bg_mean).sum() > 0.6:
            best = names[i]
            break
    rgb = np.asarray(PALETTE[best], dtype=np.float32) / 255 + rng.uniform(-0.05, 0.05, size=3)
    return best, np.clip(rgb, 0, 1).astype(np.float32)


def _size_word(diameter_frac: float) -> str:
    return "small" if diameter_frac < 0.2 else "medium-sized" if diameter_frac < 0.38 else "large"


def render_video(cfg: SynthConfig, spec: VideoSpec) -> tuple[np.ndarray, str]:
    """Render one video: frames uint8 (T, H, W, 3) and its caption."""
    shape, motion = CLASS_TABLE[spec.label]
    rng = np.random.default_rng([cfg.seed, spec.label, spec.index])
    h, w, fps = cfg.height, cfg.width, cfg.fps
    seconds = float(rng.uniform(cfg.min_seconds, cfg.max_seconds))
    n = max(2, int(round(seconds * fps)))
    t = np.arange(n, dtype=np.float32) / fps  # seconds
    duration = n / fps
    short = min(h, w)

    # Camera jitter: a smoothed random walk of at most ~3 px applied to everything.
    margin = 4
    bg_kind = Background(rng.choice([b.value for b in Background]))
    bg, bg_text = _background(bg_kind, rng, h + 2 * margin, w + 2 * margin)
    steps = rng.normal(0, 0.6, size=(n, 2)).cumsum(axis=0)
    jitter = np.clip(steps - steps.mean(axis=0), -3, 3)

    colour_name, colour = _pick_colour(rng, bg.mean(axis=(0, 1)))
    radius = 0.5 * rng.uniform(0.30, 0.45) * short  # circumradius in px: diameter 30-45% of short side
    angle0 = rng.uniform(0, 2 * math.pi)
    angle = np.full(n, angle0, dtype=np.float32)
    scale = np.ones(n, dtype=np.float32)
    cx = np.full(n, rng.uniform(radius, w - radius), dtype=np.float32)
    cy = np.full(n, rng.uniform(radius, h - radius), dtype=np.float32)

    if motion in (Motion.RIGHT, Motion.LEFT, Motion.UP, Motion.DOWN):
        horizontal = motion in (Motion.RIGHT, Motion.LEFT)
        extent = (w if horizontal else h) - 2 * radius
        travel = rng.uniform(0.55, 0.9) * extent
        start = rng.uniform(radius, radius + extent - travel)
        sign = 1.0 if motion in (Motion.RIGHT, Motion.DOWN) else -1.0
        pos = start + travel * t / duration
        if sign < 0:
            pos = 2 * start + travel - pos  # same span, reversed
        wobble = rng.uniform(0, 0.04) * short * np.sin(2 * math.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6.3))
        if horizontal:
            cx, cy = pos, cy + wobble
        else:
            cx, cy = cx + wobble, pos
    elif motion in (Motion.CLOCKWISE, Motion.ANTICLOCKWISE):
        # Image y points down, so a positive angle in (u right, v up) coordinates turns anticlockwise on screen.
        speed = math.radians(rng.uniform(15, 30))
        angle = angle0 + (-speed if motion is Motion.CLOCKWISE else speed) * t
        drift = rng.uniform(-0.05, 0.05, size=2) * short
        cx = cx + drift[0] * t / duration
        cy = cy + drift[1] * t / duration
        margin_r = radius * 1.05
        cx, cy = np.clip(cx, margin_r, w - margin_r), np.clip(cy, margin_r, h - margin_r)
    else:  # grow / shrink between 0.55x and 1.0x ... 1.25x of the base radius
        lo, hi = rng.uniform(0.5, 0.65), rng.uniform(1.1, 1.25)
        ramp = t / duration
        scale = lo + (hi - lo) * (ramp if motion is Motion.GROW else 1 - ramp)
        cx = np.full(n, np.clip(cx[0], radius * hi, w - radius * hi), dtype=np.float32)
        cy = np.full(n, np.clip(cy[0], radius * hi, h - radius * hi), dtype=np.float32)

    # Distractors: 1-3 small shapes wandering in random directions, any shape and colour.
    n_distract = int(rng.integers(1, 4))
    distractors = []
    for _ in range(n_distract):
        d_shape = Shape(rng.choice([s.value for s in Shape]))
        d_radius = 0.5 * rng.uniform(0.08, 0.14) * short
        d_colour = rng.uniform(0, 1, size=3).astype(np.float32)
        p0 = rng.uniform([0, 0], [w, h])
        vel = rng.normal(0, 0.15 * short, size=2)  # px / s
        d_angle = rng.uniform(0, 2 * math.pi) + rng.normal(0, 0.5) * t
        path = p0 + vel * t[:, None]
        path = np.abs(np.mod(path, 2 * np.array([w, h])) - np.array([w, h]))  # bounce inside the frame
        path = np.array([w, h]) - path
        distractors.append((d_shape, d_radius, d_colour, path, d_angle))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        ox, oy = jitter[i]
        x0, y0 = margin + int(round(ox)), margin + int(round(oy))
        img = bg[y0 : y0 + h, x0 : x0 + w].copy()
        layers = [(d[0], d[1], d[2], d[3][i, 0], d[3][i, 1], d[4][i]) for d in distractors]
        # The main object is drawn last among the first half of the distractors: some pass in front of it.
        split = len(layers) // 2
        main = (shape, radius * scale[i], colour, cx[i], cy[i], angle[i])
        for s, r, c, px, py, a in [*layers[:split], main, *layers[split:]]:
            dx, dy = (xx - px - ox) / r, -(yy - py - oy) / r  # v axis points up
            ca, sa = math.cos(a), math.sin(a)
            u, v = dx * ca + dy * sa, -dx * sa + dy * ca
            img[_inside(s, u, v)] = c
        frames[i] = (img * 255 + 0.5).astype(np.uint8)

    n_word = {1: "one", 2: "two", 3: "three"}[n_distract]
    plural, verb = ("", "drifts") if n_distract == 1 else ("s", "drift")
    bg_phrase = bg_text if bg_kind in (Background.GRADIENT, Background.NOISE) else f"{bg_text} background"
    caption = (
        f"A {_size_word(2 * radius / short)} {colour_name} {shape} {_MOTION_TEXT[motion]} "
        f"over {bg_phrase}, while {n_word} small distractor object{plural} {verb} around."
    )
    return frames, caption


# ---------------------------------------------------------------------------------------------- encoding


def encode_mp4(frames: np.ndarray, fps: int, path: Path, crf: int = 20) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) as H.264 yuv420p mp4, reproducibly (one thread, bit-exact mux)."""
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-threads", "1", "-x264-params", "threads=1:lookahead-threads=1",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-movflags", "+faststart", "-f", "mp4", str(path),
    ]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise SynthError(f"ffmpeg failed for {path.name}: {proc.stderr.decode(errors='replace').strip()[-300:]}")


def _make_video(cfg: SynthConfig, spec: VideoSpec, out: Path) -> tuple[VideoSpec, str]:
    frames, caption = render_video(cfg, spec)
    target = out / spec.file
    tmp = target.with_name(target.stem + ".partial.mp4")
    encode_mp4(frames, cfg.fps, tmp, cfg.crf)
    os.replace(tmp, target)
    return spec, caption


# ----------------------------------------------------------------------------------------------- dataset


def split_indices(cfg: SynthConfig) -> dict[str, list[int]]:
    """Stratified split of one class's video indices: the same for every class (shuffled by the seed)."""
    n = cfg.videos_per_class
    n_test = int(round(cfg.test_fraction * n))
    n_val = int(round(cfg.val_fraction * n))
    if n >= 2 and cfg.test_fraction > 0:
        n_test = max(n_test, 1)
    if n >= 3 and cfg.val_fraction > 0:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - n_test - 1, 0))
    order = np.random.default_rng([cfg.seed, 7919]).permutation(n).tolist()
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def generate(out: str | Path, cfg: SynthConfig, workers: int = 2) -> SynthResult:
    """Render, encode and write the whole data set to ``out`` (which must be absent or empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"output folder {out} exists and is not empty")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    classes = cfg.classes
    specs = [
        VideoSpec(label=c, index=i, file=f"videos/{classes[c]}_{i:04d}.mp4")
        for c in range(cfg.num_classes)
        for i in range(cfg.videos_per_class)
    ]
    captions: dict[tuple[int, int], str] = {}
    with tqdm(total=len(specs), desc="synth", unit="video") as bar:
        if workers <= 1:
            for spec in specs:
                _, captions[(spec.label, spec.index)] = _make_video(cfg, spec, out)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_make_video, cfg, spec, out) for spec in specs]
                for fut in as_completed(futures):
                    spec, caption = fut.result()
                    captions[(spec.label, spec.index)] = caption
                    bar.update()

    splits = split_indices(cfg)
    split_of = {i: name for name, idx in splits.items() for i in idx}
    for name, idx in splits.items():
        records = [VideoRecord(path=out / s.file, label=s.label) for s in specs if s.index in set(idx)]
        write_video_list(out / f"{name}.txt", records, data_prefix=out)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    with (out / "captions.jsonl").open("w", encoding="utf-8") as f:
        for s in specs:
            row = {"video": s.file, "label": s.label, "class": classes[s.label],
                   "split": split_of[s.index], "caption": captions[(s.label, s.index)]}
            f.write(json.dumps(row) + "\n")
    sizes = {name: len(idx) * cfg.num_classes for name, idx in splits.items()}
    meta = {"config": asdict(cfg), "classes": classes, "split_sizes": sizes, "num_videos": len(specs)}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d synthetic videos to %s", len(specs), out)
    return SynthResult(out=out, num_classes=cfg.num_classes, num_videos=len(specs), split_sizes=sizes)
