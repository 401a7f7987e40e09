"""The embedded service: one process with the gateway, the encoder worker, the index and the online
reindex, on the local backend (`drca serve` without Redis)."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import replace

from service.active import Active, read_serving_checkpoint
from service.backends.parts import Part
from service.encoding.encoder import VideoEncoder
from service.encoding.worker import EncoderWorker
from service.metrics import ServiceMetrics
from service.reindex import OnlineReindex
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
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def build_embedded(settings: Settings, metrics: ServiceMetrics | None = None) -> Service:
    """The embedded service: the checkpoint read once (its weights loaded from those bytes), the index
    checked against it, then the model, the HTTP side, the worker and the online reindex."""
    metrics = metrics or ServiceMetrics()
    files = read_serving_checkpoint(settings.checkpoint, weights=True)
    with ExitStack() as stack:
        backend, generation = open_serving(settings, files, stack)
        threads = encoder_threads(settings, leave_a_core=True)
        if threads and not settings.torch_threads:
            import torch

            torch.set_num_threads(threads)
            log.info("encoder: %d torch threads (one core left to the gateway)", threads)
        active = Active(replace(generation, encoder=VideoEncoder(settings, files)))
        front = Front.build(settings, metrics, backend, active)
        stack.pop_all()
    reindex = OnlineReindex(settings, front.catalog, front.broker, active, on_switch=(front.search.reset,))
    worker = EncoderWorker(active, front.broker, front.catalog, settings, metrics, front.queries, reindex)
    return Service(settings=settings, metrics=metrics, active=active, catalog=front.catalog, search=front.search,
                   broker=front.broker, queries=front.queries, thumbnails=front.thumbnails, limits=front.limits,
                   vectors=front.vectors, reindex=reindex, worker=worker, checks=(lambda: worker.alive,),
                   workers_running=lambda: worker.alive,
                   parts=front.parts(Part(worker.start, worker.stop), Part(reindex.resume, reindex.stop)),
                   closers=front.closers())
