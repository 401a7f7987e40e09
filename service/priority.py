"""Queries before ingest, in one process (the embedded service).

The gateway counts the queries it is serving (`QueriesInFlight.serving`: classify and search, from the
moment their body has been read until their answer is ready). While any is in flight, the embedded
worker holds its ingest work back between steps: no ingest chunk is decoded, no batch of ingest clips
goes to the model and no ingest job is committed, so the query's own work (its decoding, its forward
pass, its index search and scoring in the gateway) has the cores to itself. A query's work inside the
worker still goes first as it always did (`service/encoding/worker.py`).

The hold is bounded so that ingest is never starved: once queries have been in flight without a break for
`ingest_yield_max_s`, ingest work proceeds beside them until the count next drops to zero.

The worker's threads also run at a lower CPU priority than the gateway's (`worker_nice`, Linux nice:
`lower_thread_priority`), the model's own threads included (`at_lower_priority` around compiling it). A
scheduler priority acts at every instant, where the hold above acts between steps: a search that
arrives while a forward pass or a decode is under way (a reindex's, which is not held back, or an
ingest's already started) takes the core it needs from them instead of sharing it evenly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class QueriesInFlight:
    def __init__(self, max_hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._n = 0
        self._busy_since = 0.0  # when the count last rose from zero (`clock`)
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, wake: Callable[[], None]) -> None:
        """`wake()` is called (with no lock of ours held) whenever the count drops to zero."""
        self._listeners.append(wake)

    @property
    def count(self) -> int:
        return self._n

    def enter(self) -> None:
        with self._lock:
            if self._n == 0:
                self._busy_since = self._clock()
            self._n += 1

    def exit(self) -> None:
        with self._lock:
            self._n -= 1
            idle = self._n == 0
        if idle:
            for wake in self._listeners:
                wake()

    @contextmanager
    def serving(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.exit()

    def hold_s(self) -> float:
        """How much longer ingest work should wait now: 0 when no query is in flight, or when queries have
        been in flight for `max_hold_s` without a break (lock-free: read by the worker under its own lock)."""
        if self._n == 0 or self.max_hold_s <= 0:
            return 0.0
        return max(0.0, self._busy_since + self.max_hold_s - self._clock())


# --- CPU priority of the worker's threads ------------------------------------------------------------

def lower_thread_priority(increment: int) -> None:
    """Lower the calling thread's CPU priority by `increment` (Linux nice; per thread there, and inherited by
    the threads and processes it starts). The embedded worker's threads call it (`Settings.worker_nice`), so
    that on shared cores the gateway's threads (request handling, index search) preempt decoding, forward
    passes and commits instead of queueing behind them. Raising a priority back needs privileges, so this
    is only ever called on threads that stay low. 0, or a platform without per-thread nice: nothing."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as e:  # e.g. a sandbox that forbids it: the service runs, without the preference
        log.warning("cannot lower the worker's thread priority (%s)", e)


def at_lower_priority(fn: Callable[[], T], increment: int) -> T:
    """`fn()` run on a new thread whose priority is lowered by `increment` first, so that the threads `fn`
    starts inherit it (OpenVINO's inference threads, started when the model is compiled)."""
    if increment <= 0:
        return fn()
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        lower_thread_priority(increment)
        try:
            out.append(fn())
        except BaseException as e:  # re-raised on the calling thread
            err.append(e)

    t = threading.Thread(target=run, name="drca-low-priority")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]
