"""EfficientNet-Lite0 in numbers: its stages, widths, classes and input normalisation, without torch.

The network itself is `model.efficientnet` (torch modules built from these numbers). Presets, config
validation and the command line read them from here, so that describing a `lite0` preset or printing
`drca --help` does not import torch.

Inputs are RGB frames in 0-255 normalised with ``LITE_MEAN`` / ``LITE_STD`` (TF-Lite's (x - 127) / 128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NUM_CLASSES = 1000
FEATURE_DIM = 1280  # the head convolution's output: the pooled feature
STEM_CHANNELS = 32  # the stem convolution's output, the first MBConv block's input
LATE_CHANNELS = 320  # the last MBConv block's output, the head convolution's input
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


@dataclass(frozen=True)
class Stage:
    """``repeats`` MBConv blocks; the first has the stride, all have the kernel, expansion and output width."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


#: EfficientNet-B0's stages (Lite0 has width and depth multipliers 1.0).
STAGES = (
    Stage(1, 3, 1, 1, 16), Stage(2, 3, 2, 6, 24), Stage(2, 5, 2, 6, 40), Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112), Stage(4, 5, 2, 6, 192), Stage(1, 3, 1, 6, LATE_CHANNELS),
)
NUM_BLOCKS = sum(st.repeats for st in STAGES)


def block_channels(split: int) -> int:
    """Channels of ``early(x, split)``'s output (``STEM_CHANNELS`` after the stem convolution alone)."""
    outs = [st.out for st in STAGES for _ in range(st.repeats)]
    if not 0 <= split <= len(outs):
        raise ValueError(f"split={split} is outside [0, {len(outs)}]")
    return STEM_CHANNELS if split == 0 else outs[split - 1]


def block_stride(split: int) -> int:
    """The stride in pixels of ``early(x, split)``'s output (2 after the stem convolution alone)."""
    strides = [st.stride if r == 0 else 1 for st in STAGES for r in range(st.repeats)]
    return 2 * math.prod(strides[:split])
