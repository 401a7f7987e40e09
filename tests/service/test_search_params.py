"""`exclude_ids`, `min_score` and the `aggregation` setting (`max`, `chamfer`) through the API, checked
against scores computed here from the stored segment vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from tests.service.conftest import ingest, make_settings
from tests.service.media import distinct_videos


@pytest.fixture(scope="module")
def multi_segment_videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # 9 s at 1 segment per 4 s (the tiny model's 4 frames at 1 fps): 3 segments each
    return distinct_videos(tmp_path_factory.mktemp("search-videos"), 5, seconds=9, size=64)


@pytest.fixture(scope="module", params=["max", "chamfer"])
def service(request, checkpoint, multi_segment_videos, tmp_path_factory):
    # query_views=[]: a file query is then embedded like its stored copy (one view), so the two rank alike
    settings = make_settings(checkpoint, tmp_path_factory.mktemp(f"search-{request.param}"),
                             aggregation=request.param, query_views=[])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        ids = [ingest(c, v) for v in multi_segment_videos]
        yield c, ids, request.param


def expected_scores(c: TestClient, query_id: int, ids: list[int], aggregation: str) -> dict[int, float]:
    """Cosine similarity of every segment pair; `max`: the best pair, `chamfer`: the mean over the query's
    segments of each one's best match (docs/indexer.md)."""
    index = c.app.state.service.active.current.index
    q = index.get(query_id).vectors
    out = {}
    for v in ids:
        if v == query_id:
            continue
        sims = q @ index.get(v).vectors.T
        out[v] = float(sims.max() if aggregation == "max" else sims.max(axis=1).mean())
    return out


def search(c: TestClient, **body) -> list[dict]:
    r = c.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def form_searcher(c: TestClient):
    def form_search(path: Path, **fields) -> list[dict]:
        with open(path, "rb") as f:
            r = c.post("/v1/search", files={"file": (path.name, f, "video/mp4")},
                       data={k: str(v) for k, v in fields.items()})
        assert r.status_code == 200, r.text
        return r.json()["hits"]

    return form_search


def test_scores_follow_the_aggregation_setting(service):
    c, ids, aggregation = service
    assert all(len(c.app.state.service.active.current.index.get(v).segments) == 3 for v in ids)
    for query in ids[:2]:
        want = expected_scores(c, query, ids, aggregation)
        hits = search(c, video_id=query, k=len(ids))
        assert [h["video_id"] for h in hits] == sorted(want, key=lambda v: -want[v])
        for h in hits:
            assert h["score"] == pytest.approx(want[h["video_id"]], abs=2e-6), (aggregation, h)
    # the two aggregations differ on these videos: the check above tells them apart
    q = c.app.state.service.active.current.index.get(ids[0]).vectors
    d = c.app.state.service.active.current.index.get(ids[1]).vectors
    assert not np.isclose((q @ d.T).max(), (q @ d.T).max(axis=1).mean(), atol=1e-4)


def test_exclude_ids(service, multi_segment_videos):
    c, ids, _ = service
    form_search = form_searcher(c)
    full = [h["video_id"] for h in search(c, video_id=ids[0], k=len(ids))]
    excluded = set(full[:2])
    hits = [h["video_id"] for h in search(c, video_id=ids[0], k=len(ids), exclude_ids=sorted(excluded))]
    assert hits == [v for v in full if v not in excluded]  # the rest, in the same order
    # a file query (the first video's own file: it finds itself first) takes them comma-separated
    form = form_search(multi_segment_videos[0], k=len(ids), exclude_ids=",".join(map(str, sorted(excluded))))
    assert [h["video_id"] for h in form] == [ids[0], *hits]
    form = form_search(multi_segment_videos[0], k=len(ids), exclude_ids=f"{ids[0]}")
    assert [h["video_id"] for h in form] == full
    text = search(c, text="a pattern", k=len(ids), exclude_ids=ids[:3])
    assert text and not {h["video_id"] for h in text} & set(ids[:3])


def test_min_score(service, multi_segment_videos):
    c, ids, _ = service
    form_search = form_searcher(c)
    full = search(c, video_id=ids[0], k=len(ids))
    scores = [h["score"] for h in full]
    assert len(set(scores)) > 1
    threshold = (scores[1] + scores[2]) / 2  # between the 2nd and 3rd hit
    hits = search(c, video_id=ids[0], k=len(ids), min_score=threshold)
    assert [h["video_id"] for h in hits] == [h["video_id"] for h in full[:2]]
    assert search(c, video_id=ids[0], k=len(ids), min_score=scores[0] + 1e-3) == []
    form = form_search(multi_segment_videos[0], k=len(ids), min_score=threshold)
    assert [h["video_id"] for h in form] == [ids[0], *(h["video_id"] for h in full[:2])]


def test_match_without_a_card_threshold_comes_from_min_score(service, multi_segment_videos):
    """The tiny checkpoint's card has no `match`: no video hit is a copy and `match_threshold` is null,
    unless the request sends `min_score`, which is then the threshold (every hit returned reaches it).
    Text queries are not copy detection: their hits carry `match: null`."""
    c, ids, aggregation = service
    r = c.post("/v1/search", json={"video_id": ids[0], "k": len(ids)})
    assert r.status_code == 200 and r.json()["match_threshold"] is None
    full = r.json()["hits"]
    assert all(h["match"] is False and h["spans"] == [] for h in full)
    threshold = (full[1]["score"] + full[2]["score"]) / 2
    r = c.post("/v1/search", json={"video_id": ids[0], "k": len(ids), "min_score": threshold})
    assert r.json()["match_threshold"] == {"min_score": threshold, "source": "request", "false_positive_rate": None,
                                           "calibration": None}
    hits = r.json()["hits"]
    assert [h["video_id"] for h in hits] == [h["video_id"] for h in full[:2]]
    for h in hits:  # a copy: its spans are in both videos; the best pair (`max`: the hit's score) among them
        assert h["match"] is True and h["spans"], h
        best = max(s["score"] for s in h["spans"])
        assert best == pytest.approx(h["score"], abs=1e-5) if aggregation == "max" else best >= h["score"] - 1e-5
        assert all(s["query_start"] < s["query_end"] and s["start"] < s["end"] <= 9.0 + 1e-6 for s in h["spans"])
    r = c.post("/v1/search", json={"text": "a pattern", "k": len(ids), "min_score": -1})
    assert r.status_code == 200 and r.json()["match_threshold"] is None
    assert r.json()["hits"] and all(h["match"] is None and h["spans"] == [] for h in r.json()["hits"])


def test_the_openapi_schema_documents_copy_detection(service):
    """`/openapi.json`: the search request's `min_score` (JSON and form), and the response's
    `match_threshold`, each hit's `match` and `spans`."""
    c, _, _ = service
    spec = c.get("/openapi.json").json()
    body = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert "match threshold" in body["application/json"]["schema"]["properties"]["min_score"]["description"]
    assert "match threshold" in body["multipart/form-data"]["schema"]["properties"]["min_score"]["description"]
    schemas = spec["components"]["schemas"]
    assert {"match_threshold", "hits"} <= schemas["SearchResponse"]["properties"].keys()
    assert {"match", "spans", "view"} <= schemas["SearchHit"]["properties"].keys()
    assert set(schemas["CopySpanOut"]["properties"]) == {"query_start", "query_end", "start", "end", "score"}
    assert set(schemas["MatchThresholdOut"]["properties"]) == {"min_score", "source", "false_positive_rate", "calibration"}
