"""The API through the real ASGI stack (TestClient with lifespan): upload -> job -> search/classify/delete."""

from __future__ import annotations

import pytest

from tests.service.conftest import ingest, upload, wait_job
from tests.service.media import CLASS_NAMES


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and r.json()["model_loaded"]


def test_upload_search_classify_delete(client, media):
    ids = {name: ingest(client, media[name], external_id=f"ext-{name}") for name in ("bars", "testsrc", "mandel", "life")}
    video = client.get(f"/v1/videos/{ids['bars']}").json()
    assert video["status"] == "indexed" and video["external_id"] == "ext-bars"
    assert len(video["labels"]) == 5 and {lb["name"] for lb in video["labels"]} <= set(CLASS_NAMES)
    assert abs(sum(lb["prob"] for lb in video["labels"]) - 1.0) < 1e-3  # 5 classes: top-5 is all of them
    assert len(video["segments"]) == 1 and video["segments"][0]["start"] == 0.0

    # the same file as a query: its own video scores 1 (the tiny random network's embeddings are all
    # alike, so a re-encoded copy need not rank its original first; tests/service/test_views.py and
    # benchmarks/ndvr measure near-duplicates with real content)
    with open(media["bars"], "rb") as f:
        r = client.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "3"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["video_id"] == ids["bars"] and hits[0]["external_id"] == "ext-bars"
    assert hits[0]["score"] > 0.999 and hits[0]["view"] == "original"
    assert hits[0]["start"] == 0.0 and hits[0]["query_start"] == 0.0 and len(hits) == 3

    r = client.post("/v1/search", json={"video_id": ids["testsrc"], "k": 10})
    assert r.status_code == 200 and ids["testsrc"] not in [h["video_id"] for h in r.json()["hits"]]

    r = client.post("/v1/classify", json={"video_id": ids["mandel"], "k": 3})
    assert r.status_code == 200
    labels = r.json()["labels"]
    assert len(labels) == 3 and all(lb["name"] in CLASS_NAMES for lb in labels)
    assert labels[0]["prob"] >= labels[1]["prob"] >= labels[2]["prob"]
    with open(media["life"], "rb") as f:
        r2 = client.post("/v1/classify", files={"file": ("x.mp4", f)}, data={"k": "2"})
    assert r2.status_code == 200 and len(r2.json()["labels"]) == 2

    r = client.post("/v1/search", json={"text": "someone riding a bike", "k": 4})
    assert r.status_code == 200, r.text
    assert r.json()["query"] == "text" and len(r.json()["hits"]) == 4  # which ranks first: the next test
    scores = [h["score"] for h in r.json()["hits"]]
    assert scores == sorted(scores, reverse=True)

    assert client.delete(f"/v1/videos/{ids['bars']}").status_code == 204
    assert client.get(f"/v1/videos/{ids['bars']}").status_code == 404
    with open(media["bars_copy"], "rb") as f:
        hits = client.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "10"}).json()["hits"]
    assert ids["bars"] not in [h["video_id"] for h in hits]


# descriptions other than the clips' own sentences (tests/service/test_shipped_checkpoint.py), and what the
# shipped checkpoint answers for them: the clip itself, first, with every other clip scored about 0
DESCRIBED = {
    "a striped big cat": "tiger.mp4",
    "a fast red car on the road": "car.mp4",
    "a ship with sails": "sailboat.mp4",
    "a government building with a dome": "capitol.mp4",
}


@pytest.mark.slow
def test_a_text_query_ranks_the_clip_it_describes_first(shipped_client):
    """The real clips of tests/data on the shipped checkpoint: a text query answers the clip it describes
    first, ahead of the three others, through the API (hits, order, scores)."""
    client, ids = shipped_client
    names = {v: k for k, v in ids.items()}
    for text, clip in DESCRIBED.items():
        r = client.post("/v1/search", json={"text": text, "k": 4})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert r.json()["query"] == "text" and sorted(h["video_id"] for h in hits) == sorted(ids.values())
        ranked = [(names[h["video_id"]], round(h["score"], 3)) for h in hits]
        assert hits[0]["video_id"] == ids[clip] and hits[0]["score"] > hits[1]["score"] + 0.02, (text, ranked)


def test_same_content_returns_existing_video(client, media):
    first = upload(client, media["rgb"])
    assert first.status_code == 202
    wait_job(client, first.json()["job_id"])
    again = upload(client, media["rgb"])
    assert again.status_code == 200
    assert again.json()["video_id"] == first.json()["video_id"] and again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["created"] is False
