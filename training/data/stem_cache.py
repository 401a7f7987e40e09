"""The frozen stem's outputs, computed once per clip and view: what `drca train shipped` trains the DRCA layers on.

A clip is made as in `training.data.distill` (a still or a video window rendered along a random camera
path, at the network's input size: 224 px), but along a path of ``2 * num_frames`` frames. Its views:

- the **anchor**: every other frame of the path (the whole motion);
- **near-duplicate copies** (``copies``): a temporal edit (a sub-clip at half speed, or the same speed
  shifted by one frame) followed by the pixel edits of the near-duplicate benchmark
  (`training.data.augment.NEAR_DUPLICATE_AUGMENT`: picture-in-picture, letterbox, zoom, crop, flip,
  colour and hue, grey, blur, overlay; plus downscaling and JPEG re-encoding).

Each view goes through `HybridDRCA.stem_outputs` (every frame at full and at half size) and is stored in
float16 memmaps under one folder, ``(clips, views, T, ...)``: ``early``, ``late_full``, ``pooled_full``,
``late_half`` (`STEM_FIELDS`). ``index.json`` holds the config, the clips (source, kind,
split) and how many clips are complete: an interrupted build resumes at the next chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from media import transforms as T
from model.hybrid import HybridDRCA, StemOutputs
from training.data import augment as A
from training.data.datasets import jittered_indices
from training.data.distill import (
    STILL_MOTION,
    VIDEO_MOTION,
    ClipCacheConfig,
    ClipSource,
    Split,
    camera_path,
    load_split,
    load_still,
    plan_sources,
    render,
    video_windows,
)

log = logging.getLogger(__name__)

INDEX = "index.json"
STEM_FIELDS = ("early", "late_full", "pooled_full", "late_half")

#: the near-duplicate edits of the copies: the benchmark's pixel edits, with a gentler crop
COPY_AUGMENT = A.AugmentConfig(
    crop_scale=(0.5, 1.0), hue=90.0, grayscale_p=0.2, blur_p=0.25, overlay_p=0.3, pip_p=0.2, pad_p=0.2,
    zoom_p=0.2, downscale_p=0.25, jpeg_p=0.3,
)


@dataclass(frozen=True)
class StemCacheConfig:
    """Which clips, how many copies. Defaults in one place (`drca train shipped` uses them)."""

    clips: ClipCacheConfig = field(default_factory=lambda: ClipCacheConfig(
        student_size=224, max_images=1300, clips_per_window=4, heldout_images=160))
    copies: int = 1  # near-duplicate views per clip, besides the anchor
    augment: A.AugmentConfig = COPY_AUGMENT
    chunk: int = 8  # clips per stem batch (and per resumable step)


class StemCache:
    """A built (or partly built) cache, memory-mapped; ``fields[name][i]`` is clip i's ``(views, T, ...)``."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        index = json.loads((folder / INDEX).read_text())
        self.shapes = {k: tuple(v) for k, v in index["shapes"].items()}
        self.clips = [ClipSource(**c) for c in index["clips"]]
        self.done = int(index["done"])
        n = len(self.clips)
        self.fields = {k: np.memmap(folder / f"{k}.f16", dtype=np.float16, mode="r", shape=(n, *self.shapes[k]))
                       for k in STEM_FIELDS}

    def indices(self, split: str) -> list[int]:
        return [i for i, c in enumerate(self.clips[: self.done]) if c.split == split]

    def outputs(self, idx: list[int] | np.ndarray, view: int) -> StemOutputs:
        """One view of several clips as float32 `StemOutputs` (B, T, ...)."""
        idx = np.asarray(idx)
        return StemOutputs(**{k: torch.from_numpy(self.fields[k][idx, view].astype(np.float32))
                              for k in STEM_FIELDS})


def _path_frames(src: ClipSource, real_dir: Path, cfg: ClipCacheConfig, windows: dict[str, list[Tensor]],
                 rng: np.random.Generator, size: int) -> Tensor:
    """float 0-255 ``(2T, C, size, size)``: the clip's camera path at twice its frame count."""
    n = 2 * cfg.num_frames
    if src.kind == "image":
        img = load_still(real_dir / src.file, cfg.image_side)
        return render(img, camera_path(img.shape[-2], img.shape[-1], n, STILL_MOTION, rng), size)
    w = windows[src.file][src.window]
    x = T.to_float_tchw(w[jittered_indices(len(w), n, rng, 0.6)])
    return render(x, camera_path(x.shape[-2], x.shape[-1], n, VIDEO_MOTION, rng), size)


def make_views(path: Tensor, copies: int, augment: A.AugmentConfig, g: torch.Generator) -> Tensor:
    """``(2T, C, S, S)`` path frames -> ``(1 + copies, T, C, S, S)``: the anchor, then the edited copies."""
    t, size = path.shape[0] // 2, path.shape[-1]
    views = [path[0::2]]
    for _ in range(copies):
        if bool(torch.rand((), generator=g) < 0.5):  # a sub-clip at half speed
            start = int(torch.randint(0, t + 1, (), generator=g))
            frames = path[start : start + t]
        else:  # the same speed, one path frame later
            frames = path[1::2]
        views.append(A.augment(frames, size, augment, g))
    return torch.stack(views)


@torch.inference_mode()
def build_stem_cache(real_dir: str | Path, out: str | Path, model: HybridDRCA,
                     cfg: StemCacheConfig = StemCacheConfig(), split: Split | None = None) -> StemCache:  # noqa: B008
    """Make every clip's views and store the stem's outputs (see the module docstring); resumable."""
    real_dir, out = Path(real_dir), Path(out)
    split = split or load_split()
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    inp = model.cfg.input
    if cfg.clips.num_frames != inp.num_frames:
        raise ValueError(f"clips of {cfg.clips.num_frames} frames for a network of {inp.num_frames}")
    want = {"config": json.loads(json.dumps(asdict(cfg))), "split": sorted(split.heldout_videos),
            "fraction": split.image_fraction, "model_input": [inp.num_frames, inp.img_size]}
    index_path = out / INDEX
    windows = video_windows(real_dir, cfg.clips, split)
    have = json.loads(index_path.read_text()) if index_path.exists() else {}
    if {k: have.get(k) for k in want} == want:
        sources, done, shapes = [ClipSource(**c) for c in have["clips"]], int(have["done"]), have["shapes"]
        log.info("stem cache in %s: resuming at clip %d of %d", out, done, len(sources))
    else:
        sources = plan_sources(real_dir, cfg.clips, split, {k: len(v) for k, v in windows.items()})
        probe = model.stem_outputs(torch.zeros(1, 3, inp.num_frames, inp.img_size, inp.img_size))
        shapes = {k: [1 + cfg.copies, *getattr(probe, k).shape[1:]] for k in STEM_FIELDS}
        done = 0
    n = len(sources)
    mode = "r+" if done else "w+"
    arrays = {k: np.memmap(out / f"{k}.f16", dtype=np.float16, mode=mode, shape=(n, *shapes[k])) for k in STEM_FIELDS}

    def write_index(done: int) -> None:
        tmp = index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**want, "shapes": shapes, "done": done,
                                   "clips": [asdict(c) for c in sources]}) + "\n")
        tmp.replace(index_path)

    write_index(done)
    mean = torch.tensor(inp.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(inp.std).view(1, 1, 3, 1, 1)
    views = 1 + cfg.copies
    bar = tqdm(total=n, initial=done, desc="stem cache", unit="clip")
    for start in range(done, n, cfg.chunk):
        batch = sources[start : start + cfg.chunk]
        clips = []
        for j, src in enumerate(batch):
            seed = int(hashlib.sha256(f"{cfg.clips.seed}:{start + j}:{src.file}".encode()).hexdigest()[:12], 16)
            path = _path_frames(src, real_dir, cfg.clips, windows, np.random.default_rng(seed), inp.img_size)
            clips.append(make_views(path, cfg.copies, cfg.augment, torch.Generator().manual_seed(seed)))
        x = (torch.stack(clips) - mean) / std  # (B, V, T, C, S, S)
        b = x.shape[0]
        s = model.stem_outputs(x.flatten(0, 1).transpose(1, 2))  # (B*V, T, ...)
        for k in STEM_FIELDS:
            arrays[k][start : start + b] = getattr(s, k).reshape(b, views, *getattr(s, k).shape[1:]).half().numpy()
        for a in arrays.values():
            a.flush()
        write_index(start + b)
        bar.update(b)
    bar.close()
    log.info("stem cache: %d clips x %d views in %s", n, views, out)
    return StemCache(out)
