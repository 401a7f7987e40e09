"""Video -> segment clips: the one retrieval decoding path, shared by evaluation, text training and the service.

Retrieval protocol (DRCA / 3D-CSL): ``segment_fps`` frames per second (default 1) grouped into clips of
the model's ``num_frames`` (8 s windows every 8 s for an 8-frame model), one clip per segment. A partial
last window becomes a full-length window ending at the end of the video; a video shorter than one window
gives one clip spread over all of it (`sampling.fixed_segments`).

The near-duplicate views of `media.views` (the active picture inside constant-colour borders, its mirror
image, the inner picture of a picture-in-picture) are planned once per video (`plan_views`, on frames of
its first segments) and applied to each segment's frames (`ViewPlan.clips`). `view_clips` does it for a
whole video at once; the service's worker plans once and decodes a chunk of segments at a time
(`plan_segments`, `decode_segments`), so its memory does not grow with a video's length. Overlapping
segments (a query's windows every 4 s) take the frames they share with the segment before from a
`FrameCarry`, so a frame is decoded once and the decoder never seeks back to a keyframe for it.

`DecodeTimes` (optional everywhere): where decoding's time goes, for the service's profile: opening the
container (`open`: the caller's), its frames (`decode`), the original view's preprocessing (`preprocess`),
and the views' own work (`views`: finding the borders and the inner picture, the extra views' mirror, crop
and preprocessing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from media.sampling import Segment, fixed_segments
from media.transforms import Fit, preprocess
from media.video import VideoReader
from media.views import Box, Picture, active_box, crop, grey_normalised, inner_box, mirror
from model.config import InputConfig

View = Literal["original", "mirrored", "inner"]
PROBE_SEGMENTS = 2  # borders and the inner picture are found on the frames of the first segments
PROBE_FRAMES = 16


@dataclass
class DecodeTimes:
    """Seconds spent per stage while decoding one video (accumulated over its calls; not thread-safe)."""

    open: float = 0.0  # opening the container: probing it, opening the decoder, planning the segments
    decode: float = 0.0  # decoding the frames
    preprocess: float = 0.0  # the original view: crop to the active picture, resize, normalise, stack
    views: float = 0.0  # finding the borders and the inner picture; the extra views (mirror, inner crop)


class FrameCarry:
    """The frames of the segment decoded last, by index. `frames` gives a segment's frames, taking those it
    shares with that segment from here and decoding only the others (in one `get_frames` call, which only
    moves forward when segments come in time order); it then holds this segment's frames (one segment's
    worth of memory)."""

    def __init__(self) -> None:
        self._by_index: dict[int, Tensor] = {}

    def frames(self, reader: VideoReader, indices: Tensor | np.ndarray) -> Tensor:
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        known = self._by_index
        missing = sorted({i for i in idx if i not in known})
        if len(missing) == len(set(idx)):  # nothing shared: decode as asked
            frames = reader.get_frames(idx).frames
        else:
            if missing:
                known = {**known, **dict(zip(missing, reader.get_frames(missing).frames, strict=True))}
            frames = torch.stack([known[i] for i in idx])
        self._by_index = dict(zip(idx, frames, strict=True))
        return frames


def plan_segments(reader: VideoReader, num_frames: int, segment_fps: float = 1.0,
                  stride_s: float | None = None) -> list[Segment]:
    """The retrieval protocol's segments of a video (from its frame times; nothing is decoded): windows of
    `num_frames / segment_fps` seconds, every `stride_s` seconds (default: back to back; a query video is
    planned with overlapping windows to locate copied spans finely). Overlapping windows get no end-aligned
    tail window that starts less than one frame interval (`1 / segment_fps`) after the last window: it would
    sample nearly the same moments (an 8.1 s query is one window, not two)."""
    info = reader.info
    window = num_frames / segment_fps
    stride = stride_s or window
    return fixed_segments(info.num_frames, info.fps, window_s=window, stride_s=stride,
                          frames_per_segment=num_frames, frame_times=reader.frame_times, duration=info.duration,
                          min_tail_shift_s=1.0 / segment_fps if stride < window else 0.0)


@dataclass(frozen=True)
class ViewPlan:
    """Which views of a video are embedded, and the regions of its decoded frame they show."""

    views: tuple[View, ...]  # the views present, in row order (``inner`` only when one was found)
    active: Box  # the active picture, in the decoded frame
    inner: Box | None  # the inner picture, relative to ``active``
    frame_size: tuple[int, int]  # (width, height) of the decoded frames
    inp: InputConfig
    fit: Fit = "crop"
    picture: Picture = "rgb"
    #: (width, height) of the video itself: larger than ``frame_size`` when the decoder scaled it down
    #: (`VideoReader.frame_size`); None: the same
    video_size: tuple[int, int] | None = None

    @property
    def boxes(self) -> dict[str, Box]:
        """view -> the region of the decoded frame it shows."""
        out: dict[str, Box] = {}
        for v in self.views:
            if v == "inner" and self.inner is not None:
                out[v] = Box(self.active.x + self.inner.x, self.active.y + self.inner.y, self.inner.w, self.inner.h)
            else:
                out[v] = self.active
        return out

    def video_boxes(self) -> dict[str, Box]:
        """view -> the region it shows in the video's own pixel coordinates (``boxes`` scaled back from the
        decoded frame to ``video_size``; the whole decoded frame maps to the whole video frame)."""
        if self.video_size is None or self.video_size == self.frame_size:
            return self.boxes
        sx, sy = self.video_size[0] / self.frame_size[0], self.video_size[1] / self.frame_size[1]
        out = {}
        for v, b in self.boxes.items():
            x0, y0 = round(b.x * sx), round(b.y * sy)
            out[v] = Box(x0, y0, round((b.x + b.w) * sx) - x0, round((b.y + b.h) * sy) - y0)
        return out

    def clips(self, frames: Tensor, times: DecodeTimes | None = None) -> list[Tensor]:
        """One segment's decoded frames -> its preprocessed clip in every view, in ``views`` order."""
        t0 = time.perf_counter()
        frames = crop(frames, self.active)
        out = []
        for v in self.views:
            if v == "original":
                x = frames
            elif v == "mirrored":
                x = mirror(frames)
            else:  # "inner": present only when found
                assert self.inner is not None
                x = crop(frames, self.inner)
            clip = preprocess(x, self.inp, self.fit)
            out.append(grey_normalised(clip) if self.picture == "grey" else clip)
            if times is not None:
                t1 = time.perf_counter()
                if v == "original":
                    times.preprocess += t1 - t0
                else:
                    times.views += t1 - t0
                t0 = t1
        return out


def plan_views(reader: VideoReader, segs: list[Segment], inp: InputConfig, fit: Fit = "crop",
               remove_borders: bool = False, views: tuple[View, ...] = ("original",),
               picture: Picture = "rgb", times: DecodeTimes | None = None,
               carry: FrameCarry | None = None) -> tuple[ViewPlan, list[Tensor]]:
    """Find the active picture (when ``remove_borders``) and the inner picture (when ``inner`` is asked
    for) on frames of the first ``PROBE_SEGMENTS`` segments. Returns the plan and those segments' decoded
    frames (so they are not decoded twice; ``carry`` then holds the last of them). Unknown view names are a
    ValueError."""
    for v in views:
        if v not in ("original", "mirrored", "inner"):
            raise ValueError(f"unknown view {v!r}")
    info = reader.info
    t0 = time.perf_counter()
    carry = carry if carry is not None else FrameCarry()
    head = [carry.frames(reader, s.indices) for s in segs[:PROBE_SEGMENTS]]
    t1 = time.perf_counter()
    if times is not None:
        times.decode += t1 - t0
    full = Box(0, 0, *reader.frame_size)  # the decoded (upright, possibly scaled down) frame
    if head and (head[0].shape[2], head[0].shape[1]) != reader.frame_size:
        full = Box(0, 0, int(head[0].shape[2]), int(head[0].shape[1]))
    video_size = (info.width, info.height)
    if not head or not (remove_borders or "inner" in views):
        return ViewPlan(tuple(v for v in views if v != "inner"), full, None, (full.w, full.h), inp, fit,
                        picture, video_size), head
    sample = torch.cat(head)
    probe = sample[:: max(1, len(sample) // PROBE_FRAMES)]
    active = active_box(probe) if remove_borders else full
    inner = inner_box(crop(probe, active)) if "inner" in views else None
    present = tuple(v for v in views if v != "inner" or inner is not None)
    if times is not None:
        times.views += time.perf_counter() - t1
    return ViewPlan(present, active, inner, (full.w, full.h), inp, fit, picture, video_size), head


def decode_segments(reader: VideoReader, segs: list[Segment], plan: ViewPlan,
                    times: DecodeTimes | None = None, carry: FrameCarry | None = None) -> Tensor:
    """Decode exactly the frames of these segments (one `get_frames` call per segment; with a ``carry``,
    which may come from an earlier call, only for the frames a segment does not share with the one before)
    and preprocess them in every view of ``plan``: clips ``(len(segs) * len(plan.views), C, T, H, W)``,
    segment-major."""
    clips: list[Tensor] = []
    for s in segs:
        t0 = time.perf_counter()
        frames = carry.frames(reader, s.indices) if carry is not None else reader.get_frames(s.indices).frames
        if times is not None:
            times.decode += time.perf_counter() - t0
        clips.extend(plan.clips(frames, times))
    t0 = time.perf_counter()
    out = torch.stack(clips)
    if times is not None:
        times.preprocess += time.perf_counter() - t0
    return out


@dataclass
class ViewClips:
    """Clips of every segment in every view: row i is segment ``segments[i]`` seen as ``views[i]``."""

    clips: Tensor  # (N, C, T, H, W) normalised
    segments: list[Segment]
    views: list[View]
    boxes: dict[str, Box]  # view -> the region of the decoded frame it shows
    frame_size: tuple[int, int]  # (width, height) of the decoded frames


def view_clips(reader: VideoReader, inp: InputConfig, segment_fps: float = 1.0, fit: Fit = "crop",
               remove_borders: bool = False, views: tuple[View, ...] = ("original",),
               picture: Picture = "rgb") -> ViewClips:
    """The retrieval segments of ``reader``, each preprocessed in every view asked for:

    * ``original``: the active picture (inside the borders when ``remove_borders``, else the whole frame);
    * ``mirrored``: its left-right mirror image;
    * ``inner``: the inner picture found inside it (``inner_box``); left out when none is found.

    ``picture="grey"``: every clip is then replaced by its normalised grey view (``grey_normalised``).
    Frames are decoded one segment at a time."""
    segs = plan_segments(reader, inp.num_frames, segment_fps)
    plan, head = plan_views(reader, segs, inp, fit, remove_borders, views, picture)
    clips: list[Tensor] = []
    rows: list[Segment] = []
    names: list[View] = []
    for i, seg in enumerate(segs):
        frames = head[i] if i < len(head) else reader.get_frames(seg.indices).frames
        clips.extend(plan.clips(frames))
        rows.extend([seg] * len(plan.views))
        names.extend(plan.views)
    return ViewClips(torch.stack(clips), rows, names, plan.boxes, plan.frame_size)


def segment_clips(reader: VideoReader, inp: InputConfig, segment_fps: float = 1.0,
                  fit: Fit = "crop") -> tuple[Tensor, list[Segment]]:
    """Every segment's clip of the whole frame at once: clips ``(S, C, T, H, W)`` and their segments
    (evaluation and training, whose videos are short; `view_clips` with its defaults)."""
    vc = view_clips(reader, inp, segment_fps, fit)
    return vc.clips, vc.segments
