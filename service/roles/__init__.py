"""The roles a process runs, each assembled by one builder from the same parts (service/backends/):

- `build_embedded` (embedded.py): gateway, encoder worker, index and online reindex in one process;
- `build_gateway` (gateway.py): HTTP in front of this replica's view of the index; workers run elsewhere;
- `build_worker` (worker.py): an encoder worker on the shared broker (`drca worker`).

A builder reads the checkpoint once and builds every part before anything starts (`start()` starts the
threads; `stop()` stops them and closes what was opened). `build_server` is what `drca serve` runs.
"""

from __future__ import annotations

from service.backends import backend_class
from service.metrics import ServiceMetrics
from service.roles.embedded import build_embedded
from service.roles.gateway import Service, build_gateway
from service.roles.worker import Worker, build_worker
from service.settings import Settings

__all__ = ["Service", "Worker", "build_embedded", "build_gateway", "build_server", "build_worker"]


def build_server(settings: Settings, metrics: ServiceMetrics | None = None, with_worker: bool = True) -> Service:
    """The embedded service where the backend keeps workers in this process (local), else a gateway
    replica (Redis: the workers are `drca worker` processes); `with_worker=False`: a gateway alone."""
    build = build_embedded if with_worker and backend_class(settings).workers_in_process else build_gateway
    return build(settings, metrics)
