"""Video and text search over the index.

Video query: the query's segment embeddings against every indexed segment, aggregated per video
(`max` by default: the best pair of segments; `chamfer` in settings). An uploaded query is embedded in
several views (`VideoQuery`: the picture as it is, and e.g. its mirror image; see `service.encoding.encoder`);
each view is searched on its own and a video scores its best view, which the hit names (`VideoMatch`).
Given a match threshold (`match_threshold`: the request's `min_score`, else the checkpoint card's), a hit
is a copy when its score reaches it, and a copy's spans are located in both videos (`service.spans`).

Text query, for each candidate video v (weights and the rest in settings; docs/api.md has examples):

    score(v) = w_head    * max_s cos(TextHead(MiniLM(q)), e_s(v))        # learned text-video space
             + w_concept * concept(v, q)                                 # the concept bank (service/concepts.py)
             + w_meta    * max(0, cos(MiniLM(q), MiniLM(meta(v))) - floor) # external id/title/description

Candidates: the top `text_candidates` videos by the head term (from the index), united with the top
`text_candidates` by the concept + metadata terms (exact over all indexed videos, in memory). A term that
is unavailable (no text head or no classifier in the checkpoint, no metadata) contributes 0.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from indexer import SegmentIndex, Span, VideoHit
from indexer.index import Aggregation
from model.checkpoint import ModelCard
from model.text import text_encoder_id
from service.active import Active
from service.broker import Broker, InferenceRequest
from service.catalog import Catalog, TextTable
from service.concepts import ConceptBank
from service.errors import InvalidInput
from service.settings import Settings
from service.spans import CopySpan, copy_spans

log = logging.getLogger(__name__)

#: Texts per embedding request while the concept bank is built (each request is one worker pass).
BANK_CHUNK = 256


@dataclass(frozen=True)
class QueryView:
    name: str  # "original", "mirrored", ... (service.encoding.encoder.QUERY_VIEWS)
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
    match: bool | None = None  # a copy: the score reaches the match threshold (None: a text query)
    spans: tuple[CopySpan, ...] = ()  # a copy's copied spans, in query time order


@dataclass(frozen=True)
class MatchThreshold:
    """The score a video hit must reach to be a copy, and where it comes from."""

    min_score: float
    source: Literal["request", "checkpoint"]
    false_positive_rate: float | None = None  # the checkpoint's calibration (None: the request's own)
    calibration: str | None = None


def match_threshold(card: ModelCard, min_score: float | None) -> MatchThreshold | None:
    """The request's `min_score`, else the checkpoint card's threshold, else None (no hit is a copy)."""
    if min_score is not None:
        return MatchThreshold(float(min_score), "request")
    if card.match is None:
        return None
    m = card.match
    return MatchThreshold(m.min_score, "checkpoint", m.false_positive_rate, m.calibration or None)


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
    """Queries over the active generation (each query reads it once), the catalog's records and text
    table, and the encoder workers behind the broker (query embeddings, classification)."""

    def __init__(self, settings: Settings, catalog: Catalog, broker: Broker, active: Active) -> None:
        self.settings = settings
        self.catalog = catalog
        self.broker = broker
        self.active = active
        self._bank: ConceptBank | None = None
        self._bank_lock = threading.Lock()

    def _texts(self, texts: list[str]):
        return self.broker.infer(InferenceRequest("embed_text", texts=tuple(texts)), self.settings.inference_timeout_s)

    def _sentences(self, texts: list[str]) -> np.ndarray:
        parts = [self._texts(texts[i : i + BANK_CHUNK]).sentence for i in range(0, len(texts), BANK_CHUNK)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    # the concept bank: built once per checkpoint (at start, in the background; else at the first query) ---
    def concept_bank(self) -> ConceptBank | None:
        current = self.active.current
        if not current.class_names:
            return None
        with self._bank_lock:
            if self._bank is None:
                self._bank = ConceptBank.build(list(current.class_names), self._sentences,
                                               current.card.class_descriptions,
                                               cache_dir=self.settings.concepts_dir,
                                               embedder_id=text_encoder_id())
                log.info("concept bank: %d concepts, %d phrases", len(self._bank), len(self._bank.phrase_concept))
            return self._bank

    def reset(self) -> None:
        """Forget the concept bank (an online reindex switched to a checkpoint with other classes)."""
        with self._bank_lock:
            self._bank = None

    def warm_up(self) -> threading.Thread:
        """Build the concept bank now, off the request path; a failure (no worker yet) is retried by the
        first text query."""

        def run() -> None:
            try:
                self.concept_bank()
            except Exception as e:
                log.info("concept bank not built at start (%s); the first text query builds it", e)

        t = threading.Thread(target=run, name="drca-concept-bank", daemon=True)
        t.start()
        return t

    # queries ------------------------------------------------------------------------------------
    def classify(self, path: str) -> np.ndarray:
        """A video's class probabilities (C,): the mean of its segments' (one request to an encoder worker)."""
        return self.broker.infer(InferenceRequest("classify", video_path=path), self.settings.inference_timeout_s).probs

    def embed_video_query(self, path: str) -> VideoQuery:
        """An uploaded query video -> its views' segment embeddings (one request to an encoder worker)."""
        res = self.broker.infer(InferenceRequest("embed_video", video_path=path), self.settings.inference_timeout_s)
        return video_query_from(res.vectors, res.segments, res.views, res.boxes)

    def video_query(self, query: VideoQuery, k: int, min_score: float | None, exclude: set[int],
                    aggregation: Aggregation | None = None,
                    threshold: float | None = None) -> list[VideoMatch]:
        """Top-k videos over all views of the query: each view searched on its own, a video scores its
        best view (exact: a video in the merged top-k is in the top-k of its best view). With a match
        `threshold`, each hit is decided (`match`) and a copy's spans are located from its best view;
        without one, no hit is a copy."""
        agg = aggregation or self.settings.aggregation
        index = self.active.current.index
        best: dict[int, VideoMatch] = {}
        best_view: dict[int, QueryView] = {}
        for view in query.views:
            for h in index.search(view.vectors, k=k, query_segments=view.segments, aggregation=agg,
                                          min_score=min_score, exclude_ids=exclude):
                cur = best.get(h.video_id)
                if cur is None or h.score > cur.hit.score:
                    best[h.video_id] = VideoMatch(h, view.name, view.box, match=False)
                    best_view[h.video_id] = view
        top = sorted(best.values(), key=lambda m: (-m.hit.score, m.hit.video_id))[:k]
        if threshold is None:
            return top
        return [decide(index, m, best_view[m.hit.video_id], threshold) for m in top]

    def stored_query(self, video_id: int) -> VideoQuery:
        """"More like this": an indexed video's own segments, as stored (one view)."""
        stored = self.active.current.index.get(video_id)
        if stored is None:
            self.catalog.get_video(video_id)  # NotFound -> 404
            raise InvalidInput(f"video {video_id} is not indexed yet (see its job)")
        return video_query_from(stored.vectors, stored.segments)

    def text_query(self, text: str, k: int, min_score: float | None, exclude: set[int]) -> list[VideoHit]:
        s = self.settings
        index = self.active.current.index
        res = self._texts([text])
        q_sent = res.sentence[0]  # (384,)
        q_head = res.projected[0] if res.projected is not None else None  # (E,)
        cand: set[int] = set()
        n_cand = max(s.text_candidates, k)
        if q_head is not None and s.text_weight_head:
            for h in index.search(q_head[None, :], k=n_cand, exclude_ids=exclude):
                cand.add(h.video_id)
        ids, side = self.side_scores(q_sent)
        if len(ids):
            top = np.argpartition(-side, n_cand - 1)[:n_cand] if len(ids) > n_cand else np.arange(len(ids))
            cand.update(ids[top].tolist())
        in_cand = np.isin(ids, np.fromiter(cand, dtype=np.int64, count=len(cand)))
        side_of = dict(zip(ids[in_cand].tolist(), side[in_cand].tolist(), strict=True))
        hits = []
        for vid in cand:
            if vid in exclude:
                continue
            stored = index.get(vid)
            if stored is None:
                continue
            head, seg = 0.0, None
            if q_head is not None:
                sims = stored.vectors @ q_head
                j = int(np.argmax(sims))
                head, seg = float(sims[j]), stored.segments[j]
            score = s.text_weight_head * head + side_of.get(vid, 0.0)
            if min_score is not None and score < min_score:
                continue
            hits.append(VideoHit(vid, score, seg, None))
        hits.sort(key=lambda h: (-h.score, h.video_id))
        return hits[:k]

    def side_scores(self, q_sent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(video ids, concept + metadata terms) over every indexed video."""
        s = self.settings
        bank = self.concept_bank() if s.text_weight_concept else None
        return side_scores(self.catalog.text_table(), bank, q_sent, s)


def decide(index: SegmentIndex, m: VideoMatch, view: QueryView, threshold: float) -> VideoMatch:
    """`m` with its copy decision, and, for a copy, its spans between `view` and the indexed video."""
    if m.hit.score < threshold:
        return replace(m, match=False)
    stored = index.get(m.hit.video_id) if view.segments is not None else None
    if stored is None:  # deleted since the search, or a query without segment times
        return replace(m, match=True)
    spans = copy_spans(view.vectors, [(s.start, s.end) for s in view.segments], stored.vectors,
                       [(s.start, s.end) for s in stored.segments], threshold)
    return replace(m, match=True, spans=tuple(spans))


def side_scores(table: TextTable, bank: ConceptBank | None, q_sent: np.ndarray,
                s: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(video ids, w_concept * concept + w_meta * max(0, meta - floor)) for every video of `table`."""
    weights = bank.weights(q_sent, s.text_concept_temperature) if bank is not None else None
    ids, concept, meta, has_meta = table.scores(bank.names if bank is not None else (), weights,
                                                q_sent if s.text_weight_meta else None)
    total = s.text_weight_concept * concept
    total += s.text_weight_meta * np.where(has_meta, np.maximum(0.0, meta - s.text_meta_floor), 0.0)
    return ids, total


def external_ids(catalog: Catalog, hits: list[VideoHit] | list[VideoMatch]) -> dict[int, str | None]:
    out = {}
    for h in (m.hit if isinstance(m, VideoMatch) else m for m in hits):
        try:
            out[h.video_id] = catalog.get_video(h.video_id).external_id
        except KeyError:
            out[h.video_id] = None
    return out
