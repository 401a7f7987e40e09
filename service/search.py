"""Video and text search over the index.

Video query: the query's segment embeddings against every indexed segment, aggregated per video
(`max` by default: the best pair of segments; `chamfer` in settings). An uploaded query is embedded in
several views (`VideoQuery`: the picture as it is, and e.g. its mirror image; see `service.encoder`);
each view is searched on its own and a video scores its best view, which the hit names (`VideoMatch`).

Text query, for each candidate video v (weights in settings, defaults 1.0 / 0.5 / 0.5):

    score(v) = w_head  * max_s cos(TextHead(MiniLM(q)), e_s(v))                  # learned text-video space
             + w_class * sum_{c in top5(v)} p_v(c) * cos(MiniLM(q), MiniLM(name_c)) # query vs class names
             + w_meta  * cos(MiniLM(q), MiniLM(meta(v)))                           # external id/title/description

Candidates: the top `text_candidates` videos by the head term (from the index), united with the top
`text_candidates` by the class + metadata terms (exact over all indexed videos, in memory). A term that
is unavailable (no text head in the checkpoint, no metadata) contributes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer import Span, VideoHit
from indexer.index import Aggregation
from service.broker import InferenceRequest
from service.errors import InvalidInput
from service.runtime import ServiceRuntime


def class_phrase(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip()


@dataclass(frozen=True)
class QueryView:
    name: str  # "original", "mirrored", ... (service.encoder.QUERY_VIEWS)
    vectors: np.ndarray  # (S, E) L2-normalised
    segments: list[Span] | None
    box: list[int] | None = None  # the region of the query's frame embedded, [x, y, w, h]; None: all


@dataclass(frozen=True)
class VideoQuery:
    views: list[QueryView]


@dataclass(frozen=True)
class VideoMatch:
    hit: VideoHit
    view: str | None  # the query view that gave the hit's score (None: a text query)
    box: list[int] | None  # that view's region of the query frame


def video_query_from(vectors: np.ndarray, segments: list[Span] | None, views: list[str] | None = None,
                     boxes: dict[str, list[int]] | None = None) -> VideoQuery:
    """Group an embedding result's rows by view (rows without a view name are all "original")."""
    if views is None:
        return VideoQuery([QueryView("original", vectors, segments, (boxes or {}).get("original"))])
    out = []
    for name in dict.fromkeys(views):
        rows = [i for i, v in enumerate(views) if v == name]
        segs = [segments[i] for i in rows] if segments is not None else None
        out.append(QueryView(name, vectors[rows], segs, (boxes or {}).get(name)))
    return VideoQuery(out)


class SearchService:
    def __init__(self, rt: ServiceRuntime) -> None:
        self.rt = rt
        self._class_emb: np.ndarray | None = None  # (C, 384)

    def _texts(self, texts: list[str]):
        return self.rt.broker.infer(InferenceRequest("embed_text", texts=tuple(texts)),
                                    self.rt.settings.inference_timeout_s)

    def embed_video_query(self, path: str) -> VideoQuery:
        """An uploaded query video -> its views' segment embeddings (one request to an encoder worker)."""
        res = self.rt.broker.infer(InferenceRequest("embed_video", video_path=path),
                                   self.rt.settings.inference_timeout_s)
        return video_query_from(res.vectors, res.segments, res.views, res.boxes)

    def video_query(self, query: VideoQuery, k: int, min_score: float | None, exclude: set[int],
                    aggregation: Aggregation | None = None) -> list[VideoMatch]:
        """Top-k videos over all views of the query: each view searched on its own, a video scores its
        best view (exact: a video in the merged top-k is in the top-k of its best view)."""
        agg = aggregation or self.rt.settings.aggregation
        best: dict[int, VideoMatch] = {}
        for view in query.views:
            for h in self.rt.index.search(view.vectors, k=k, query_segments=view.segments, aggregation=agg,
                                          min_score=min_score, exclude_ids=exclude):
                cur = best.get(h.video_id)
                if cur is None or h.score > cur.hit.score:
                    best[h.video_id] = VideoMatch(h, view.name, view.box)
        return sorted(best.values(), key=lambda m: (-m.hit.score, m.hit.video_id))[:k]

    def stored_query(self, video_id: int) -> VideoQuery:
        """"More like this": an indexed video's own segments, as stored (one view)."""
        stored = self.rt.index.get(video_id)
        if stored is None:
            self.rt.catalog.get_video(video_id)  # NotFound -> 404
            raise InvalidInput(f"video {video_id} is not indexed yet (see its job)")
        return video_query_from(stored.vectors, stored.segments)

    def text_query(self, text: str, k: int, min_score: float | None, exclude: set[int]) -> list[VideoHit]:
        s = self.rt.settings
        res = self._texts([text])
        q_sent = res.sentence[0]  # (384,)
        q_head = res.projected[0] if res.projected is not None else None  # (E,)
        table = self.rt.catalog.text_table()
        cand: set[int] = set()
        n_cand = max(s.text_candidates, k)
        if q_head is not None and s.text_weight_head:
            for h in self.rt.index.search(q_head[None, :], k=n_cand, exclude_ids=exclude):
                cand.add(h.video_id)
        side = self._side_scores(q_sent, table)
        if side:
            ids = np.fromiter(side.keys(), dtype=np.int64)
            vals = np.fromiter(side.values(), dtype=np.float64)
            for i in np.argsort(-vals)[:n_cand]:
                cand.add(int(ids[i]))
        hits = []
        for vid in cand:
            if vid in exclude:
                continue
            stored = self.rt.index.get(vid)
            if stored is None:
                continue
            head, seg = 0.0, None
            if q_head is not None:
                sims = stored.vectors @ q_head
                j = int(np.argmax(sims))
                head, seg = float(sims[j]), stored.segments[j]
            score = s.text_weight_head * head + side.get(vid, 0.0)
            if min_score is not None and score < min_score:
                continue
            hits.append(VideoHit(vid, score, seg, None))
        hits.sort(key=lambda h: (-h.score, h.video_id))
        return hits[:k]

    def _side_scores(self, q_sent: np.ndarray, table) -> dict[int, float]:
        """w_class * class term + w_meta * metadata term for every indexed video."""
        s = self.rt.settings
        out: dict[int, float] = {}
        if s.text_weight_class and self.rt.class_names:
            if self._class_emb is None:
                self._class_emb = self._texts([class_phrase(c) for c in self.rt.class_names]).sentence
            sim = dict(zip(self.rt.class_names, (self._class_emb @ q_sent).tolist(), strict=True))
            for vid, labels in list(table.labels.items()):
                out[vid] = s.text_weight_class * sum(lb.prob * sim.get(lb.name, 0.0) for lb in labels)
        if s.text_weight_meta:
            for vid, emb in list(table.meta.items()):
                out[vid] = out.get(vid, 0.0) + s.text_weight_meta * float(emb @ q_sent)
        return out


def external_ids(rt: ServiceRuntime, hits: list[VideoHit] | list[VideoMatch]) -> dict[int, str | None]:
    out = {}
    for h in (m.hit if isinstance(m, VideoMatch) else m for m in hits):
        try:
            out[h.video_id] = rt.catalog.get_video(h.video_id).external_id
        except KeyError:
            out[h.video_id] = None
    return out

