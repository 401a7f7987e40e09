"""The checkpoint that `drca serve` loads by default: present, complete, and servable on a real clip.

Not tested: that its labels for tests/data/tiger.mp4 include "tiger". The teacher's do (tiger 0.19 at
224 px), the shipped student's do not (binder, envelope, analog clock, ...; docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
from service.encoder import VideoEncoder
from service.settings import Settings
from training.data.imagenet import class_names

TIGER = Path(__file__).parents[1] / "data" / "tiger.mp4"  # a held-out openclipart tiger (tests/data/make_clips.py)


def test_shipped_checkpoint_has_the_imagenet_classes_an_embedding_and_its_card() -> None:
    ck = load_checkpoint(SHIPPED_CHECKPOINT)
    assert ck.config.name == "drca-cpu-160" and ck.config.input.img_size == 160 and ck.config.compressed
    assert ck.card.class_names == class_names() and ck.config.head.num_classes == 1000
    assert len(ck.card.class_descriptions) == 1000 and "large feline" in ck.card.class_descriptions[292]
    assert ck.config.head.embed_dim == 256
    card = ck.card
    assert card.commands and card.commands[0].startswith("drca train shipped")
    assert card.seed == 0 and card.wall_time_s and "sha256" in card.training_data
    assert {"heldout_video_teacher_top1_in_top5", "heldout_video_top1_agree", "heldout_still_top1_in_top5"} \
        <= card.metrics.keys()
    size = sum(f.stat().st_size for f in Path(SHIPPED_CHECKPOINT).iterdir())
    assert size <= 25 * 2**20


def test_shipped_checkpoint_gives_output_of_the_right_shapes_on_a_real_clip(tmp_path: Path) -> None:
    """Shapes and normalisation only: it passes with every weight replaced by noise. Whether the labels mean
    anything is the pretrained-stem issue's test."""
    enc = VideoEncoder(Settings(data_dir=tmp_path / "data", device="cpu", text_search=False))
    decoded = enc.decode(TIGER)
    emb, probs = enc.forward(decoded.clips)
    assert emb.shape == (1, 256) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert probs.shape == (1, 1000) and np.isclose(probs.sum(), 1.0, atol=1e-4)
    assert len(enc.class_names) == 1000
