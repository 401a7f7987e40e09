"""Distillation data: real videos and still images made into clips, with the teacher's outputs cached once.

Sources: a `drca media fetch-real` folder (``videos/``, ``images/``, ``manifest.json``). The held-out split
(`SPLIT_FILE`, committed) names the real videos never trained on; still images are held out by content
(``is_heldout_image``: a fifth of them, by their sha256), so a picture copied under another name stays on
its side.

A clip is ``num_frames`` frames rendered through a camera path: a square crop box that moves (pan), grows
or shrinks (zoom) and turns (rotation) linearly from a random start to a random end pose. Stills get the
full motion range; a video window gets a gentler one over its own frames (picked with temporal jitter).
Every frame is rendered once at the teacher's size (224 px), the teacher runs on ``teacher_frames`` of
them, and the frames are stored downscaled to the student's size: teacher and student see the same
crop. The cache lives in one folder:

- ``frames.u8``: uint8 memmap ``(N, T, S, S, 3)``, the student's frames;
- ``teacher.safetensors``: ``logits`` float16 ``(N, len(teacher_frames), 1000)`` and ``features``
  float16 ``(N, 1280)`` (the pooled teacher feature, averaged over the teacher frames);
- ``clips.json``: the config it was built with and, per clip, its source file, kind and split.

Building is skipped when a complete cache with the same config and split is there (an interrupted build
starts over).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from media import transforms as T
from training.data.datasets import CacheConfig, cache_video, jittered_indices
from training.data.real import load_image_manifest, load_manifest

log = logging.getLogger(__name__)

SPLIT_FILE = Path(__file__).with_name("heldout.json")
FRAMES = "frames.u8"
TEACHER = "teacher.safetensors"
INDEX = "clips.json"


@dataclass(frozen=True)
class MotionConfig:
    """A camera path: crop side as a fraction of the short side, pan as a fraction of the free room."""

    scale: tuple[float, float] = (0.5, 1.0)
    max_zoom: float = 1.6  # largest ratio of end to start crop side (either way)
    max_pan: float = 1.0  # fraction of the free room the centre may travel
    max_rotation: float = 12.0  # degrees, start and end pose each drawn from [-r, r]


STILL_MOTION = MotionConfig()
VIDEO_MOTION = MotionConfig(scale=(0.6, 1.0), max_zoom=1.25, max_pan=0.4, max_rotation=5.0)


@dataclass(frozen=True)
class ClipCacheConfig:
    """How the distillation clips are made. Defaults in one place."""

    num_frames: int = 8
    student_size: int = 160
    teacher_size: int = 224
    # the frames the teacher sees (its average is the target): first, middle, last of the camera path;
    # the teacher is most of the cache's cost (~0.075 CPU-s a frame at 224 px)
    teacher_frames: tuple[int, ...] = (0, 4, 7)
    clips_per_image: int = 1
    clips_per_window: int = 12  # per cached video window (16 frames at 2 fps)
    image_side: int = 320  # stills are downscaled so their short side is at most this before rendering
    video_side: int = 256  # video windows are cached at this short side
    max_images: int = 0  # 0: every training still; else this many, drawn with ``seed``
    heldout_images: int = 256  # held-out still clips for evaluation during training (0: none)
    seed: int = 0


@dataclass(frozen=True)
class Split:
    heldout_videos: frozenset[str]  # file names under videos/, e.g. opencv-doc__vtest.avi
    image_fraction: float  # the fraction of stills held out (by sha256)


def load_split(path: str | Path = SPLIT_FILE) -> Split:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return Split(frozenset(data["heldout_videos"]), float(data["heldout_image_fraction"]))


def is_heldout_image(sha256: str, fraction: float) -> bool:
    """A still is held out when its sha256 (as a number in [0, 1)) falls below ``fraction``."""
    return int(sha256[:12], 16) / 16**12 < fraction


def heldout_video_paths(real_dir: str | Path, split: Split | None = None) -> list[Path]:
    """The held-out real videos present in a fetch-real folder (sorted)."""
    split = split or load_split()
    names = {Path(v.file).name for v in load_manifest(real_dir)}
    missing = split.heldout_videos - names
    if missing:
        raise ValueError(f"{real_dir}: held-out videos missing from the manifest: {', '.join(sorted(missing))}")
    return sorted(Path(real_dir) / "videos" / n for n in split.heldout_videos)


# ------------------------------------------------------------------------------ camera paths
def camera_path(h: int, w: int, num_frames: int, motion: MotionConfig, rng: np.random.Generator) -> Tensor:
    """Affine matrices ``(T, 2, 3)`` for ``F.affine_grid``: a square crop box moving linearly over T frames."""
    short = min(h, w)
    s0 = rng.uniform(*motion.scale)
    zoom = math.exp(rng.uniform(-math.log(motion.max_zoom), math.log(motion.max_zoom)))
    s1 = float(np.clip(s0 * zoom, motion.scale[0], motion.scale[1]))
    poses = []
    for s in (s0, s1):
        side = s * short
        room_x, room_y = (w - side) / 2, (h - side) / 2  # the centre may move this far from the middle
        poses.append((s, side, room_x, room_y, rng.uniform(-1, 1), rng.uniform(-1, 1),
                      rng.uniform(-motion.max_rotation, motion.max_rotation)))
    # the end centre travels at most max_pan of the free room from the start centre
    (s0, side0, rx0, ry0, u0, v0, a0), (s1, side1, rx1, ry1, u1, v1, a1) = poses
    u1 = float(np.clip(u0 + motion.max_pan * (u1 - u0), -1, 1))
    v1 = float(np.clip(v0 + motion.max_pan * (v1 - v0), -1, 1))
    mats = []
    for t in np.linspace(0.0, 1.0, num_frames):
        side = side0 + t * (side1 - side0)
        cx = (u0 + t * (u1 - u0)) * (rx0 + t * (rx1 - rx0))
        cy = (v0 + t * (v1 - v0)) * (ry0 + t * (ry1 - ry0))
        a = math.radians(a0 + t * (a1 - a0))
        # output coordinates in [-1, 1] -> input normalised coordinates
        sx, sy = side / w, side / h
        c, s = math.cos(a), math.sin(a)
        mats.append([[sx * c, -sx * s, 2 * cx / w], [sy * s, sy * c, 2 * cy / h]])
    return torch.tensor(mats, dtype=torch.float32)


def render(frames: Tensor, mats: Tensor, size: int) -> Tensor:
    """float 0-255 ``(T or 1, C, H, W)`` and ``(T, 2, 3)`` camera -> ``(T, C, size, size)`` (reflected borders)."""
    t = mats.shape[0]
    if frames.shape[0] == 1:
        frames = frames.expand(t, -1, -1, -1)
    # sampled straight at the output size: sources are at most ``image_side`` / ``video_side`` px on
    # the short side, so a crop is shrunk by at most ~1.5x and bilinear sampling barely aliases
    grid = F.affine_grid(mats, [t, 3, size, size], align_corners=False)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp_(0.0, 255.0)


def load_still(path: Path, side: int) -> Tensor:
    """float 0-255 ``(1, 3, H, W)``: transparency composited on white, short side at most ``side``."""
    from PIL import Image

    from training.data.real import MAX_IMAGE_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with Image.open(path) as im:
        im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale directly
        if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba).convert("RGB")
        else:
            im = im.convert("RGB")
        scale = side / min(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float()
    return x


# ------------------------------------------------------------------------------ the cache
@dataclass
class ClipSource:
    file: str  # relative to the fetch-real folder
    kind: str  # "image" | "video"
    split: str  # "train" | "heldout"
    window: int = 0  # video: index of the cached window


def plan_sources(real_dir: str | Path, cfg: ClipCacheConfig, split: Split | None = None,
                 video_windows: dict[str, int] | None = None) -> list[ClipSource]:
    """One entry per clip to make: training stills and video windows, then held-out stills (evaluation)."""
    split = split or load_split()
    rng = np.random.default_rng(cfg.seed)
    images = sorted(load_image_manifest(real_dir), key=lambda e: e.file)
    train_imgs = [e.file for e in images if not is_heldout_image(e.sha256, split.image_fraction)]
    held_imgs = [e.file for e in images if is_heldout_image(e.sha256, split.image_fraction)]
    if cfg.max_images and len(train_imgs) > cfg.max_images:
        train_imgs = sorted(rng.choice(train_imgs, cfg.max_images, replace=False).tolist())
    out = [ClipSource(f, "image", "train") for f in train_imgs for _ in range(cfg.clips_per_image)]
    for v in sorted(load_manifest(real_dir), key=lambda e: e.file):
        if Path(v.file).name in split.heldout_videos:
            continue
        n = (video_windows or {}).get(v.file, 1)
        out += [ClipSource(v.file, "video", "train", w) for w in range(n) for _ in range(cfg.clips_per_window)]
    if cfg.heldout_images:
        held = held_imgs if len(held_imgs) <= cfg.heldout_images else sorted(
            rng.choice(held_imgs, cfg.heldout_images, replace=False).tolist())
        out += [ClipSource(f, "image", "heldout") for f in held]
    return out


class ClipCache:
    """A built cache, memory-mapped: ``frames[i]`` uint8 ``(T, S, S, 3)``, ``logits[i]`` ``(F, 1000)``."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        index = json.loads((folder / INDEX).read_text())
        self.config = ClipCacheConfig(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in index["config"].items()})
        self.clips = [ClipSource(**c) for c in index["clips"]]
        c = self.config
        n = len(self.clips)
        self.frames = np.memmap(folder / FRAMES, dtype=np.uint8, mode="r",
                                shape=(n, c.num_frames, c.student_size, c.student_size, 3))
        t = load_file(str(folder / TEACHER))
        self.logits, self.features = t["logits"], t["features"]

    def indices(self, split: str) -> list[int]:
        return [i for i, c in enumerate(self.clips) if c.split == split]


def video_windows(real_dir: Path, cfg: ClipCacheConfig, split: Split) -> dict[str, list[Tensor]]:
    ccfg = CacheConfig(short_side=cfg.video_side)
    out = {}
    for v in tqdm(sorted(load_manifest(real_dir), key=lambda e: e.file), desc="decode videos", unit="video"):
        if Path(v.file).name not in split.heldout_videos:
            out[v.file] = cache_video(real_dir / v.file, ccfg)
    return out


def _clip_frames(src: ClipSource, real_dir: Path, cfg: ClipCacheConfig, windows: dict[str, list[Tensor]],
                 rng: np.random.Generator, stills: dict[str, Tensor]) -> Tensor:
    """float 0-255 ``(T, C, teacher_size, teacher_size)``: one clip rendered along a random camera path."""
    if src.kind == "image":
        img = stills.get(src.file)
        if img is None:
            img = stills[src.file] = load_still(real_dir / src.file, cfg.image_side)
        mats = camera_path(img.shape[-2], img.shape[-1], cfg.num_frames, STILL_MOTION, rng)
        return render(img, mats, cfg.teacher_size)
    w = windows[src.file][src.window]
    idx = jittered_indices(len(w), cfg.num_frames, rng, 0.6)
    x = T.to_float_tchw(w[idx])
    mats = camera_path(x.shape[-2], x.shape[-1], cfg.num_frames, VIDEO_MOTION, rng)
    return render(x, mats, cfg.teacher_size)


def build_clip_cache(real_dir: str | Path, out: str | Path, teacher: torch.nn.Module,
                     cfg: ClipCacheConfig = ClipCacheConfig(), split: Split | None = None,  # noqa: B008
                     chunk: int = 64) -> ClipCache:
    """Render every clip, run the teacher on it once, and store both (see the module docstring)."""
    from training.teacher import run_teacher

    real_dir, out = Path(real_dir), Path(out)
    split = split or load_split()
    out.mkdir(parents=True, exist_ok=True)
    want = {"config": asdict(cfg), "split": sorted(split.heldout_videos), "fraction": split.image_fraction}
    index_path = out / INDEX
    if index_path.exists():
        have = json.loads(index_path.read_text())
        if {k: have.get(k) for k in want} == json.loads(json.dumps(want)) and have.get("complete"):
            log.info("clip cache already in %s", out)
            return ClipCache(out)
    windows = video_windows(real_dir, cfg, split)
    sources = plan_sources(real_dir, cfg, split, {k: len(v) for k, v in windows.items()})
    n, t, s = len(sources), cfg.num_frames, cfg.student_size
    frames = np.memmap(out / FRAMES, dtype=np.uint8, mode="w+", shape=(n, t, s, s, 3))
    logits = torch.zeros(n, len(cfg.teacher_frames), 1000, dtype=torch.float16)
    feats = torch.zeros(n, 1280, dtype=torch.float16)
    stills: dict[str, Tensor] = {}
    tf = list(cfg.teacher_frames)
    for start in tqdm(range(0, n, chunk), desc="teacher cache", unit="chunk"):
        batch = sources[start : start + chunk]
        clips = []
        for j, src in enumerate(batch):
            seed = int(hashlib.sha256(f"{cfg.seed}:{start + j}:{src.file}".encode()).hexdigest()[:12], 16)
            clips.append(_clip_frames(src, real_dir, cfg, windows, np.random.default_rng(seed), stills))
        stills.clear()
        x = torch.stack(clips)  # (B, T, C, 224, 224)
        lg, ft = run_teacher(teacher, x[:, tf].flatten(0, 1), cfg.teacher_size, with_features=True)
        b = len(batch)
        logits[start : start + b] = lg.view(b, len(tf), -1).half()
        feats[start : start + b] = ft.view(b, len(tf), -1).mean(1).half()
        small = T.resize(x.flatten(0, 1), s, s).round().to(torch.uint8)
        frames[start : start + b] = small.view(b, t, 3, s, s).permute(0, 1, 3, 4, 2).numpy()
    frames.flush()
    save_file({"logits": logits, "features": feats}, str(out / TEACHER))
    index_path.write_text(json.dumps({**want, "complete": True, "clips": [asdict(c) for c in sources]}) + "\n")
    log.info("clip cache: %d clips in %s", n, out)
    return ClipCache(out)
