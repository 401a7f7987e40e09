"""A learned linear reduction of the embedding: PCA or PCA-whitening of the L2-normalised feature.

``head.reduction`` (`model.config.HeadConfig`) turns it on; the network then embeds

    e = normalise(P (normalise(feature) - m))        P: (embed_dim, feature_dim), m: (feature_dim,)

where the mean ``m`` and the projection ``P`` are fitted on training embeddings (`fit_reduction`) and stored
in the checkpoint's weights file as the buffers ``reduction.mean`` and ``reduction.projection``, so the
weights' sha256 (the checkpoint's identity in the index) covers them, and both runtimes (torch, and the
OpenVINO graph traced from it) apply them where the embedding leaves the network. The two kinds:

- ``pca``: the rows of ``P`` are the top ``embed_dim`` eigenvectors of the training covariance, orthonormal
  (``P P^T = I``): an orthogonal projection onto the principal subspace;
- ``whiten``: the same rows each divided by the square root of its eigenvalue (``P = diag(l)^-1/2 U^T``),
  so the reduced training features ``P (x - m)`` have identity covariance: every kept direction counts the
  same in the cosine (PCA-whitening, Jegou & Chum 2012).

Before a fit (a network built from a config) ``m`` is zero and ``P`` the first ``embed_dim`` rows of the
identity: a valid projection, never what a checkpoint ships.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ReductionKind

#: the names of its tensors in a checkpoint's weights file
MEAN, PROJECTION = "reduction.mean", "reduction.projection"


class Reduction(nn.Module):
    """(N, feature_dim) L2-normalised -> (N, out_dim) L2-normalised (the module docstring's formula)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("projection", torch.eye(out_dim, in_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize((x - self.mean) @ self.projection.T, dim=-1)

    def load_fit(self, fit: ReductionFit) -> None:
        if tuple(fit.projection.shape) != tuple(self.projection.shape):
            raise ValueError(f"a {fit.projection.shape} projection for a {tuple(self.projection.shape)} reduction")
        self.mean.copy_(torch.from_numpy(fit.mean).to(self.mean))
        self.projection.copy_(torch.from_numpy(fit.projection).to(self.projection))


@dataclass(frozen=True)
class ReductionFit:
    kind: ReductionKind
    mean: np.ndarray  # (D,) float32
    projection: np.ndarray  # (E, D) float32
    eigenvalues: np.ndarray  # (D,) float64, descending: the training covariance's spectrum
    samples: int

    @property
    def explained_variance(self) -> float:
        """The share of the training variance in the kept directions."""
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[: len(self.projection)].sum() / total) if total > 0 else 0.0


def fit_reduction(x: np.ndarray, dim: int, kind: ReductionKind) -> ReductionFit:
    """Fit a `kind` reduction of the rows of ``x`` (N, D) (L2-normalised embeddings) to ``dim``.

    The eigen-decomposition is done in float64. Each eigenvector's sign is fixed (its largest component
    positive), so a fit is reproducible. ``whiten`` divides by sqrt(eigenvalue + 1e-12 * largest
    eigenvalue), which only guards a zero: with at least ``dim + 1`` distinct samples the reduced training
    features' covariance is the identity to float precision."""
    if kind not in ("pca", "whiten"):
        raise ValueError(f"reduction kind must be pca or whiten, got {kind!r}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"need a finite (N, D) array of embeddings, got shape {x.shape}")
    n, d = x.shape
    if not 0 < dim <= d:
        raise ValueError(f"the reduced size must be in [1, {d}], got {dim}")
    if n <= dim:
        raise ValueError(f"{n} embeddings cannot fit a {dim}-d reduction: need more than {dim}")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / (n - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    top = vectors[:, :dim].T  # (dim, D) orthonormal rows
    signs = np.sign(top[np.arange(dim), np.abs(top).argmax(axis=1)])
    top *= signs[:, None]
    if kind == "whiten":
        floor = 1e-12 * max(float(values[0]), 1e-30)
        if float(values[dim - 1]) <= floor:
            raise ValueError(f"the training embeddings span fewer than {dim} dimensions: whitening to {dim} would "
                             "divide by zero variance; fit fewer dimensions or more varied data")
        top = top / np.sqrt(values[:dim] + floor)[:, None]
    return ReductionFit(kind, mean.astype(np.float32), top.astype(np.float32), values, n)


def apply_reduction(x: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """The reduction in numpy (benchmarks): (N, D) L2-normalised -> (N, E) L2-normalised float32."""
    y = (np.asarray(x, dtype=np.float32) - mean) @ projection.T
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)
