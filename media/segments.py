"""Video -> segment clips: the one retrieval decoding path, shared by evaluation, text training and the service.

Retrieval protocol (DRCA / 3D-CSL): ``segment_fps`` frames per second (default 1) grouped into clips of
the model's ``num_frames`` (8 s windows every 8 s for an 8-frame model), one clip per segment. A partial
last window becomes a full-length window ending at the end of the video; a video shorter than one window
gives one clip spread over all of it (`sampling.fixed_segments`).

`view_clips` is the same path with the near-duplicate views of `media.views`: the active picture inside
constant-colour borders, its mirror image, the inner picture of a picture-in-picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from media.sampling import Segment, fixed_segments
from media.transforms import Fit, preprocess
from media.video import VideoReader
from media.views import Box, Picture, active_box, crop, grey_normalised, inner_box, mirror
from model.config import InputConfig


def segment_clips(reader: VideoReader, inp: InputConfig, segment_fps: float = 1.0,
                  fit: Fit = "crop") -> tuple[Tensor, list[Segment]]:
    """Clips ``(S, C, T, H, W)`` of the whole frame, one per segment, and the segments (`view_clips`
    with its defaults: no border removal, the original view only)."""
    vc = view_clips(reader, inp, segment_fps, fit)
    return vc.clips, vc.segments


View = Literal["original", "mirrored", "inner"]
PROBE_SEGMENTS = 2  # borders and the inner picture are found on the frames of the first segments
PROBE_FRAMES = 16


@dataclass
class ViewClips:
    """Clips of every segment in every view: row i is segment ``segments[i]`` seen as ``views[i]``."""

    clips: Tensor  # (N, C, T, H, W) normalised
    segments: list[Segment]
    views: list[View]
    boxes: dict[str, Box]  # view -> the region of the decoded frame it shows
    frame_size: tuple[int, int]  # (width, height) of the decoded frames


def _probe(frames: list[Tensor]) -> Tensor:
    sample = torch.cat(frames)
    step = max(1, len(sample) // PROBE_FRAMES)
    return sample[::step]


def view_clips(reader: VideoReader, inp: InputConfig, segment_fps: float = 1.0, fit: Fit = "crop",
               remove_borders: bool = False, views: tuple[View, ...] = ("original",),
               picture: Picture = "rgb") -> ViewClips:
    """The retrieval segments of ``reader`` (``fixed_segments``: ``segment_fps`` frames a second, clips
    of ``num_frames``), each preprocessed in every view asked for:

    * ``original``: the active picture (inside the borders when ``remove_borders``, else the whole frame);
    * ``mirrored``: its left-right mirror image;
    * ``inner``: the inner picture found inside it (``inner_box``); left out when none is found.

    ``picture="grey"``: every clip is then replaced by its normalised grey view (``grey_normalised``).

    Borders and the inner picture are found once per video, on frames of its first ``PROBE_SEGMENTS``
    segments. Frames are decoded one segment at a time (memory stays bounded for long videos)."""
    info = reader.info
    window = inp.num_frames / segment_fps
    segs = fixed_segments(info.num_frames, info.fps, window_s=window, stride_s=window,
                          frames_per_segment=inp.num_frames, frame_times=reader.frame_times,
                          duration=info.duration)
    head = [reader.get_frames(s.indices).frames for s in segs[:PROBE_SEGMENTS]]
    full = Box(0, 0, info.width, info.height)
    if head and (head[0].shape[2], head[0].shape[1]) != (info.width, info.height):  # rotated upright
        full = Box(0, 0, int(head[0].shape[2]), int(head[0].shape[1]))
    probe = _probe(head)
    active = active_box(probe) if remove_borders else full
    boxes: dict[str, Box] = {"original": active}
    if "mirrored" in views:
        boxes["mirrored"] = active
    inner = None
    if "inner" in views:
        inner = inner_box(crop(probe, active))
        if inner is not None:
            boxes["inner"] = Box(active.x + inner.x, active.y + inner.y, inner.w, inner.h)
    clips: list[Tensor] = []
    rows: list[Segment] = []
    names: list[View] = []
    for i, seg in enumerate(segs):
        frames = crop(head[i] if i < len(head) else reader.get_frames(seg.indices).frames, active)
        for v in views:
            if v == "original":
                x = frames
            elif v == "mirrored":
                x = mirror(frames)
            elif v == "inner":
                if inner is None:
                    continue
                x = crop(frames, inner)
            else:
                raise ValueError(f"unknown view {v!r}")
            clip = preprocess(x, inp, fit)
            clips.append(grey_normalised(clip) if picture == "grey" else clip)
            rows.append(seg)
            names.append(v)
    return ViewClips(torch.stack(clips), rows, names, boxes, (full.w, full.h))
