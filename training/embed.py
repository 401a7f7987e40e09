"""Video -> segment clips -> embeddings: the one path used by evaluation, text training and the service.

Retrieval protocol (DRCA / 3D-CSL): ``segment_fps`` frames per second (default 1) grouped into clips of
the model's ``num_frames`` (8 s windows every 8 s for an 8-frame model), one L2-normalised embedding per
clip. A partial last window becomes a full-length window ending at the end of the video; a video shorter
than one window gives one clip spread over all of it (`sampling.fixed_segments`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import InputConfig
from training.data.sampling import Segment, fixed_segments
from training.data.transforms import Fit, preprocess
from training.data.video import VideoReader


def plan_segments(reader: VideoReader, num_frames: int, segment_fps: float = 1.0) -> list[Segment]:
    """The retrieval protocol's segments of a video (from its frame times; nothing is decoded)."""
    info = reader.info
    window = num_frames / segment_fps
    return fixed_segments(info.num_frames, info.fps, window_s=window, stride_s=window,
                          frames_per_segment=num_frames, frame_times=reader.frame_times, duration=info.duration)


def decode_segments(reader: VideoReader, segs: list[Segment], inp: InputConfig, fit: Fit = "crop") -> Tensor:
    """Decode exactly the frames of these segments (one `get_frames` call per segment) and preprocess
    them: clips ``(len(segs), C, T, H, W)``. Callers bound memory by passing a chunk of segments at a time."""
    return torch.stack([preprocess(reader.get_frames(s.indices).frames, inp, fit) for s in segs])


def segment_clips(reader: VideoReader, inp: InputConfig, segment_fps: float = 1.0,
                  fit: Fit = "crop") -> tuple[Tensor, list[Segment]]:
    """Every segment's clip at once: clips ``(S, C, T, H, W)`` and their segments (for evaluation, whose
    videos are short; the service decodes in chunks with `plan_segments` + `decode_segments`)."""
    segs = plan_segments(reader, inp.num_frames, segment_fps)
    return decode_segments(reader, segs, inp, fit), segs


@dataclass
class Embedded:
    embeddings: Tensor  # (S, E) L2-normalised
    probs: Tensor | None  # (S, classes) softmax, when the model has a classifier


@torch.inference_mode()
def embed_clips(model: nn.Module, clips: Tensor, batch_size: int = 16, device: torch.device | str = "cpu") -> Embedded:
    """clips ``(N, C, T, H, W)`` -> embeddings and class probabilities, ``batch_size`` clips a forward pass."""
    embs, probs = [], []
    for i in range(0, len(clips), batch_size):
        out = model(clips[i : i + batch_size].to(device))
        if out.embedding is None:
            raise ValueError("this checkpoint has no embedding head (head.embed_dim=0)")
        embs.append(out.embedding.float().cpu())
        if out.logits is not None:
            probs.append(F.softmax(out.logits.float(), dim=-1).cpu())
    return Embedded(torch.cat(embs), torch.cat(probs) if probs else None)
