"""Shared state in Redis, for several replicas: every one agrees on revocations, refresh families and replays.

Keys (prefix "tollbooth:" by default, "{tollbooth}:" on Redis Cluster; every key that can grow has a TTL):

    revoked:jtis            sorted set  jti -> its token's exp; pruned past exp + retention, TTL the latest of those
    revoked:agents          hash        client_id -> "revoke what was issued before" (Unix time); tiny, no TTL
    revoked:subjects        hash        sub -> the same
    blocks                  hash        "agent:<id>" / "subject:<id>" -> its latest block record (JSON); tiny, no TTL
    refresh:<sha256 hex>    hash        family, spent ("0"/"1"); TTL the family's expires_at + retention
    family:<family>         hash        grant (JSON), agent, subject, issued_at, expires_at, revoked ("1" once ended)
    family:<family>:tokens  sorted set  jti -> exp of the access tokens minted from the family
    assertion:<sha256 hex>  string      of (client_id, jti): an RFC 7523 assertion already used; TTL exp + retention
    people:<kind>:<id>      string/list people's sign-ins, pending requests, codes, registrations (state.ephemeral)

Every change to revocations is one Lua script, so it is atomic and PUBLISHes what it revoked (a JSON array of
revocation records, see gateway.state.revocations) on the channel "<prefix>revocations" as part of the same step.
Each process applies those messages to its `RevocationList`; it reloads the whole set after (re)subscribing, since
messages sent while it was away are lost, and every `resync_interval` as a safety net.

The scripts compute most key names themselves (a family's keys from its id). Redis Cluster accepts that while every
key a script touches is in the slot of the keys it declares, on that node: so on Cluster the prefix becomes a hash
tag ("{tollbooth}:", gateway.redis.slots.tagged_prefix), which keeps all of these keys in one slot, and every script
declares at least one of them. One slot is one node's worth of state, which is small (revocations, live families);
Cluster still brings failover. On one server or Sentinel the names stay as they were, so an upgrade keeps the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from gateway.metrics import STATE_RELOADS
from gateway.redis.connect import REDIS_FAILURES, AsyncClient, async_client, subscriber
from gateway.redis.slots import tagged_prefix
from gateway.redis.url import parse_redis_url
from gateway.state.ephemeral import Ephemeral, RedisEphemeral
from gateway.state.health import Health, StateUnavailable
from gateway.state.refresh_families import RefreshGrant, RefreshReused, check_token_hash
from gateway.state.revocations import RevocationList

log = logging.getLogger("tollbooth.state")

_RECONNECT_MIN = 0.1  # seconds; doubled per failed attempt up to `reconnect_max`


MAX_CONNECTIONS = 1024  # per process, per node


def redis_client(url: str) -> AsyncClient:
    """The client for shared state at `redis.url`: one server, a Sentinel-managed master or a Cluster (see
    gateway.redis.url for the URL forms).

    No automatic retries: a retried script could run twice (a rotation seen as its own reuse, an assertion as its
    own replay). Pooled connections that died are still replaced before use, when the pool hands them out."""
    return async_client(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=2,  # a write fails (503) rather than hang a token request
        socket_keepalive=True,
        health_check_interval=10,  # the idle subscription PINGs, so a dead peer is noticed
        retry=Retry(NoBackoff(), 0),
        # redis-py's default of 100 fails the 101st concurrent command at once (MaxConnectionsError): a burst at
        # the token endpoint would answer 503 with Redis idle. Redis takes 10,000 clients by default.
        max_connections=MAX_CONNECTIONS,
    )


# ARGV[1..4] of every script: now, prefix, retention, channel. Script-specific arguments start at ARGV[5].
_PRELUDE = """
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
local retention = tonumber(ARGV[3])
local channel = ARGV[4]
local revoked_jtis = prefix .. 'revoked:jtis'

-- Keep `key` at least until `at` (Unix time), and no key without a TTL; a longer TTL is never shortened.
local function keep_until(key, at)
  local ms = math.max(1, math.ceil((at - now) * 1000))
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function revoke_jti(jti, exp)
  local current = redis.call('ZSCORE', revoked_jtis, jti)
  if not current or tonumber(current) < tonumber(exp) then redis.call('ZADD', revoked_jtis, exp, jti) end
  keep_until(revoked_jtis, tonumber(exp) + retention)
  return {jti = jti, exp = exp}
end

-- Tell every process, then forget jtis whose tokens no verifier accepts any more.
local function publish(records)
  redis.call('ZREMRANGEBYSCORE', revoked_jtis, '-inf', '(' .. (now - retention))
  if #records == 0 then return '[]' end
  local message = cjson.encode(records)
  redis.call('PUBLISH', channel, message)
  return message
end

local function cut_off(agent, subject, issued_at)
  local agent_before = redis.call('HGET', prefix .. 'revoked:agents', agent)
  local subject_before = redis.call('HGET', prefix .. 'revoked:subjects', subject)
  return (agent_before and issued_at < tonumber(agent_before))
    or (subject_before and issued_at < tonumber(subject_before))
end

local function family_key(family) return prefix .. 'family:' .. family end

-- The family of refresh token `token_key` and its grant JSON, unless unknown, revoked, expired or cut off.
local function live_family(token_key)
  local family = redis.call('HGET', token_key, 'family')
  if not family then return nil end
  local f = redis.call('HMGET', family_key(family), 'grant', 'agent', 'subject', 'issued_at', 'expires_at', 'revoked')
  if not f[1] or f[6] == '1' or now >= tonumber(f[5]) or cut_off(f[2], f[3], tonumber(f[4])) then return nil end
  return family, f[1]
end

local function revoke_family(family)
  local key = family_key(family)
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'revoked', '1') end
  local tokens = redis.call('ZRANGEBYSCORE', key .. ':tokens', now - retention, '+inf', 'WITHSCORES')
  local records = {}
  for i = 1, #tokens, 2 do records[#records + 1] = revoke_jti(tokens[i], tokens[i + 1]) end
  return records
end
"""

_REVOKE_JTI = "return publish({revoke_jti(ARGV[5], ARGV[6])})"

# ARGV[5] "agent" or "subject", ARGV[6] its value, ARGV[7] before. Cut-offs only move forward.
_CUT_OFF = """
local key = prefix .. 'revoked:' .. ARGV[5] .. 's'
local before = ARGV[7]
local current = redis.call('HGET', key, ARGV[6])
if current and tonumber(current) >= tonumber(before) then
  before = current
else
  redis.call('HSET', key, ARGV[6], before)
end
local record = {before = before}
record[ARGV[5]] = ARGV[6]
return publish({record})
"""

# ARGV[5] "agent" or "subject", ARGV[6] its id, ARGV[7] the record's since, ARGV[8] the record (JSON). The latest
# `since` wins, as in RevocationList.set_block.
_BLOCK = """
local key = prefix .. 'blocks'
local field = ARGV[5] .. ':' .. ARGV[6]
local current = redis.call('HGET', key, field)
if current and tonumber(cjson.decode(current).since) >= tonumber(ARGV[7]) then return publish({}) end
redis.call('HSET', key, field, ARGV[8])
return publish({cjson.decode(ARGV[8])})
"""

# KEYS[1] the first refresh token; ARGV[5..10] family, grant JSON, agent, subject, issued_at, expires_at.
# HSET leaves an existing `revoked` field alone: a revoked family cannot be revived by storing into it again.
_STORE_REFRESH = """
local key = family_key(ARGV[5])
redis.call('HSET', key, 'grant', ARGV[6], 'agent', ARGV[7], 'subject', ARGV[8], 'issued_at', ARGV[9],
  'expires_at', ARGV[10])
keep_until(key, tonumber(ARGV[10]) + retention)
redis.call('HSET', KEYS[1], 'family', ARGV[5], 'spent', '0')
keep_until(KEYS[1], tonumber(ARGV[10]) + retention)
"""

# ARGV[5] '1': only a token not yet exchanged.
_FIND_REFRESH = """
local family, grant = live_family(KEYS[1])
if family and ARGV[5] == '1' and redis.call('HGET', KEYS[1], 'spent') == '1' then return nil end
return grant
"""

# KEYS[1] the presented refresh token, KEYS[2] its successor. Returns nil, {'ok', grant} or
# {'reused', grant, revoked records}: RFC 9700 §4.14.2, a spent token presented again ends the whole family.
_ROTATE_REFRESH = """
local family, grant = live_family(KEYS[1])
if not family then return nil end
if redis.call('HGET', KEYS[1], 'spent') == '1' then
  return {'reused', grant, publish(revoke_family(family))}
end
redis.call('HSET', KEYS[1], 'spent', '1')
redis.call('HSET', KEYS[2], 'family', family, 'spent', '0')
keep_until(KEYS[2], tonumber(redis.call('HGET', family_key(family), 'expires_at')) + retention)
return {'ok', grant}
"""

# ARGV[5] family, ARGV[6] jti, ARGV[7] exp. A token minted while its family was being revoked is revoked at once.
_RECORD_MINTED = """
local key = family_key(ARGV[5])
local f = redis.call('HMGET', key, 'agent', 'subject', 'issued_at', 'revoked')
if not f[1] then return '' end
if f[4] == '1' or cut_off(f[1], f[2], tonumber(f[3])) then return publish({revoke_jti(ARGV[6], ARGV[7])}) end
redis.call('ZADD', key .. ':tokens', ARGV[7], ARGV[6])
keep_until(key .. ':tokens', tonumber(ARGV[7]) + retention)
return ''
"""

_REVOKE_FAMILY = "return publish(revoke_family(ARGV[5]))"


class RedisState:
    """`SharedState` in Redis. Writes work without `start()` (for `tollbooth revoke`); a process that reads
    `revocations` calls `start()` to load them and follow every other replica's."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        prefix: str = "tollbooth:",
        retention: float = 300.0,
        resync_interval: float = 30.0,
        reconnect_max: float = 5.0,
    ):
        self.revocations = RevocationList(clock=clock, retain_after_expiry=retention)
        self._clock = clock
        self._prefix = tagged_prefix(prefix) if parse_redis_url(url).kind == "cluster" else prefix
        self._retention = retention
        self._channel = prefix + "revocations"
        # Cluster sends a script to the node of its first key: scripts that compute all theirs go by this one's slot.
        self._routing_key = self._prefix + "revoked:jtis"
        self._resync_interval = resync_interval
        self._reconnect_max = reconnect_max
        self._reconnect_delay = _RECONNECT_MIN
        self._redis = redis_client(url)
        self.ephemeral: Ephemeral = RedisEphemeral(self._redis, self._prefix)
        script = self._redis.register_script
        self._revoke_jti = script(_PRELUDE + _REVOKE_JTI)
        self._cut_off = script(_PRELUDE + _CUT_OFF)
        self._store_refresh = script(_PRELUDE + _STORE_REFRESH)
        self._find_refresh = script(_PRELUDE + _FIND_REFRESH)
        self._rotate_refresh = script(_PRELUDE + _ROTATE_REFRESH)
        self._record_family_token = script(_PRELUDE + _RECORD_MINTED)
        self._revoke_family = script(_PRELUDE + _REVOKE_FAMILY)
        self._block = script(_PRELUDE + _BLOCK)
        self._health = Health("redis", "redis", clock=clock)
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe and load the revocation set, or fail to and report it in `problem()`; either way the view is
        then kept current in the background, reconnecting while Redis is away."""
        self._task = asyncio.create_task(self._follow(), name="tollbooth-state-redis")
        await self._first_attempt.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    def problem(self) -> str | None:
        return self._health.problem()

    async def revoke_jti(self, jti: str, expires_at: float) -> None:
        self._apply(await self._run(self._revoke_jti, [], jti, expires_at))

    async def set_block(self, record: dict[str, object]) -> None:
        kind, party, since = str(record["block"]), str(record["id"]), float(str(record["since"]))
        self.revocations.set_block(record)  # in force here at once, whatever the script answers
        self._apply(await self._run(self._block, [], kind, party, since, json.dumps(record)))

    async def revoke_agent_before(self, agent: str, before: float) -> None:
        self._apply(await self._run(self._cut_off, [], "agent", agent, before))

    async def revoke_subject_before(self, subject: str, before: float) -> None:
        self._apply(await self._run(self._cut_off, [], "subject", subject, before))

    async def use_assertion_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        # Hashed: both values come from the client, and a key must not be ambiguous ("a:b" + "c" vs "a" + "b:c").
        name = hashlib.sha256(json.dumps([client_id, jti]).encode()).hexdigest()
        ttl_ms = max(1000, math.ceil((expires_at + self._retention - self._clock()) * 1000))
        try:
            first = await self._redis.set(self._prefix + "assertion:" + name, "1", nx=True, px=ttl_ms)
        except REDIS_FAILURES as exc:
            raise StateUnavailable(f"redis unreachable: {exc}") from exc
        return bool(first)

    async def store_refresh(self, token_hash: str, grant: RefreshGrant) -> None:
        await self._run(
            self._store_refresh,
            [self._refresh_key(token_hash)],
            grant.family,
            grant.to_json(),
            grant.agent,
            grant.subject,
            grant.issued_at,
            grant.expires_at,
        )

    async def rotate_refresh(self, old_hash: str, new_hash: str, now: float) -> RefreshGrant | None:
        keys = [self._refresh_key(old_hash), self._refresh_key(new_hash)]
        result = await self._run(self._rotate_refresh, keys, now=now)
        if result is None:
            return None
        grant = RefreshGrant.from_json(result[1])
        if result[0] == "reused":
            self._apply(result[2])
            raise RefreshReused(grant)
        return grant

    async def record_family_token(self, family: str, jti: str, expires_at: float) -> bool:
        revoked = await self._run(self._record_family_token, [], family, jti, expires_at)
        if not revoked:
            return True
        self._apply(revoked)
        return False

    async def find_refresh(self, token_hash: str, *, unspent: bool = False) -> RefreshGrant | None:
        grant = await self._run(self._find_refresh, [self._refresh_key(token_hash)], "1" if unspent else "0")
        return None if grant is None else RefreshGrant.from_json(grant)

    async def revoke_family(self, family: str) -> None:
        self._apply(await self._run(self._revoke_family, [], family))

    def _refresh_key(self, token_hash: str) -> str:
        return self._prefix + "refresh:" + check_token_hash(token_hash)

    async def _run(self, script: AsyncScript, keys: list[str], *args: str | float, now: float | None = None) -> Any:
        at = self._clock() if now is None else now
        common: list[str | float] = [at, self._prefix, self._retention, self._channel]
        try:
            return await script(keys=keys or [self._routing_key], args=[*common, *args])
        except REDIS_FAILURES as exc:
            raise StateUnavailable(f"redis unreachable: {exc}") from exc

    def _apply(self, message: str) -> None:
        """Apply a published message (a JSON array of revocation records): ours at once, others' as they come."""
        try:
            records = json.loads(message)
            if not isinstance(records, list):
                raise ValueError("not a JSON array")
            for record in records:
                self.revocations.apply(record)
        except ValueError as exc:
            log.warning("shared state: ignoring a malformed revocation message: %s", exc)

    async def _follow(self) -> None:
        while True:
            try:
                await self._subscribed()
            except Exception as exc:  # the view must keep being followed whatever broke; the outage is reported
                if not isinstance(exc, (*REDIS_FAILURES, OSError)):
                    log.exception("shared state: following revocations failed unexpectedly")
                self._health.failed(exc)
            self._first_attempt.set()
            # Jittered, so replicas that lost Redis together do not all come back in the same instant.
            await asyncio.sleep(self._reconnect_delay * random.uniform(0.5, 1.0))  # noqa: S311
            self._reconnect_delay = min(self._reconnect_delay * 2, self._reconnect_max)

    async def _subscribed(self) -> None:
        """One subscription: load everything, then apply messages until the connection fails."""
        pubsub = await subscriber(self._redis)
        try:
            # Subscribe before loading: what is published while the load runs waits for us in the subscription.
            await pubsub.subscribe(self._channel)
            await self._reload()
            self._first_attempt.set()
            self._reconnect_delay = _RECONNECT_MIN
            loop = asyncio.get_running_loop()
            next_reload = loop.time() + self._resync_interval
            while True:
                # Wake at least every second, so `problem()` can say how current the view was when Redis went away.
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(1.0, max(0.0, next_reload - loop.time()))
                )
                if message is not None and message["type"] == "message":
                    self._apply(message["data"])
                if loop.time() >= next_reload:
                    await self._reload()
                    next_reload = loop.time() + self._resync_interval
                else:
                    self._health.current()
        finally:
            with contextlib.suppress(*REDIS_FAILURES, OSError):
                await pubsub.aclose()

    async def _reload(self) -> None:
        """Merge the whole revocation set into the local view (nothing is ever un-revoked, so merging is exact)."""
        horizon = self._clock() - self._retention
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(self._prefix + "revoked:jtis", horizon, "+inf", withscores=True)
                pipe.hgetall(self._prefix + "revoked:agents")
                pipe.hgetall(self._prefix + "revoked:subjects")
                pipe.hgetall(self._prefix + "blocks")
                jtis, agents, subjects, blocks = await pipe.execute()
        except (*REDIS_FAILURES, OSError):
            STATE_RELOADS.labels("redis", "error").inc()
            raise
        for jti, expires_at in jtis:
            self.revocations.revoke_jti(jti, expires_at)
        for agent, before in agents.items():
            self.revocations.revoke_agent_before(agent, float(before))
        for subject, before in subjects.items():
            self.revocations.revoke_subject_before(subject, float(before))
        for text in blocks.values():
            self._apply(f"[{text}]")
        STATE_RELOADS.labels("redis", "ok").inc()
        self._health.current()
