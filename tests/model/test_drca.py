import itertools
import math
from typing import get_args

import pytest
import torch

from model.config import CompModule, FrameChoice
from model.dccm import PerturbedTopK, uniform_split
from model.drca import DRCA
from model.layers import DropPath, TemporalAttention
from tests.model.conftest import tiny_config

COMBOS = list(itertools.product(get_args(FrameChoice), get_args(CompModule)))


@pytest.mark.parametrize(("frame_choice", "comp_module"), COMBOS)
def test_every_strategy_and_module_runs_forward_and_backward(frame_choice: str, comp_module: str) -> None:
    torch.manual_seed(0)
    model = DRCA(tiny_config(frame_choice=frame_choice, comp_module=comp_module)).train()
    x = torch.randn(2, 3, 6, 32, 32)
    out = model(x)
    assert out.logits.shape == (2, 5)
    assert out.embedding.shape == (2, 16)
    assert out.saliency_indices.shape == (2, 2)
    (out.logits.logsumexp(-1).sum() + out.embedding.sum()).backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert torch.isfinite(model.patch_embed.proj.weight.grad).all()
    comp_grads = [p.grad for p in model.dccm.compression.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in comp_grads)


def test_diff_rank_trains_the_score_net() -> None:
    torch.manual_seed(0)
    model = DRCA(tiny_config(frame_choice="diff_rank")).train()
    out = model(torch.randn(3, 3, 6, 32, 32))
    out.logits[:, 0].sum().backward()
    grads = [p.grad for p in model.dccm.score_net.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_wo_diff_rank_gives_the_score_net_no_gradient() -> None:
    torch.manual_seed(0)
    model = DRCA(tiny_config(frame_choice="wo_diff_rank")).train()
    model(torch.randn(2, 3, 6, 32, 32)).logits.sum().backward()
    assert all(p.grad is None for p in model.dccm.score_net.parameters())


def test_perturbed_topk_matches_hard_topk_for_separated_scores_and_its_gradient_is_finite() -> None:
    torch.manual_seed(0)
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.0, 0.5, 0.2]], requires_grad=True)
    top, rest = PerturbedTopK.apply(scores, 2, 2000, 0.01)
    assert torch.allclose(top, torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0]]))
    assert rest.shape == (1, 4, 6)
    assert torch.allclose(top.sum(-1), torch.ones(1, 2))
    top.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_perturbed_topk_gradient_is_the_references_diagonal_estimator_over_ten() -> None:
    # Two frames, K=1, delta = s0 - s1. Frame 0 is selected when delta + sigma (Z0 - Z1) > 0, so with
    # c = phi(delta / (sigma sqrt 2)) / (sqrt 2 sigma), E[y Z0] / sigma = c and E[y Z1] / sigma = -c.
    # The loss top[frame 0] + 2 rest[frame 1] (both are P(frame 0 selected)) then gets, from the diagonal
    # estimator divided by 10: d/ds0 = c / 10 (only top's frame-0 entry), d/ds1 = -2 c / 10 (only rest's
    # frame-1 entry). The full Jacobian would give 3c and -3c instead.
    torch.manual_seed(0)
    sigma, delta = 0.5, 0.3
    scores = torch.tensor([[0.6, 0.6 - delta]], requires_grad=True)
    top, rest = PerturbedTopK.apply(scores, 1, 400_000, sigma)
    (top[0, 0, 0] + 2 * rest[0, 0, 1]).backward()
    c = math.exp(-0.5 * (delta / (sigma * math.sqrt(2))) ** 2) / math.sqrt(2 * math.pi) / (math.sqrt(2) * sigma)
    torch.testing.assert_close(scores.grad, torch.tensor([[c / 10, -2 * c / 10]]), rtol=0.03, atol=0.0)
    # and the forward is the Monte-Carlo selection probability P(frame 0) = Phi(delta / (sigma sqrt 2))
    p0 = 0.5 * (1 + math.erf(delta / (sigma * math.sqrt(2)) / math.sqrt(2)))
    assert abs(top[0, 0, 0].item() - p0) < 0.01


def test_uniform_picks_evenly_spaced_frames() -> None:
    top, rest = uniform_split(8, 4, batch=2, device=torch.device("cpu"))
    assert top.tolist() == [[0, 2, 4, 6]] * 2
    assert rest.tolist() == [[1, 3, 5, 7]] * 2
    model = DRCA(tiny_config(frame_choice="uniform", num_saliency=3)).eval()
    out = model(torch.randn(2, 3, 6, 32, 32))
    assert out.saliency_indices.tolist() == [[0, 2, 4]] * 2


def test_eval_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    model = DRCA(tiny_config()).eval()
    clips = torch.randn(4, 3, 6, 32, 32)
    with torch.inference_mode():
        alone = model(clips[1:2]).embedding
        again = model(clips[1:2]).embedding
        batched = model(clips).embedding[1:2]
    assert torch.equal(alone, again)
    assert torch.allclose(alone, batched, atol=1e-5)


@pytest.mark.parametrize("value", [0.0, -1.0, 1.0])
def test_constant_frames_give_no_nan(value: float) -> None:
    model = DRCA(tiny_config()).eval()
    with torch.inference_mode():
        out = model(torch.full((2, 3, 6, 32, 32), value))
    assert torch.isfinite(out.logits).all()
    assert torch.isfinite(out.embedding).all()
    model.train()
    out = model(torch.full((2, 3, 6, 32, 32), value))
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_no_compression_is_a_plain_timesformer() -> None:
    model = DRCA(tiny_config(comp_insert_layer=-1)).eval()
    assert model.dccm is None and len(model.align_blocks) == 0 and len(model.blocks) == 2
    out = model(torch.randn(1, 3, 6, 32, 32))
    assert out.saliency_indices is None


def test_wrong_input_shape_is_refused() -> None:
    model = DRCA(tiny_config())
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 3, 5, 32, 32))


def test_drop_path_masks_are_per_sample_and_shared_across_tensors() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    a, b = torch.ones(64, 3, 2), torch.ones(64, 5)
    da, db = dp.shared(a, b)
    kept_a, kept_b = da[:, 0, 0] > 0, db[:, 0] > 0
    assert torch.equal(kept_a, kept_b) and 0 < kept_a.sum() < 64  # one mask per sample, for both
    assert torch.all((da == 0) | (da == 2.0)) and torch.all(da == da[:, :1, :1])  # scaled by 1 / keep
    assert dp.eval().shared(a, b)[0] is a


def test_temporal_drop_path_is_one_mask_per_location_before_temporal_fc() -> None:
    torch.manual_seed(0)
    temporal = TemporalAttention(16, 2, use_sdpa=True, drop_path=0.5).train()
    with torch.no_grad():  # an identity temporal_fc: a dropped location gives exactly 0 on every frame
        temporal.temporal_fc.weight.copy_(torch.eye(16))
        temporal.temporal_fc.bias.zero_()
    out = temporal(torch.randn(2, 6, 4, 4, 16))  # (B, T, H, W, C)
    dropped = (out == 0).all(dim=-1)  # (B, T, H, W)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # the same for all frames of a location
    assert 0 < dropped[:, 0].sum() < 2 * 16


def test_initialisation_follows_the_reference() -> None:
    torch.manual_seed(0)
    model = DRCA(tiny_config(comp_module="conv2d"))
    w = model.patch_embed.proj.weight
    assert abs(w.std().item() * math.sqrt(w[0].numel()) - 1) < 0.1  # LeCun normal
    assert not model.patch_embed.proj.bias.any()
    for blk in [*model.blocks, *model.align_blocks]:
        assert not blk.temporal.temporal_fc.weight.any() and not blk.temporal.temporal_fc.bias.any()
        assert not blk.temporal.attn.qkv.bias.any() and not getattr(blk, "spatial", getattr(blk, "spatial_high", None)).attn.proj.bias.any()
    conv = model.dccm.compression.net[0]
    assert conv.bias.std() > 0.5  # N(0, 1) conv biases, as the reference's weight_init
    bn = model.dccm.compression.net[1].weight  # BatchNorm2d: N(1, 0.02)
    assert abs(bn.mean().item() - 1) < 0.02 and 0 < bn.std().item() < 0.05
    assert abs(model.cls_head.weight.std().item() - 0.02) < 0.005
