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
import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.config import RateLimit
from gateway.state.gcra import MICROSECONDS, RateVerdict, gcra, interval_us
from gateway.state.redis_state import redis_client

log = logging.getLogger("tollbooth.ratelimit")
CLUSTER_IN_FLIGHT = 32

# gateway.state.gcra.gcra, step for step (its tests run the same requests through both).
# KEYS[1] the budget; ARGV now ("" for Redis's own clock) and the interval in whole microseconds, the limit N.
# Returns {allowed, wait, remaining}. TIME in a script needs effects replication, the default since Redis 5.
_GCRA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
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


def address_key(route: str, address: str) -> str:
    """The budget of a client address on a public route. Made here, beside the check that tells such keys from
    agents' (`route:agent:…`, `route:iss:…`), so the format has one owner. Route names hold no ':' (config)."""
    return f"{route}:ip:{address}"


def budget_address(text: str) -> str | None:
    """The unit an address budget counts: the IP, or for IPv6 its /64, which one host is typically given whole (a
    budget per IPv6 address would be one per attempt); None when `text` is no IP."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _is_address_key(key: str) -> bool:
    return key.partition(":")[2].startswith("ip:")


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
    """Budgets in process memory, at most `max_keys` agents' and `max_keys` client addresses'.

    A budget whose bucket is full again holds nothing worth keeping, and least recently used budgets are met first,
    so each check forgets the idle ones at the front for O(1) amortised. Past `max_keys` (a flood of client
    addresses on a public route) the least recently used is dropped even if not idle: memory stays bounded, and
    that one client gets a fresh budget."""

    store = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time, max_keys: int = 100_000):
        self._clock = clock
        self._max_keys = max_keys
        # Agents' budgets and client addresses' apart: a flood of addresses on a public route (anyone can make
        # one) evicts other addresses, never an agent's spent budget.
        self._agents: OrderedDict[str, int] = OrderedDict()
        self._addresses: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._agents) + len(self._addresses)

    async def check(self, key: str, limit: RateLimit) -> RateVerdict:
        return self.check_now(key, limit)

    def check_now(self, key: str, limit: RateLimit) -> RateVerdict:
        now = int(self._clock() * MICROSECONDS)
        tats = self._addresses if _is_address_key(key) else self._agents
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


@dataclass(slots=True)
class _Pending:
    key: str
    limit: RateLimit
    now_us: int | None  # None: the script reads Redis's clock
    answer: asyncio.Future[tuple[int, int, int] | None]  # None: Redis could not be asked


class RedisRateLimiter:
    """Budgets in Redis, atomic however many replicas count at once.

    The checks of concurrent requests go to Redis together: one pipeline of EVALSHAs per round trip, whatever the
    concurrency, so neither the connection pool nor the event loop pays per request (and a full pool is never taken
    for an outage). Time is Redis's own (TIME in the script): replicas with skewed clocks cannot add to a budget or
    lock an agent out. After a Redis restart or failover (NOSCRIPT) the script is loaded again."""

    store = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tollbooth:",
        clock: Callable[[], float] = time.time,
        script_clock: Callable[[], float] | None = None,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
    ):
        self._redis = redis_client(url)
        self._sha = hashlib.sha1(_GCRA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self._prefix = prefix + "ratelimit:"
        # In service Redis's clock decides (None); tests that compare with the pure algorithm inject one.
        self._script_clock = script_clock
        self._clock = clock
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._fallback = LocalRateLimiter(clock=self._clock)
        self._queue: list[_Pending] = []
        self._loaded = False
        self._sender: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._reason = ""

    async def check(self, key: str, limit: RateLimit) -> RateVerdict:
        if self._down_since is not None and self._clock() < self._retry_at:
            return self._degraded(key, limit)
        loop = asyncio.get_running_loop()
        now_us = None if self._script_clock is None else int(self._script_clock() * MICROSECONDS)
        pending = _Pending(self._prefix + key, limit, now_us, loop.create_future())
        self._queue.append(pending)
        if self._sender is None:
            self._sender = loop.create_task(self._send_all(), name="rate-limit-checks")
        answer = await pending.answer
        if answer is None:
            return self._degraded(key, limit)
        allowed, wait, remaining = answer
        return RateVerdict(bool(allowed), wait / MICROSECONDS, int(remaining))

    async def _send_all(self) -> None:
        """Send what is queued, as one pipeline per round trip, until nothing is."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            # Bounded here, not only by the client's socket timeout: a request must not wait long for its count.
            async with asyncio.timeout(self._timeout):
                answers = await self._evaluate(batch)
        # RedisClusterException: a Cluster none of whose nodes answers (it is no RedisError).
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            self._failed(exc)
            answers = [None] * len(batch)
        else:
            if self._down_since is not None:
                log.info(
                    "rate limits: redis reachable again after %.1f s; budgets shared again",
                    self._clock() - self._down_since,
                )
                self._down_since = None
        for pending, answer in zip(batch, answers, strict=True):
            if not pending.answer.done():  # its request may have gone (client disconnect)
                pending.answer.set_result(answer)

    async def _evaluate(self, batch: list[_Pending]) -> list[tuple[int, int, int] | None]:
        if not self._loaded:
            await self._redis.script_load(_GCRA)  # once up front, rather than a NOSCRIPT for every check of a batch
            self._loaded = True
        for attempt in (1, 2):
            results = await self._run_scripts(batch)
            if attempt == 1 and any(isinstance(result, NoScriptError) for result in results):
                await self._redis.script_load(_GCRA)  # a restarted or failed-over Redis forgot it
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return [tuple(result) for result in results]
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _run_scripts(self, batch: list[_Pending]) -> list[Any]:
        """One EVALSHA per check, errors as results. A pipeline where Redis has one; a Cluster refuses scripts in
        pipelines, so there the calls run side by side, at most CLUSTER_IN_FLIGHT at once (its pool is bounded)."""
        calls = [
            (self._sha, 1, p.key, "" if p.now_us is None else p.now_us, interval_us(p.limit), p.limit.limit)
            for p in batch
        ]
        if not isinstance(self._redis, AsyncRedisCluster):
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(*call)
            return list(await pipe.execute(raise_on_error=False))
        results: list[Any] = []
        for start in range(0, len(calls), CLUSTER_IN_FLIGHT):
            chunk = calls[start : start + CLUSTER_IN_FLIGHT]
            results += await asyncio.gather(*(self._redis.evalsha(*call) for call in chunk), return_exceptions=True)
        return results

    def problem(self) -> str | None:
        if self._down_since is None:
            return None
        since = datetime.fromtimestamp(self._down_since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"redis unreachable since {since} ({self._reason}); rate limits counted per process"

    async def aclose(self) -> None:
        if self._sender is not None:
            await self._sender
        await self._redis.aclose()

    def _degraded(self, key: str, limit: RateLimit) -> RateVerdict:
        verdict = self._fallback.check_now(key, limit)
        return RateVerdict(verdict.allowed, verdict.retry_after, verdict.remaining, degraded=True)

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
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
