"""Evaluation metrics, as pure functions: classification accuracy, AP/mAP, Chamfer similarity, FIVR protocols.

Retrieval follows the DRCA / 3D-CSL protocol: each video is a set of L2-normalised clip embeddings
(1 frame per second, 8-frame clips); video-to-video similarity is Chamfer (mean over query clips of the
best cosine over the database video's clips); AP per query is computed over the database list with the
query itself excluded; mAP is the mean over queries that have at least one relevant video.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


def classification_metrics(scores: Tensor, labels: Tensor, num_classes: int | None = None) -> dict[str, float]:
    """top-1, top-5 (top-k with k = min(5, classes)) and mean class accuracy (over classes present)."""
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores (N, C) and labels (N,) expected, got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    c = num_classes or scores.shape[1]
    k = min(5, scores.shape[1])
    topk = scores.topk(k, dim=1).indices
    correct1 = topk[:, 0] == labels
    correct5 = (topk == labels[:, None]).any(dim=1)
    per_class = [correct1[labels == i].float().mean().item() for i in range(c) if (labels == i).any()]
    return {
        "top1": correct1.float().mean().item(),
        "top5": correct5.float().mean().item(),
        "mean_class_acc": float(np.mean(per_class)),
    }


def ranking(scores: Sequence[float] | np.ndarray, relevant: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Database order for one query: descending score; among equal scores the non-relevant items come
    first (pessimistic ties), so a method that scores everything alike gets no credit from the input order."""
    return np.lexsort((np.asarray(relevant, dtype=np.int8), -np.asarray(scores, dtype=np.float64)))


def average_precision(scores: Sequence[float] | np.ndarray, relevant: Sequence[bool] | np.ndarray) -> float:
    """AP of the `ranking`: mean of precision@rank over the ranks of relevant items; NaN when nothing is
    relevant."""
    relevant = np.asarray(relevant, dtype=bool)
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return float("nan")
    hits = relevant[ranking(scores, relevant)]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, n_rel + 1) / ranks))


def hit_at_1(scores: Sequence[float] | np.ndarray, relevant: Sequence[bool] | np.ndarray) -> float:
    """1.0 when the top of the `ranking` is relevant."""
    relevant = np.asarray(relevant, dtype=bool)
    return float(relevant[ranking(scores, relevant)[0]])


def chamfer_similarity(query: Tensor, video: Tensor) -> float:
    """Mean over query clips of the maximum cosine over the video's clips (inputs L2-normalised)."""
    if query.numel() == 0 or video.numel() == 0:
        raise ValueError("chamfer similarity needs at least one clip on each side")
    return (query @ video.T).max(dim=1).values.mean().item()


def chamfer_matrix(queries: Sequence[Tensor], database: Sequence[Tensor]) -> np.ndarray:
    """(Q, N) Chamfer similarities between lists of per-video clip embeddings (each (S_i, D))."""
    if not database:
        return np.zeros((len(queries), 0))
    db = torch.cat(list(database))
    owner = torch.cat([torch.full((len(v),), i) for i, v in enumerate(database)])
    out = np.zeros((len(queries), len(database)))
    for qi, q in enumerate(queries):
        sims = q @ db.T  # (Sq, total db clips)
        best = torch.full((q.shape[0], len(database)), -float("inf"), dtype=sims.dtype)
        best = best.scatter_reduce(1, owner.expand(q.shape[0], -1), sims, reduce="amax")
        out[qi] = best.mean(dim=0).numpy()
    return out


def retrieval_metrics(
    similarities: np.ndarray,
    query_ids: Sequence[str],
    database_ids: Sequence[str],
    relevant: Mapping[str, set[str]],
) -> dict[str, float]:
    """mAP and R@1 over queries with at least one relevant database video; the query itself is excluded.

    Returns {"mAP", "R@1", "queries"} plus "AP/<query_id>" for every evaluated query.
    """
    if similarities.shape != (len(query_ids), len(database_ids)):
        raise ValueError(f"similarities {similarities.shape} != ({len(query_ids)}, {len(database_ids)})")
    db = np.asarray(database_ids, dtype=object)
    aps, r1, per_query = [], [], {}
    for qi, q in enumerate(query_ids):
        keep = db != q
        rel = np.array([d in relevant.get(q, set()) for d in db[keep]], dtype=bool)
        if not rel.any():
            continue
        scores = similarities[qi][keep]
        ap = average_precision(scores, rel)
        aps.append(ap)
        r1.append(hit_at_1(scores, rel))
        per_query[f"AP/{q}"] = ap
    if not aps:
        raise ValueError("no query has a relevant video in the database")
    return {"mAP": float(np.mean(aps)), "R@1": float(np.mean(r1)), "queries": float(len(aps)), **per_query}
