from dataclasses import replace

import pytest

from model.config import BackboneConfig, DRCAConfig, HeadConfig, InputConfig


def tiny_config(**backbone: object) -> DRCAConfig:
    """A 2-layer, 32-d DRCA on 6 frames of 32x32 (4x4 patch grid), compression before layer 1."""
    base = BackboneConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path=0.0, comp_insert_layer=1,
                          num_saliency=2, num_samples=50, sigma=0.05, sal_ref_heads=2)
    return DRCAConfig(name="tiny", input=InputConfig(num_frames=6, img_size=32),
                      backbone=replace(base, **backbone), head=HeadConfig(num_classes=5, embed_dim=16))


@pytest.fixture
def tiny() -> DRCAConfig:
    return tiny_config()
