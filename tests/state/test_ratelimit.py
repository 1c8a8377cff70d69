"""Where rate-limit budgets are counted: in process memory (bounded), and in a real redis-server of the test's own
(never the shared one on 6379), shared by replicas, falling back to memory while Redis is away."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from support import RedisServer

from gateway.config import RateLimit
from gateway.state.gcra import RateVerdict
from gateway.state.ratelimit import LocalRateLimiter, RedisRateLimiter, open_rate_limiter

pytestmark = pytest.mark.anyio
NOW = 1_750_000_000.0
PER_MINUTE_3 = RateLimit(3, 60)


class FakeClock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def limiters(redis_server: RedisServer) -> AsyncIterator[tuple[FakeClock, RedisRateLimiter, RedisRateLimiter]]:
    """Two replicas' limiters on one Redis, on one injected clock."""
    clock = FakeClock()
    first = RedisRateLimiter(redis_server.url, clock=clock, script_clock=clock)
    second = RedisRateLimiter(redis_server.url, clock=clock, script_clock=clock)
    yield clock, first, second
    await first.aclose()
    await second.aclose()


# --- in process memory ----------------------------------------------------------------------------------------


async def test_each_key_has_its_own_budget() -> None:
    limiter = LocalRateLimiter(clock=FakeClock())
    assert [(await limiter.check("r:agent:a", PER_MINUTE_3)).allowed for _ in range(4)] == [True, True, True, False]
    assert (await limiter.check("r:agent:b", PER_MINUTE_3)).allowed
    assert (await limiter.check("other:agent:a", PER_MINUTE_3)).allowed


async def test_idle_budgets_are_forgotten() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    for i in range(100):
        await limiter.check(f"r:ip:10.0.0.{i}", PER_MINUTE_3)
    assert len(limiter) == 100
    clock.now += 21  # one interval: every bucket that took one request is full again
    await limiter.check("r:ip:10.0.1.1", PER_MINUTE_3)
    assert len(limiter) == 1


async def test_memory_stays_bounded_under_a_flood_of_keys() -> None:
    limiter = LocalRateLimiter(clock=FakeClock(), max_keys=50)
    for i in range(1000):
        await limiter.check(f"r:ip:{i}", PER_MINUTE_3)
    assert len(limiter) == 50


def test_without_redis_budgets_are_counted_in_memory() -> None:
    assert isinstance(open_rate_limiter(""), LocalRateLimiter)


# --- in Redis -------------------------------------------------------------------------------------------------

SEQUENCES = [
    (PER_MINUTE_3, [0, 0, 0, 0, 5, 20, 20, 600, 600]),
    (RateLimit(7, 60), [0] * 8 + [8.5, 8.6]),
    (RateLimit(1, 1), [0, 0.5, 1.0, 1.0, 3.0]),
    (RateLimit(5000, 86400), [0] * 5),
]


@pytest.mark.parametrize(("limit", "offsets"), SEQUENCES)
async def test_redis_gives_the_verdicts_of_the_pure_algorithm(
    limiters: tuple[FakeClock, RedisRateLimiter, RedisRateLimiter], limit: RateLimit, offsets: list[float]
) -> None:
    # The Lua script is a twin of gateway.state.gcra.gcra (which LocalRateLimiter runs): same requests, same answers.
    clock, redis_limiter, _ = limiters
    local = LocalRateLimiter(clock=clock)
    for offset in offsets:
        clock.now = NOW + offset
        expected = await local.check("k", limit)
        got = await redis_limiter.check("k", limit)
        assert (got.allowed, got.remaining) == (expected.allowed, expected.remaining)
        assert got.retry_after == pytest.approx(expected.retry_after)
        assert not got.degraded


async def test_replicas_share_one_budget(limiters: tuple[FakeClock, RedisRateLimiter, RedisRateLimiter]) -> None:
    _, first, second = limiters
    budget = RateLimit(4, 60)
    allowed = [(await limiter.check("r:agent:a", budget)).allowed for limiter in (first, second, first, second)]
    assert allowed == [True] * 4
    assert not (await first.check("r:agent:a", budget)).allowed
    assert not (await second.check("r:agent:a", budget)).allowed


async def test_a_budget_is_one_key_that_expires_when_full_again(
    limiters: tuple[FakeClock, RedisRateLimiter, RedisRateLimiter], redis_server: RedisServer
) -> None:
    _, limiter, _ = limiters
    await limiter.check("get-customer:agent:billing-bot", PER_MINUTE_3)
    async with Redis.from_url(redis_server.url) as client:
        assert await client.keys("*") == [b"tollbooth:ratelimit:get-customer:agent:billing-bot"]
        assert 19_000 < await client.pttl("tollbooth:ratelimit:get-customer:agent:billing-bot") <= 20_000


async def test_a_flushed_script_cache_is_refilled(
    limiters: tuple[FakeClock, RedisRateLimiter, RedisRateLimiter], redis_server: RedisServer
) -> None:
    _, limiter, _ = limiters
    assert (await limiter.check("k", PER_MINUTE_3)).allowed
    async with Redis.from_url(redis_server.url) as client:
        await client.script_flush()  # as after a Redis restart or failover: EVALSHA answers NOSCRIPT
    assert await limiter.check("k", PER_MINUTE_3) == RateVerdict(True, 0.0, 1)


async def test_while_redis_is_away_budgets_are_counted_in_memory_and_said_so(
    limiters: tuple[FakeClock, RedisRateLimiter, RedisRateLimiter],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, limiter, _ = limiters
    assert limiter.problem() is None
    redis_server.stop()
    with caplog.at_level(logging.ERROR, "tollbooth.ratelimit"):
        verdicts = [await limiter.check("k", PER_MINUTE_3) for _ in range(4)]
    assert [(v.allowed, v.degraded) for v in verdicts] == [(True, True)] * 3 + [(False, True)]
    assert "unreachable" in (limiter.problem() or "")
    assert len(caplog.records) == 1  # one line per outage, not one per request

    redis_server.start()
    clock.now += 1.5  # past retry_interval: Redis is tried again
    verdict = await limiter.check("other", PER_MINUTE_3)
    assert (verdict.allowed, verdict.degraded) == (True, False)
    assert limiter.problem() is None


async def test_a_hung_redis_does_not_hold_the_request(
    redis_server: RedisServer, limiters: tuple[FakeClock, RedisRateLimiter, RedisRateLimiter]
) -> None:
    _, limiter, _ = limiters
    await limiter.check("k", PER_MINUTE_3)  # connected
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        started = time.monotonic()
        verdict = await limiter.check("k", PER_MINUTE_3)
        assert time.monotonic() - started < 1.5  # the 0.5 s bound, with room for a loaded machine
        assert verdict.degraded and verdict.allowed
        started = time.monotonic()
        await limiter.check("k", PER_MINUTE_3)  # within retry_interval: Redis is not waited on at all
        assert time.monotonic() - started < 0.1
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


async def test_hundreds_of_concurrent_checks_are_not_taken_for_an_outage(redis_server: RedisServer) -> None:
    # More checks at once than redis-py's default pool has connections (100): they share round trips instead.
    limiter = RedisRateLimiter(redis_server.url)
    try:
        verdicts = await asyncio.gather(*(limiter.check(f"k{n % 250}", RateLimit(1, 60)) for n in range(500)))
        assert sum(v.allowed for v in verdicts) == 250
        assert not any(v.degraded for v in verdicts) and limiter.problem() is None
    finally:
        await limiter.aclose()


async def test_replicas_with_skewed_clocks_share_one_budget_on_redis_time(redis_server: RedisServer) -> None:
    # Each replica's own clock is ignored in service: one two minutes ahead neither adds budget nor locks out.
    honest = RedisRateLimiter(redis_server.url)
    skewed = RedisRateLimiter(redis_server.url, clock=lambda: time.time() + 120)
    try:
        verdicts = [await limiter.check("k", RateLimit(10, 60)) for limiter in (honest, skewed) * 10]
        assert sum(v.allowed for v in verdicts) == 10
        refused = await honest.check("k", RateLimit(10, 60))
        assert not refused.allowed and refused.retry_after <= 6.0
    finally:
        await honest.aclose()
        await skewed.aclose()


async def test_a_flood_of_client_addresses_never_evicts_an_agents_spent_budget() -> None:
    limiter = LocalRateLimiter(clock=FakeClock(), max_keys=50)
    assert (await limiter.check("route:agent:bot", RateLimit(1, 60))).allowed
    for n in range(500):
        await limiter.check(f"public:ip:10.0.{n // 256}.{n % 256}", RateLimit(1, 60))
    assert not (await limiter.check("route:agent:bot", RateLimit(1, 60))).allowed
    assert len(limiter) <= 51
