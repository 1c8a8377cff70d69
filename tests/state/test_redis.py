"""Shared state in Redis, against real redis-servers of the tests' own (never the shared one on 6379)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from support import RedisServer, free_port

from gateway.principal import Principal
from gateway.state import RedisState, RefreshGrant, RefreshReused, StateUnavailable, refresh_token_hash

pytestmark = pytest.mark.anyio
Until = Callable[..., Awaitable[Any]]  # the `until` fixture of tests/state/conftest.py


def principal(jti: str = "j1", agent: str = "billing-bot", subject: str = "user:alice") -> Principal:
    now = time.time()
    return Principal(agent, subject, frozenset(), jti, "https://issuer.test", now + 300, now - 10)


def grant(family: str = "f1", ttl: float = 3600) -> RefreshGrant:
    now = time.time()
    return RefreshGrant(family, "billing-bot", "user:alice", ("crm.read",), {"sub": "billing-bot"}, now - 1, now + ttl)


H0, H1, H2 = (refresh_token_hash(f"t{i}") for i in range(3))


class Partition:
    """A TCP relay in front of a redis-server that the test can cut (every connection dropped, new ones refused)
    and heal, to lose pub/sub messages on purpose."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def sever(self) -> None:
        self.cut = True
        for writer in self._writers:
            writer.close()

    async def aclose(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.cut:
            client_writer.close()
            return
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {client_writer, server_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


@pytest.fixture
async def states(redis_server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[RedisState]]]:
    """Started RedisStates on the test's server (or another URL), closed after the test."""
    opened: list[RedisState] = []

    async def open_state(url: str = redis_server.url, start: bool = True, **kwargs: Any) -> RedisState:
        state = RedisState(url, reconnect_max=0.2, **kwargs)
        opened.append(state)
        if start:
            await state.start()
        return state

    yield open_state
    for state in opened:
        await state.aclose()


async def test_a_revocation_anywhere_reaches_every_view_within_a_second(states: Any, until: Until) -> None:
    first, second = await states(), await states()
    await first.revoke_jti("j1", time.time() + 60)
    await first.revoke_agent_before("other-bot", time.time())
    await first.revoke_subject_before("user:carol", time.time())
    assert first.revocations.is_revoked(principal("j1"))  # the writer's own view: at once
    await until(lambda: second.revocations.is_revoked(principal("j1")), "the jti", within=1.0)
    await until(lambda: second.revocations.is_revoked(principal("j2", agent="other-bot")), "the agent", within=1.0)
    await until(lambda: second.revocations.is_revoked(principal("j3", subject="user:carol")), "the sub", within=1.0)
    assert not second.revocations.is_revoked(principal("j4"))
    assert first.problem() is None and second.problem() is None


async def test_a_new_process_loads_the_whole_set(states: Any) -> None:
    writer = await states(start=False)  # `tollbooth revoke`: writes need no start()
    await writer.revoke_jti("j1", time.time() + 60)
    await writer.revoke_agent_before("billing-bot", time.time() - 100)
    await writer.revoke_agent_before("billing-bot", time.time() - 200)  # cut-offs only move forward
    reader = await states()
    assert reader.revocations.is_revoked(principal("j1"))
    assert reader.revocations.is_cut_off("billing-bot", "user:alice", time.time() - 101)


async def test_messages_missed_while_cut_off_are_reloaded(redis_server: RedisServer, states: Any, until: Until) -> None:
    partition = Partition(redis_server.port)
    try:
        behind = await states(await partition.start())
        writer = await states()
        partition.sever()
        await until(lambda: behind.problem(), "the lost subscription to be noticed")
        await writer.revoke_jti("missed", time.time() + 60)  # published while `behind` was not listening
        assert not behind.revocations.is_revoked(principal("missed"))
        partition.cut = False
        await until(lambda: behind.revocations.is_revoked(principal("missed")), "the reload after reconnecting")
        assert behind.problem() is None
    finally:
        await partition.aclose()


async def test_while_redis_is_down_views_hold_and_writes_fail(
    redis_server: RedisServer, states: Any, until: Until, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = await states(), await states()
    await first.revoke_jti("before-outage", time.time() + 60)
    await until(lambda: second.revocations.is_revoked(principal("before-outage")), "the first revocation")
    redis_server.stop()
    problem = await until(lambda: second.problem(), "the outage to be noticed")
    assert "redis unreachable since" in problem and "revocations as of" in problem
    assert REGISTRY.get_sample_value("tollbooth_state_up", {"backend": "redis"}) == 0
    assert second.revocations.is_revoked(principal("before-outage"))  # the last known set still answers
    with pytest.raises(StateUnavailable):
        await first.revoke_jti("during-outage", time.time() + 60)
    with pytest.raises(StateUnavailable):
        await first.use_assertion_jti("bot", "j1", time.time() + 60)
    with pytest.raises(StateUnavailable):
        await first.rotate_refresh(H0, H1, time.time())
    assert not first.revocations.is_revoked(principal("during-outage"))  # a failed write changed nothing

    redis_server.start()  # a fresh, empty server on the same port
    await until(lambda: first.problem() is None and second.problem() is None, "both to reconnect")
    await first.revoke_jti("after-outage", time.time() + 60)
    await until(lambda: second.revocations.is_revoked(principal("after-outage")), "a revocation after reconnecting")
    assert REGISTRY.get_sample_value("tollbooth_state_up", {"backend": "redis"}) == 1
    outages = [r for r in caplog.records if "unreachable (" in r.getMessage()]
    assert len(outages) == 2  # once per process and outage, not once per reconnection attempt


async def test_starting_without_redis_serves_and_reports_then_recovers(
    tmp_path: Any, states: Any, until: Until
) -> None:
    port = free_port()
    state = await states(f"redis://127.0.0.1:{port}/0")
    problem = state.problem()
    assert problem is not None and "no revocations loaded yet" in problem
    assert not state.revocations.is_revoked(principal())
    server = RedisServer(port, tmp_path).start()
    try:
        await until(lambda: state.problem() is None, "the first connection")
    finally:
        server.stop()


async def test_rotation_then_reuse_revokes_the_family_and_its_tokens(states: Any, until: Until) -> None:
    issuer, proxy = await states(), await states()
    family = grant()
    await issuer.store_refresh(H0, family)
    assert await issuer.rotate_refresh(H0, H1, time.time()) == family
    assert await issuer.find_refresh(H0) is not None  # spent but known
    assert await issuer.find_refresh(H0, unspent=True) is None  # and no longer active
    assert await issuer.find_refresh(H1, unspent=True) == family
    assert await issuer.record_family_token("f1", "at-1", time.time() + 300)
    with pytest.raises(RefreshReused) as reused:
        await proxy.rotate_refresh(H0, H2, time.time())
    assert reused.value.grant.family == "f1" and reused.value.grant.act == {"sub": "billing-bot"}
    assert proxy.revocations.is_revoked(principal("at-1"))  # at once where the reuse was seen
    await until(lambda: issuer.revocations.is_revoked(principal("at-1")), "the family's token revoked everywhere")
    assert await issuer.rotate_refresh(H1, H2, time.time()) is None  # the legitimate holder's token is dead too
    assert await issuer.find_refresh(H1) is None


async def test_concurrent_rotations_of_one_token_have_exactly_one_winner(states: Any) -> None:
    first, second = await states(), await states()
    for n in range(20):
        old, new_a, new_b = (refresh_token_hash(f"race-{n}-{i}") for i in range(3))
        await first.store_refresh(old, grant(f"race-{n}"))
        outcomes = await asyncio.gather(
            first.rotate_refresh(old, new_a, time.time()),
            second.rotate_refresh(old, new_b, time.time()),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["RefreshGrant", "RefreshReused"], outcomes
        # The winner's new token died with the family too.
        assert await first.rotate_refresh(new_a, old, time.time()) is None
        assert await first.rotate_refresh(new_b, old, time.time()) is None


@pytest.mark.parametrize("ending", ["revoke_family", "agent_cut_off", "subject_cut_off", "expiry"])
async def test_a_family_ends(states: Any, ending: str) -> None:
    later = [0.0]
    state = await states(clock=lambda: time.time() + later[0])
    await state.store_refresh(H0, grant(ttl=3600))
    assert await state.record_family_token("f1", "at-1", time.time() + 300)
    now = time.time()
    if ending == "revoke_family":
        await state.revoke_family("f1")
        assert state.revocations.is_revoked(principal("at-1"))
    elif ending == "agent_cut_off":
        await state.revoke_agent_before("billing-bot", now)
    elif ending == "subject_cut_off":
        await state.revoke_subject_before("user:alice", now)
    else:
        later[0] = 3600
        now += 3600
    assert await state.find_refresh(H0) is None
    assert await state.rotate_refresh(H0, H1, now) is None
    if ending != "expiry":
        # A token minted from the family while it was ending is revoked at once.
        assert not await state.record_family_token("f1", "at-2", time.time() + 300)
        assert state.revocations.is_revoked(principal("at-2"))


async def test_an_assertion_jti_is_accepted_once_across_replicas(states: Any) -> None:
    first, second = await states(start=False), await states(start=False)
    assert await first.use_assertion_jti("bot", "j1", time.time() + 60)
    assert not await second.use_assertion_jti("bot", "j1", time.time() + 60)
    assert await second.use_assertion_jti("other-bot", "j1", time.time() + 60)
    assert await second.use_assertion_jti("bot:j1", "", time.time() + 60)  # no ambiguity between the two parts


async def test_every_growing_key_has_a_ttl(redis_server: RedisServer, states: Any) -> None:
    state = await states(start=False, retention=300)
    now = time.time()
    await state.revoke_jti("j1", now + 60)
    await state.revoke_agent_before("billing-bot", now - 1000)
    await state.revoke_subject_before("user:bob", now)
    await state.use_assertion_jti("bot", "j1", now + 60)
    await state.store_refresh(H0, grant(ttl=3600))
    await state.rotate_refresh(H0, H1, now)
    await state.record_family_token("f1", "at-1", now + 300)
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        ttls = {key: await raw.ttl(key) for key in await raw.keys("tollbooth:*")}
    finally:
        await raw.aclose()
    assert ttls.pop("tollbooth:revoked:agents") == ttls.pop("tollbooth:revoked:subjects") == -1  # tiny, kept
    assert set(ttls) == {
        "tollbooth:revoked:jtis",
        f"tollbooth:refresh:{H0}",
        f"tollbooth:refresh:{H1}",
        "tollbooth:family:f1",
        "tollbooth:family:f1:tokens",
    } | {key for key in ttls if key.startswith("tollbooth:assertion:")}
    assert len([key for key in ttls if key.startswith("tollbooth:assertion:")]) == 1
    assert 355 < ttls["tollbooth:revoked:jtis"] <= 360  # the latest revoked jti's exp (+60) + retention
    assert 3890 < ttls["tollbooth:family:f1"] <= 3900 and 3890 < ttls[f"tollbooth:refresh:{H1}"] <= 3900
    assert all(ttl > 0 for ttl in ttls.values())


async def test_hundreds_of_concurrent_writes_wait_for_a_connection_rather_than_fail(states: Any) -> None:
    # A burst at the token endpoint: more writes at once than redis-py's default pool (100) holds.
    state = await states(start=False)
    expires = time.time() + 60
    accepted = await asyncio.gather(*(state.use_assertion_jti("bot", f"j{n}", expires) for n in range(300)))
    assert accepted == [True] * 300
