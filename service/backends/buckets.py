"""Rate-limit token buckets: the protocol and the in-process buckets (the Redis ones, shared by every
gateway replica, are in redis/buckets.py). Only a hash of a bucket's key (an API key or an address) is
kept. The limiters that use them are in service/ratelimit.py."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


def hashed_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Buckets(Protocol):
    rate: float
    burst: int

    def take(self, key: str, cost: int = 1) -> float:
        """Take `cost` tokens (0: only look) from `key`'s bucket if it holds at least max(cost, 1); 0.0
        when allowed, else the seconds until it would be."""
        ...


class LocalBuckets:
    """Token buckets in this process, thread-safe. At most `max_keys` are kept (least recently used are
    forgotten, which only ever refills a bucket), so a flood of distinct addresses cannot grow memory."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, cost: int = 1) -> float:
        h, now = hashed_key(key), self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(h, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
            need = max(cost, 1)
            wait = 0.0
            if tokens >= need:
                tokens -= cost
            else:
                wait = (need - tokens) / self.rate
            self._buckets[h] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait
