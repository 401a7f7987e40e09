"""The pretrained-stem DRCA (`model.hybrid`): it starts as the teacher; on the shipped weights and a real clip
the cache path is the serving path and the outputs are the recorded ones (the stem split where it was
trained); a training step moves the DRCA layers and never the stem; the DCCM's half-size frames skip real
stem work."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from media.segments import segment_clips
from media.video import open_video
from model import SHIPPED_CHECKPOINT
from model.checkpoint import build_model, load_checkpoint, read_config_and_card, read_weights
from model.drca import DRCAOutput
from model.efficientnet import EfficientNetLite0
from model.hybrid import HybridDRCA
from model.presets import get_preset, uncompressed
from training.hybrid import HybridTrainConfig, hybrid_loss, start_training

DATA = Path(__file__).parents[1] / "data"
TIGER = DATA / "tiger.mp4"
# the shipped network's outputs on the tiger clip, a fixed reference (re-made by `python -m tests.model.test_hybrid`
# only when the shipped weights change)
REFERENCE = Path(__file__).parent / "fixtures" / "shipped_tiger_outputs.json"
PRESET = get_preset("drca-lite0-224")


def _pretrained_stem() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0, as the shipped checkpoint carries them (the frozen stem)."""
    return {k[len("stem."):]: v for k, v in read_weights(SHIPPED_CHECKPOINT).items() if k.startswith("stem.")}


def _clip(path: Path) -> torch.Tensor:
    """The first service segment of a committed real clip, as the network sees it: (1, 3, T, 224, 224)."""
    with open_video(path) as reader:
        clips, _ = segment_clips(reader, PRESET.input)
    return clips[:1]


def _tiger_clip() -> torch.Tensor:
    return _clip(TIGER)


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


@pytest.fixture(scope="module")
def shipped() -> HybridDRCA:
    """The shipped checkpoint's network (safetensors), in eval mode."""
    net = load_checkpoint(SHIPPED_CHECKPOINT).model
    assert isinstance(net, HybridDRCA) and not net.training
    return net


def _record(out: DRCAOutput) -> dict:
    """What `REFERENCE` keeps of an output: its saliency frames, its embedding and its ten largest logits."""
    top = out.logits[0].topk(10)
    return {"saliency_indices": out.saliency_indices[0].tolist(),
            "embedding": [round(v, 7) for v in out.embedding[0].tolist()],
            "top_classes": top.indices.tolist(), "top_logits": [round(v, 5) for v in top.values.tolist()]}


def test_the_shipped_split_is_the_one_the_checkpoint_was_trained_at(shipped: HybridDRCA) -> None:
    """The early/late boundary of the stem (`stem_split`) is where the DRCA layers were trained: block 5
    (stride 8, 40 channels). Block 4 has the same channels and stride, so a network split there loads
    the same weights and runs; only its outputs tell (cosine 0.990 to the reference, logits off by 0.5,
    another saliency frame)."""
    assert get_preset("drca-lite0-224").backbone.stem_split == 5
    assert read_config_and_card(SHIPPED_CHECKPOINT)[0] == PRESET  # what `drca train shipped` trains is what ships
    assert shipped.split == 5
    ref = json.loads(REFERENCE.read_text())
    sha = hashlib.sha256((SHIPPED_CHECKPOINT / "model.safetensors").read_bytes()).hexdigest()
    assert sha == ref["weights_sha256"], "the shipped weights changed: re-make the reference (see REFERENCE)"
    with torch.no_grad():
        out = shipped(_tiger_clip())
    assert out.saliency_indices[0].tolist() == ref["saliency_indices"]
    emb, want = out.embedding[0], torch.tensor(ref["embedding"])
    assert float(emb @ want) > 0.9999 and (emb - want).abs().max() < 2e-3
    assert out.logits[0].topk(5).indices.tolist() == ref["top_classes"][:5]
    assert (out.logits[0][ref["top_classes"]] - torch.tensor(ref["top_logits"])).abs().max() < 0.05


def _late_maps_and_output(net: HybridDRCA, run: Callable[[], DRCAOutput]) -> tuple[list[torch.Tensor], DRCAOutput]:
    """``run()``'s output and the late maps that entered the DRCA layers (the inputs of `late_proj`:
    the saliency frames' full-size maps, then the other frames' half-size maps), frame by frame."""
    seen: list[torch.Tensor] = []
    hook = net.late_proj.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            out = run()
    finally:
        hook.remove()
    return seen, out


def test_the_cache_path_is_the_serving_path(shipped: HybridDRCA) -> None:
    """The trained network on the real tiger clip: what training reads from the stem cache
    (`stem_outputs` -> `forward_stem`) is what serving computes (`forward`: the late blocks on the K
    saliency frames at full size, on the others at half size). Real weights: on a random stem the late
    maps are ~1e-7 and a swapped frame or map size changes nothing visible."""
    x = _tiger_clip()
    with torch.no_grad():
        cache = shipped.stem_outputs(x)
        teacher_feats = shipped.stem.features(x.transpose(1, 2).flatten(0, 1))  # the whole stem, frame by frame
    served_maps, served = _late_maps_and_output(shipped, lambda: shipped(x))
    cached_maps, cached = _late_maps_and_output(shipped, lambda: shipped.forward_stem(cache))
    # the cache's pooled feature is each frame's own full-size feature (the teacher's), not the half-size one
    assert torch.allclose(cache.pooled_full[0], teacher_feats, atol=1e-4, rtol=1e-4)
    assert torch.equal(served.saliency_indices, cached.saliency_indices)
    keep = served.saliency_indices[0]
    # the same late map reaches the same frame's tokens: K full-size (7x7), then T-K half-size (4x4) maps
    assert [tuple(m.shape) for m in served_maps] == [(1, 4, 7, 7, 320), (1, 4, 4, 4, 320)]
    for s, c in zip(served_maps, cached_maps, strict=True):
        assert s.shape == c.shape and torch.allclose(s, c, atol=1e-4, rtol=1e-4), (s - c).abs().max()
    # and the outputs agree to float32 rounding (a map taken at half size instead of full moves the
    # embedding by ~0.2 and the logits by ~8; frames fed in reverse order move them by only ~1e-5 and
    # ~2e-4, which the maps above show)
    assert (served.embedding - cached.embedding).abs().max() < 2e-5
    assert (served.logits - cached.logits).abs().max() < 1e-3
    # the trained DRCA layers contribute: the output is not the stem's mean over the saliency frames
    stem_only = F.normalize(teacher_feats[keep].mean(0), dim=0)
    assert (served.embedding[0] - stem_only).abs().max() > 1e-2


def test_training_moves_the_drca_layers_and_never_the_stem(tmp_path: Path) -> None:
    """One real step of the trainer's own optimizer (`training.hybrid.start_training`) on its own objective
    (`hybrid_loss`), from the shipped weights, on two real clips and their mirror images as the copies:
    every DRCA tensor moves, no stem tensor does (its ImageNet classifier and batch-norm statistics
    included: the teacher's labels are the stem's)."""
    net = load_checkpoint(SHIPPED_CHECKPOINT).model.train()
    assert isinstance(net, HybridDRCA) and not net.stem.training  # frozen batch-norm statistics
    x = torch.cat([_tiger_clip(), _clip(DATA / "car.mp4")])
    with torch.no_grad():
        anchor, copy = net.stem_outputs(x), net.stem_outputs(x.flip(-1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = HybridTrainConfig()
    optimizer, state = start_training(net, cfg.solver, tmp_path, resume=False)
    assert state.step == 0
    stem_params = {id(p) for p in net.stem.parameters()}
    assert not any(id(p) in stem_params for g in optimizer.param_groups for p in g["params"])
    torch.manual_seed(0)
    loss, _ = hybrid_loss(net, anchor, copy, cfg.loss)
    optimizer.zero_grad()
    loss.backward()
    assert net.dccm.score_net.head[-1].weight.grad.abs().sum() > 0  # the perturbed top-k reaches the ScoreNet
    optimizer.step()
    after = net.state_dict()
    stem = [k for k in before if k.startswith("stem.")]
    assert stem and [k for k in stem if not torch.equal(before[k], after[k])] == []
    drca = [name for name, _ in net.named_parameters() if not name.startswith("stem.")]
    assert [k for k in drca if torch.equal(before[k], after[k])] == []


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


def small(**backbone: object):
    """The shipped preset at 96 px and 4 frames (K=2): the same network, cheap to run."""
    preset = get_preset("drca-lite0-224")
    cfg = replace(preset, input=replace(preset.input, num_frames=4, img_size=96))
    return replace(cfg, backbone=replace(cfg.backbone, num_saliency=2, **backbone))


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


if __name__ == "__main__":
    with torch.no_grad():
        _out = load_checkpoint(SHIPPED_CHECKPOINT).model(_tiger_clip())
    _sha = hashlib.sha256((SHIPPED_CHECKPOINT / "model.safetensors").read_bytes()).hexdigest()
    REFERENCE.write_text(json.dumps({"weights_sha256": _sha, **_record(_out)}) + "\n")
