"""The concept bank: its score by hand on a toy bank, the packed text table, and text search through the API
ranking videos by it (with the checkpoint's classes: 5, and 1000)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.backends.store import Label, VideoRecord
from service.broker import InferenceRequest
from service.catalog import TextTable
from service.concepts import ConceptBank, bank_phrases, class_phrase, concept_scores
from service.http.app import create_app
from tests.service.conftest import ingest, make_settings
from tests.service.media import CLASS_NAMES, tiny_checkpoint

# A toy embedding space: every phrase the toy bank can ask for, as a unit vector.
TOY = {
    "cat": [1.0, 0.0, 0.0],
    "dog": [0.0, 1.0, 0.0],
    "dog: a domestic animal": [0.6, 0.8, 0.0],
    "car": [0.0, 0.0, 1.0],
}


def toy_embed(texts: list[str]) -> np.ndarray:
    return np.array([TOY[t] for t in texts], dtype=np.float32)


def toy_bank() -> ConceptBank:
    return ConceptBank.build(["cat", "dog", "car"], toy_embed, descriptions=["", "a domestic animal", ""])


def test_concept_score_by_hand_on_a_toy_bank():
    bank = toy_bank()
    assert bank.names == ("cat", "dog", "car")
    q = np.array([0.6, 0.8, 0.0], dtype=np.float32)
    # s_cat = 0.6; s_dog = max(cos(q, "dog") = 0.8, cos(q, "dog: a domestic animal") = 1.0) = 1.0; s_car = 0
    np.testing.assert_allclose(bank.similarities(q), [0.6, 1.0, 0.0], atol=1e-6)
    # T = 0.1: w = exp((s - 1.0) / 0.1) = [e^-4, 1, e^-10]
    w = bank.weights(q, temperature=0.1)
    np.testing.assert_allclose(w, [math.exp(-4), 1.0, math.exp(-10)], rtol=1e-5)
    # video A: dog 0.7, cat 0.2, car 0.1 -> 0.7 + 0.2 e^-4 + 0.1 e^-10 = 0.7036677
    # video B: cat 0.9, car 0.1         -> 0.9 e^-4 + 0.1 e^-10       = 0.0164886
    ids = np.array([[1, 0, 2], [0, 2, 0]])
    probs = np.array([[0.7, 0.2, 0.1], [0.9, 0.1, 0.0]])  # B's third entry is padding
    np.testing.assert_allclose(concept_scores(w, ids, probs), [0.7036677, 0.0164886], rtol=1e-5)
    # a hotter bank spreads the weight: T = 1 gives cat exp(-0.4) = 0.67, so B (all cat) gains on A
    w1 = bank.weights(q, temperature=1.0)
    np.testing.assert_allclose(concept_scores(w1, ids, probs), [0.7 + 0.2 * math.exp(-0.4) + 0.1 * math.exp(-1),
                                                                0.9 * math.exp(-0.4) + 0.1 * math.exp(-1)], rtol=1e-5)


def test_bank_phrases_pool_classes_of_one_name():
    names, phrases, owner = bank_phrases(["crane", "playing_guitar", "crane"], ["a bird", "", "a machine"])
    assert names == ["crane", "playing_guitar"]
    assert phrases == ["crane", "crane: a bird", "playing guitar", "crane: a machine"]
    assert owner == [0, 0, 1, 0]
    assert class_phrase("ice-skating_fast") == "ice skating fast"


def test_bank_rejects_bad_input():
    with pytest.raises(ValueError, match="2 class descriptions for 3 classes"):
        bank_phrases(["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match="temperature"):
        toy_bank().weights(np.ones(3, np.float32), temperature=0.0)


def test_bank_embeddings_are_kept_once_per_phrase_list_and_encoder(tmp_path):
    calls: list[list[str]] = []

    def counting_embed(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return toy_embed(texts)

    def build(names: list[str], embedder_id: str = "enc-1") -> ConceptBank:
        return ConceptBank.build(names, counting_embed, cache_dir=tmp_path, embedder_id=embedder_id)

    first = build(["cat", "dog"])
    again = build(["cat", "dog"])
    assert len(calls) == 1 and np.array_equal(first.phrase_emb, again.phrase_emb)
    build(["cat", "car"])  # other phrases
    build(["cat", "dog"], embedder_id="enc-2")  # another text encoder
    assert len(calls) == 3 and len(list(tmp_path.glob("*.npy"))) == 3
    for f in tmp_path.glob("*.npy"):
        f.write_bytes(b"not an array")  # a damaged cache is embedded again, not trusted
    assert np.array_equal(build(["cat", "dog"]).phrase_emb, first.phrase_emb) and len(calls) == 4


def _video(video_id: int, labels: list[tuple[str, float]], emb: list[float] | None = None) -> VideoRecord:
    extra = {"text_embedding": emb} if emb is not None else {}
    return VideoRecord(video_id=video_id, content_hash=f"h{video_id}", external_id=None, source_name=None,
                       duration=1.0, status="indexed", labels=[Label(n, p) for n, p in labels], extra=extra,
                       created_at=0.0)


def test_text_table_scores_every_video_and_reuses_slots():
    table = TextTable()
    table.put(_video(7, [("dog", 0.7), ("cat", 0.2), ("car", 0.1)], emb=[1.0, 0.0]))
    table.put(_video(9, [("cat", 0.9), ("car", 0.1)]))
    table.put(_video(11, [("unicorn", 1.0)]))  # a class the bank does not know scores 0
    bank = toy_bank()
    w = bank.weights(np.array([0.6, 0.8, 0.0], np.float32), 0.1)
    ids, concept, meta, has_meta = table.scores(bank.names, w, np.array([0.0, 1.0], np.float32))
    got = dict(zip(ids.tolist(), concept.tolist(), strict=True))
    assert got == pytest.approx({7: 0.7036677, 9: 0.0164886, 11: 0.0}, rel=1e-5)
    assert dict(zip(ids.tolist(), has_meta.tolist(), strict=True)) == {7: True, 9: False, 11: False}
    assert meta[ids.tolist().index(7)] == 0.0

    table.drop(9)
    table.put(_video(12, [("dog", 1.0)]))  # takes 9's slot
    ids, concept, _, _ = table.scores(bank.names, w, None)
    assert sorted(ids.tolist()) == [7, 11, 12] and len(table) == 3
    assert dict(zip(ids.tolist(), concept.tolist(), strict=True))[12] == pytest.approx(1.0)
    for i in range(13, 13 + 100):  # past the first allocation
        table.put(_video(i, [("car", 1.0)]))
    assert len(table.scores(bank.names, w, None)[0]) == 103


# -------------------------------------------------------------------------------- through the API
@pytest.fixture(scope="module")
def concept_client(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Text search by the concept term alone (no head, no metadata), at a known temperature."""
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("concept-data"), text_weight_head=0.0,
                             text_weight_meta=0.0, text_concept_temperature=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _embed(client: TestClient, texts: list[str]) -> np.ndarray:
    rt = client.app.state.service
    return rt.broker.infer(InferenceRequest("embed_text", texts=tuple(texts)), 60.0).sentence


def test_text_search_ranks_videos_by_the_concept_score(concept_client, media):
    c = concept_client
    ids = [ingest(c, media[name]) for name in ("bars", "testsrc", "mandel", "life")]
    query = "someone riding a bicycle"
    # the expected score, recomputed here from the stored labels: s = cos(q, name), w = exp((s - max s) / T)
    emb = _embed(c, [query, *CLASS_NAMES])
    s = emb[1:] @ emb[0]
    w = np.exp((s - s.max()) / 0.05)
    expected = {}
    for vid in ids:
        labels = c.get(f"/v1/videos/{vid}").json()["labels"]  # 5 classes: all of them are stored and shown
        assert len(labels) == len(CLASS_NAMES)
        expected[vid] = sum(w[CLASS_NAMES.index(lb["name"])] * lb["prob"] for lb in labels)
    r = c.post("/v1/search", json={"text": query, "k": 20})
    assert r.status_code == 200, r.text
    hits = [h for h in r.json()["hits"] if h["video_id"] in ids]  # the module's other test adds videos
    assert [h["video_id"] for h in hits] == sorted(ids, key=lambda v: -expected[v])
    for h in hits:
        assert h["score"] == pytest.approx(expected[h["video_id"]], abs=1e-5)


def test_text_search_finds_the_video_whose_labels_name_the_query(concept_client, media):
    """Labels as a confident classifier would give them (written into the store, then re-read by the
    catalog as a replica does): the query finds the video by meaning, not by words."""
    c = concept_client
    rt = c.app.state.service
    bike, cook = ingest(c, media["rgb"]), ingest(c, media["bars_copy"])
    rt.catalog.store.update_video(bike, labels=[Label("riding a bike", 0.9), Label("dancing", 0.1)])
    rt.catalog.store.update_video(cook, labels=[Label("cooking", 0.95), Label("swimming", 0.05)])
    for vid in (bike, cook):
        rt.catalog.vector_applied(vid, added=True)
    hits = c.post("/v1/search", json={"text": "a cyclist on the road", "k": 10}).json()["hits"]
    assert hits[0]["video_id"] == bike
    hits = c.post("/v1/search", json={"text": "a chef preparing food in a kitchen", "k": 10}).json()["hits"]
    assert hits[0]["video_id"] == cook


@pytest.mark.slow
def test_a_thousand_classes_classify_labels_and_text_search(tmp_path, media):
    names = [f"class {i:03d}" for i in range(1000)]
    ckpt = tiny_checkpoint(tmp_path / "ckpt1000", class_names=names)
    settings = make_settings(ckpt, tmp_path / "data", stored_labels=64)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        vid = ingest(c, media["testsrc"])
        labels = c.get(f"/v1/videos/{vid}").json()["labels"]
        assert len(labels) == 5 and all(lb["name"] in names for lb in labels)
        r = c.post("/v1/classify", json={"video_id": vid, "k": 50})
        assert r.status_code == 200, r.text
        top = r.json()["labels"]
        probs = [lb["prob"] for lb in top]
        assert len(top) == 50 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0
        assert [lb["name"] for lb in top[:5]] == [lb["name"] for lb in labels]  # same model, same frames
        rt = c.app.state.service
        table = rt.catalog.text_table()
        assert table.label_probs.shape[1] == 64 and int((table.label_probs > 0).sum()) == 64
        r = c.post("/v1/search", json={"text": "class 042", "k": 5})
        assert r.status_code == 200 and r.json()["hits"][0]["video_id"] == vid
        assert len(c.app.state.service.search.concept_bank()) == 1000
