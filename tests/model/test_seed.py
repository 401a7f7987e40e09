"""Parity with the reference DRCA code, through `drca convert-seed`.

The fixtures (tests/model/fixtures/drca_parity, copied from ../shared/reference/drca-parity; its README
says what each file is) were made by running the official code (dun-research/DRCA, mmcv 1.5.2, mmaction2
0.24): 8 small random-weight models in the reference's checkpoint format, one input, and the reference's
eval-mode features, logits and frame ranking.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model.checkpoint import load_checkpoint
from model.presets import get_preset
from model.seed import key_map

FIXTURES = Path(__file__).parent / "fixtures" / "drca_parity"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [c for c, v in MANIFEST["cases"].items() if "checkpoint" in v]  # k4_resblock_2d: the reference fails


def drca_app():
    from cli.main import app

    return app


def convert(*args: str | Path):
    return CliRunner().invoke(drca_app(), ["convert-seed", *map(str, args)])


@pytest.fixture(scope="module")
def reference_input() -> torch.Tensor:
    return torch.load(FIXTURES / "input.pt", weights_only=True)["input"]


def test_every_fixture_case_is_present() -> None:
    assert len(CASES) == 8


@pytest.mark.parametrize("case", CASES)
def test_converted_case_computes_what_the_reference_computes(case: str, tmp_path: Path,
                                                             reference_input: torch.Tensor) -> None:
    result = convert(FIXTURES / f"{case}.pth", tmp_path / "ck")
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(tmp_path / "ck")
    expected = torch.load(FIXTURES / f"{case}.expected.pt", weights_only=True)
    with torch.inference_mode():
        out = ck.model(reference_input)
    assert (out.features - expected["features"]).abs().max().item() <= 1e-4
    assert (out.logits - expected["logits"]).abs().max().item() <= 1e-4
    b = ck.config.backbone
    assert b.comp_module == MANIFEST["cases"][case]["backbone"]["comp_module"] or b.comp_insert_layer < 0
    if "rank_index" not in expected:
        assert out.saliency_indices is None and b.comp_insert_layer == -1
        return
    rank, k = expected["rank_index"], b.num_saliency
    assert k == 4
    # ScoreNet: every frame sorted by score ascending, the last K kept; uniform: the K kept frames first
    kept = rank[:, :k] if b.frame_choice == "uniform" else rank[:, -k:]
    assert out.saliency_indices.tolist() == kept.sort(dim=-1).values.tolist()


def test_converted_classifier_card_has_classes_and_provenance(tmp_path: Path) -> None:
    src = FIXTURES / "k4_sal_ref_diff_rank.pth"
    names = [f"action {i}" for i in range(10)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    result = convert(src, tmp_path / "ck", "--classes", tmp_path / "classes.txt")
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.card.class_names == names and ck.config.head.num_classes == 10
    assert ck.card.source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    meta_config = torch.load(src, weights_only=True)["meta"]["config"]
    assert ck.card.source["reference_config"] == meta_config and ck.card.source["kind"] == "classification"
    assert ck.card.commands and ck.card.commands[0].startswith("drca convert-seed")
    assert "--classes" in ck.card.commands[0]
    # the embedding is the normalised feature, no projection
    assert ck.config.head.embedding == "feature" and ck.config.head.embed_dim == 64
    assert ck.model.embed_head is None


def test_without_classes_the_classes_are_numbered_with_a_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    result = convert(FIXTURES / "k8_nocomp.pth", tmp_path / "ck")
    assert result.exit_code == 0
    assert "no --classes file: the 10 classes are named class_0 .. class_9" in caplog.text
    assert load_checkpoint(tmp_path / "ck").card.class_names == [f"class_{i}" for i in range(10)]


def _retrieval_checkpoint(path: Path) -> Path:
    """A reference retrieval checkpoint: backbone.* only, a SimilarityRecognizer3D config."""
    ck = torch.load(FIXTURES / "k4_sal_ref_diff_rank.pth", weights_only=True)
    state = {k: v for k, v in ck["state_dict"].items() if k.startswith("backbone.")}
    text = ck["meta"]["config"]
    text = text.replace("type='Recognizer3D'", "type='SimilarityRecognizer3D'")
    text = text.replace("cls_head=dict(type='ClsHead', num_classes=10, in_channels=64),",
                        "sim_head=dict(type='SimilarityHead', encoder=dict(type='None', input_channels=64, "
                        "out_channels=64)),")
    assert "sim_head" in text
    torch.save({"meta": {**ck["meta"], "config": text}, "state_dict": state}, path)
    return path


def test_retrieval_checkpoint_becomes_an_embedding_model(tmp_path: Path, reference_input: torch.Tensor) -> None:
    src = _retrieval_checkpoint(tmp_path / "retrieval.pth")
    result = convert(src, tmp_path / "ck")
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config.head.num_classes == 0 and ck.card.class_names == [] and ck.card.source["kind"] == "retrieval"
    expected = torch.load(FIXTURES / "k4_sal_ref_diff_rank.expected.pt", weights_only=True)
    with torch.inference_mode():
        out = ck.model(reference_input)
    assert out.logits is None
    torch.testing.assert_close(out.embedding, torch.nn.functional.normalize(expected["features"], dim=-1),
                               atol=1e-4, rtol=0)
    bad = convert(src, tmp_path / "ck2", "--classes", tmp_path / "none.txt")
    assert bad.exit_code == 2 and "retrieval checkpoint" in bad.output


# --------------------------------------------------------------------------- bad input
def _reference(case: str = "k4_sal_ref_diff_rank") -> dict:
    return torch.load(FIXTURES / f"{case}.pth", weights_only=True)


def _write(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _edited(path: Path, edit) -> Path:
    ck = _reference()
    edit(ck)
    return _write(path, ck)


def _set_config(ck: dict, old: str, new: str) -> None:
    assert old in ck["meta"]["config"]
    ck["meta"]["config"] = ck["meta"]["config"].replace(old, new)


BAD_INPUTS = {
    "not a torch file": (lambda p: (p.write_text("just text\n"), p)[1], [], "not a torch checkpoint"),
    "truncated file": (lambda p: (p.write_bytes((FIXTURES / "k8_nocomp.pth").read_bytes()[:100_000]), p)[1], [],
                       "truncated or corrupt"),
    "not a DRCA state dict": (lambda p: _write(p, {"state_dict": {"fc.weight": torch.zeros(2, 2)}}), [],
                              "no backbone.* tensors"),
    "a tensor missing": (lambda p: _edited(p, lambda ck: ck["state_dict"].pop(
        "backbone.transformer_layers.layers.1.attentions.0.temporal_fc.weight")), [],
        "missing backbone.transformer_layers.layers.1.attentions.0.temporal_fc.weight"),
    "an unexpected tensor": (lambda p: _edited(p, lambda ck: ck["state_dict"].update(
        {"backbone.extra.weight": torch.zeros(3)})), [], "unexpected backbone.extra.weight"),
    "config contradicts the shapes": (lambda p: _edited(p, lambda ck: _set_config(
        ck, "embed_dims=64", "embed_dims=384")), [], "backbone.embed_dims=384 but the tensors say 64"),
    "a shape contradicts the config": (lambda p: _edited(p, lambda ck: ck["state_dict"].update(
        {"backbone.transformer_layers.layers.1.attentions.0.temporal_fc.bias": torch.zeros(65)})), [],
        "temporal_fc.bias has shape (65,), the architecture expects (64,)"),
    "classes contradict the config": (lambda p: _edited(p, lambda ck: _set_config(
        ck, "num_classes=10", "num_classes=7")), [], "cls_head.num_classes=7 but cls_head.fc_cls has 10 rows"),
    "heads recorded nowhere": (lambda p: _edited(p, lambda ck: _set_config(ck, "num_heads=4,", "")), [],
                               "does not record backbone.num_heads"),
    "a disallowed pickled global": (lambda p: _write(p, {"meta": {"path": pathlib.PurePosixPath("x")},
                                                         "state_dict": {}}), [],
                                    "refusing to unpickle the global pathlib.PurePosixPath"),
    "an unknown --set key": (lambda p: FIXTURES / "k8_nocomp.pth", ["--set", "backbone.heads=4"],
                             "unknown config key 'backbone.heads'"),
    "a --classes file of the wrong length": (lambda p: FIXTURES / "k8_nocomp.pth",
                                             ["--classes", str(FIXTURES / "README.md")], "the classifier has 10"),
    "no such file": (lambda p: p.with_name("absent.pth"), [], "no such file"),
}


@pytest.mark.parametrize("what", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(what: str, tmp_path: Path) -> None:
    make, extra, message = BAD_INPUTS[what]
    src = make(tmp_path / "src.pth")
    result = convert(src, tmp_path / "ck", *extra)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "ck").exists()


def test_numpy_scalars_in_meta_are_allowed(tmp_path: Path) -> None:
    ck = _reference("k8_nocomp")
    ck["meta"]["hook_msgs"] = {"best_score": np.float64(0.5), "epoch": np.int64(3)}
    result = convert(_write(tmp_path / "src.pth", ck), tmp_path / "ck")
    assert result.exit_code == 0, result.output


def test_set_supplies_what_the_config_lacks(tmp_path: Path) -> None:
    ck = _reference()
    ck["meta"]["config"] = ck["meta"]["config"].replace("num_heads=4,", "")
    src = _write(tmp_path / "src.pth", ck)
    result = convert(src, tmp_path / "ck", "--set", "backbone.num_heads=4")
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config.backbone.num_heads == 4 and loaded.card.overrides == ["backbone.num_heads=4"]


# --------------------------------------------------------------------------- the full-size layout
# Merged like mmcv writes meta["config"] for configs/video_classification/DRCA-S-K4-224.py
# (its _base_ DRCA-S-224.py with comp_insert_layer=3, comp_k=4, and the Mini-Kinetics test pipeline).
S_K4_224_CONFIG = """model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='DRCA',
        pretrained=None,
        num_frames=8,
        img_size=224,
        patch_size=16,
        embed_dims=384,
        num_heads=6,
        in_channels=3,
        comp_insert_layer=3,
        comp_k=4,
        comp_strategy='diff_rank',
        comp_module='sal_ref',
        sigma=0.05,
        num_samples=500,
        dropout_ratio=0.0,
        transformer_layers=None,
        norm_cfg=dict(type='LN', eps=1e-06)),
    cls_head=dict(type='ClsHead', num_classes=200, in_channels=384),
    train_cfg=None,
    test_cfg=dict(average_clips='prob'))
data = dict(
    videos_per_gpu=26,
    test=dict(
        type='RawframeDataset',
        pipeline=[
            dict(type='SampleFrames', clip_len=8, frame_interval=32, num_clips=1, test_mode=True),
            dict(type='RawFrameDecode'),
            dict(type='Resize', scale=(-1, 256)),
            dict(type='CenterCrop', crop_size=224),
            dict(type='Normalize', mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_bgr=False),
            dict(type='FormatShape', input_format='NCTHW'),
        ]))
load_from = 'weights/DRCA-S-K8-full-224-minik.pth'
work_dir = 'work_dirs/video_classification/DRCA-S-K4-224'
"""
# The config file itself, unmerged: its _base_ files are not followed, so heads and frame choice are missing.
S_K4_224_UNMERGED = """_base_ = ['../_base_/default_runtime.py', './DRCA-S-224.py',
                  './data_pipeline_minik.py', './solver.py']

model = dict(
    backbone=dict(
        comp_insert_layer=3,
        comp_k=4,
    ))

load_from =  'weights/DRCA-S-K8-full-224-minik.pth'
"""
FULL_SHAPES = json.loads((FIXTURES / "drca_s_k4_224_state_dict_shapes.json").read_text())


def _zero_checkpoint(path: Path, config: str) -> Path:
    # every tensor is a stride-0 view of one zero: the file stays small, the shapes are the real ones
    state = {k: torch.zeros(()).expand(shape) for k, shape in FULL_SHAPES.items()}
    torch.save({"meta": {"mmcv_version": "1.5.2", "config": config}, "state_dict": state}, path)
    return path


def test_full_size_layout_maps_every_key_into_drca_s_k4_224(tmp_path: Path) -> None:
    preset = get_preset("drca-s-k4-224")
    src = _zero_checkpoint(tmp_path / "DRCA-S-K4-224-minik.pth", S_K4_224_CONFIG)
    result = convert(src, tmp_path / "ck")
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["name"] == "drca-s-k4-224"
    assert cfg["input"] == json.loads(json.dumps(preset.to_dict()["input"]))
    assert cfg["backbone"] == preset.to_dict()["backbone"]
    assert cfg["head"]["num_classes"] == 200 and cfg["head"]["embedding"] == "feature"
    from model.config import DRCAConfig

    mapping = key_map(DRCAConfig.from_dict(cfg))
    assert len(FULL_SHAPES) == 336 and len(mapping) == 336
    assert {theirs: list(shape) for theirs, shape in mapping.values()} == FULL_SHAPES
    loaded = load_checkpoint(tmp_path / "ck")
    assert all(not p.any() for p in loaded.model.parameters())


def test_unmerged_config_names_what_is_missing_and_set_fills_it(tmp_path: Path) -> None:
    src = _zero_checkpoint(tmp_path / "src.pth", S_K4_224_UNMERGED)
    result = convert(src, tmp_path / "ck")
    assert result.exit_code == 2
    assert "backbone.num_heads (mmcv: model.backbone.num_heads)" in result.output
    assert "backbone.frame_choice (mmcv: model.backbone.comp_strategy)" in result.output
    result = convert(src, tmp_path / "ck", "--set", "backbone.num_heads=6", "--set", "backbone.frame_choice=diff_rank")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["name"] == "drca-s-k4-224"
