"""Copy-detection metrics of the copy benchmark (``benchmarks.ndvr.copyset``) and the score normalisations.

Pure numpy; no torch. The background bias is the service's own (``service.spans.background_bias``).

* **Pooled micro-average precision** (µAP, as the VSC22 descriptor track scores it): every (query, database
  video) pair of every query, those of the queries with no copy in the index included, is pooled in one
  list and ranked by score. AP over that list: the mean, over all true pairs, of the precision at the
  rank of each; a true pair that is never ranked counts with precision 0. One threshold has to separate
  copies from non-copies for every query at once, so a score must mean the same thing for every query.
  **Ties are broken pessimistically** (the non-copy pairs rank first among equal scores), as in
  ``benchmarks.ndvr.metrics``.
* **Decision rates at a threshold** ``t`` (a hit matches when ``score >= t``): the false-positive rate is the
  share of no-copy queries with any database video at or above ``t``; the copy recall is the share of copy
  queries whose source (any video of its duplicate group) is at or above ``t``.
* **Threshold at a false-positive rate**: the smallest threshold (on a grid of ``1e-4``) at which at most
  ``floor(fpr * n)`` of the ``n`` no-copy queries match.
* **Span IoU**: intersection over union of two time intervals (seconds), on the query side and on the
  database side of a located excerpt.
* **Score normalisations** of the service's default aggregation (``max``: the best pair of segment
  embeddings over the query's views), recomputed from the embeddings: ``raw`` (cosine), ``db_centred``
  (the database's mean segment embedding subtracted from every vector, which is then L2-normalised again)
  and ``background`` (each query segment's similarities minus the mean of its ``n`` highest similarities to
  the segments of a background set that is neither indexed nor queried, as the VSC22 winners did).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.spans import background_bias
from training.metrics import average_precision

#: the threshold grid: thresholds are written to the card with this many decimals
THRESHOLD_DECIMALS = 4


# ------------------------------------------------------------------------------------- ranking
def pooled_micro_ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    """µAP of (Q, N) ``scores`` against the (Q, N) boolean ``relevant`` (the true pairs), all pairs pooled.
    NaN when there is no true pair. ``-inf`` scores (pairs a method did not return) rank last."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    rel = np.asarray(relevant, dtype=bool).ravel()
    if s.shape != rel.shape:
        raise ValueError(f"scores {np.shape(scores)} and relevant {np.shape(relevant)} differ")
    return average_precision(s, rel)  # the repo's AP (pessimistic ties) over the pooled list


# ------------------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Rates:
    threshold: float
    false_positive_rate: float  # share of no-copy queries with any match
    copy_recall: float  # share of copy queries whose source matches
    false_positives: int
    no_copy_queries: int
    copies_matched: int
    copy_queries: int


def rates_at(threshold: float, no_copy_top: Sequence[float], copy_source: Sequence[float]) -> Rates:
    """Decision rates at ``threshold``: ``no_copy_top`` holds each no-copy query's highest score over the
    database, ``copy_source`` each copy query's score of its source (the best over its group)."""
    top = np.asarray(no_copy_top, dtype=np.float64)
    src = np.asarray(copy_source, dtype=np.float64)
    fp, tp = int((top >= threshold).sum()), int((src >= threshold).sum())
    return Rates(float(threshold), fp / len(top) if len(top) else float("nan"),
                 tp / len(src) if len(src) else float("nan"), fp, len(top), tp, len(src))


def decision_rates(matched_no_copy: Sequence[bool], matched_copy: Sequence[bool],
                   threshold: float | None = None) -> Rates:
    """Rates from decisions already taken (the service's ``match`` flags, vPDQ's own rule)."""
    fp, tp = int(np.sum(matched_no_copy)), int(np.sum(matched_copy))
    n, m = len(matched_no_copy), len(matched_copy)
    return Rates(float("nan") if threshold is None else threshold, fp / n if n else float("nan"),
                 tp / m if m else float("nan"), fp, n, tp, m)


def threshold_at_fpr(no_copy_top: Sequence[float], fpr: float, decimals: int = THRESHOLD_DECIMALS) -> float:
    """The smallest threshold on a ``10**-decimals`` grid at which at most ``floor(fpr * n)`` of the ``n``
    no-copy queries have a score ``>=`` it. With ``k = floor(fpr * n)`` and the no-copy top scores sorted
    in descending order ``m_1 >= m_2 >= ...``, that is the first grid point strictly above ``m_(k+1)``
    (every no-copy query scoring ``m_(k+1)`` or less stays below it)."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"the false-positive rate must be in [0, 1), not {fpr}")
    top = np.sort(np.asarray(no_copy_top, dtype=np.float64))[::-1]
    top = top[np.isfinite(top)]
    if len(top) == 0:
        raise ValueError("no no-copy query with a finite score: the threshold is undefined")
    allowed = math.floor(fpr * len(top) + 1e-9)
    if allowed >= len(top):
        return float("-inf")
    scale = 10.0**decimals
    t = math.floor(top[allowed] * scale + 1e-6) / scale + 1 / scale  # the next grid point above m_(k+1)
    return round(t, decimals)


# ------------------------------------------------------------------------------------- spans
def interval_iou(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
    """IoU of two time intervals [start, end] (seconds); 0 when either is missing or empty."""
    if a is None or b is None or a[0] is None or a[1] is None or b[0] is None or b[1] is None:
        return 0.0
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def hit_spans(hit: Mapping) -> list[dict]:
    """A search hit's copied spans: its ``spans`` when the response has them, else the one segment pair the
    hit names (``query_start``/``query_end``, ``start``/``end``) with the hit's score."""
    spans = hit.get("spans")
    if spans:
        return [dict(s) for s in spans]
    return [{"query_start": hit.get("query_start"), "query_end": hit.get("query_end"),
             "start": hit.get("start"), "end": hit.get("end"), "score": hit.get("score")}]


def top_span(hit: Mapping) -> dict:
    """The hit's highest-scoring span (the first of equal ones): what a user reads first."""
    spans = hit_spans(hit)
    return max(spans, key=lambda s: (s.get("score") if s.get("score") is not None else -math.inf))


def span_ious(hit: Mapping, query_truth: tuple[float, float], db_truth: tuple[float, float]) -> tuple[float, float]:
    """(query-side IoU, database-side IoU) of the hit's top span against the true spans."""
    s = top_span(hit)
    return (interval_iou((s.get("query_start"), s.get("query_end")), query_truth),
            interval_iou((s.get("start"), s.get("end")), db_truth))


# ------------------------------------------------------------------------------------- normalisations
NORMALISATIONS = ("raw", "db_centred", "background")


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


@dataclass
class SegmentIndex:
    """Every database video's segment embeddings stacked, in database order (``owner[i]``: the video of row
    i); a video without segments never scores (``-inf``)."""

    vectors: np.ndarray  # (M, E)
    owner: np.ndarray  # (M,) int, sorted
    num_videos: int

    @classmethod
    def build(cls, per_video: Sequence[np.ndarray]) -> SegmentIndex:
        rows = [np.asarray(v, dtype=np.float32) for v in per_video]
        dim = next((r.shape[1] for r in rows if r.size), 0)
        vectors = np.concatenate([r.reshape(-1, dim) for r in rows]) if dim else np.zeros((0, 0), np.float32)
        owner = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)]) if rows else np.zeros(0, int)
        return cls(vectors, owner.astype(np.int64), len(rows))

    def max_per_video(self, sims: np.ndarray) -> np.ndarray:
        """(R, M) pair similarities -> (N,) the best pair per video (-inf for a video without rows)."""
        out = np.full(self.num_videos, -np.inf)
        if sims.size == 0:
            return out
        best = sims.max(axis=0)  # (M,)
        np.maximum.at(out, self.owner, best)
        return out


def normalised_scores(queries: Sequence[Sequence[np.ndarray]], database: Sequence[np.ndarray],
                      background: np.ndarray | None = None, top_n: int = 5) -> dict[str, np.ndarray]:
    """(Q, N) scores per normalisation under ``max`` aggregation. ``queries[q]`` lists the query's views,
    each an (S, E) array of L2-normalised segment embeddings (a video scores its best view, as the service
    does); ``database[j]`` the (T_j, E) segments of database video j; ``background`` (B, E) background
    segments (``background`` is left out without it)."""
    index = SegmentIndex.build(database)
    mean = index.vectors.mean(axis=0) if len(index.vectors) else None
    centred_db = _unit(index.vectors - mean) if mean is not None else index.vectors
    names = [n for n in NORMALISATIONS if n != "background" or background is not None]
    out = {n: np.full((len(queries), index.num_videos), -np.inf) for n in names}
    for qi, views in enumerate(queries):
        for v in views:
            v = np.asarray(v, dtype=np.float32)
            if not len(v):
                continue
            sims = v @ index.vectors.T
            out["raw"][qi] = np.maximum(out["raw"][qi], index.max_per_video(sims))
            if mean is not None:
                c = _unit(v - mean) @ centred_db.T
                out["db_centred"][qi] = np.maximum(out["db_centred"][qi], index.max_per_video(c))
            if background is not None:
                bias = background_bias(v, background, top_n)
                out["background"][qi] = np.maximum(out["background"][qi], index.max_per_video(sims - bias[:, None]))
    return out
