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


def segment_clips(reader: VideoReader, inp: InputConfig, segment_fps: float = 1.0,
                  fit: Fit = "crop") -> tuple[Tensor, list[Segment]]:
    """Decode exactly the frames of every segment (one `get_frames` call per segment, so memory stays
    bounded for long videos) and preprocess them: clips ``(S, C, T, H, W)`` and their segments."""
    info = reader.info
    window = inp.num_frames / segment_fps
    segs = fixed_segments(info.num_frames, info.fps, window_s=window, stride_s=window,
                          frames_per_segment=inp.num_frames, frame_times=reader.frame_times,
                          duration=info.duration)
    clips = [preprocess(reader.get_frames(s.indices).frames, inp, fit) for s in segs]
    return torch.stack(clips), segs
