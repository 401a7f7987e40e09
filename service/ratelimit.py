"""Rate limits: token buckets per API key (or per client address without keys), and per client address
for failed authentication. Over a limit: 429 with `Retry-After`.

The buckets (service/backends/buckets.py) live in this process (`LocalBuckets`, the embedded service) or
in Redis (`RedisBuckets`, the scale-out deployment: every gateway replica shares them); the backend
bundle gives them (`Backend.buckets`). Either way only a hash of the bucket's
key (an API key or an address) is kept.

- `RateLimiter` (settings `rate_limit_per_s`, `rate_limit_burst`; off by default): one token per `/v1`
  call.
- `AuthFailureLimiter` (settings `auth_fail_limit_per_s`, `auth_fail_limit_burst`; on by default): each
  wrong API key takes a token from the sender address's bucket; while that bucket is empty, every `/v1`
  call from the address is 429, whatever key it sends, so keys cannot be guessed at speed.
- `Limits.admin` (settings `admin_rate_limit_per_s`, `admin_rate_limit_burst`; on whenever admin keys
  are): a `RateLimiter` of its own for `POST /v1/admin/reindex`, per admin key, so that no admin client
  can have the server check (read, hash) checkpoints at speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from service.backends.buckets import Buckets
from service.errors import ServiceError
from service.settings import Settings


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"


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


@dataclass(frozen=True)
class Limits:
    """A gateway's request limits, each None when off in the settings."""

    rate: RateLimiter | None
    auth: AuthFailureLimiter | None
    admin: RateLimiter | None = None

    @classmethod
    def of(cls, settings: Settings, buckets: Callable[[str, float, int], Buckets]) -> Limits:
        """The limits the settings ask for, on buckets from the backend (`buckets(name, rate, burst)`)."""
        s = settings
        rate = RateLimiter(buckets("ratelimit", s.rate_limit_per_s, s.rate_limit_burst)) \
            if s.rate_limit_per_s > 0 else None
        auth = AuthFailureLimiter(buckets("authfail", s.auth_fail_limit_per_s, s.auth_fail_limit_burst)) \
            if (s.api_keys or s.admin_keys) and s.auth_fail_limit_per_s > 0 else None
        admin = RateLimiter(buckets("adminlimit", s.admin_rate_limit_per_s, s.admin_rate_limit_burst)) \
            if s.admin_keys and s.admin_rate_limit_per_s > 0 else None
        return cls(rate, auth, admin)
