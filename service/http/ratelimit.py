"""Rate limits: token buckets per API key (or per client address without keys), and per client address
for failed authentication. Over a limit: 429 with `Retry-After`.

The buckets live in this process (`LocalBuckets`, the embedded service) or in Redis (`RedisBuckets`,
the scale-out deployment: every gateway replica shares them). Either way only a hash of the bucket's
key (an API key or an address) is kept.

- `RateLimiter` (settings `rate_limit_per_s`, `rate_limit_burst`; off by default): one token per `/v1`
  call.
- `AuthFailureLimiter` (settings `auth_fail_limit_per_s`, `auth_fail_limit_burst`; on by default): each
  wrong API key takes a token from the sender address's bucket; while that bucket is empty, every `/v1`
  call from the address is 429, whatever key it sends, so keys cannot be guessed at speed.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis

from service.errors import ServiceError

# KEYS[1]: the bucket (HASH tokens, ts). ARGV: rate per second, burst, now (s), cost (0: only look).
# Allowed when at least max(cost, 1) tokens are left; then `cost` are taken. Returns {allowed, wait_ms}.
_TAKE = """
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local need = math.max(cost, 1)
local allowed, wait_ms = 0, 0
if tokens >= need then
  tokens = tokens - cost
  allowed = 1
else
  wait_ms = math.ceil((need - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait_ms}
"""


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"


def _hashed(key: str) -> str:
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
        h, now = _hashed(key), self.clock()
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


class RedisBuckets:
    """Token buckets in Redis under `<prefix>:<name>:`, shared by every gateway replica."""

    def __init__(self, client: redis.Redis, prefix: str, name: str, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.prefix = f"{prefix}:{name}:"
        self._take = client.register_script(_TAKE)

    def take(self, key: str, cost: int = 1) -> float:
        allowed, wait_ms = self._take(keys=[self.prefix + _hashed(key)], args=[self.rate, self.burst, time.time(), cost])
        return 0.0 if allowed else max(int(wait_ms), 1) / 1000


def _retry_after(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}


class RateLimiter:
    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets

    def check(self, client_key: str) -> None:
        """Take one token for `client_key` (an API key or an address)."""
        if wait := self.buckets.take(client_key):
            b = self.buckets
            raise RateLimited(f"rate limit of {b.rate:g} requests/s (burst {b.burst}) exceeded; "
                              f"retry in {math.ceil(wait)} s", headers=_retry_after(wait))


class AuthFailureLimiter:
    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets

    def check(self, address: str) -> None:
        """429 while `address` has used up its failed authentications."""
        if wait := self.buckets.take(address, cost=0):
            raise RateLimited(f"too many wrong API keys from this address; retry in {math.ceil(wait)} s",
                              headers=_retry_after(wait))

    def failed(self, address: str) -> None:
        self.buckets.take(address)
