"""Losses: the seed's metric loss (pytorch-metric-learning) and a symmetric InfoNCE for text alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import MetricLossConfig


class MetricLoss(nn.Module):
    """MultiSimilarityLoss on cosine similarity, with a MultiSimilarityMiner (epsilon = margin) and an
    optional CrossBatchMemory whose width is the model's embedding dim (the seed hard-coded 768).

    Labels are instance ids: clips of the same video share a label and are positives.
    """

    def __init__(self, cfg: MetricLossConfig, embed_dim: int) -> None:
        super().__init__()
        from pytorch_metric_learning import distances, losses, miners

        self.cfg = cfg

        distance = distances.CosineSimilarity()
        self.miner = miners.MultiSimilarityMiner(epsilon=cfg.margin, distance=distance)
        loss = losses.MultiSimilarityLoss(alpha=cfg.alpha, beta=cfg.beta, base=cfg.base, distance=distance)
        self.memory = cfg.memory_size > 0
        if self.memory:
            loss = losses.CrossBatchMemory(loss, embedding_size=embed_dim, memory_size=cfg.memory_size,
                                           miner=self.miner)
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor, views: int = 2) -> Tensor:
        """embeddings (B * views, E), instance after instance (its views consecutive); labels (B * views,)."""
        embeddings = F.normalize(embeddings.float(), dim=-1)
        if self.cfg.kind == "info_nce":
            e = embeddings.view(-1, views, embeddings.shape[-1])
            return symmetric_info_nce(e[:, 0], e[:, 1], self.cfg.temperature)
        if self.memory:
            return self.loss(embeddings, labels)
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


def symmetric_info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """CLIP-style loss: row i of `a` and row i of `b` are a positive pair, every other row a negative."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired (N, D) embeddings expected, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
