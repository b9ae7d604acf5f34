"""Per-client rate limiting: a token bucket per caller, in-process or shared through Redis.

The caller is the credential (`key:<id>` for an API key, `jwt:<sub>` for a token) and,
for anonymous requests, the client address (`ip:<host>`; X-Forwarded-For is trusted from
loopback only, so behind a proxy on another host set FORWARDED_ALLOW_IPS to its address,
which uvicorn and gunicorn both read, for that to be the real client). Each has its own
bucket, so one noisy key cannot spend another's budget. The rate is the key's own
(`keys create --rate 10/s`) or else the server's `rate_limit`.

Why a token bucket: it allows a burst up to the bucket's size and then a smooth rate, and
the wait it reports is exact, so `Retry-After` tells a client the true time to its next
token. A fixed window (INCR + EXPIRE) is simpler but lets a client send twice the limit
across a window edge and can only say "wait until the window ends".

In-process buckets are exact for one worker; with several workers or replicas give
`redis_url`, and one Lua script per request reads, refills and takes from the shared
bucket atomically (a hash per caller, on Redis's own clock, so replicas with skewed clocks
agree and two replicas never both spend the last token). If Redis cannot be reached the
limiter falls back to the in-process bucket and says so in the log: a Redis outage degrades
the limit's precision, never the availability of predictions.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from visiondeck.serve.settings import RateLimit

__all__ = ["LocalBuckets", "RateLimiter", "RedisBuckets"]

log = logging.getLogger("visiondeck.serve")

_LUA = """
local now_pair = redis.call('TIME')
local now = tonumber(now_pair[1]) + tonumber(now_pair[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class LocalBuckets:
    """Token buckets in this process, at most `max_clients` remembered (LRU)."""

    def __init__(self, limit: RateLimit | None = None, max_clients: int = 100_000) -> None:
        self.limit = limit
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, cost: float = 1.0, limit: RateLimit | None = None
             ) -> tuple[bool, float]:
        """(allowed, seconds until it would be); `limit` overrides the default shape."""
        shape = limit or self.limit
        if shape is None:
            return True, 0.0
        rate, burst = shape.per_second, float(shape.burst)
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.pop(client, (burst, now))
            tokens = min(burst, tokens + (now - stamp) * rate)
            if tokens >= cost:
                allowed, wait, tokens = True, 0.0, tokens - cost
            else:
                allowed, wait = False, (cost - tokens) / rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return allowed, wait


class RedisBuckets:
    """The same bucket, kept in Redis under `prefix + client`."""

    def __init__(self, limit: RateLimit | None, url: str,
                 prefix: str = "visiondeck:rate:") -> None:
        import redis.asyncio as aioredis

        self.limit = limit
        self.prefix = prefix
        self.client: Any = aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self.client.register_script(_LUA)

    async def take(self, client: str, cost: float = 1.0, limit: RateLimit | None = None
                   ) -> tuple[bool, float]:
        shape = limit or self.limit
        if shape is None:
            return True, 0.0
        allowed, wait = await self._script(keys=[self.prefix + client],
                                           args=[shape.per_second, shape.burst, cost])
        return bool(int(allowed)), float(wait)

    async def close(self) -> None:
        await self.client.aclose()


class RateLimiter:
    """`check(client, cost, limit)` → (allowed, retry_after); Redis first when configured.

    `limit` is the server's default (None: only keys with their own rate are limited);
    `prefix` namespaces the Redis keys, so deployments can share one Redis.
    """

    def __init__(self, limit: RateLimit | None, redis_url: str | None = None, *,
                 prefix: str = "visiondeck:rate:") -> None:
        self.limit = limit
        self.local = LocalBuckets(limit)
        self.redis = RedisBuckets(limit, redis_url, prefix) if redis_url else None
        self._redis_down_since: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether callers without a rate of their own are limited."""
        return self.limit is not None

    @property
    def backend(self) -> str:
        """Where the buckets live: "redis" (shared by replicas) or "memory" (this process)."""
        return "redis" if self.redis is not None else "memory"

    async def check(self, client: str, cost: float = 1.0, limit: RateLimit | None = None
                    ) -> tuple[bool, float]:
        """Take `cost` tokens from `client`'s bucket, shaped by `limit` (the caller's own
        rate) or the server's default; (True, 0) when neither limits it."""
        shape = limit or self.limit
        if shape is None:
            return True, 0.0
        if self.redis is not None and self._redis_usable():
            try:
                result = await self.redis.take(client, cost, shape)
                self._redis_down_since = None
                return result
            except Exception as exc:
                if self._redis_down_since is None:
                    log.warning("rate limiter: Redis unavailable (%s); limiting per process", exc)
                self._redis_down_since = time.monotonic()
        return self.local.take(client, cost, shape)

    def _redis_usable(self) -> bool:
        # after a failure, try Redis again every 5 s rather than on every request
        return self._redis_down_since is None or time.monotonic() - self._redis_down_since > 5

    async def close(self) -> None:
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.close()
