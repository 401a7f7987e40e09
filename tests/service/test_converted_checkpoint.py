"""`drca serve --checkpoint DIR` with a checkpoint converted from the reference code (`drca convert-seed`):
the encoder loads it, classify returns its classes, and video search uses its embedding (the normalised
backbone feature)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.seed import convert_seed
from service.encoding.encoder import VideoEncoder
from service.http.app import create_app
from tests.service.conftest import ingest, make_settings
from tests.service.media import lavfi_video

FIXTURES = Path(__file__).parents[1] / "model" / "fixtures" / "drca_parity"
CLASSES = [f"reference class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("converted")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return convert_seed(FIXTURES / "k4_sal_ref_diff_rank.pth", root / "ck", root / "classes.txt").path


def test_encoder_serves_the_reference_embedding_and_classes(converted: Path, tmp_path: Path) -> None:
    enc = VideoEncoder(make_settings(converted, tmp_path / "data", text_search=False))
    assert enc.embed_dim == 64 and enc.class_names == CLASSES
    x = torch.load(FIXTURES / "input.pt", weights_only=True)["input"]
    expected = torch.load(FIXTURES / "k4_sal_ref_diff_rank.expected.pt", weights_only=True)
    emb, probs = enc.forward(x)
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(expected["features"], dim=-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(probs, expected["logits"].softmax(-1).numpy(), atol=1e-4)
    video = lavfi_video(tmp_path / "v.mp4", "testsrc2=size=128x96:rate=10:duration=3")
    decoded = enc.decode(video)
    assert decoded.clips.shape == (1, 3, 8, 96, 96)


def test_service_classifies_and_searches_with_a_converted_checkpoint(converted: Path, tmp_path: Path) -> None:
    videos = {name: lavfi_video(tmp_path / f"{name}.mp4", src) for name, src in {
        "bars": "smptebars=size=96x96:rate=10:duration=3",
        "mandel": "mandelbrot=size=96x96:rate=10,trim=duration=3",
        "life": "life=size=96x96:rate=10:mold=10:ratio=0.5:seed=7,trim=duration=3",
    }.items()}
    app = create_app(make_settings(converted, tmp_path / "data", text_search=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        ids = {name: ingest(client, path) for name, path in videos.items()}
        r = client.post("/v1/classify", json={"video_id": ids["bars"], "k": 3})
        assert r.status_code == 200, r.text
        labels = r.json()["labels"]
        assert len(labels) == 3 and all(lab["name"] in CLASSES for lab in labels)
        with open(videos["mandel"], "rb") as f:
            r = client.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "3"})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert hits[0]["video_id"] == ids["mandel"] and hits[0]["score"] > 0.999
