"""Segment clips -> embeddings for evaluation and text training: one L2-normalised embedding per clip
(the clips come from `media.segments.segment_clips`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
