"""Rate-limit token buckets in Redis, shared by every gateway replica (`service.ratelimit` has the
limiters and the in-process buckets)."""

from __future__ import annotations

import time

import redis

from service.backends.buckets import hashed_key

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


class RedisBuckets:
    """Token buckets in Redis under `<prefix>:<name>:`, shared by every gateway replica."""

    def __init__(self, client: redis.Redis, prefix: str, name: str, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.prefix = f"{prefix}:{name}:"
        self._take = client.register_script(_TAKE)

    def take(self, key: str, cost: int = 1) -> float:
        allowed, wait_ms = self._take(keys=[self.prefix + hashed_key(key)],
                                      args=[self.rate, self.burst, time.time(), cost])
        return 0.0 if allowed else max(int(wait_ms), 1) / 1000
