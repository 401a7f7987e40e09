"""The encoder's forward pass behind one small interface, run by torch or by OpenVINO.

- `TorchRunner`: the network in torch on the encoder's device. The reference, and the CUDA path.
- `OpenVINORunner`: the network exported by `model.export` and compiled by OpenVINO for the CPU: the
  default on a CPU device, where it needs a fraction of torch eager's CPU time per clip.

`runtime` (setting `DRCA_RUNTIME`, `drca serve --runtime`): `auto` is OpenVINO on a CPU device and torch
on CUDA. `runtime_precision`: OpenVINO's inference precision, `f32` (set explicitly: OpenVINO would pick
bf16 by itself on a CPU that has it) or, opt-in, `bf16` where the CPU has the instructions.

The compiled model is cached under `runtime_cache_path` (default `data_dir/cache/openvino`), one folder
per checkpoint weights' sha256, graph (config and network code) and OpenVINO version: the exported model
(`model.xml`/`.bin`, written once, atomically) and, per precision, OpenVINO's compiled blob
(`compiled-f32/`, `compiled-bf16/`: its `CACHE_DIR`). The first start exports and compiles (seconds);
later starts load the compiled blob from disk.

Threads: OpenVINO's compiled model runs `INFERENCE_NUM_THREADS` threads (`runtime_threads`): by default every
core the process may run on, because one clip's forward pass then takes about half the wall time on 2 cores
for ~5 % more CPU (`benchmarks/results/encoder-runtime-2threads.json`), and a query's clips are what a user
waits for. They run at the worker's lower priority (`worker_nice`), so the gateway preempts them. They are
their own pool (torch's stays idle) and are not pinned to cores, because the decoders and the gateway share
those cores.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from model.config import DRCAConfig
from service.priority import at_lower_priority
from service.settings import Settings

log = logging.getLogger(__name__)

RuntimeName = Literal["torch", "openvino"]
Precision = Literal["f32", "bf16"]


@dataclass
class ForwardOutput:
    """One forward pass over N clips, as numpy arrays on the host."""

    embedding: np.ndarray  # (N, E) float32, L2-normalised
    logits: np.ndarray | None  # (N, classes) float32
    saliency_indices: np.ndarray | None  # (N, K) int64: the frames the DCCM kept at full resolution


class Runner(Protocol):
    name: RuntimeName

    @property
    def threads(self) -> int:
        """The threads its forward pass runs on (CPU)."""
        ...

    def __call__(self, clips: torch.Tensor) -> ForwardOutput:
        """clips (N, 3, T, S, S) float32, normalised -> the network's outputs."""
        ...


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.cpu().numpy() if not t.is_floating_point() else t.float().cpu().numpy()


class TorchRunner:
    name: RuntimeName = "torch"

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        self.net, self.device = net, device

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    @torch.inference_mode()
    def __call__(self, clips: torch.Tensor) -> ForwardOutput:
        out = self.net(clips.to(self.device, non_blocking=True))
        return ForwardOutput(_numpy(out.embedding), _numpy(out.logits), _numpy(out.saliency_indices))


class OpenVINORunner:
    """A compiled OpenVINO model with one infer request; calls from several threads take turns."""

    name: RuntimeName = "openvino"

    def __init__(self, compiled) -> None:  # openvino.CompiledModel
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._names = [o.get_any_name() for o in compiled.outputs]

    @property
    def threads(self) -> int:
        return int(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    def __call__(self, clips: torch.Tensor) -> ForwardOutput:
        x = np.ascontiguousarray(clips.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            result = self._request.infer({0: x})  # copies the outputs out of the request
        by_name = {name: result[i] for i, name in enumerate(self._names)}
        return ForwardOutput(by_name["embedding"], by_name.get("logits"), by_name.get("saliency_indices"))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def runtime_threads(settings: Settings, cores: int | None = None) -> int:
    """OpenVINO's inference threads: `runtime_threads`; else `torch_threads` (a user who limited the model's
    threads gets that limit on either runtime); else every usable core."""
    return settings.runtime_threads or settings.torch_threads or cores or usable_cores()


def resolve_runtime(setting: str, device: torch.device) -> RuntimeName:
    """`auto`: OpenVINO on a CPU device, torch on CUDA. OpenVINO runs on the CPU only."""
    if setting == "auto":
        return "torch" if device.type == "cuda" else "openvino"
    if setting == "openvino" and device.type != "cpu":
        raise RuntimeError(f"runtime=openvino runs on the CPU, not on device={device.type}; "
                           "use runtime=torch (or auto) there")
    return setting  # type: ignore[return-value]


def resolve_batch_size(settings: Settings, device: torch.device) -> int:
    """Clips per forward pass on `device`: `batch_size` when set, else the default of the runtime that
    `resolve_runtime` picks (`Settings.batch_size_for`: small for OpenVINO, whose time per clip does not
    fall with the batch; larger for torch)."""
    return settings.batch_size_for(resolve_runtime(settings.runtime, device))


def supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (avx512_bf16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cache_folder(cache_dir: Path, weights_sha256: str, cfg: DRCAConfig) -> Path:
    """The cache folder of one checkpoint's exported model (see the module docstring)."""
    import openvino as ov

    from model.export import graph_fingerprint

    version = ov.__version__.split("-")[0]
    return cache_dir / f"{weights_sha256[:16]}-{graph_fingerprint(cfg)}-ov{version}"


def export_to(folder: Path, net: nn.Module, cfg: DRCAConfig) -> Path:
    """Export the network into `folder/model.xml` (+ `.bin`), atomically: a temp folder renamed into place,
    so a killed start or a second process never leaves half a model there."""
    import openvino as ov

    from model.export import to_openvino

    xml = folder / "model.xml"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        ov.save_model(to_openvino(net, cfg), tmp / "model.xml", compress_to_fp16=False)
        os.replace(tmp, folder)
    except OSError:
        if not xml.is_file():  # not another process's finished export
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml


def compile_openvino(net: nn.Module, cfg: DRCAConfig, weights_sha256: str, cache_dir: Path,
                     precision: Precision = "f32", threads: int = 0):
    """The network compiled for the CPU (an `openvino.CompiledModel`), from the cache when it holds it.
    `threads` 0: OpenVINO's default (every core)."""
    import openvino as ov

    if precision == "bf16" and not supports_bf16():
        raise RuntimeError("runtime_precision=bf16 needs a CPU with bf16 instructions (avx512_bf16 or AMX); "
                           "this one has none: use runtime_precision=f32")
    folder = cache_folder(cache_dir, weights_sha256, cfg)
    xml = folder / "model.xml"
    if xml.is_file():
        log.info("OpenVINO: the cached model %s", folder)
    else:
        log.info("OpenVINO: exporting %s into %s (once per checkpoint)", cfg.name, folder)
        export_to(folder, net, cfg)
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
        "CACHE_DIR": str(folder / f"compiled-{precision}"),
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(xml), "CPU", config)


def open_runner(settings: Settings, net: nn.Module, cfg: DRCAConfig, device: torch.device,
                weights_sha256: str) -> Runner:
    """The runner the settings ask for, for the loaded network `net` of the checkpoint whose weights file has
    `weights_sha256` (the cache key). OpenVINO runs `runtime_threads(settings)` threads."""
    runtime = resolve_runtime(settings.runtime, device)
    if runtime == "torch":
        return TorchRunner(net, device)
    threads = runtime_threads(settings)
    # compiled on a thread of the worker's priority: OpenVINO's inference threads, started here, inherit it
    compiled = at_lower_priority(lambda: compile_openvino(net, cfg, weights_sha256, settings.runtime_cache_path,
                                                          settings.runtime_precision, threads), settings.worker_nice)
    log.info("OpenVINO: %s, %s, %d threads", cfg.name, settings.runtime_precision, threads)
    return OpenVINORunner(compiled)
