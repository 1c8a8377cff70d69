"""Shared state on Redis Sentinel and Redis Cluster: real sentinels and cluster nodes of the tests' own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis_topologies import RedisCluster, RedisSentinel, redis_cluster, redis_sentinel  # noqa: F401
from support import free_port

from gateway.config import RateLimit
from gateway.principal import Principal
from gateway.redis.slots import key_slot
from gateway.state import RedisState, RefreshGrant, RefreshReused, StateUnavailable, refresh_token_hash
from gateway.state.ratelimit import RedisRateLimiter

pytestmark = pytest.mark.anyio
Until = Callable[..., Awaitable[Any]]  # the `until` fixture of tests/state/conftest.py
States = Callable[..., Awaitable[RedisState]]


def principal(jti: str, agent: str = "billing-bot", subject: str = "user:alice") -> Principal:
    now = time.time()
    return Principal(agent, subject, frozenset(), jti, "https://issuer.test", now + 300, now - 10)


def grant(family: str) -> RefreshGrant:
    now = time.time()
    return RefreshGrant(family, "billing-bot", "user:alice", ("crm.read",), {"sub": "billing-bot"}, now - 1, now + 600)


def hashes(name: str) -> tuple[str, str, str]:
    return refresh_token_hash(f"{name}-0"), refresh_token_hash(f"{name}-1"), refresh_token_hash(f"{name}-2")


@pytest.fixture(params=["sentinel", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    topology: RedisSentinel | RedisCluster = request.getfixturevalue(f"redis_{request.param}")
    return topology.url


@contextlib.asynccontextmanager
async def opened_states(url: str) -> AsyncIterator[States]:
    """Open RedisStates on `url` (started unless told not to); all closed on the way out."""
    opened: list[RedisState] = []

    async def open_state(start: bool = True) -> RedisState:
        state = RedisState(url, reconnect_max=0.2)
        opened.append(state)
        if start:
            await state.start()
        return state

    try:
        yield open_state
    finally:
        for state in opened:
            await state.aclose()


@pytest.fixture
async def states(url: str) -> AsyncIterator[States]:
    async with opened_states(url) as open_state:
        yield open_state


async def test_a_revocation_reaches_every_view_through_pub_sub(states: States, until: Until) -> None:
    first, second = await states(), await states()
    await first.revoke_jti("pubsub-1", time.time() + 60)
    await first.revoke_subject_before("user:carol", time.time())
    await until(lambda: second.revocations.is_revoked(principal("pubsub-1")), "the jti", within=1.0)
    await until(lambda: second.revocations.is_revoked(principal("x", subject="user:carol")), "the sub", within=1.0)
    assert first.problem() is None and second.problem() is None


async def test_a_new_process_loads_the_whole_set(states: States) -> None:
    writer = await states(start=False)
    await writer.revoke_jti("loaded-1", time.time() + 60)
    await writer.revoke_agent_before("loaded-bot", time.time())
    reader = await states()
    assert reader.revocations.is_revoked(principal("loaded-1"))
    assert reader.revocations.is_revoked(principal("y", agent="loaded-bot"))


async def test_rotation_and_reuse_run_their_scripts(states: States, until: Until) -> None:
    issuer, proxy = await states(), await states()
    old, new, replay = hashes(f"rotation-{time.monotonic_ns()}")
    family = grant(f"fam-{time.monotonic_ns()}")
    await issuer.store_refresh(old, family)
    assert await issuer.rotate_refresh(old, new, time.time()) == family
    assert await issuer.record_family_token(family.family, f"{family.family}-at", time.time() + 300)
    with pytest.raises(RefreshReused):
        await issuer.rotate_refresh(old, replay, time.time())
    await until(lambda: proxy.revocations.is_revoked(principal(f"{family.family}-at")), "the family's token revoked")
    assert await issuer.find_refresh(new) is None


async def test_an_assertion_is_used_once(states: States) -> None:
    state = await states(start=False)
    assert await state.use_assertion_jti("keyed-bot", "once", time.time() + 60)
    assert not await state.use_assertion_jti("keyed-bot", "once", time.time() + 60)


async def test_on_cluster_every_state_key_is_in_one_slot(redis_cluster: RedisCluster) -> None:  # noqa: F811
    async with opened_states(redis_cluster.url) as open_state:
        state = await open_state(start=False)
        old, new, _ = hashes("slots")
        await state.store_refresh(old, grant("slots"))
        await state.rotate_refresh(old, new, time.time())
        await state.record_family_token("slots", "slots-at", time.time() + 300)
        await state.revoke_family("slots")
        await state.revoke_agent_before("slots-bot", time.time())
        await state.use_assertion_jti("keyed-bot", "slots", time.time() + 60)
    with redis_cluster.client() as client:
        keys = list(client.scan_iter(match="*tollbooth*", target_nodes=client.ALL_NODES))
        slots = {client.keyslot(key) for key in keys}
    assert {"{tollbooth}:revoked:jtis", "{tollbooth}:revoked:agents", "{tollbooth}:family:slots"} <= set(keys)
    assert slots == {key_slot("{tollbooth}:")}


async def test_after_a_sentinel_failover_writes_and_views_follow_the_new_master(tmp_path: Path, until: Until) -> None:
    with RedisSentinel.start(tmp_path) as topology:
        async with opened_states(topology.url) as open_state:
            writer, reader = await open_state(), await open_state()
            await writer.revoke_jti("before-failover", time.time() + 60)
            await until(lambda: reader.revocations.is_revoked(principal("before-failover")), "the first revocation")
            topology.fail_master()
            deadline = time.monotonic() + 15
            while True:  # StateUnavailable until a new connection asks the sentinel for the new master
                with contextlib.suppress(StateUnavailable):
                    await writer.revoke_jti("after-failover", time.time() + 60)
                    break
                assert time.monotonic() < deadline, "writes never reached the new master"
                await anyio.sleep(0.05)
            await until(lambda: reader.revocations.is_revoked(principal("after-failover")), "pub/sub on the new master")
            await until(lambda: reader.problem() is None, "the reader's view current again")


async def test_an_unreachable_cluster_is_reported_and_writes_fail_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    # Not a RedisError: a Cluster none of whose seed nodes answers raises RedisClusterException.
    async with opened_states(f"redis+cluster://127.0.0.1:{free_port()}") as open_state:
        state = await open_state()
        assert "redis unreachable since" in (state.problem() or "")
        with pytest.raises(StateUnavailable):
            await state.revoke_jti("nowhere", time.time() + 60)
        with pytest.raises(StateUnavailable):
            await state.use_assertion_jti("keyed-bot", "nowhere", time.time() + 60)
    assert not [r for r in caplog.records if r.exc_info], "an outage is not an unexpected failure"


async def test_rate_limits_are_counted_on_every_topology_many_keys_at_once(url: str) -> None:
    # Concurrent checks go to Redis as one pipeline: on Cluster their keys fall into many slots and nodes.
    limiter = RedisRateLimiter(url)
    try:
        keys = [f"route:agent:bot-{n}" for n in range(200)]
        verdicts = await asyncio.gather(*(limiter.check(key, RateLimit(1, 60)) for key in keys * 2))
        assert [v.allowed for v in verdicts] == [True] * 200 + [False] * 200
        assert not any(v.degraded for v in verdicts) and limiter.problem() is None
    finally:
        await limiter.aclose()
