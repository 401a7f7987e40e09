"""Copied spans of a video search hit: where in the query and where in the indexed video the copy lies.

Input: the query's windows (one view: segment embeddings and their times; a query video is embedded with
overlapping windows every `query_stride_s`) and the indexed video's segments (8 s every 8 s), and the
score a pair must reach to count as a copy (the match threshold). A pair's score is its cosine minus the
query window's bias (`background_bias`: the mean of the window's `top_n` highest cosines to a background
set, when the checkpoint ships one; else 0), the same `match_score` the hit is decided with.

1. Among the (query window, video segment) pairs at or above the threshold, the best pair's time offset
   (query start - video start, binned by the query's stride) is the dominant offset. (Not a vote over all
   pairs: in a static scene, say a fixed camera, every pair passes, and a vote favours the offset with the
   most overlapping pairs rather than the one that aligns the content.) Only where several pairs tie with
   the best (within `OFFSET_TIE`: a picture that does not change, where the content cannot tell offsets
   apart) do those tied pairs vote: the offset most of them share wins (on equal counts the best pair's own,
   else the one nearest zero).
2. The query windows with a matching pair near that offset (the pair's segment covers at least half of
   the shifted window) form spans: one per run of such windows that overlap or touch in time. A window's
   score against the copy (its best such pair) tells how much of it the copy covers: a span's first
   (last) window covering the share f = score / the span's best score of the copy, the span starts
   (1 - f) window lengths after that window's start (ends before its end); at the query's start or end
   the window's own edge. So a span is located finer than the query's stride and than the 8 s segment.
3. The span's offset is the cosine-weighted mean of its aligned pairs' offsets; its video edges are its
   query edges minus that offset, clipped to the video.
4. The span's windows are removed and 1-3 repeat on the rest (another offset: the same video copied twice,
   or cut and rearranged), at most `max_spans` times.

A whole-video copy is one span covering both videos. Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: spans per hit, at most
MAX_SPANS = 8
#: pairs scoring within this of the best pair tie with it (a still picture: re-encoding noise of about 1e-4
#: separates them); the offset is then voted among the tied pairs
OFFSET_TIE = 1e-3


@dataclass(frozen=True)
class CopySpan:
    query_start: float  # seconds in the query
    query_end: float
    start: float  # seconds in the indexed video
    end: float
    score: float  # the best pair's score in the span (its cosine minus the query window's bias)


def background_bias(query: np.ndarray, background: np.ndarray, top_n: int) -> np.ndarray:
    """(S,) per query segment (`query` (S, E) and `background` (B, E), L2-normalised): the mean of its
    `top_n` highest cosines to the background segments (all of them when there are fewer)."""
    if len(background) == 0:
        raise ValueError("the background set has no segment")
    sims = np.asarray(query, dtype=np.float32) @ np.asarray(background, dtype=np.float32).T  # (S, B)
    n = min(top_n, sims.shape[1])
    top = -np.partition(-sims, n - 1, axis=1)[:, :n]
    return top.mean(axis=1, dtype=np.float64)


def copy_spans(query_vectors: np.ndarray, query_segments: np.ndarray, vectors: np.ndarray, segments: np.ndarray,
               min_score: float, max_spans: int = MAX_SPANS, query_bias: np.ndarray | None = None) -> list[CopySpan]:
    """The copied spans between a query (`query_vectors` (Q, D), `query_segments` (Q, 2) seconds) and an
    indexed video (`vectors` (S, D), `segments` (S, 2)), both L2-normalised, for pairs whose score (cosine
    minus `query_bias` (Q,) of the query window, when given) is at or above `min_score`; in query time
    order, [] when no pair reaches it."""
    q_segs = np.asarray(query_segments, dtype=np.float64).reshape(-1, 2)
    v_segs = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    if not len(q_segs) or not len(v_segs):
        return []
    order = np.argsort(q_segs[:, 0], kind="stable")  # query windows in time order
    q_segs = q_segs[order]
    sims = (np.asarray(query_vectors)[order] @ np.asarray(vectors).T).astype(np.float64)  # (Q, S)
    if query_bias is not None:
        sims -= np.asarray(query_bias, dtype=np.float64)[order][:, None]
    offsets = q_segs[:, :1] - v_segs[None, :, 0]  # (Q, S) query start - video start
    stride = _stride(q_segs)
    # a query window belongs to a copy at offset o when it matches a segment that covers at least half of
    # it once shifted by o (and at least its own stride, so that each window can reach one)
    reach = max(stride, float(np.median(v_segs[:, 1] - v_segs[:, 0])) / 2)
    q_end, v_end = float(q_segs[:, 1].max()), float(v_segs[:, 1].max())
    alive = sims >= min_score
    spans: list[CopySpan] = []
    while alive.any() and len(spans) < max_spans:
        best = np.unravel_index(int(np.argmax(np.where(alive, sims, -np.inf))), sims.shape)
        mode = _tied_offset(offsets, stride, alive & (sims >= sims[best] - OFFSET_TIE), offsets[best])
        aligned = alive & (np.abs(offsets - mode) <= stride / 2 + 1e-6)  # the mode's own pairs
        near = alive & (np.abs(offsets - mode) <= reach + 1e-6)  # and the half-aligned ones beside them
        rows = np.flatnonzero(near.any(axis=1))
        # one span per run of matching windows that overlap or touch (a window halfway between two indexed
        # segments may match neither, yet lies inside the copy when its neighbours do)
        breaks = np.flatnonzero(q_segs[rows[1:], 0] > q_segs[rows[:-1], 1] + 1e-6) + 1
        for run in np.split(rows, breaks):
            pairs = aligned[run] if aligned[run].any() else near[run]
            offset = float(np.average(offsets[run][pairs], weights=np.maximum(sims[run][pairs], 0) + 1e-6))
            window_scores = np.where(near[run], sims[run], -np.inf).max(axis=1)  # each window's best near pair
            qs, qe = _edges(q_segs, run, window_scores)
            # the same span in both videos: clipped to the indexed video, and the query span with it
            vs, ve = max(0.0, qs - offset), min(v_end, qe - offset)
            if ve > vs:
                qs, qe = vs + offset, ve + offset
            else:  # the offset maps the span off the video: keep the matched segments' own times
                cols = np.flatnonzero(near[run].any(axis=0))
                vs, ve = float(v_segs[cols, 0].min()), float(v_segs[cols, 1].max())
            spans.append(CopySpan(round(float(qs), 3), round(float(min(qe, q_end)), 3), round(float(vs), 3),
                                  round(float(ve), 3), float(window_scores.max())))
        alive[rows] = False
    return sorted(spans[:max_spans], key=lambda s: (s.query_start, -s.score))


def _tied_offset(offsets: np.ndarray, stride: float, tied: np.ndarray, best: float) -> float:
    """The binned offset most of the `tied` pairs share; the best pair's (`best`) when it is among the most
    shared, else the one nearest zero."""
    bins, counts = np.unique(np.round(offsets[tied] / stride), return_counts=True)
    top = bins[counts == counts.max()]
    own = float(np.round(best / stride))
    return (own if own in top else float(top[np.argmin(np.abs(top))])) * stride


def _stride(segs: np.ndarray) -> float:
    """The query's window stride: the median gap between consecutive window starts (a last window that
    ends at the end of the video is closer to the one before it); its window length when it has one."""
    gaps = np.diff(segs[:, 0])
    gaps = gaps[gaps > 1e-6]
    return float(np.median(gaps)) if len(gaps) else float(max(segs[0, 1] - segs[0, 0], 1e-3))


def _edges(q_segs: np.ndarray, run: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """A span's query edges from its windows `run` (indices into `q_segs`, in time order) and their scores
    against the copy: an edge window covering the share f = score / best score of the copy moves the edge
    (1 - f) of its length inwards, unless it is the query's first (last) window; the windows' own edges
    when that leaves nothing."""
    a, b = int(run[0]), int(run[-1])
    peak = float(scores.max())
    share = np.clip(scores / peak, 0.0, 1.0) if peak > 0 else np.ones_like(scores)
    qs, qe = float(q_segs[a, 0]), float(q_segs[b, 1])
    inner_s = qs if a == 0 else qs + (1.0 - share[0]) * (q_segs[a, 1] - q_segs[a, 0])
    inner_e = qe if b == len(q_segs) - 1 else qe - (1.0 - share[-1]) * (q_segs[b, 1] - q_segs[b, 0])
    return (inner_s, inner_e) if inner_e > inner_s else (qs, qe)
