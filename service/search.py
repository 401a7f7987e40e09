"""Video and text search over the index.

Video query: the query's segment embeddings against every indexed segment, aggregated per video
(`max` by default: the best pair of segments; `chamfer` in settings). An uploaded query is embedded in
several views (`VideoQuery`: the picture as it is, and e.g. its mirror image; see `service.encoding.encoder`);
each view is searched on its own and a video scores its best view, which the hit names (`VideoMatch`).
The ranking and `score` are the raw cosines. Each of the top k hits also gets a `match_score`, comparable
across queries, computed from the stored vectors in the hit's best view:

    bias_i      = mean of the top_n highest cosines of query segment i to the checkpoint's background set
    match_score = max over the segment pairs (i, j) of (cos(q_i, v_j) - bias_i)

(`service.spans.background_bias`; without a background set in the card, match_score = score). Given a
match threshold (`match_threshold`: the request's `min_score`, else the checkpoint card's), a hit is a
copy when its match_score reaches it, and a copy's spans are located in both videos from the same
bias-adjusted pair scores (`service.spans`). A request's `min_score` also leaves out the hits whose
match_score is below it.

Text query, for each candidate video v (weights and the rest in settings; docs/api.md has examples):

    score(v) = w_head    * max_s cos(TextHead(MiniLM(q)), e_s(v))        # learned text-video space
             + w_concept * concept(v, q)                                 # the concept bank (service/concepts.py)
             + w_meta    * max(0, cos(MiniLM(q), MiniLM(meta(v))) - floor) # external id/title/description

Candidates: the top `text_candidates` videos by the head term (from the index), united with the top
`text_candidates` by the concept + metadata terms (exact over all indexed videos, in memory). A term that
is unavailable (no text head or no classifier in the checkpoint, no metadata) contributes 0.

One generation per query: a query's embedding (or an indexed video's stored segments) is searched in the
index generation of the checkpoint that made it (`InferenceResult.checkpoint`), never in another one. An
online reindex that switches models between the two: the query is searched in the new generation when
the new model embedded it, else embedded once more; a second switch meanwhile is a 503 `model_switched`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

import numpy as np

from indexer import SegmentIndex, Span, VideoHit
from indexer.index import Aggregation
from model.checkpoint import Background, ModelCard
from model.text import text_encoder_id
from service.active import Active, ActiveGeneration
from service.broker import Broker, InferenceRequest
from service.catalog import Catalog, TextTable
from service.concepts import ConceptBank
from service.errors import InvalidInput, ModelSwitched
from service.settings import Settings
from service.spans import CopySpan, background_bias, copy_spans

log = logging.getLogger(__name__)

#: Texts per embedding request while the concept bank is built (each request is one worker pass).
BANK_CHUNK = 256

T = TypeVar("T")


@dataclass(frozen=True)
class QueryView:
    name: str  # "original", "mirrored", ... (service.encoding.encoder.QUERY_VIEWS)
    vectors: np.ndarray  # (S, E) L2-normalised
    segments: list[Span] | None
    box: list[int] | None = None  # the region of the query's frame embedded, [x, y, w, h]; None: all


@dataclass(frozen=True)
class VideoQuery:
    views: list[QueryView]
    checkpoint: str | None = None  # the sha256 of the checkpoint whose vectors these are (None: not said)


@dataclass(frozen=True)
class VideoMatch:
    hit: VideoHit
    view: str | None  # the query view that gave the hit's score (None: a text query)
    box: list[int] | None  # that view's region of the query frame
    match: bool | None = None  # a copy: match_score reaches the match threshold (None: a text query)
    spans: tuple[CopySpan, ...] = ()  # a copy's copied spans, in query time order
    match_score: float | None = None  # the score the copy decision is taken on (None: a text query)


@dataclass(frozen=True)
class MatchThreshold:
    """The match_score a video hit must reach to be a copy, and where it comes from."""

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
                     boxes: dict[str, list[int]] | None = None, checkpoint: str | None = None) -> VideoQuery:
    """Group an embedding result's rows by view (rows without a view name are all "original")."""
    if views is None:
        return VideoQuery([QueryView("original", vectors, segments, (boxes or {}).get("original"))], checkpoint)
    out = []
    for name in dict.fromkeys(views):
        rows = [i for i, v in enumerate(views) if v == name]
        segs = [segments[i] for i in rows] if segments is not None else None
        out.append(QueryView(name, vectors[rows], segs, (boxes or {}).get(name)))
    return VideoQuery(out, checkpoint)


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

    # one generation per query ---------------------------------------------------------------------
    def _in_one_generation(self, make: Callable[[], T],
                           made_by: Callable[[T], str | None]) -> tuple[ActiveGeneration, T]:
        """`make()` (a worker's embedding, or an indexed video's segments) and the active generation of the
        checkpoint that made it (`made_by`: its sha256; None: not said, the generation read before). An
        online reindex may switch models meanwhile: then the new generation if the new model made it, else
        made once more; `ModelSwitched` (503) if the model changed again."""
        for _ in range(2):
            before = self.active.current
            out = make()
            sha = made_by(out)
            for gen in (before, self.active.current):
                if sha is None or sha == gen.checkpoint.sha256:
                    return gen, out
            log.info("the model was switched while a query was embedded; embedding it again")
        raise ModelSwitched("the model was switched (an online reindex) while this query was embedded; "
                            "send it again")

    def _generation_of(self, query: VideoQuery) -> ActiveGeneration:
        current = self.active.current
        if query.checkpoint is not None and query.checkpoint != current.checkpoint.sha256:
            raise ModelSwitched("the model was switched (an online reindex) after this query was embedded; "
                                "send it again")
        return current

    # queries ------------------------------------------------------------------------------------
    def classify(self, path: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """A video's class probabilities (C,), the mean of its segments' (one request to an encoder worker),
        and the class names of the checkpoint that computed them."""
        request = InferenceRequest("classify", video_path=path)
        gen, res = self._in_one_generation(lambda: self.broker.infer(request, self.settings.inference_timeout_s),
                                           lambda r: r.checkpoint)
        return res.probs, gen.class_names

    def embed_video_query(self, path: str) -> VideoQuery:
        """An uploaded query video -> its views' segment embeddings (one request to an encoder worker)."""
        res = self.broker.infer(InferenceRequest("embed_video", video_path=path), self.settings.inference_timeout_s)
        return video_query_from(res.vectors, res.segments, res.views, res.boxes, res.checkpoint)

    def video_search(self, make_query: Callable[[], VideoQuery], k: int, min_score: float | None,
                     exclude: set[int]) -> tuple[list[VideoMatch], float, MatchThreshold | None]:
        """`make_query()` (`embed_video_query` of an upload, or `stored_query`) searched in the generation of
        the checkpoint that made it (see `_in_one_generation`), each hit decided at that checkpoint's card
        threshold (or `min_score`); the matches, the index search's seconds and the threshold used."""
        gen, query = self._in_one_generation(make_query, lambda q: q.checkpoint)
        threshold = match_threshold(gen.card, min_score)
        t0 = time.perf_counter()
        matches = self._search_views(gen, query, k, min_score, exclude, self.settings.aggregation,
                                     threshold.min_score if threshold else None)
        return matches, time.perf_counter() - t0, threshold

    def video_query(self, query: VideoQuery, k: int, min_score: float | None, exclude: set[int],
                    aggregation: Aggregation | None = None,
                    threshold: float | None = None) -> list[VideoMatch]:
        """Top-k videos over all views of the query, in the active generation (`ModelSwitched` when another
        checkpoint made the query); with a match `threshold`, each hit decided (see `_search_views`)."""
        return self._search_views(self._generation_of(query), query, k, min_score, exclude,
                                  aggregation or self.settings.aggregation, threshold)

    @staticmethod
    def _search_views(gen: ActiveGeneration, query: VideoQuery, k: int, min_score: float | None,
                      exclude: set[int], agg: Aggregation, threshold: float | None = None) -> list[VideoMatch]:
        """Each view searched on its own in `gen`'s index, a video scores its best view (exact: a video in
        the merged top-k is in the top-k of its best view). Each of the top k gets its `match_score`
        (module docstring); with `min_score`, those below it are left out. With a match `threshold`, each
        hit is decided (`match`) and a copy's spans are located from its best view; without one, no hit is
        a copy."""
        index = gen.index
        best: dict[int, VideoMatch] = {}
        best_view: dict[int, QueryView] = {}
        for view in query.views:
            for h in index.search(view.vectors, k=k, query_segments=view.segments, aggregation=agg,
                                  exclude_ids=exclude):
                cur = best.get(h.video_id)
                if cur is None or h.score > cur.hit.score:
                    best[h.video_id] = VideoMatch(h, view.name, view.box, match=False)
                    best_view[h.video_id] = view
        top = sorted(best.values(), key=lambda m: (-m.hit.score, m.hit.video_id))[:k]
        scored = match_scores(index, top, best_view, gen.background)
        if min_score is not None:
            scored = [(m, b) for m, b in scored if m.match_score >= min_score]
        if threshold is None:
            return [m for m, _ in scored]
        return [decide(index, m, best_view[m.hit.video_id], threshold, bias) for m, bias in scored]

    def stored_query(self, video_id: int) -> VideoQuery:
        """"More like this": an indexed video's own segments, as stored in the active generation (one view)."""
        gen = self.active.current
        stored = gen.index.get(video_id)
        if stored is None:
            self.catalog.get_video(video_id)  # NotFound -> 404
            raise InvalidInput(f"video {video_id} is not indexed yet (see its job)")
        return video_query_from(stored.vectors, stored.segments, checkpoint=gen.checkpoint.sha256)

    def text_query(self, text: str, k: int, min_score: float | None, exclude: set[int]) -> list[VideoHit]:
        s = self.settings
        gen, res = self._in_one_generation(lambda: self._texts([text]), lambda r: r.checkpoint)
        index = gen.index
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


def match_scores(index: SegmentIndex, top: list[VideoMatch], best_view: dict[int, QueryView],
                 background: Background | None) -> list[tuple[VideoMatch, np.ndarray | None]]:
    """Each hit with its `match_score` (module docstring), and its best view's per-segment bias (None without
    a background set: then match_score = score). With a background set, a hit whose video was deleted
    since the search is left out (its vectors are gone)."""
    if background is None:
        return [(replace(m, match_score=m.hit.score), None) for m in top]
    biases: dict[int, np.ndarray] = {}  # per view (by identity): computed once
    out = []
    for m in top:
        view = best_view[m.hit.video_id]
        bias = biases.get(id(view))
        if bias is None:
            bias = biases[id(view)] = background_bias(view.vectors, background.vectors, background.top_n)
        stored = index.get(m.hit.video_id)
        if stored is None or not len(stored.vectors):
            continue
        sims = np.asarray(view.vectors, dtype=np.float32) @ np.asarray(stored.vectors, dtype=np.float32).T
        out.append((replace(m, match_score=float((sims - bias[:, None]).max())), bias))
    return out


def decide(index: SegmentIndex, m: VideoMatch, view: QueryView, threshold: float,
           bias: np.ndarray | None = None) -> VideoMatch:
    """`m` (its `match_score` set, see `match_scores`) with its copy decision, and, for a copy, its spans
    between `view` and the indexed video, from the pairs' cosines minus the query segments' `bias`."""
    score = m.hit.score if m.match_score is None else m.match_score
    if score < threshold:
        return replace(m, match=False)
    stored = index.get(m.hit.video_id) if view.segments is not None else None
    if stored is None:  # deleted since the search, or a query without segment times
        return replace(m, match=True)
    spans = copy_spans(view.vectors, [(s.start, s.end) for s in view.segments], stored.vectors,
                       [(s.start, s.end) for s in stored.segments], threshold, query_bias=bias)
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
