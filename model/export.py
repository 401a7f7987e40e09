"""The network as an OpenVINO model, for CPU inference (`service/encoding/inference.py` runs it).

`to_openvino` traces the torch module in eval mode (OpenVINO's PyTorch frontend, no ONNX file) into a
model with a dynamic batch: input ``clips`` (N, 3, T, S, S) float32, outputs ``embedding`` (N, E),
``logits`` (N, classes) and ``saliency_indices`` (N, K) int64, each only where the network has it.

The DCCM's frame choice stays exactly the network's: its stable descending ``argsort`` becomes an
OpenVINO ``TopK`` with ``stable=True`` (ties go to the earlier frame, as in torch), and the gathers of
the K saliency and T-K other frames become ``Gather`` on those indices, so the late stem blocks run on
the same frames as in torch. The spatial size and the clip length are fixed by the config (the trace
specialises the stem's SAME padding to them); only the batch is dynamic.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import openvino as ov
import torch
from torch import Tensor, nn

from model.config import DRCAConfig

#: The outputs of the exported model, in this order, each present when the network has it.
OUTPUTS = ("embedding", "logits", "saliency_indices")

# The modules whose code defines the traced graph: a change to any of them makes a new cache key.
_GRAPH_SOURCES = ("config", "dccm", "drca", "efficientnet", "export", "hybrid", "layers", "reduction")


class _TensorOutputs(nn.Module):
    """The network's forward with a tuple of tensors as output (the tracer takes no dataclass or None)."""

    def __init__(self, net: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.net = net
        self.names = names

    def forward(self, clips: Tensor) -> tuple[Tensor, ...]:
        out = self.net(clips)
        return tuple(getattr(out, name) for name in self.names)


def input_shape(cfg: DRCAConfig, batch: int = -1) -> list[int]:
    """(N, 3, T, S, S); -1: a dynamic batch."""
    return [batch, 3, cfg.input.num_frames, cfg.input.img_size, cfg.input.img_size]


def to_openvino(net: nn.Module, cfg: DRCAConfig) -> ov.Model:
    """Trace `net` (a DRCA or HybridDRCA on the CPU, in eval mode) into an OpenVINO model."""
    if net.training:
        raise ValueError("export the network in eval mode (the training forward is another graph)")
    example = torch.randn(input_shape(cfg, batch=2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(example)
    names = tuple(name for name in OUTPUTS if getattr(out, name) is not None)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every Python int it reads off a shape; those are fixed by the config.
        # torch 2.13 deprecates torch.jit.trace: `torch.export.export` with a dynamic batch dimension
        # converts too (the same outputs), but takes about 5x longer on the first start.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning)
        model = ov.convert_model(_TensorOutputs(net, names), example_input=(example,),
                                 input=[(ov.PartialShape(input_shape(cfg)), ov.Type.f32)])
    model.inputs[0].get_tensor().set_names({"clips"})
    for output, name in zip(model.outputs, names, strict=True):
        output.get_tensor().set_names({name})
    return model


def graph_fingerprint(cfg: DRCAConfig) -> str:
    """A short hash of what shapes the exported graph besides the weights: the config and the code of
    the network's modules (so a code change never reuses a stale compiled model)."""
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    here = Path(__file__).parent
    for name in _GRAPH_SOURCES:
        h.update((here / f"{name}.py").read_bytes())
    return h.hexdigest()[:12]
