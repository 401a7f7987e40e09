import pytest

from model.config import DRCAConfig, apply_overrides
from model.presets import PRESETS, get_preset


def test_overrides_parse_to_field_types() -> None:
    cfg = apply_overrides(get_preset("drca-s-k4-224"), [
        "backbone.comp_module=conv3d", "backbone.num_saliency=3", "backbone.sigma=0.1",
        "backbone.use_sdpa=false", "input.mean=1,2,3", "head.num_classes=12",
    ])
    assert cfg.backbone.comp_module == "conv3d"
    assert cfg.backbone.num_saliency == 3 and cfg.backbone.sigma == 0.1
    assert cfg.backbone.use_sdpa is False
    assert cfg.input.mean == (1.0, 2.0, 3.0)
    assert cfg.head.num_classes == 12


@pytest.mark.parametrize(("override", "message"), [
    ("backbon.comp_module=conv3d", "unknown config key"),
    ("backbone.comp_module=conv4d", "not one of"),
    ("backbone.depth=twelve", "not a valid int"),
    ("backbone=3", "is a section"),
    ("backbone.depth", "key.path=value"),
    ("backbone.num_saliency=8", "num_saliency"),
])
def test_bad_overrides_are_refused_clearly(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(get_preset("drca-s-k4-224"), [override])


def test_every_preset_round_trips_through_json() -> None:
    for name, cfg in PRESETS.items():
        assert DRCAConfig.from_dict(cfg.to_dict()) == cfg, name


def test_unknown_preset_lists_the_names() -> None:
    with pytest.raises(ValueError, match="drca-s-224"):
        get_preset("drca-xl")
