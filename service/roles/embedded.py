"""The embedded service: one process with the gateway, the encoder worker, the index and the online
reindex, on the local backend (`drca serve` without Redis)."""

from __future__ import annotations

import contextlib
import logging
from contextlib import ExitStack
from dataclasses import dataclass, replace

from service.active import Active, read_serving_checkpoint
from service.backends.parts import Part
from service.encoding.encoder import DECODER_THREADS, VideoEncoder
from service.encoding.inference import runtime_threads, usable_cores
from service.encoding.worker import EncoderWorker
from service.metrics import ServiceMetrics
from service.reindex import OnlineReindex, read_online_state
from service.roles.gateway import Front, Service, open_serving
from service.settings import Settings

log = logging.getLogger(__name__)


def encoder_threads(settings: Settings, leave_a_core: bool, cores: int | None = None) -> int:
    """The model's intra-op threads: `torch_threads` when set; else, when the gateway shares the process
    (`leave_a_core`, the embedded service), all cores but one (so the gateway is never starved of CPU by
    the worker); else 0 (torch's default)."""
    if settings.torch_threads:
        return settings.torch_threads
    if not leave_a_core:
        return 0
    return max(1, (cores or usable_cores()) - 1)


@dataclass(frozen=True)
class ThreadSplit:
    """How the embedded service's work shares the cores (docs/api.md#threads). On 2 cores: OpenVINO 2
    threads at the worker's lower priority, torch 1, 2 decode threads of 1 decord thread each, and the
    gateway's request threads, which mostly wait (a query's work runs in the worker; ingest steps wait while
    a query is in flight)."""

    cores: int
    encoder: int  # torch's intra-op pool: the torch runtime's forward pass, and under OpenVINO torch's own ops
    # (preprocessing in the decode threads, the MiniLM text encoder)
    openvino: int  # OpenVINO's INFERENCE_NUM_THREADS (`runtime_threads`)
    decoders: int  # videos decoded at once (`decode_threads`)
    per_decoder: int  # decord's threads per video (`DECODER_THREADS`)
    interop: int  # torch's inter-op pool: the service forks no torch work, so one thread


def thread_split(settings: Settings, cores: int | None = None) -> ThreadSplit:
    """The embedded service's split for `cores` (default: this process's affinity)."""
    cores = cores or usable_cores()
    return ThreadSplit(cores, encoder_threads(settings, leave_a_core=True, cores=cores),
                       runtime_threads(settings, cores), settings.decode_threads, DECODER_THREADS, 1)


def apply_thread_split(split: ThreadSplit, settings: Settings) -> None:
    """Set torch's pools to the split before the encoder is built (OpenVINO's count is the encoder's own,
    `runtime_threads`). A `torch_threads` setting is applied by the encoder itself; the inter-op pool can be set once per process,
    before any inter-op work (a second embedded service in the same process keeps the first's)."""
    import torch

    if not settings.torch_threads:
        torch.set_num_threads(split.encoder)
    if torch.get_num_interop_threads() != split.interop:
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(split.interop)
    log.info("threads on %d cores: torch %d, OpenVINO %d, %d decode threads x %d decord thread, torch inter-op %d",
             split.cores, split.encoder, split.openvino, split.decoders, split.per_decoder,
             torch.get_num_interop_threads())


def build_embedded(settings: Settings, metrics: ServiceMetrics | None = None) -> Service:
    """The embedded service: the checkpoint read once (its weights loaded from those bytes), the index
    checked against it, then the model, the HTTP side, the worker and the online reindex."""
    metrics = metrics or ServiceMetrics()
    saved = read_online_state(settings)  # an online reindex to resume; a damaged file stops the start here
    files = read_serving_checkpoint(settings.checkpoint, weights=True)
    with ExitStack() as stack:
        backend, generation = open_serving(settings, files, stack)
        apply_thread_split(thread_split(settings), settings)
        active = Active(replace(generation, encoder=VideoEncoder(settings, files)))
        front = Front.build(settings, metrics, backend, active)
        stack.pop_all()
    reindex = OnlineReindex(settings, front.catalog, front.broker, active, on_switch=(front.search.reset,),
                            saved=saved)
    worker = EncoderWorker(active, front.broker, front.catalog, settings, metrics, front.queries, reindex)
    return Service(settings=settings, metrics=metrics, active=active, catalog=front.catalog, search=front.search,
                   broker=front.broker, queries=front.queries, thumbnails=front.thumbnails, limits=front.limits,
                   vectors=front.vectors, reindex=reindex, worker=worker, checks=(lambda: worker.alive,),
                   workers_running=lambda: worker.alive,
                   parts=front.parts(Part(worker.start, worker.stop), Part(reindex.resume, reindex.stop)),
                   closers=front.closers())
