"""The checkpoint that `drca serve` loads by default: present, complete, and servable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
from service.encoder import VideoEncoder
from service.settings import Settings
from training.data.synth import SynthConfig, generate


def test_shipped_checkpoint_has_every_head_and_its_card() -> None:
    ck = load_checkpoint(SHIPPED_CHECKPOINT)
    assert ck.config.name == "drca-cpu"
    assert ck.config.head.num_classes == len(ck.card.class_names) == 12
    assert ck.config.head.embed_dim == 256 and ck.text_head is not None
    card = ck.card
    assert card.commands and card.commands[0].startswith("drca train shipped")
    assert card.seed == 0 and card.wall_time_s and card.training_data
    assert {"synth_test_top1", "synth_test_top5", "synth_test_mean_class_acc"} <= card.metrics.keys()
    size = sum(f.stat().st_size for f in Path(SHIPPED_CHECKPOINT).iterdir())
    assert size <= 25 * 2**20


def test_shipped_checkpoint_embeds_and_classifies(tmp_path: Path) -> None:
    synth = tmp_path / "s"
    generate(synth, SynthConfig(num_classes=12, videos_per_class=1, seed=123, min_seconds=3, max_seconds=3), workers=1)
    enc = VideoEncoder(Settings(data_dir=tmp_path / "data", device="cpu", text_search=False))
    decoded = enc.decode(next((synth / "videos").glob("*.mp4")))
    emb, probs = enc.forward(decoded.clips)
    assert emb.shape == (1, 256) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert probs.shape == (1, 12) and np.isclose(probs.sum(), 1.0, atol=1e-4)
