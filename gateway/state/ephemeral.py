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

    async def delete(self, key: str) -> None: ...

    async def append(self, key: str, value: str, ttl: float) -> None:
        """Add to the list at `key`, which lives at least `ttl` from now."""
        ...

    async def items(self, key: str) -> list[str]: ...


class MemoryEphemeral:
    """One process's records, bounded in number: past the bound the oldest go (a flood cannot grow memory)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, limit: int = MAX_MEMORY_RECORDS) -> None:
        self._clock = clock
        self._limit = limit
        self._records: OrderedDict[str, tuple[str | list[str], float]] = OrderedDict()

    def _live(self, key: str) -> str | list[str] | None:
        found = self._records.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            del self._records[key]
            return None
        return found[0]

    def _store(self, key: str, value: str | list[str], expires_at: float) -> None:
        self._records[key] = (value, expires_at)
        self._records.move_to_end(key)
        while len(self._records) > self._limit:
            self._records.popitem(last=False)

    async def put(self, key: str, value: str, ttl: float) -> None:
        self._store(key, value, self._clock() + ttl)

    async def get(self, key: str) -> str | None:
        value = self._live(key)
        return value if isinstance(value, str) else None

    async def take(self, key: str) -> str | None:
        value = await self.get(key)
        self._records.pop(key, None)
        return value

    async def delete(self, key: str) -> None:
        self._records.pop(key, None)

    async def append(self, key: str, value: str, ttl: float) -> None:
        current = self._live(key)
        items = [*current, value] if isinstance(current, list) else [value]
        expires_at = max(self._clock() + ttl, self._records[key][1] if key in self._records else 0.0)
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

    async def delete(self, key: str) -> None:
        try:
            await self._redis.delete(self._prefix + key)
        except REDIS_FAILURES as exc:
            raise _unavailable(exc) from exc

    async def append(self, key: str, value: str, ttl: float) -> None:
        try:
            await self._append(keys=[self._prefix + key], args=[value, _ms(ttl)])
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
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
"""


def _ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _unavailable(exc: BaseException) -> StateUnavailable:
    return StateUnavailable(f"redis unreachable: {exc}")
