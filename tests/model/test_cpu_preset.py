"""The shipped preset's parts: the convolutional stem, mean pooling, and the recipe that builds it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.config import BackboneConfig, DRCAConfig, HeadConfig, InputConfig, apply_overrides
from model.drca import DRCA
from model.layers import ConvStem, PatchEmbed
from model.presets import get_preset
from training.config import RetrievalConfig
from training.recipes import RECIPES


def test_conv_stem_gives_the_patch_grid() -> None:
    x = torch.randn(2, 3, 4, 64, 64)
    stem = ConvStem(8, 3, 32)
    assert stem(x).shape == PatchEmbed(8, 3, 32)(x).shape == (2, 4, 8, 8, 32)


def test_conv_stem_needs_a_power_of_two_patch() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        DRCAConfig(input=InputConfig(img_size=112), backbone=BackboneConfig(patch_size=14, stem="conv"))


@pytest.mark.parametrize("comp", [1, -1])
def test_mean_pooling_uses_the_patch_tokens(comp: int) -> None:
    torch.manual_seed(0)
    cfg = DRCAConfig(input=InputConfig(num_frames=4, img_size=32),
                     backbone=BackboneConfig(patch_size=8, stem="conv", embed_dim=32, depth=2, num_heads=2,
                                             comp_insert_layer=comp, num_saliency=2, num_samples=10),
                     head=HeadConfig(num_classes=3, embed_dim=8, pool="mean"))
    model = DRCA(cfg).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    out = model(x)
    assert out.logits.shape == (2, 3) and out.embedding.shape == (2, 8)
    # the cls token does not reach the output under mean pooling
    with torch.no_grad():
        model.cls_token.add_(5.0)
    torch.testing.assert_close(model(x).embedding, out.embedding)
    assert not torch.allclose(model(x * 0.5).embedding, out.embedding)


def test_shipped_recipe_builds_the_drca_cpu_preset() -> None:
    cfg = apply_overrides(RetrievalConfig(), list(RECIPES["cpu-retrieval"]))
    assert cfg.model == replace(get_preset("drca-cpu"))
