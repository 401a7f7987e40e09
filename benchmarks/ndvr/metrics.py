"""Ranking metrics of the NDVR benchmark: AP per query, mAP, R@1 and per-transform mAP.

Each query ranks the whole database by descending similarity. AP of a query is the mean, over its
relevant database videos, of the precision at the rank of each. **Ties are broken pessimistically**: among
database videos with the same score, the non-relevant ones are ranked first. A method that gives every
video the same score (vPDQ when no frame matches) therefore gets no credit from the database order.
R@1 is 1 when the top-ranked video (after that tie rule) is relevant. Queries without a relevant video
are skipped (the benchmark has none). AP and R@1 are ``training.metrics``' (the repo's one definition).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from training.metrics import average_precision, hit_at_1


@dataclass(frozen=True)
class RetrievalResult:
    map: float
    recall_at_1: float
    per_transform_map: dict[str, float]
    per_transform_recall_at_1: dict[str, float]
    per_query_ap: dict[str, float]
    num_queries: int


def evaluate(
    similarity: np.ndarray,
    query_ids: Sequence[str],
    database_ids: Sequence[str],
    relevant: Mapping[str, frozenset[str] | set[str]],
    transform: Mapping[str, str],
) -> RetrievalResult:
    """``similarity`` (Q, N): row q scores every database video for query q (higher is more similar)."""
    if similarity.shape != (len(query_ids), len(database_ids)):
        raise ValueError(f"similarity is {similarity.shape}, expected {(len(query_ids), len(database_ids))}")
    db = np.asarray(database_ids)
    aps: dict[str, float] = {}
    hits: dict[str, float] = {}
    for qi, q in enumerate(query_ids):
        rel = np.isin(db, list(relevant.get(q, ())))
        if not rel.any():
            continue
        aps[q] = average_precision(similarity[qi], rel)
        hits[q] = hit_at_1(similarity[qi], rel)
    if not aps:
        raise ValueError("no query has a relevant database video")
    names = sorted({transform[q] for q in aps})
    per_map = {t: float(np.mean([aps[q] for q in aps if transform[q] == t])) for t in names}
    per_r1 = {t: float(np.mean([hits[q] for q in hits if transform[q] == t])) for t in names}
    return RetrievalResult(
        map=float(np.mean(list(aps.values()))),
        recall_at_1=float(np.mean(list(hits.values()))),
        per_transform_map=per_map,
        per_transform_recall_at_1=per_r1,
        per_query_ap=aps,
        num_queries=len(aps),
    )
