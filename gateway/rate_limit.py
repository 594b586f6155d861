"""Per-client rate limits: a token bucket per client, in this process or shared through Redis.

A client may send ``burst`` requests at once and ``rate`` per second sustained. ``take`` spends a
token and answers 0, or answers how many seconds until the next token (``Retry-After``). In
memory each worker keeps its own buckets, so N workers allow N times the rate; several workers or
replicas share one bucket per client through Redis (``[limits] rate_store = "redis://..."``), where
the bucket is one hash updated by a Lua script, atomically, with Redis's own clock.

When Redis cannot be reached the limiter fails open to a bucket in memory, says so in the log, and
asks Redis again every ``RETRY_SECONDS``:
the limit protects the gateway's capacity, and refusing every department's requests because a
cache is down would turn a safeguard into an outage. /readyz reports it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MemoryRateLimiter", "RateLimiter", "RedisRateLimiter", "open_rate_limiter"]

log = logging.getLogger("hutong.limits")

RETRY_SECONDS = 5.0  # how long a failed Redis is left alone before it is asked again
FULL_WAIT = 60.0  # what a fail-closed store, full of unrefilled buckets, tells a new key to wait


class RateLimiter(Protocol):
    async def take(self, client_id: str, rate: float, burst: int) -> float:
        """Spend one token of ``client_id``'s bucket: 0.0 if there was one, else seconds to wait."""
        ...

    def status(self) -> dict[str, str]: ...

    async def close(self) -> None: ...


@dataclass
class _Bucket:
    tokens: float
    at: float
    rate: float = 0.0  # its own refill rate and size: buckets of different limits share one store
    burst: int = 0


def _refilled(b: _Bucket, now: float, rate: float, burst: int) -> float:
    return min(float(burst), b.tokens + (now - b.at) * rate)


def _wait(tokens: float, rate: float) -> float:
    """Seconds until ``tokens`` (below one) grows to one."""
    return (1.0 - tokens) / rate if rate > 0 else math.inf


class MemoryRateLimiter:
    """Buckets in this process, bounded: when ``max_clients`` are held, buckets that have refilled
    (each by its own rate) are dropped, the longest unused first. If none has, a limiter that must
    fail open (the request rate) drops the longest unused anyway; one that must fail closed (verify
    budgets: a dropped bucket would be a budget renewed) refuses the new key until one refills."""

    def __init__(self, clock: object = time.monotonic, max_clients: int = 100_000, *,
                 fail_closed: bool = False) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first
        self._max = max_clients
        self.fail_closed = fail_closed
        self._scan_after = 0.0  # a full store is scanned at most once a second

    async def take(self, client_id: str, rate: float, burst: int) -> float:
        return self.take_now(client_id, rate, burst)

    def take_now(self, client_id: str, rate: float, burst: int) -> float:
        now = self._clock()  # type: ignore[operator]
        b = self._buckets.get(client_id)
        if b is None:
            if len(self._buckets) >= self._max and not self._make_room(now):
                return FULL_WAIT
            b = self._buckets[client_id] = _Bucket(float(burst), now, rate, burst)
        else:
            self._buckets.move_to_end(client_id)
            b.tokens, b.at, b.rate, b.burst = _refilled(b, now, rate, burst), now, rate, burst
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return _wait(b.tokens, rate)

    def wait_now(self, key: str, rate: float, burst: int) -> float:
        """Seconds until ``key`` has a token, without spending one (0.0: it has one now)."""
        b = self._buckets.get(key)
        if b is None:
            return 0.0
        tokens = _refilled(b, self._clock(), rate, burst)  # type: ignore[operator]
        return 0.0 if tokens >= 1.0 else _wait(tokens, rate)

    def _make_room(self, now: float) -> bool:
        """Drop refilled buckets (by their own rates); whether there is room for one more."""
        if now >= self._scan_after:
            self._scan_after = now + 1.0
            for cid in [c for c, b in self._buckets.items() if _refilled(b, now, b.rate, b.burst) >= b.burst]:
                del self._buckets[cid]
        if len(self._buckets) < self._max:
            return True
        if self.fail_closed:
            log.error("verify budgets: %d buckets held and none refilled: new claims refused for now", self._max)
            return False
        self._buckets.popitem(last=False)  # the longest unused: a request rate fails open
        return True

    def status(self) -> dict[str, str]:
        return {"store": "memory", "status": "ok"}

    async def close(self) -> None:
        pass


# KEYS[1]: the bucket; ARGV: rate per second, burst. Redis's clock (TIME), so that replicas whose
# clocks differ still share one bucket. Returns seconds to wait (0 when a token was taken), as text.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)  -- a clock stepping back adds nothing
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisRateLimiter:
    """One bucket per client in Redis, shared by every worker and replica using the same URL."""

    def __init__(self, url: str, *, prefix: str = "hutong:rate:", timeout: float = 0.5,
                 fail_closed: bool = False) -> None:
        import redis.asyncio as redis

        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self.client.register_script(_LUA)
        self.fallback = MemoryRateLimiter(fail_closed=fail_closed)
        self.degraded = False
        self._retry_at = 0.0
        self.attempts = 0  # calls that went to Redis

    async def take(self, client_id: str, rate: float, burst: int) -> float:
        if self.degraded and time.monotonic() < self._retry_at:
            # Not asked again for a while: a Redis that hangs would otherwise add its timeout to every request.
            return self.fallback.take_now(client_id, rate, burst)
        self.attempts += 1
        try:
            wait = float(await self._script(keys=[self.prefix + client_id], args=[rate, burst]))
        except Exception as exc:  # Redis away: fail open to this process's own buckets, loudly
            if not self.degraded:
                log.error("rate limit store unreachable (%s): limiting per worker until it returns",
                          type(exc).__name__)
            self.degraded = True
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return self.fallback.take_now(client_id, rate, burst)
        if self.degraded:
            log.warning("rate limit store reachable again: limits are shared again")
            self.degraded = False
        return wait

    def status(self) -> dict[str, str]:
        return {"store": "redis", "status": "degraded" if self.degraded else "ok"}

    async def close(self) -> None:
        await self.client.aclose()


def open_rate_limiter(store: str, *, prefix: str = "hutong:rate:", fail_closed: bool = False) -> RateLimiter:
    if store == "memory":
        return MemoryRateLimiter(fail_closed=fail_closed)
    return RedisRateLimiter(store, prefix=prefix, fail_closed=fail_closed)
