"""The pretrained-stem DRCA (`model.hybrid`): it starts as the teacher, the cache path is the serving path,
and the DCCM's half-size frames skip real stem work."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from media.segments import segment_clips
from media.video import open_video
from model import SHIPPED_CHECKPOINT
from model.checkpoint import build_model, read_weights
from model.efficientnet import EfficientNetLite0
from model.hybrid import HybridDRCA
from model.presets import get_preset, uncompressed

TIGER = Path(__file__).parents[1] / "data" / "tiger.mp4"
PRESET = get_preset("drca-lite0-224")


def small(**backbone: object):
    """The shipped preset at 96 px and 4 frames (K=2): the same network, cheap to run."""
    cfg = replace(PRESET, input=replace(PRESET.input, num_frames=4, img_size=96))
    return replace(cfg, backbone=replace(cfg.backbone, num_saliency=2, **backbone))


def _pretrained_stem() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0, as the shipped checkpoint carries them (the frozen stem)."""
    return {k[len("stem."):]: v for k, v in read_weights(SHIPPED_CHECKPOINT).items() if k.startswith("stem.")}


def _tiger_clip() -> torch.Tensor:
    """The first service segment of the committed real clip, as the network sees it: (1, 3, T, 224, 224)."""
    with open_video(TIGER) as reader:
        clips, _ = segment_clips(reader, PRESET.input)
    return clips[:1]


def test_at_initialisation_the_class_output_is_the_teachers_frame_average() -> None:
    teacher = EfficientNetLite0().eval()
    teacher.load_state_dict(_pretrained_stem())
    x = _tiger_clip()
    frames = x.transpose(1, 2).flatten(0, 1)  # (T, 3, 224, 224)
    with torch.no_grad():
        teacher_logits = teacher(frames)  # (T, 1000)
        teacher_feats = teacher.features(frames)

        # without compression (K = T) the fresh network is exactly the teacher's frame average
        full = build_model(uncompressed(PRESET)).eval()
        full.stem.load_state_dict(teacher.state_dict())
        out = full(x)
        assert torch.allclose(out.logits[0], teacher_logits.mean(0), atol=1e-4)
        assert torch.allclose(out.embedding[0], F.normalize(teacher_feats.mean(0), dim=0), atol=1e-5)

        # with the shipped K=4 the class output starts as the teacher's average over the 4 saliency frames
        # (the frames the stem sees at full size; the others reach the output only through the DRCA layers)
        net = build_model(PRESET).eval()
        net.stem.load_state_dict(teacher.state_dict())
        out = net(x)
        keep = out.saliency_indices[0]
        assert len(keep) == 4
        assert torch.allclose(out.logits[0], teacher_logits[keep].mean(0), atol=1e-4)
        assert torch.allclose(out.embedding[0], F.normalize(teacher_feats[keep].mean(0), dim=0), atol=1e-5)


def test_the_cache_path_is_the_serving_path() -> None:
    torch.manual_seed(0)
    net = build_model(small()).eval()
    for p in net.out_proj.parameters():  # not the zero init: the DRCA layers contribute
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 4, 96, 96)
    with torch.no_grad():
        served = net(x)
        cached = net.forward_stem(net.stem_outputs(x))
    assert torch.allclose(served.logits, cached.logits, atol=1e-4)
    assert torch.allclose(served.embedding, cached.embedding, atol=1e-5)
    assert torch.equal(served.saliency_indices, cached.saliency_indices)


def test_training_moves_the_drca_layers_and_never_the_stem() -> None:
    torch.manual_seed(0)
    net = build_model(small()).train()
    assert isinstance(net, HybridDRCA) and not net.stem.training  # frozen batch-norm statistics
    stem_before = {k: v.clone() for k, v in net.stem.state_dict().items()}
    for p in net.stem.parameters():
        p.requires_grad_(False)
    out = net(torch.randn(2, 3, 4, 96, 96))
    (out.logits.logsumexp(-1).sum() + out.embedding[:, 0].sum()).backward()
    assert net.out_proj.weight.grad.abs().sum() > 0
    assert net.dccm.score_net.head[-1].weight.grad is not None  # the perturbed top-k reaches the ScoreNet
    assert all(torch.equal(v, net.stem.state_dict()[k]) for k, v in stem_before.items())


@pytest.mark.parametrize("batch", [1, 4])
def test_k4_does_less_stem_work_than_no_compression(batch: int) -> None:
    """FLOPs of one forward pass at the shipped size: the half-size maps skip about 3/4 of the late blocks
    for 4 of the 8 frames (docs/model.md has the CPU time)."""
    x = torch.randn(batch, 3, 8, 224, 224)

    def flops(cfg) -> int:
        net = build_model(cfg).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        return counter.get_total_flops()

    k4, full = flops(PRESET), flops(uncompressed(PRESET))
    assert full / k4 >= 1.25, (full, k4)


def test_keeping_every_frame_skips_the_empty_compressed_branch() -> None:
    """K = T (the uncompressed twin): no compression and no low-resolution tokens (None rather than
    zero-size tensors, which an exported graph cannot hold); each Resolution-Align layer computes what it
    computes with an empty `low`, on an odd grid (3x3, half grid 2x2) and an even one (4x4)."""
    torch.manual_seed(0)
    cfg = small()
    net = build_model(replace(cfg, backbone=replace(cfg.backbone, num_saliency=4))).eval()
    for blk in net.align_blocks:  # not the zero init: the temporal attention contributes
        torch.nn.init.normal_(blk.temporal.temporal_fc.weight, std=0.05)
    compressed: list[int] = []
    net.dccm.compression.register_forward_hook(lambda *args: compressed.append(1))
    x = torch.randn(2, 3, 4, 96, 96)
    with torch.no_grad():
        served = net(x)
        cached = net.forward_stem(net.stem_outputs(x))
        assert not compressed and served.saliency_indices.tolist() == [[0, 1, 2, 3]] * 2
        assert torch.allclose(served.embedding, cached.embedding, atol=1e-5)
        blk, cls = net.align_blocks[0], torch.randn(2, 1, 192)
        for grid, half in ((3, 2), (4, 2)):
            high = torch.randn(2, 4, grid, grid, 192)
            skipped, empty = blk(cls, high, None), blk(cls, high, high.new_zeros(2, 0, half, half, 192))
            assert skipped[2] is None and empty[2].shape == (2, 0, half, half, 192)
            assert torch.equal(skipped[0], empty[0]) and torch.equal(skipped[1], empty[1]), grid
