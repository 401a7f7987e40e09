"""Label agreement with the teacher on whole real videos (the held-out split), and the teacher's own ceiling.

A video's distribution is the mean over its segments, sampled as the service does (`segment_clips`:
``num_frames`` frames at 1 fps per segment, short side resized and centre-cropped):

- the student: the softmax of its clip logits, per segment;
- the teacher: the mean of its per-frame softmaxes over the same frames, at 224 px.

``label_agreement``: how often the teacher's top-1 is in the student's top-5, and top-1 agreement.
``teacher_ceiling``: the same measure with the teacher itself fed the frames at a lower size (the
student's resolution), run at that size (``native``) or upscaled back to 224 px (``upscaled``): what a
student at that size could at best reach.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from media.segments import segment_clips
from media.video import open_video
from model.config import InputConfig
from model.efficientnet import EfficientNetLite0
from training.embed import embed_clips
from training.teacher import TEACHER_SIZE, run_teacher

log = logging.getLogger(__name__)

_RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # 0-255 frames out of `preprocess`


def raw_segments(path: Path, size: int, num_frames: int = 8, segment_fps: float = 1.0) -> torch.Tensor:
    """The service's segment frames of one video at ``size`` px, 0-255: ``(S, T, C, size, size)``."""
    with open_video(path) as reader:
        clips, _ = segment_clips(reader, InputConfig(num_frames=num_frames, img_size=size, **_RAW), segment_fps)
    return clips.permute(0, 2, 1, 3, 4)


def teacher_video_probs(teacher: EfficientNetLite0, path: Path, size: int = TEACHER_SIZE, run_size: int | None = None,
                        num_frames: int = 8) -> torch.Tensor:
    """The teacher's video distribution (1000,): frames at ``size`` px, run at ``run_size`` (default ``size``)."""
    x = raw_segments(path, size, num_frames)
    logits, _ = run_teacher(teacher, x.flatten(0, 1), run_size or size)
    return logits.softmax(-1).mean(0)


def student_video_probs(model: torch.nn.Module, inp: InputConfig, path: Path) -> torch.Tensor:
    with open_video(path) as reader:
        clips, _ = segment_clips(reader, inp)
    probs = embed_clips(model, clips).probs
    if probs is None:
        raise ValueError("the checkpoint has no classifier")
    return probs.mean(0)


def _agree(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """reference, other: (N, C) distributions -> reference top-1 in other's top-5, and top-1 agreement."""
    t1 = reference.argmax(-1)
    top5 = other.topk(5, dim=-1).indices
    return {"top1_in_top5": float((top5 == t1[:, None]).any(-1).float().mean()),
            "top1_agree": float((top5[:, 0] == t1).float().mean())}


def label_agreement(model: torch.nn.Module, inp: InputConfig, videos: Sequence[Path], teacher: EfficientNetLite0,
                    names: Sequence[str]) -> dict:
    """Per-video top-5 of both, and the two agreement figures over ``videos`` (``model`` classifies the
    1000 ImageNet classes, `load_checkpoint(...).model` or a network just trained)."""
    tp, sp, per_video = [], [], {}
    model = model.eval()
    for path in tqdm(videos, desc="agreement", unit="video"):
        t = teacher_video_probs(teacher, path)
        s = student_video_probs(model, inp, path)
        tp.append(t)
        sp.append(s)
        per_video[path.name] = {
            "teacher_top5": [(names[i], round(float(t[i]), 3)) for i in t.topk(5).indices.tolist()],
            "student_top5": [(names[i], round(float(s[i]), 3)) for i in s.topk(5).indices.tolist()],
        }
    return {"videos": len(videos), **_agree(torch.stack(tp), torch.stack(sp)), "per_video": per_video}


def teacher_ceiling(videos: Sequence[Path], teacher: EfficientNetLite0, sizes: Sequence[int] = (112, 128, 160)) -> dict:
    """Teacher top-1 at 224 px in its own top-5 at each lower size (run natively, and upscaled to 224)."""
    ref = torch.stack([teacher_video_probs(teacher, p) for p in tqdm(videos, desc="teacher 224", unit="video")])
    out: dict = {"videos": len(videos)}
    for s in sizes:
        native = torch.stack([teacher_video_probs(teacher, p, s) for p in videos])
        up = torch.stack([teacher_video_probs(teacher, p, s, run_size=TEACHER_SIZE) for p in videos])
        out[f"{s}px_native"] = _agree(ref, native)
        out[f"{s}px_upscaled"] = _agree(ref, up)
    return out
