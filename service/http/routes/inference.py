"""`/v1/classify` and `/v1/search`: synchronous, through the broker to an encoder worker."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.errors import ERRORS, TEXT_SEARCH_OFF, BadRequest, InvalidInput, TextSearchDisabled
from service.http.deps import (
    ActiveDep,
    CatalogDep,
    MetricsDep,
    QueriesDep,
    SearchDep,
    SettingsDep,
    check_k,
    form_ids,
    form_value,
    is_multipart,
    read_json,
    read_multipart,
    validated,
)
from service.http.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    CopySpanOut,
    LabelOut,
    MatchThresholdOut,
    SearchHit,
    SearchRequest,
    SearchResponse,
    parse_float,
    parse_int,
)
from service.search import MatchThreshold, VideoMatch, external_ids
from service.settings import Settings
from service.storage import UploadForm

router = APIRouter(tags=["inference"])


def _body(description: str, json_model: type[BaseModel]) -> dict:
    """The request body in the OpenAPI page: the multipart form (a file and the model's fields), or JSON (the
    model's schema, inlined: the route reads the body itself, so FastAPI lists no component for it)."""
    form = {"file": {"type": "string", "format": "binary"}, "video_id": {"type": "integer"}, "k": {"type": "integer"},
            "min_score": {"type": "number"}, "exclude_ids": {"type": "string", "description": "comma-separated ids"}}
    fields = json_model.model_fields
    for name, prop in form.items():
        if name in fields and fields[name].description and "description" not in prop:
            prop["description"] = fields[name].description
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object",
                               "properties": {n: p for n, p in form.items() if n == "file" or n in fields}},
                },
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


async def _read(request: Request, settings: Settings) -> tuple[UploadForm | None, dict]:
    """Multipart (file and/or form fields) or JSON; returns (form, fields as a dict)."""
    if is_multipart(request):
        form = await read_multipart(request, settings)
        data: dict = {}
        try:
            for name in ("video_id", "k"):
                v = form_value(form.fields, name, parse_int)
                if v is not None:
                    data[name] = v
            ms = form_value(form.fields, "min_score", parse_float)
            if ms is not None:
                data["min_score"] = ms
            ids = form_ids(form.fields, "exclude_ids")
            if ids:
                data["exclude_ids"] = ids
            if form.fields.get("text"):
                data["text"] = form.fields["text"]
            if form.file is not None and form.file.size == 0:
                raise BadRequest("the upload is empty (0 bytes)", code="empty_file")
        except BaseException:
            form.discard()
            raise
        return form, data
    return None, await read_json(request, "application/json or multipart/form-data")


@router.post("/classify", response_model=ClassifyResponse, openapi_extra=_body(
    "multipart `file` (a video), or `video_id` of a stored video (form field or JSON)", ClassifyRequest),
    responses=ERRORS)
async def classify(request: Request, catalog: CatalogDep, search: SearchDep, active: ActiveDep,
                   queries: QueriesDep, settings: SettingsDep) -> ClassifyResponse:
    """Top-k classes with probabilities (mean of the segments' softmax), computed now."""
    form, data = await _read(request, settings)
    with queries.serving():  # ingest waits while a query is in flight (service/priority.py)
        try:
            if form is not None and form.file is not None:
                k = check_k(int(data.get("k", 5)), settings)
                path, video_id = str(form.file.path), None
            else:
                if "video_id" not in data:
                    raise InvalidInput("send a multipart 'file' or a 'video_id'")
                req = validated(ClassifyRequest, data)
                k = check_k(req.k, settings)
                video = catalog.get_video(req.video_id)  # NotFound -> 404
                path, video_id = str(video.extra["path"]), req.video_id
            if not active.class_names:
                raise InvalidInput("the checkpoint has no classifier head")
            # the class names of the checkpoint that computed them (an online reindex may switch meanwhile)
            probs, names = await run_in_threadpool(search.classify, path)
        finally:
            if form is not None:
                form.discard()
        top = np.argsort(-probs)[: min(k, len(probs))]
        return ClassifyResponse(video_id=video_id,
                                labels=[LabelOut(name=names[i], prob=round(float(probs[i]), 6)) for i in top])


@router.post("/search", response_model=SearchResponse, openapi_extra=_body(
    "a video query (multipart `file`, or `video_id`) or a text query (JSON `{\"text\": ..., \"k\": ...}`)",
    SearchRequest), responses=ERRORS)
async def search(request: Request, catalog: CatalogDep, svc: SearchDep, queries: QueriesDep, active: ActiveDep,
                 settings: SettingsDep, metrics: MetricsDep) -> SearchResponse:
    """Ranked videos for a video or text query; each hit names its best-matching segment. A video query's
    hits say whether each is a copy (`match`, at `match_threshold`) and where a copy lies in both videos
    (`spans`)."""
    t0 = time.perf_counter()
    form, data = await _read(request, settings)
    spool_s = time.perf_counter() - t0
    with queries.serving():  # ingest waits while a query is in flight (service/priority.py)
        try:
            req = validated(SearchRequest, data)
            check_k(req.k, settings)
            exclude = set(req.exclude_ids)
            threshold: MatchThreshold | None = None
            has_file = form is not None and form.file is not None
            if sum([has_file, req.text is not None, req.video_id is not None]) != 1:
                raise InvalidInput("send exactly one query: a multipart 'file', a 'video_id', or a 'text'")
            if req.text is not None:
                if not req.text.strip():
                    raise InvalidInput("text must not be blank")
                if not settings.text_search:
                    raise TextSearchDisabled(TEXT_SEARCH_OFF)
                text_hits = await run_in_threadpool(svc.text_query, req.text, req.k, req.min_score, exclude)
                matches = [VideoMatch(h, None, None) for h in text_hits]
                kind = "text"
            else:
                if has_file:
                    make_query = partial(svc.embed_video_query, str(form.file.path))
                else:
                    make_query = partial(svc.stored_query, req.video_id)
                    exclude.add(req.video_id)  # "more like this": not the video itself
                # embedded (or read) and searched in one generation, decided at its card's threshold
                matches, search_s, threshold = await run_in_threadpool(svc.video_search, make_query, req.k,
                                                                       req.min_score, exclude)
                kind = "video"
                if has_file:  # an uploaded video query: its gateway stages (the worker records the others)
                    metrics.stage_seconds.labels("query", "spool").observe(spool_s)
                    metrics.stage_seconds.labels("query", "search").observe(search_s)
        finally:
            if form is not None:
                form.discard()
        ext = await run_in_threadpool(external_ids, catalog, matches)
        return SearchResponse(query=kind, match_threshold=threshold_out(threshold),
                              hits=[search_hit(m, ext.get(m.hit.video_id)) for m in matches])


def search_hit(m: VideoMatch, external_id: str | None) -> SearchHit:
    h = m.hit
    return SearchHit(
        video_id=h.video_id, external_id=external_id, score=round(h.score, 6),
        start=h.segment.start if h.segment else None, end=h.segment.end if h.segment else None,
        query_start=h.query_segment.start if h.query_segment else None,
        query_end=h.query_segment.end if h.query_segment else None,
        view=m.view, query_box=m.box, match=m.match,
        match_score=round(m.match_score, 6) if m.match_score is not None else None,
        spans=[CopySpanOut(query_start=s.query_start, query_end=s.query_end, start=s.start, end=s.end,
                           score=round(s.score, 6)) for s in m.spans],
    )


def threshold_out(t: MatchThreshold | None) -> MatchThresholdOut | None:
    if t is None:
        return None
    return MatchThresholdOut(min_score=t.min_score, source=t.source, false_positive_rate=t.false_positive_rate,
                             calibration=t.calibration)
