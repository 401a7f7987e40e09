"""Video and text search over the index.

Video query: the query's segment embeddings against every indexed segment, aggregated per video
(`max` by default: the best pair of segments; `chamfer` in settings).

Text query, for each candidate video v (weights in settings, defaults 1.0 / 0.5 / 0.5):

    score(v) = w_head  * max_s cos(TextHead(MiniLM(q)), e_s(v))                  # learned text-video space
             + w_class * sum_{c in top5(v)} p_v(c) * cos(MiniLM(q), MiniLM(name_c)) # query vs class names
             + w_meta  * cos(MiniLM(q), MiniLM(meta(v)))                           # external id/title/description

Candidates: the top `text_candidates` videos by the head term (from the index), united with the top
`text_candidates` by the class + metadata terms (exact over all indexed videos, in memory). A term that
is unavailable (no text head in the checkpoint, no metadata) contributes 0.
"""

from __future__ import annotations

import numpy as np

from indexer import Span, VideoHit
from service.broker import InferenceRequest
from service.errors import InvalidInput
from service.runtime import ServiceRuntime


def class_phrase(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip()


class SearchService:
    def __init__(self, rt: ServiceRuntime) -> None:
        self.rt = rt
        self._class_emb: np.ndarray | None = None  # (C, 384)

    def _texts(self, texts: list[str]):
        return self.rt.broker.infer(InferenceRequest("embed_text", texts=tuple(texts)),
                                    self.rt.settings.inference_timeout_s)

    def video_query(self, vectors: np.ndarray, segments: list[Span] | None, k: int, min_score: float | None,
                    exclude: set[int]) -> list[VideoHit]:
        return self.rt.index.search(vectors, k=k, query_segments=segments, aggregation=self.rt.settings.aggregation,
                                    min_score=min_score, exclude_ids=exclude)

    def stored_vectors(self, video_id: int):
        stored = self.rt.index.get(video_id)
        if stored is None:
            self.rt.catalog.get_video(video_id)  # NotFound -> 404
            raise InvalidInput(f"video {video_id} is not indexed yet (see its job)")
        return stored

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


def external_ids(rt: ServiceRuntime, hits: list[VideoHit]) -> dict[int, str | None]:
    out = {}
    for h in hits:
        try:
            out[h.video_id] = rt.catalog.get_video(h.video_id).external_id
        except KeyError:
            out[h.video_id] = None
    return out

