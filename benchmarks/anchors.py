"""Anchor networks that the quality benchmarks serve beside the shipped one, through the same service path."""

from __future__ import annotations

from pathlib import Path

from model.checkpoint import build_model, load_checkpoint, save_checkpoint
from model.hybrid import HybridDRCA
from model.presets import uncompressed

STEM_ALONE = "the stem alone: frame mean of the pretrained EfficientNet-Lite0's pooled feature, no DRCA layers"


def stem_alone_checkpoint(src: Path, dst: Path) -> Path:
    """The "stem alone" anchor as a checkpoint: the frame mean of the pretrained stem's pooled 1280-d
    feature (the embedding) and its ImageNet classifier on that mean (the labels), every frame at full
    size. It is ``src``'s stem in the same network with every frame kept (K = T) and untrained DRCA
    layers, whose output projection is zero (`model.hybrid`): exactly the stem's frame mean."""
    ck = load_checkpoint(src)
    if not isinstance(ck.model, HybridDRCA):
        raise SystemExit(f"{src}: not a pretrained-stem (lite0) checkpoint; it has no stem to serve alone")
    net = build_model(uncompressed(ck.config))
    net.stem.load_state_dict(ck.model.stem.state_dict())
    # the background set of `src`'s card was embedded by `src`'s weights, not by these: left out
    match = ck.card.match.model_copy(update={"background": None}) if ck.card.match is not None else None
    card = ck.card.model_copy(update={"preset": f"{ck.config.name} stem alone", "notes": STEM_ALONE,
                                      "metrics": {}, "commands": [], "match": match})
    return save_checkpoint(dst, net.eval(), card)
