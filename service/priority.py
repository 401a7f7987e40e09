"""Queries before ingest, in one process (the embedded service).

The gateway counts the queries it is serving (`QueriesInFlight.serving`: classify and search, from the
moment their body has been read until their answer is ready). While any is in flight, the embedded
worker holds its ingest work back between steps: no ingest chunk is decoded, no batch of ingest clips
goes to the model and no ingest job is committed, so the query's own work (its decoding, its forward
pass, its index search and scoring in the gateway) has the cores to itself. A query's work inside the
worker still goes first as it always did (`service/encoding/worker.py`).

The hold is bounded so that ingest is never starved: once queries have been in flight without a break for
`ingest_yield_max_s`, ingest work proceeds beside them until the count next drops to zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
