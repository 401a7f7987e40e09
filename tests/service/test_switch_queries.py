"""Issue 27, G9: queries in flight while an online reindex switches to a checkpoint with another embedding
size (16-d to 8-d) and other classes. Each query is held at one point of its path (by events: the
reindex's switch callback releases it) while the real switch happens:

- a text query and a classify, after the route read the active generation and before the worker embeds:
  the new model embeds them, so the text is searched in the new generation, and the classes are named
  from the new checkpoint;
- an uploaded video query and a `video_id` query, after their vectors were made (by the old model, from
  the old generation) and before the index search: they are searched in the old generation, as they
  would have been a moment earlier.

Before, the first three answered 422 "queries must have shape (N>0, 16)" or "(N>0, 8)" (the server's
state blamed on the client) and the classify 500. A query whose model changes twice is a 503 with a
JSON body and Retry-After.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.broker import InferenceResult
from service.http.app import create_app
from service.search import SearchService
from tests.service.conftest import ingest, make_settings
from tests.service.media import CLASS_NAMES, distinct_videos, tiny_checkpoint

ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NEW_CLASSES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]  # more than the old 5
NEW_DIM = 8
TEXT = "cells that live and die on a grid"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("switch")
    return (tiny_checkpoint(root / "old"), tiny_checkpoint(root / "allowed" / "new", NEW_CLASSES, seed=1,
                                                           embed_dim=NEW_DIM),
            distinct_videos(root / "videos", 3, seconds=6, size=64))


def test_g9_queries_in_flight_across_a_switch_that_changes_the_embedding_size(assets, tmp_path, monkeypatch):
    old, new, videos = assets
    settings = make_settings(old, tmp_path / "data", query_views=[], admin_keys=[ADMIN_KEY],
                             admin_checkpoint_dirs=[new.parent])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        ids = [ingest(c, v) for v in videos]
        rt = c.app.state.service

        def search_file():
            with open(videos[0], "rb") as f:
                return c.post("/v1/search", files={"file": ("q.mp4", f, "video/mp4")}, data={"k": "10"})

        before_file = search_file().json()
        before_stored = c.post("/v1/search", json={"video_id": ids[1], "k": 10}).json()
        assert len(before_file["hits"]) == 3 and len(before_stored["hits"]) == 2

        # each query of the test is held once, at its point, until the switch (the reindex's callback)
        switched = threading.Event()
        rt.reindex.on_switch = (*rt.reindex.on_switch, switched.set)
        held: list[str] = []
        lock = threading.Lock()

        def hold(where: str) -> None:
            if switched.is_set():
                return  # after the switch (a query embedded again, the concept bank rebuilt): not held
            with lock:
                held.append(where)
            assert switched.wait(120), "no switch"

        infer = rt.broker.infer

        def infer_across_the_switch(request, timeout_s):
            if request.kind == "classify" or request.texts == (TEXT,):
                hold(request.kind)  # the route has read the old generation; the new model will embed it
            result = infer(request, timeout_s)
            if request.kind == "embed_video":
                hold("embed_video")  # embedded by the old model; the search comes after the switch
            return result

        monkeypatch.setattr(rt.broker, "infer", infer_across_the_switch)
        stored_query = SearchService.stored_query

        def stored_across_the_switch(self, video_id):
            query = stored_query(self, video_id)  # the old generation's vectors
            hold("stored")
            return query

        monkeypatch.setattr(SearchService, "stored_query", stored_across_the_switch)

        answers: dict[str, object] = {}

        def ask(name: str, call) -> None:
            answers[name] = call()

        def classify():
            with open(videos[2], "rb") as f:
                return c.post("/v1/classify", files={"file": ("c.mp4", f, "video/mp4")}, data={"k": "7"})

        askers = [threading.Thread(target=ask, args=args) for args in [
            ("text", lambda: c.post("/v1/search", json={"text": TEXT, "k": 10})),
            ("classify", classify),
            ("file", search_file),
            ("stored", lambda: c.post("/v1/search", json={"video_id": ids[1], "k": 10})),
        ]]
        for t in askers:
            t.start()
        for _ in range(600):
            with lock:
                if len(held) == 4:
                    break
            switched.wait(0.1)
        assert sorted(held) == ["classify", "embed_text", "embed_video", "stored"], held
        r = c.post("/v1/admin/reindex", json={"checkpoint": str(new)}, headers=ADMIN)
        assert r.status_code == 202, r.text
        for t in askers:
            t.join(120)
        assert c.get("/v1/admin/reindex", headers=ADMIN).json()["state"] == "switched"
        assert rt.active.current.embed_dim == NEW_DIM

        statuses = {name: resp.status_code for name, resp in answers.items()}
        assert statuses == dict.fromkeys(statuses, 200), {n: r.text for n, r in answers.items() if r.status_code != 200}
        # the text: embedded by the new model, searched in the new generation (as a query sent now is)
        after_text = c.post("/v1/search", json={"text": TEXT, "k": 10}).json()
        assert answers["text"].json() == after_text and len(after_text["hits"]) == 3
        # the classes: the new checkpoint's, all 7 of them
        labels = [lb["name"] for lb in answers["classify"].json()["labels"]]
        assert sorted(labels) == sorted(NEW_CLASSES) and not set(labels) & set(CLASS_NAMES)
        # the video queries: made from the old generation, searched there (the answer of a moment earlier)
        assert answers["file"].json() == before_file
        assert answers["stored"].json() == before_stored
        # and now they come from the new generation
        assert c.post("/v1/search", json={"video_id": ids[1], "k": 10}).json() != before_stored

        # a query whose model changed again before it could be searched (here: a model that is not active)
        def another_model(request, timeout_s):
            result = infer(request, timeout_s)
            if request.texts == (TEXT,):
                return InferenceResult(sentence=result.sentence, projected=result.projected, checkpoint="f" * 64)
            return result

        monkeypatch.setattr(rt.broker, "infer", another_model)
        r = c.post("/v1/search", json={"text": TEXT, "k": 10})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_switched", r.text
        assert r.headers["retry-after"] == "1"


def test_g9_the_checkpoint_of_a_reply_crosses_redis():
    """Scale-out: the reply that a worker sends through Redis names the checkpoint that embedded it."""
    import numpy as np

    from service.backends.redis.broker import decode_reply, encode_reply

    sent = InferenceResult(sentence=np.ones((1, 3), np.float32), checkpoint="ab" * 32)
    assert decode_reply(encode_reply(sent, None)).checkpoint == "ab" * 32
    assert decode_reply(encode_reply(InferenceResult(), None)).checkpoint is None
