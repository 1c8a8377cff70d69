"""Short-lived records of people's sign-ins (sessions, pending authorization requests, codes, registrations):
in Redis when configured, so a browser's next request may land on any replica, else in this process's memory.

Values are text (JSON from their owners); every record has a TTL, so nothing outlives its use. `take` is the
atomic read-and-delete that makes a record single-use across replicas (GETDEL: whoever takes it has it alone).
Lists (`append`, `items`) hold what a code's redemption issued, for revocation should it come back.

Redis keys: "<prefix>people:<kind>:<id>", strings or lists, each with a PX TTL.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.redis.connect import REDIS_FAILURES, AsyncClient
from gateway.state.health import StateUnavailable

MAX_MEMORY_RECORDS = 100_000


class Ephemeral(Protocol):
    async def put(self, key: str, value: str, ttl: float) -> None: ...

    async def get(self, key: str) -> str | None: ...

    async def take(self, key: str) -> str | None:
        """The value, deleted in the same step: a second taker gets None."""
        ...

    async def take_marking(self, key: str, mark: str, ttl: float) -> str | None:
        """`take`, and when there was a value, set `mark` (for `ttl`) in the same step: no one can see the value
        gone and the mark not yet there."""
        ...

    async def delete(self, key: str) -> None: ...

    async def append(self, key: str, value: str, ttl: float, keep: int = 0) -> None:
        """Add to the list at `key`, which lives at least `ttl` from now; with `keep`, only its last `keep` items
        stay (a list anyone can grow must not grow without bound)."""
        ...

    async def items(self, key: str) -> list[str]: ...


class MemoryEphemeral:
    """One process's records, bounded in number per kind (the text before a key's first `:`): past the bound the
    oldest of that kind go, so a flood of one kind (pending requests, say) never evicts another (registrations)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, limit: int = MAX_MEMORY_RECORDS) -> None:
        self._clock = clock
        self._limit = limit
        self._kinds: dict[str, OrderedDict[str, tuple[str | list[str], float]]] = {}

    def _bucket(self, key: str) -> OrderedDict[str, tuple[str | list[str], float]]:
        return self._kinds.setdefault(key.split(":", 1)[0], OrderedDict())

    def _live(self, key: str) -> str | list[str] | None:
        bucket = self._bucket(key)
        found = bucket.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            del bucket[key]
            return None
        return found[0]

    def _store(self, key: str, value: str | list[str], expires_at: float) -> None:
        bucket = self._bucket(key)
        bucket[key] = (value, expires_at)
        bucket.move_to_end(key)
        while len(bucket) > self._limit:
            bucket.popitem(last=False)

    async def put(self, key: str, value: str, ttl: float) -> None:
        self._store(key, value, self._clock() + ttl)

    async def get(self, key: str) -> str | None:
        value = self._live(key)
        return value if isinstance(value, str) else None

    async def take(self, key: str) -> str | None:
        value = await self.get(key)
        self._bucket(key).pop(key, None)
        return value

    async def take_marking(self, key: str, mark: str, ttl: float) -> str | None:
        value = await self.take(key)  # no await inside: one step for every other coroutine of the process
        if value is not None:
            await self.put(mark, "1", ttl)
        return value

    async def delete(self, key: str) -> None:
        self._bucket(key).pop(key, None)

    async def append(self, key: str, value: str, ttl: float, keep: int = 0) -> None:
        current = self._live(key)
        items = [*current, value] if isinstance(current, list) else [value]
        if keep:
            items = items[-keep:]
        bucket = self._bucket(key)
        expires_at = max(self._clock() + ttl, bucket[key][1] if key in bucket else 0.0)
        self._store(key, items, expires_at)

    async def items(self, key: str) -> list[str]:
        value = self._live(key)
        return list(value) if isinstance(value, list) else []


class RedisEphemeral:
    """The records in Redis, under `prefix`; any failure is StateUnavailable (the pages answer 503)."""

    def __init__(self, redis: AsyncClient, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix + "people:"
        self._append = redis.register_script(_APPEND)
        self._take_marking = redis.register_script(_TAKE_MARKING)

    async def put(self, key: str, value: str, ttl: float) -> None:
        try:
            await self._redis.set(self._prefix + key, value, px=_ms(ttl))
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc

    async def get(self, key: str) -> str | None:
        try:
            value = await self._redis.get(self._prefix + key)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc
        return value if isinstance(value, str) else None

    async def take(self, key: str) -> str | None:
        try:
            value = await self._redis.getdel(self._prefix + key)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc
        return value if isinstance(value, str) else None

    async def take_marking(self, key: str, mark: str, ttl: float) -> str | None:
        try:
            value = await self._take_marking(keys=[self._prefix + key, self._prefix + mark], args=[_ms(ttl)])
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc
        return value if isinstance(value, str) else None

    async def delete(self, key: str) -> None:
        try:
            await self._redis.delete(self._prefix + key)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc

    async def append(self, key: str, value: str, ttl: float, keep: int = 0) -> None:
        try:
            await self._append(keys=[self._prefix + key], args=[value, _ms(ttl), keep])
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc

    async def items(self, key: str) -> list[str]:
        try:
            values = await self._redis.lrange(self._prefix + key, 0, -1)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc
        return [value for value in values if isinstance(value, str)]


# One step, one key (so Cluster takes it too): a later, shorter TTL never cuts an earlier, longer one.
_APPEND = """
redis.call('RPUSH', KEYS[1], ARGV[1])
if tonumber(ARGV[3]) > 0 then redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1) end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
"""

# Both keys share the prefix, which on Cluster is a hash tag (one slot), so one script may touch both.
_TAKE_MARKING = """
local value = redis.call('GETDEL', KEYS[1])
if value then redis.call('SET', KEYS[2], '1', 'PX', ARGV[1]) end
return value
"""


def _ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _unavailable(exc: BaseException) -> StateUnavailable:
    return StateUnavailable(f"redis unreachable: {exc}")
