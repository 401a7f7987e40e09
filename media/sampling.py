"""Which frames to decode. Pure functions of the frame count (and frame times) and a numpy ``Generator``.

Three samplers, all returning ``FrameSample(indices, timestamps)``:

- ``SampleFrames``: mmaction2's ``SampleFrames(clip_len, frame_interval, num_clips, test_mode)`` with the
  same offsets, short-video handling and ``out_of_bound_opt`` ('loop' default, or 'repeat_last').
- ``uniform_sample``: TSN-style T segments, the middle frame of each in test mode, a random frame of each
  in train mode.
- ``fixed_segments``: fixed windows over a long video (``window_s``, ``stride_s``), ``frames_per_segment``
  frames spread evenly in each, with start/end seconds; the retrieval protocol "1 frame per second,
  8-frame clips" is ``fixed_segments(n, times, window_s=8, stride_s=8, frames_per_segment=8)``.

``frame_times`` (float64 ``(N,)``, the start time of each frame in seconds: ``VideoReader.frame_times``)
makes timestamps real presentation times for variable-frame-rate video; without it they are ``i / fps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class FrameSample:
    indices: np.ndarray  # int64 (N,) frame indices, clip after clip
    timestamps: np.ndarray  # float64 (N,) seconds


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    indices: np.ndarray  # int64 (frames_per_segment,)
    timestamps: np.ndarray  # float64 (frames_per_segment,)


def frame_timeline(num_frames: int, fps: float, frame_times: np.ndarray | None = None) -> np.ndarray:
    """Start time in seconds of every frame: ``frame_times`` when known, else ``i / fps``."""
    if frame_times is not None:
        t = np.asarray(frame_times, dtype=np.float64)
        if t.shape != (num_frames,):
            raise ValueError(f"frame_times has shape {t.shape}, expected ({num_frames},)")
        return t
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return np.arange(num_frames, dtype=np.float64) / fps


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


@dataclass(frozen=True)
class SampleFrames:
    """mmaction2 ``SampleFrames`` (same arithmetic as its ``_get_train_clips`` / ``_get_test_clips``)."""

    clip_len: int
    frame_interval: int = 1
    num_clips: int = 1
    test_mode: bool = False
    out_of_bound_opt: Literal["loop", "repeat_last"] = "loop"

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.frame_interval < 1 or self.num_clips < 1:
            raise ValueError(f"clip_len, frame_interval and num_clips must be >= 1: {self}")

    def clip_offsets(self, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """First frame of each clip, int64 ``(num_clips,)``."""
        ori_clip_len = self.clip_len * self.frame_interval
        n = self.num_clips
        if self.test_mode:
            avg_interval = (num_frames - ori_clip_len + 1) / float(n)
            if num_frames > ori_clip_len - 1:
                base = np.arange(n) * avg_interval
                return (base + avg_interval / 2.0).astype(np.int64)
            return np.zeros(n, dtype=np.int64)
        avg_interval = (num_frames - ori_clip_len + 1) // n
        if avg_interval > 0:
            base = np.arange(n) * avg_interval
            return (base + _rng(rng).integers(avg_interval, size=n)).astype(np.int64)
        if num_frames > max(n, ori_clip_len):
            return np.sort(_rng(rng).integers(num_frames - ori_clip_len + 1, size=n)).astype(np.int64)
        if avg_interval == 0:
            ratio = (num_frames - ori_clip_len + 1.0) / n
            return np.around(np.arange(n) * ratio).astype(np.int64)
        return np.zeros(n, dtype=np.int64)

    def frame_indices(self, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """int64 ``(num_clips * clip_len,)``, clip after clip, always inside ``[0, num_frames)``."""
        if num_frames < 1:
            raise ValueError("cannot sample from a video with no frames")
        offsets = self.clip_offsets(num_frames, rng)
        inds = offsets[:, None] + np.arange(self.clip_len)[None, :] * self.frame_interval
        if self.out_of_bound_opt == "loop":
            inds = np.mod(inds, num_frames)
        else:  # repeat_last: out-of-range frames repeat the clip's last valid frame
            safe = inds < num_frames
            last = np.max(np.where(safe, inds, 0), axis=1, keepdims=True)
            inds = np.where(safe, inds, last)
        return inds.reshape(-1).astype(np.int64)

    def __call__(
        self,
        num_frames: int,
        fps: float,
        rng: np.random.Generator | None = None,
        frame_times: np.ndarray | None = None,
    ) -> FrameSample:
        idx = self.frame_indices(num_frames, rng)
        return FrameSample(idx, frame_timeline(num_frames, fps, frame_times)[idx])


def uniform_sample(
    num_frames: int,
    fps: float,
    num_segments: int,
    test_mode: bool = True,
    rng: np.random.Generator | None = None,
    frame_times: np.ndarray | None = None,
) -> FrameSample:
    """TSN-style: split ``[0, num_frames)`` into ``num_segments`` equal spans, one frame from each.

    Test mode takes ``floor`` of each span's midpoint; train mode a uniformly random frame of span ``k``,
    ``[k * N // T, (k + 1) * N // T)`` in integers.
    A video shorter than ``num_segments`` repeats frames (indices stay sorted).
    """
    if num_frames < 1 or num_segments < 1:
        raise ValueError(f"need num_frames >= 1 and num_segments >= 1, got {num_frames}, {num_segments}")
    if test_mode:
        idx = np.floor((np.arange(num_segments) + 0.5) * (num_frames / num_segments)).astype(np.int64)
    else:
        bounds = np.arange(num_segments + 1, dtype=np.int64) * num_frames // num_segments
        sizes = np.maximum(np.diff(bounds), 1)
        idx = bounds[:-1] + (_rng(rng).random(num_segments) * sizes).astype(np.int64)
    idx = np.clip(idx, 0, num_frames - 1)
    return FrameSample(idx, frame_timeline(num_frames, fps, frame_times)[idx])


def fixed_segments(
    num_frames: int,
    fps: float,
    window_s: float = 8.0,
    stride_s: float = 8.0,
    frames_per_segment: int = 8,
    frame_times: np.ndarray | None = None,
    duration: float | None = None,
    min_tail_shift_s: float = 0.0,
) -> list[Segment]:
    """Fixed-length windows ``[k * stride_s, k * stride_s + window_s)`` covering the whole video.

    In each window, frame ``j`` is the frame shown at ``start + (j + 0.5) * window_s / frames_per_segment``
    (so 8 s windows with 8 frames are 1 frame per second, at the half seconds).
    The tail: if the last stride leaves a partial window, one more full-length window is added that
    ends at the end of the video (it overlaps the previous one), unless it would start less than
    ``min_tail_shift_s`` after the previous one (overlapping query windows pass one frame interval: such a
    tail samples nearly the same moments); a video shorter than ``window_s`` gives exactly one segment
    ``[0, duration]`` with its frames spread over the whole video.
    """
    if num_frames < 1:
        raise ValueError("cannot segment a video with no frames")
    if window_s <= 0 or stride_s <= 0 or frames_per_segment < 1:
        raise ValueError(f"need window_s > 0, stride_s > 0, frames_per_segment >= 1: {window_s}, {stride_s}")
    times = frame_timeline(num_frames, fps, frame_times)
    if duration is None:
        step = (
            (times[-1] - times[0]) / (num_frames - 1) if num_frames > 1 else (1.0 / fps if fps > 0 else 1.0)
        )
        duration = float(times[-1] + step)
    eps = 1e-6
    starts: list[float] = []
    if duration <= window_s + eps:
        windows = [(0.0, duration)]
    else:
        s = 0.0
        while s + window_s <= duration + eps:
            starts.append(s)
            s += stride_s
        windows = [(a, a + window_s) for a in starts]
        if windows[-1][1] < duration - eps and duration - window_s - windows[-1][0] >= min_tail_shift_s - eps:
            windows.append((duration - window_s, duration))
    out = []
    for a, b in windows:
        t = a + (np.arange(frames_per_segment) + 0.5) * ((b - a) / frames_per_segment)
        idx = np.clip(np.searchsorted(times, t, side="right") - 1, 0, num_frames - 1).astype(np.int64)
        out.append(Segment(float(a), float(b), idx, times[idx]))
    return out
