"""Training datasets over video lists: decode once into an in-memory frame cache, then sample and augment.

Decoding an H.264 file for every training step costs more than the CPU model's forward pass, so the
trainers decode each video once (the one reader, `media.video`) into a `FrameCache`: ``frames``
frames evenly spread over the video (or, for long videos, ``cache_fps`` frames per second in windows of
``window_frames``), resized to ``short_side`` pixels. Steps then only index and augment.

- `ClipDataset`: ``(clip (C, T, S, S), label)`` for classification. Train mode picks T of a window's
  cached frames with the TSN train sampler (a random frame in each of T equal spans: temporal jitter)
  over a random sub-span, then `augment` (no flip by default: the synthetic classes include
  left/right motions).
- `InstanceDataset`: ``(views (V, C, T, S, S), instance id, label)`` for self-supervised near-duplicate
  learning: each cached window is an instance; V clips of it, each with its own sub-span, temporal
  jitter and strong augmentation, are positives of each other.
- `DecodedClipDataset`: test-time clips straight from the files with the evaluation sampler
  (``uniform_sample`` in test mode, or mmaction ``SampleFrames``), for `drca eval`.

A video that cannot be read raises its `VideoError` with the path in the message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from media.sampling import SampleFrames, frame_timeline, uniform_sample
from media.transforms import InputSpec, preprocess, resize_short_side, to_float_tchw
from media.video import VideoError, VideoLimits, open_video
from training.data.augment import NEAR_DUPLICATE_AUGMENT, AugmentConfig, preprocess_train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheConfig:
    """How videos are cached for training. Defaults in one place."""

    short_side: int = 128  # cached frames are resized so that the short side is this
    window_frames: int = 16  # frames per cached window (one training instance)
    cache_fps: float = 2.0  # videos longer than window_frames / cache_fps seconds: frames per second kept
    max_windows: int = 16  # per video (evenly spaced); bounds memory for long videos


@dataclass
class CachedWindow:
    frames: Tensor  # uint8 (window_frames, H, W, 3)
    label: int  # -1: unlabelled
    video: int  # index of the source video


def _window_times(duration: float, cfg: CacheConfig) -> list[np.ndarray]:
    """Frame times (seconds) of each window: one window evenly over a short video, else fixed windows."""
    n = cfg.window_frames
    span = n / cfg.cache_fps
    if duration <= span:
        return [(np.arange(n) + 0.5) * duration / n]
    starts = np.arange(0.0, duration - span + 1e-9, span)
    if len(starts) > cfg.max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, cfg.max_windows).round().astype(int)]
    return [s + (np.arange(n) + 0.5) / cfg.cache_fps for s in starts]


def cache_video(path: Path, cfg: CacheConfig, limits: VideoLimits | None = None) -> list[Tensor]:
    """Decode one video into windows of uint8 ``(window_frames, H, W, 3)`` frames."""
    try:
        with open_video(path, limits) as reader:
            info = reader.info
            times = frame_timeline(info.num_frames, info.fps, reader.frame_times)
            windows = []
            for wt in _window_times(info.duration, cfg):
                idx = np.clip(np.searchsorted(times, wt, side="right") - 1, 0, info.num_frames - 1)
                frames = reader.get_frames(idx).frames  # (n, H, W, 3) uint8
                x = resize_short_side(to_float_tchw(frames), cfg.short_side)
                windows.append(x.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous())
            return windows
    except VideoError as e:
        raise type(e)(f"{path}: {e.reason}") from None


class FrameCache:
    """Every window of every video, decoded once. ``labels[i] = -1`` marks an unlabelled video."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | None = None, cfg: CacheConfig = CacheConfig(),
                 limits: VideoLimits | None = None, progress: bool = True) -> None:
        labels = list(labels) if labels is not None else [-1] * len(paths)
        self.cfg = cfg
        self.windows: list[CachedWindow] = []
        for v, (p, y) in enumerate(tqdm(list(zip(paths, labels, strict=True)), desc="decode", unit="video",
                                        disable=not progress)):
            self.windows += [CachedWindow(w, y, v) for w in cache_video(Path(p), cfg, limits)]
        log.info("cached %d windows from %d videos (%.0f MB)", len(self.windows), len(paths),
                 sum(w.frames.numel() for w in self.windows) / 2**20)

    def __len__(self) -> int:
        return len(self.windows)


def item_seed(seed: int, epoch: int, i: int) -> int:
    """The random seed of item ``i`` in ``epoch``: a new draw every epoch, the same for the same run."""
    return (seed * 1_000_003 + epoch * 10_007 + int(i)) % 2**63


def jittered_indices(available: int, num_frames: int, rng: np.random.Generator, min_span: float) -> np.ndarray:
    """``num_frames`` sorted indices from a random sub-span (``min_span``..1 of ``available``), one random
    frame in each of ``num_frames`` equal parts of it (TSN train sampling)."""
    span = max(1, int(round(available * rng.uniform(min_span, 1.0))))
    start = int(rng.integers(0, available - span + 1))
    return start + uniform_sample(span, 1.0, num_frames, test_mode=False, rng=rng).indices


class ClipDataset(Dataset):
    """Classification clips from a `FrameCache` (labelled windows only)."""

    def __init__(self, cache: FrameCache, input_cfg: InputSpec, num_frames: int, aug: AugmentConfig | None,
                 seed: int = 0, min_span: float = 0.75) -> None:
        self.windows = [w for w in cache.windows if w.label >= 0]
        self.input_cfg, self.num_frames, self.aug = input_cfg, num_frames, aug
        self.seed, self.min_span, self.epoch = seed, min_span, 0

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        w = self.windows[i]
        if self.aug is None:  # evaluation: the centre frame of each of T equal parts, centre crop
            idx = uniform_sample(len(w.frames), 1.0, self.num_frames, test_mode=True).indices
            return preprocess(w.frames[idx], self.input_cfg), w.label
        seed = item_seed(self.seed, self.epoch, i)
        rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        idx = jittered_indices(len(w.frames), self.num_frames, rng, self.min_span)
        return preprocess_train(w.frames[idx], self.input_cfg, self.aug, g), w.label


class InstanceDataset(Dataset):
    """Near-duplicate instances: every cached window; ``views`` independently sampled, augmented clips."""

    def __init__(self, cache: FrameCache, input_cfg: InputSpec, num_frames: int, views: int = 2,
                 aug: AugmentConfig = NEAR_DUPLICATE_AUGMENT, seed: int = 0, min_span: float = 0.6) -> None:
        self.windows = cache.windows
        self.input_cfg, self.num_frames, self.views, self.aug = input_cfg, num_frames, views, aug
        self.seed, self.min_span, self.epoch = seed, min_span, 0

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        w = self.windows[i]
        seed = item_seed(self.seed, self.epoch, i)
        rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        out = [preprocess_train(w.frames[jittered_indices(len(w.frames), self.num_frames, rng, self.min_span)],
                                  self.input_cfg, self.aug, g) for _ in range(self.views)]
        return torch.stack(out), i, w.label


class DecodedClipDataset(Dataset):
    """Evaluation clips decoded from the files: ``(clips (K, C, T, S, S), label)``, K test clips a video."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], input_cfg: InputSpec, num_frames: int,
                 sampler: SampleFrames | None = None, limits: VideoLimits | None = None) -> None:
        self.paths, self.labels = list(paths), list(labels)
        self.input_cfg, self.num_frames, self.sampler, self.limits = input_cfg, num_frames, sampler, limits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path = self.paths[i]
        try:
            with open_video(path, self.limits) as reader:
                n = reader.info.num_frames
                if self.sampler is None:
                    idx = uniform_sample(n, reader.info.fps, self.num_frames, test_mode=True).indices
                else:
                    idx = self.sampler.frame_indices(n, np.random.default_rng(0))
                frames = reader.get_frames(idx).frames
        except VideoError as e:
            raise type(e)(f"{path}: {e.reason}") from None
        t = self.num_frames
        clips = [preprocess(frames[k : k + t], self.input_cfg) for k in range(0, len(frames), t)]
        return torch.stack(clips), self.labels[i]
