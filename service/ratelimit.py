"""Per-key rate limiting in Redis (scale-out deployment): a token bucket per API key, or per client
address without keys, shared by every gateway replica. Over the limit: 429 with `Retry-After`."""

from __future__ import annotations

import hashlib
import math
import time

import redis

from service.errors import ServiceError
from service.settings import Settings

# KEYS[1]: the bucket (HASH tokens, ts). ARGV: rate per second, burst, now (s). Returns {allowed, wait_ms}.
_TAKE = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, wait_ms = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait_ms}
"""


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"


class RateLimiter:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.rate = settings.rate_limit_per_s
        self.burst = settings.rate_limit_burst
        self.prefix = f"{settings.redis_prefix}:ratelimit:"
        self._take = client.register_script(_TAKE)

    def check(self, client_key: str) -> None:
        """Take one token for `client_key` (an API key or an address; only its hash is stored)."""
        bucket = self.prefix + hashlib.sha256(client_key.encode()).hexdigest()[:32]
        allowed, wait_ms = self._take(keys=[bucket], args=[self.rate, self.burst, time.time()])
        if not allowed:
            retry = max(1, math.ceil(int(wait_ms) / 1000))
            raise RateLimited(f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; "
                              f"retry in {retry} s", headers={"Retry-After": str(retry)})
