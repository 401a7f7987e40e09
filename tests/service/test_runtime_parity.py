"""The OpenVINO runtime against torch (the reference) on the shipped checkpoint and the committed real clips,
decoded through the service's own path; its cache; and `--runtime torch` keeping the torch path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from model import SHIPPED_CHECKPOINT
from model.dccm import hard_split
from service.encoding import inference
from service.encoding.encoder import VideoEncoder
from service.encoding.inference import ForwardOutput, resolve_runtime, supports_bf16
from service.settings import Settings

DATA = Path(__file__).parents[1] / "data"
CLIPS = ("tiger", "car", "capitol", "sailboat")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openvino")


def encoder(tmp: Path, **kw: object) -> VideoEncoder:
    return VideoEncoder(Settings(data_dir=tmp / "data", device="cpu", text_search=False, **kw))


@pytest.fixture(scope="module")
def torch_encoder(tmp_path_factory: pytest.TempPathFactory) -> VideoEncoder:
    tmp = tmp_path_factory.mktemp("torch")
    return encoder(tmp, runtime="torch", runtime_cache_dir=tmp / "openvino")


@pytest.fixture(scope="module")
def ov_encoder(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> VideoEncoder:
    """The default runtime on a CPU device: the first start, into an empty cache."""
    return encoder(tmp_path_factory.mktemp("ov"), runtime_cache_dir=cache_dir)


@pytest.fixture(scope="module")
def clips(torch_encoder: VideoEncoder) -> dict[str, Tensor]:
    """Each clip's segments (one each) as the service decodes them, and all four as one batch."""
    single = {name: torch_encoder.decode(DATA / f"{name}.mp4").clips for name in CLIPS}
    return {**single, "batch": torch.cat(list(single.values()))}


@pytest.fixture(scope="module")
def reference(torch_encoder: VideoEncoder, clips: dict[str, Tensor]) -> dict[str, ForwardOutput]:
    return {name: torch_encoder.runner(x) for name, x in clips.items()}


def top5(logits: np.ndarray) -> list[list[int]]:
    return np.argsort(-logits, axis=1)[:, :5].tolist()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
def test_openvino_f32_matches_torch_on_the_real_clips(ov_encoder: VideoEncoder, clips: dict[str, Tensor],
                                                      reference: dict[str, ForwardOutput]) -> None:
    assert ov_encoder.runner.name == "openvino"  # runtime=auto on a CPU device
    assert ov_encoder.runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    for name, x in clips.items():  # batch 1 per clip, then batch 4
        got, ref = ov_encoder.runner(x), reference[name]
        assert got.embedding.shape == ref.embedding.shape == (len(x), 1280)
        assert cosine(got.embedding, ref.embedding).min() >= 0.99999, name
        np.testing.assert_array_equal(got.saliency_indices, ref.saliency_indices, err_msg=name)
        assert top5(got.logits) == top5(ref.logits), name


@pytest.mark.slow
def test_the_encoder_gives_the_same_structure_on_both_runtimes(ov_encoder: VideoEncoder,
                                                               torch_encoder: VideoEncoder,
                                                               clips: dict[str, Tensor]) -> None:
    """`VideoEncoder.forward`, the service's call: (embeddings, class probabilities), the same on both."""
    emb, probs = ov_encoder.forward(clips["batch"])
    ref_emb, ref_probs = torch_encoder.forward(clips["batch"])
    assert emb.dtype == ref_emb.dtype == np.float32 and probs.dtype == ref_probs.dtype == np.float32
    assert emb.shape == ref_emb.shape and probs.shape == ref_probs.shape == (4, 1000)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    labels = [torch_encoder.class_names[i] for i in probs.argmax(1)]
    assert labels[0] == "tiger" and labels[1] == "sports car", labels


@pytest.mark.slow
@pytest.mark.skipif(not supports_bf16(), reason="this CPU has no bf16 instructions (avx512_bf16 or AMX)")
def test_openvino_bf16_is_close_to_torch(tmp_path: Path, cache_dir: Path, ov_encoder: VideoEncoder,
                                         clips: dict[str, Tensor], reference: dict[str, ForwardOutput]) -> None:
    """bf16 (opt-in) reuses the exported model and compiles its own blob. What it gives on the real clips,
    measured on an AMD EPYC with avx512_bf16 (no AMX): cosine 0.9987-0.9997 to torch, the same frames
    and top-1, and two of the tiger's top-5 labels changed (jaguar and leopard, 2 % each, gave way to
    mask and maraca). That misses the bar set for lower precision (cosine 0.999 and the same top-5), so
    bf16 stays opt-in; this test holds what it does give. (The error comes from the stem's early blocks
    on the full-size frames, where most of the compute is.)"""
    xml = next(cache_dir.glob("*/model.xml"))
    exported = xml.stat().st_mtime_ns
    bf16 = encoder(tmp_path, runtime_cache_dir=cache_dir, runtime_precision="bf16")
    assert bf16.runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    assert xml.stat().st_mtime_ns == exported and (xml.parent / "compiled-bf16").is_dir()
    got, ref = bf16.runner(clips["batch"]), reference["batch"]
    assert cosine(got.embedding, ref.embedding).min() >= 0.998
    np.testing.assert_array_equal(got.saliency_indices, ref.saliency_indices)
    assert got.logits.argmax(1).tolist() == ref.logits.argmax(1).tolist()
    assert all(len(set(a) & set(b)) >= 3 for a, b in zip(top5(got.logits), top5(ref.logits), strict=True))


class _FrameChoice(nn.Module):
    def forward(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        return hard_split(scores, 3)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_the_exported_frame_choice_breaks_ties_as_torch() -> None:
    """Equal scores (a still video) go to the earlier frames, in OpenVINO as in torch's stable argsort."""
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.9, 0.5, 0.5, 0.1, 0.5],
                           [0.2, 0.2, 1.0, 0.7, 0.7, 0.7]])
    compiled = ov.compile_model(ov.convert_model(_FrameChoice(), example_input=(scores,)), "CPU")
    top, rest = compiled(scores.numpy()).values()
    ref_top, ref_rest = hard_split(scores, 3)
    assert top.tolist() == ref_top.tolist() == [[0, 1, 2], [0, 1, 2], [2, 3, 4]]
    assert rest.tolist() == ref_rest.tolist()


@pytest.mark.slow
def test_a_second_start_uses_the_cache(tmp_path: Path, cache_dir: Path, ov_encoder: VideoEncoder,
                                       clips: dict[str, Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = next(cache_dir.glob("*/model.xml")).parent
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "compiled-bf16" not in p.parts)
    assert {"model.xml", "model.bin"} <= {p.name for p in files} and any(p.suffix == ".blob" for p in files)
    before = {p: p.stat().st_mtime_ns for p in files}

    def no_export(*args: object) -> None:
        raise AssertionError("the second start exported the network again")

    monkeypatch.setattr(inference, "export_to", no_export)
    again = encoder(tmp_path, runtime_cache_dir=cache_dir)
    after = sorted(p for p in folder.rglob("*") if p.is_file() and "compiled-bf16" not in p.parts)
    assert after == files and {p: p.stat().st_mtime_ns for p in after} == before
    np.testing.assert_array_equal(again.runner(clips["car"]).embedding, ov_encoder.runner(clips["car"]).embedding)


@pytest.mark.slow
def test_openvino_runs_on_every_usable_core_unless_limited(ov_encoder: VideoEncoder,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO is compiled for `runtime_threads(settings)` threads: every core this process may run on
    (its affinity), whatever torch's own count; `runtime_threads`, else `torch_threads`, limits it."""
    s = ov_encoder.settings
    assert (s.runtime_threads, s.torch_threads) == (0, 0)
    assert ov_encoder.runner.compiled.get_property("INFERENCE_NUM_THREADS") == inference.usable_cores()
    assert ov_encoder.runner.threads == inference.runtime_threads(s)
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: set(range(6)))
    assert inference.runtime_threads(s) == 6
    assert inference.runtime_threads(s.model_copy(update={"torch_threads": 3})) == 3
    assert inference.runtime_threads(s.model_copy(update={"torch_threads": 3, "runtime_threads": 1})) == 1


@pytest.mark.slow
def test_runtime_torch_keeps_the_torch_path(torch_encoder: VideoEncoder,
                                            clips: dict[str, Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(torch_encoder.runner, inference.TorchRunner)
    emb, probs = torch_encoder.forward(clips["tiger"])
    with torch.inference_mode():
        out = torch_encoder.model(clips["tiger"])
    np.testing.assert_array_equal(emb, out.embedding.numpy())
    np.testing.assert_array_equal(probs, torch.softmax(out.logits, dim=-1).numpy())
    assert not torch_encoder.settings.runtime_cache_path.exists()  # nothing exported
    monkeypatch.setenv("DRCA_RUNTIME", "torch")
    assert Settings().runtime == "torch"


def test_drca_serve_runtime_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app
    from service.http import server

    class Built:
        def stop(self) -> None: ...

    served: list[Settings] = []
    monkeypatch.setattr("service.roles.build_server", lambda settings: Built())
    monkeypatch.setattr("service.http.app.create_app", lambda settings, service: settings)
    monkeypatch.setattr(server, "run", lambda app, settings: served.append(settings))
    result = CliRunner().invoke(app, ["serve", "--runtime", "torch", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert served[0].runtime == "torch" and served[0].checkpoint == SHIPPED_CHECKPOINT
    result = CliRunner().invoke(app, ["serve", "--runtime", "tensorrt", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "bad setting runtime" in result.output


@pytest.mark.slow
def test_a_network_that_keeps_every_frame_exports_and_matches_torch(tmp_path: Path, clips: dict[str, Tensor]) -> None:
    """K = T (the uncompressed twin, the baseline of the DCCM's saving) has no compressed branch in its
    graph: it exports through the service's compile path and gives torch's outputs, every frame kept."""
    from model.checkpoint import build_model, load_checkpoint_files, read_checkpoint
    from model.presets import uncompressed

    files = read_checkpoint(SHIPPED_CHECKPOINT)
    cfg = uncompressed(files.config)
    assert cfg.backbone.num_saliency == cfg.input.num_frames == 8
    net = build_model(cfg)
    net.load_state_dict(load_checkpoint_files(files).model.state_dict())
    net.eval()
    compiled = inference.compile_openvino(net, cfg, files.sha256, tmp_path, "f32", torch.get_num_threads())
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    runner, reference = inference.OpenVINORunner(compiled), inference.TorchRunner(net, torch.device("cpu"))
    for name in ("tiger", "batch"):
        got, ref = runner(clips[name]), reference(clips[name])
        assert got.embedding.shape == ref.embedding.shape == (len(clips[name]), 1280)
        assert cosine(got.embedding, ref.embedding).min() >= 0.99999, name
        np.testing.assert_array_equal(got.saliency_indices, np.tile(np.arange(8), (len(clips[name]), 1)))
        np.testing.assert_array_equal(got.saliency_indices, ref.saliency_indices)
        assert top5(got.logits) == top5(ref.logits), name


def test_auto_is_openvino_on_a_cpu_and_torch_on_cuda() -> None:
    assert resolve_runtime("auto", torch.device("cpu")) == "openvino"
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert resolve_runtime("torch", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        resolve_runtime("openvino", torch.device("cuda"))
