"""Video -> segment clips: the one retrieval decoding path, shared by evaluation, text training and the service.

Retrieval protocol (DRCA / 3D-CSL): ``segment_fps`` frames per second (default 1) grouped into clips of
the model's ``num_frames`` (8 s windows every 8 s for an 8-frame model), one clip per segment. A partial
last window becomes a full-length window ending at the end of the video; a video shorter than one window
gives one clip spread over all of it (`sampling.fixed_segments`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from media.sampling import Segment, fixed_segments
from media.transforms import Fit, preprocess
from media.video import VideoReader
from model.config import InputConfig


def plan_segments(reader: VideoReader, num_frames: int, segment_fps: float = 1.0) -> list[Segment]:
    """The retrieval protocol's segments of a video (from its frame times; nothing is decoded)."""
    info = reader.info
    window = num_frames / segment_fps
    return fixed_segments(info.num_frames, info.fps, window_s=window, stride_s=window,
                          frames_per_segment=num_frames, frame_times=reader.frame_times, duration=info.duration)


def decode_segments(reader: VideoReader, segs: list[Segment], inp: InputConfig, fit: Fit = "crop") -> Tensor:
    """Decode exactly the frames of these segments (one `get_frames` call per segment) and preprocess
    them: clips ``(len(segs), C, T, H, W)``. The service passes a chunk of segments at a time, so its
    memory does not grow with a video's length."""
    return torch.stack([preprocess(reader.get_frames(s.indices).frames, inp, fit) for s in segs])


def segment_clips(reader: VideoReader, inp: InputConfig, segment_fps: float = 1.0,
                  fit: Fit = "crop") -> tuple[Tensor, list[Segment]]:
    """Every segment's clip at once: clips ``(S, C, T, H, W)`` and their segments (evaluation and
    training, whose videos are short; the service uses `plan_segments` + `decode_segments` in chunks)."""
    segs = plan_segments(reader, inp.num_frames, segment_fps)
    return decode_segments(reader, segs, inp, fit), segs
