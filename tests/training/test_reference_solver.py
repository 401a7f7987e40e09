"""The training side follows the reference's configs: K8 -> K4 fine-tuning init, learning-rate schedule
(mmcv's warm-up), weight-decay groups."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.checkpoint import ModelCard, save_checkpoint
from model.config import BackboneConfig, DRCAConfig, HeadConfig, InputConfig
from model.drca import DRCA
from model.presets import get_preset
from model.seed import shared_names
from training import engine
from training.config import ClassifyConfig, RetrievalConfig

K8 = DRCAConfig(name="k8", input=InputConfig(num_frames=6, img_size=32),
                backbone=BackboneConfig(patch_size=8, embed_dim=32, depth=4, num_heads=2, comp_insert_layer=-1),
                head=HeadConfig(num_classes=3, embed_dim=16))
K4 = replace(K8, name="k4", backbone=replace(K8.backbone, comp_insert_layer=2, num_saliency=2, num_samples=20,
                                              sal_ref_heads=2))


def test_k8_to_k4_init_copies_every_backbone_tensor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = DRCA(K8).eval()
    save_checkpoint(tmp_path / "k8", src, ModelCard(preset="k8", class_names=["a", "b", "c"]))
    torch.manual_seed(1)
    dst = DRCA(K4)
    fresh = engine.init_from_checkpoint(dst, str(tmp_path / "k8"))
    # what K8 has no counterpart for: the DCCM and the low-resolution spatial attention of the align layers
    assert fresh == sorted(k for k in dst.state_dict() if k.startswith("dccm.") or ".spatial_low." in k)
    src_state, dst_state = src.state_dict(), dst.state_dict()
    assert len(dst_state) - len(fresh) == len(src_state)  # every K8 tensor was copied somewhere
    # layer i is layer i: K8 blocks.3 fills K4 align_blocks.1 (its full-resolution path)
    for ours, theirs in (("align_blocks.1.spatial_high.attn.qkv.weight", "blocks.3.spatial.attn.qkv.weight"),
                         ("align_blocks.1.temporal.temporal_fc.bias", "blocks.3.temporal.temporal_fc.bias"),
                         ("align_blocks.0.ffn.fc1.weight", "blocks.2.ffn.fc1.weight"),
                         ("blocks.1.norm_ffn.weight", "blocks.1.norm_ffn.weight"),
                         ("embed_head.weight", "embed_head.weight")):
        torch.testing.assert_close(dst_state[ours], src_state[theirs])


def test_paper_k8_to_k4_maps_all_of_drca_s_224() -> None:
    k8, k4 = get_preset("drca-s-224"), get_preset("drca-s-k4-224")
    with torch.device("meta"):
        shapes8 = {k: v.shape for k, v in DRCA(k8).state_dict().items()}
        shapes4 = {k: v.shape for k, v in DRCA(k4).state_dict().items()}
    by_name8 = {shared: shapes8[k] for k, shared in shared_names(k8).items()}
    copied = [k for k, shared in shared_names(k4).items() if by_name8.get(shared) == shapes4[k]]
    assert len(copied) == len(shapes8)  # all of the K8 network, 12 layers of it
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in copied if "blocks" in k} == (
        {f"blocks.{i}" for i in range(3)} | {f"align_blocks.{i}" for i in range(9)})


def test_retrieval_schedule_is_the_seeds_cosine_with_20_warm_up_epochs() -> None:
    s = RetrievalConfig().solver
    assert s.warmup_epochs == 20 and s.epochs == 100 and s.min_lr_ratio == 1e-6

    def cosine(p: float) -> float:
        return 1e-6 + (1 - 1e-6) * 0.5 * (1 + math.cos(math.pi * p / 100))

    # mmcv: the warm-up scales the cosine, which starts at epoch 0
    assert engine.lr_factor(s, 0.0) == pytest.approx(1e-3)
    assert engine.lr_factor(s, 10.0) == pytest.approx(cosine(10) * (1e-3 + (1 - 1e-3) * 0.5))
    assert engine.lr_factor(s, 20.0) == pytest.approx(cosine(20))
    assert engine.lr_factor(s, 100.0) == pytest.approx(1e-6)


def test_classification_schedule_is_the_seeds_steps_without_warm_up() -> None:
    s = ClassifyConfig().solver
    assert [engine.lr_factor(s, e) for e in (0, 9.9, 10, 19.9, 20, 29)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_weight_decay_groups(decay_norm_and_bias: bool) -> None:
    model = DRCA(K4)
    solver = replace(ClassifyConfig().solver, decay_norm_and_bias=decay_norm_and_bias)
    groups = engine.param_groups(model, solver, model.no_weight_decay())
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    embeddings = {"cls_token", "pos_embed", "time_embed"}
    if decay_norm_and_bias:  # the seed: only the three embeddings are excluded
        assert undecayed == embeddings
    else:
        assert undecayed == embeddings | {n for n, p in model.named_parameters() if p.ndim == 1}
