"""The embedded service on Milvus (a Milvus Lite file) answers exactly as on FAISS: same uploads, same
requests, same responses (per-video aggregation, exclusions, min_score, hits and their segments), with no
FAISS index in the process."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer import VideoIndex
from indexer.milvus_index import MilvusVideoIndex
from service.http.app import create_app
from tests.service.conftest import ingest, make_settings
from tests.service.media import distinct_videos


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return distinct_videos(tmp_path_factory.mktemp("milvus-videos"), 5, seconds=9, size=64)


def responses(checkpoint: Path, data_dir: Path, videos: list[Path], **backend: str) -> tuple[list, type]:
    settings = make_settings(checkpoint, data_dir, query_views=[], text_search=False, **backend)
    out = []
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        ids = [ingest(c, v) for v in videos]
        kind = type(c.app.state.service.active.current.index)
        for body in ({"video_id": ids[0], "k": 5}, {"video_id": ids[1], "k": 3, "exclude_ids": [ids[2], ids[3]]},
                     {"video_id": ids[2], "k": 5, "min_score": 0.5}):
            r = c.post("/v1/search", json=body)
            assert r.status_code == 200, r.text
            out.append(r.json())
        with open(videos[3], "rb") as f:
            r = c.post("/v1/search", files={"file": (videos[3].name, f, "video/mp4")}, data={"k": "4"})
        assert r.status_code == 200, r.text
        out.append(r.json())
        r = c.delete(f"/v1/videos/{ids[4]}")
        assert r.status_code == 204, r.text
        r = c.post("/v1/search", json={"video_id": ids[0], "k": 5})
        out.append(r.json())
        assert ids[4] not in {h["video_id"] for h in r.json()["hits"]}
        assert c.get("/readyz").status_code == 200
    return out, kind


def rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


def test_same_requests_same_responses_on_faiss_and_milvus(checkpoint, videos, tmp_path: Path):
    faiss_out, faiss_kind = responses(checkpoint, tmp_path / "faiss", videos)
    milvus_out, milvus_kind = responses(checkpoint, tmp_path / "milvus", videos, index="milvus")
    assert faiss_kind is VideoIndex and milvus_kind is MilvusVideoIndex
    assert (tmp_path / "milvus" / "milvus.db").is_dir() and not (tmp_path / "milvus" / "index").exists()
    assert all(r["hits"] for r in faiss_out)
    assert rounded(milvus_out) == rounded(faiss_out)
