"""Where rate-limit budgets are counted: in Redis, shared by every replica, or in this process's memory.

`open_rate_limiter` gives `RedisRateLimiter` when `redis.url` is set and `LocalRateLimiter` otherwise. Both answer
`check(key, limit)` with a `RateVerdict` (gateway.state.gcra decides; this module only stores).

Without Redis every process counts on its own: with `--workers N` an agent's budget is N times the configured one,
one per worker. Configure `redis.url` for one budget across workers and replicas.

While Redis is unreachable the Redis limiter counts in this process's memory instead (`degraded` verdicts), says so
once in the log, in `problem()` (/readyz) and in `tollbooth_rate_limit_decisions_total{store="memory"}`, and tries
Redis again after `retry_interval`; the proxy refuses instead (503) when `audit.on_failure` is `deny`. A Redis call
never holds a request longer than `timeout`.

Redis key: `<prefix>ratelimit:<route>:agent:<client_id>` (or `:ip:<address>`), a string holding the TAT in
microseconds, expiring when the bucket is full again: idle agents cost nothing. The script touches only the key it
declares, so on Redis Cluster it needs no hash tag and budgets spread over every slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from redis.exceptions import RedisClusterException, RedisError

from gateway.config import RateLimit
from gateway.state.gcra import MICROSECONDS, RateVerdict, gcra, interval_us
from gateway.state.redis_state import redis_client

log = logging.getLogger("tollbooth.ratelimit")

# gateway.state.gcra.gcra, step for step (its tests run the same requests through both).
# KEYS[1] the budget; ARGV now and the interval in whole microseconds, the limit N. Returns {allowed, wait, remaining}.
_GCRA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3]) * interval
local ahead = 0
local stored = redis.call('GET', KEYS[1])
if stored then ahead = math.min(math.max(tonumber(stored) - now, 0), burst) end
local wait = ahead - (burst - interval)
if wait > 0 then return {0, wait, 0} end
local tat = now + ahead + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
return {1, 0, math.floor((burst - ahead - interval) / interval)}
"""


class RateLimiter(Protocol):
    store: str  # for the metric: where budgets are counted while all is well ("redis", "memory")

    async def check(self, key: str, limit: RateLimit) -> RateVerdict:
        """Count one request against `key`'s budget under `limit`."""
        ...

    def problem(self) -> str | None:
        """None while budgets are counted where they should be; else why not, for /readyz."""
        ...

    async def aclose(self) -> None: ...


class LocalRateLimiter:
    """Budgets in process memory, at most `max_keys` of them.

    A budget whose bucket is full again holds nothing worth keeping, and least recently used budgets are met first,
    so each check forgets the idle ones at the front for O(1) amortised. Past `max_keys` (a flood of client
    addresses on a public route) the least recently used is dropped even if not idle: memory stays bounded, and
    that one client gets a fresh budget."""

    store = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time, max_keys: int = 100_000):
        self._clock = clock
        self._max_keys = max_keys
        self._tats: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    async def check(self, key: str, limit: RateLimit) -> RateVerdict:
        return self.check_now(key, limit)

    def check_now(self, key: str, limit: RateLimit) -> RateVerdict:
        now = int(self._clock() * MICROSECONDS)
        tats = self._tats
        verdict, new_tat = gcra(tats.get(key), now, limit)
        if new_tat is not None:
            tats[key] = new_tat
            tats.move_to_end(key)
        while tats:
            oldest, tat = next(iter(tats.items()))
            if tat > now and len(tats) <= self._max_keys:
                break
            del tats[oldest]
        return verdict

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


class RedisRateLimiter:
    """Budgets in Redis: one EVALSHA per rate-limited request (redis-py's Script sends the script itself on
    NOSCRIPT, after a Redis restart or failover), atomic however many replicas count at once."""

    store = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tollbooth:",
        clock: Callable[[], float] = time.time,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
    ):
        self._redis = redis_client(url)
        self._script = self._redis.register_script(_GCRA)
        self._prefix = prefix + "ratelimit:"
        self._clock = clock
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._fallback = LocalRateLimiter(clock=clock)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._reason = ""

    async def check(self, key: str, limit: RateLimit) -> RateVerdict:
        now = self._clock()
        if self._down_since is not None and now < self._retry_at:
            return self._degraded(key, limit)
        try:
            # Bounded here, not only by the client's socket timeout: a request must not wait long for its count.
            async with asyncio.timeout(self._timeout):
                allowed, wait, remaining = await self._script(
                    keys=[self._prefix + key],
                    args=[int(now * MICROSECONDS), interval_us(limit), limit.limit],
                )
        # RedisClusterException: a Cluster none of whose nodes answers (it is no RedisError).
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            self._failed(exc, now)
            return self._degraded(key, limit)
        if self._down_since is not None:
            log.info("rate limits: redis reachable again after %.1f s; budgets shared again", now - self._down_since)
            self._down_since = None
        return RateVerdict(bool(allowed), wait / MICROSECONDS, int(remaining))

    def problem(self) -> str | None:
        if self._down_since is None:
            return None
        since = datetime.fromtimestamp(self._down_since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"redis unreachable since {since} ({self._reason}); rate limits counted per process"

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _degraded(self, key: str, limit: RateLimit) -> RateVerdict:
        verdict = self._fallback.check_now(key, limit)
        return RateVerdict(verdict.allowed, verdict.retry_after, verdict.remaining, degraded=True)

    def _failed(self, exc: BaseException, now: float) -> None:
        self._retry_at = now + self._retry_interval  # until then, requests do not wait on a Redis that is away
        if self._down_since is not None:
            return  # one log line per outage, not one per request
        self._down_since = now
        self._reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.error(
            "rate limits: redis unreachable (%s); each process counts budgets on its own until it returns "
            "(with audit.on_failure: deny, rate-limited routes answer 503 instead)",
            self._reason,
        )


def open_rate_limiter(redis_url: str, *, prefix: str = "tollbooth:") -> RateLimiter:
    """`RedisRateLimiter` when `redis_url` is set, else `LocalRateLimiter`. Connects on first use."""
    if redis_url:
        return RedisRateLimiter(redis_url, prefix=prefix)
    return LocalRateLimiter()
