"""The Redis Streams sink: events go to the stream from a bounded queue, or to the spool while Redis cannot take them.

Order is the contract: events of one process reach the stream in the order they were emitted. While
anything waits in the spool, newer events queue up behind it (in the spool), and only when the spool is
replayed does the sink write to Redis directly again.

Idempotence (a replayed batch that Redis had partly accepted must not duplicate events): every write
goes through one Lua script that, per event id prefix (one per sink, see `EventIds`), keeps the highest
event number already in the stream and skips events at or below it. A script rather than a client-side
check, because the check and the write must be one atomic step on the server: a write abandoned after
`write_timeout` may still run after its replay has started, and then the later of the two must skip.
The bookkeeping is one small key per sink (process run), not one per event, so it costs nothing at
30,000 events/s; it relies on the order above, which gives increasing numbers per prefix.

That key is "<stream>:written:<prefix>". On Redis Cluster it must share the stream's hash slot, because the script
touches both. When `audit.stream` has a hash tag (`{tollbooth}:audit`) the key carries the same tag; otherwise (the
default `tollbooth:audit`) the key starts with a short tag chosen to fall in the stream's slot, so the stream keeps
the name consumers read (gateway.redis.slots.slot_tag).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.audit.events import AuditEvent, EventIds, dumps_lenient, encode_event, parse_rfc3339, split_event_id
from gateway.audit.sinks import LINGER_SECONDS
from gateway.audit.spool import Chunk, Spool
from gateway.config import AuditConfig
from gateway.metrics import AUDIT_EVENTS, AUDIT_QUEUE_DEPTH, AUDIT_SPOOL_BYTES, AUDIT_SPOOL_OLDEST_AGE, child
from gateway.redis.connect import async_client
from gateway.redis.slots import hash_tag, slot_tag
from gateway.redis.url import parse_redis_url

log = logging.getLogger("tollbooth.audit")
T = TypeVar("T")

# KEYS[1]: the stream. KEYS[2]: the highest event number of one id prefix already in it.
# ARGV: MAXLEN, the mark's TTL in seconds, then per event its number and its fields as a JSON array
# [name, value, name, value, ...] (one argument per event: far cheaper for the client to send than 40).
# pcall: Redis does not roll a failing script back, so the mark must still record what was written.
_XADD_ONCE = """
local mark = tonumber(redis.call('GET', KEYS[2]) or '0')
local top, written = mark, 0
local ok, err = pcall(function()
  for i = 3, #ARGV, 2 do
    local n = tonumber(ARGV[i])
    if n > top then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(cjson.decode(ARGV[i + 1])))
      top, written = n, written + 1
    end
  end
end)
if top > mark then
  redis.call('SET', KEYS[2], top, 'EX', ARGV[2])
end
if not ok then
  return redis.error_reply(tostring(err))
end
return written
"""
_MARK_TTL_SECONDS = 30 * 86400
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0
_LOG_EVERY_SECONDS = 30.0
_SPOOL_BATCH = 5000


def mark_key_prefix(stream: str, *, cluster: bool) -> str:
    """What goes before "<stream>:written:<id prefix>" so that the script's two keys share a slot (see above)."""
    return slot_tag(stream) if cluster and hash_tag(stream) is None else ""


def _entry(fields: dict[str, str]) -> tuple[int, bytes]:
    """(event number, fields as a JSON array): one event's arguments to the script, from spooled fields."""
    _, number = split_event_id(fields["id"])
    return number, dumps_lenient([*itertools.chain.from_iterable(fields.items())])


def _event_entry(event: AuditEvent) -> tuple[int, bytes]:
    """`_entry` for a queued event, without the detour through a dict (the sink's hot loop)."""
    flat = event.flat_fields()
    return split_event_id(flat[-1])[1], dumps_lenient(flat)


class _Throttled:
    """A failure that repeats for every event is logged when it starts, then at most once per interval."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = collections.Counter()

    def error(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._suppressed[key] += 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            message += f" (and {suppressed} more like this since the last report)"
        log.error(message, *args)

    def reset(self, key: str) -> None:
        self._last.pop(key, None)
        self._suppressed.pop(key, None)


class RedisStreamSink:
    """`XADD … MAXLEN ~` from a bounded queue, in pipelined batches; a local spool while Redis is away."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        max_len: int,
        spool_dir: str | Path,
        queue_size: int = 100_000,
        write_timeout: float = 2.0,
        batch_size: int = 500,
    ) -> None:
        # No client-side retries: a failed write goes to the spool at once, and the sink retries on its own clock.
        self._client = async_client(
            url, socket_timeout=write_timeout, socket_connect_timeout=write_timeout, retry=Retry(NoBackoff(), 0)
        )
        self._script = self._client.register_script(_XADD_ONCE)
        self._stream = stream
        self._marks = mark_key_prefix(stream, cluster=parse_redis_url(url).kind == "cluster") + stream + ":written:"
        self._max_len = max_len
        self._spool_dir = Path(spool_dir)
        self._queue_size = queue_size
        # Half full while a write is pending means Redis is slower than the traffic: spool rather than wait.
        self._spill_at = max(1, queue_size // 2)
        self._write_timeout = write_timeout
        self._batch_size = batch_size
        self._ids = EventIds()
        self._queue: collections.deque[AuditEvent] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[Any] | None = None
        self._closing = False
        self._own: Spool | None = None
        self._adopted: list[Spool] = []  # dead processes' spools, oldest first: replayed before our own
        self._oldest_ts: float | None = None
        self._redis_error: str | None = None
        self._spool_error: str | None = None
        self._log = _Throttled(_LOG_EVERY_SECONDS)

    @classmethod
    def from_config(cls, url: str, audit: AuditConfig) -> RedisStreamSink:
        return cls(
            url,
            stream=audit.stream,
            max_len=audit.max_len,
            spool_dir=audit.spool_dir,
            queue_size=audit.queue_size,
            write_timeout=audit.write_timeout,
        )

    # The request path: no I/O, no awaiting.

    def emit(self, event: AuditEvent) -> bool:
        if self._closing or len(self._queue) >= self._queue_size or self._task is None or self._task.done():
            child(AUDIT_EVENTS, self.name, "failed").inc()
            if self._closing:
                why = "the sink is closing"
            elif self._task is None or self._task.done():
                why = "the audit writer is not running"
            else:
                why = "the queue is full: neither Redis nor the spool keeps up"
            self._log.error(
                "refused", "audit event %s for request %s not accepted: %s", event.event, event.request_id, why
            )
            return False
        # Numbered in queue order, which is the order they reach the stream (the Lua script relies on it).
        event.id = self._ids.next()
        self._queue.append(event)
        if self._inflight is not None and len(self._queue) >= self._spill_at:
            self._inflight.cancel()
        if not self._wakeup.is_set():
            self._wakeup.set()
        return True

    @property
    def healthy(self) -> bool:
        running = self._task is not None and not self._task.done()
        somewhere = self._redis_error is None or self._spool_error is None
        return running and somewhere and len(self._queue) < self._queue_size

    @property
    def problem(self) -> str | None:
        if self._task is None or self._task.done():
            return "audit writer not running"
        if self._redis_error is not None and self._spool_error is not None:
            return f"cannot take events: redis unreachable ({self._redis_error}), spool failing ({self._spool_error})"
        if len(self._queue) >= self._queue_size:
            return "audit queue full: neither redis nor the spool keeps up"
        if self._redis_error is not None:
            return f"degraded: redis unreachable ({self._redis_error}), events spooled to {self._spool_dir}"
        if self._spool_error is not None:
            return f"degraded: spool {self._spool_dir} not writable ({self._spool_error})"
        if self._backlog:
            return f"degraded: replaying {self._spool_bytes} bytes of spooled events"
        return None

    # Lifecycle.

    async def start(self) -> None:
        try:
            self._own = await asyncio.to_thread(Spool.create, self._spool_dir, self._ids.prefix)
        except OSError as exc:
            # Not fatal while Redis takes the events: the spool is created again when it is needed.
            self._spool_failed(exc)
        await self._adopt_orphans()
        self._task = asyncio.create_task(self._run(), name="audit-redis-sink")

    async def aclose(self) -> None:
        """Stop accepting; write what is queued to Redis, or to the spool when Redis cannot take it."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        for spool in self._spools:
            await asyncio.to_thread(spool.close)
        self._own, self._adopted = None, []
        await self._client.aclose()

    # The writer: one task, so that the order of the queue is the order of the stream.

    @property
    def _spools(self) -> list[Spool]:
        return [*self._adopted, *([self._own] if self._own is not None else [])]

    @property
    def _spool_bytes(self) -> int:
        return sum(spool.pending_bytes for spool in self._spools)

    @property
    def _backlog(self) -> bool:
        return any(not spool.empty for spool in self._spools)

    @property
    def _degraded(self) -> bool:
        return self._redis_error is not None or self._backlog

    async def _run(self) -> None:
        """The writer, restarted after anything unexpected: events keep queueing (and spooling) meanwhile, and a
        writer that died quietly would lose every later event at shutdown."""
        while True:
            try:
                await self._write_until_closed()
                return
            except Exception as exc:
                self._log.error(
                    "writer", "audit: the writer failed (%s: %s); restarting it in 1 s", type(exc).__name__, exc
                )
                if self._closing:
                    with contextlib.suppress(Exception):
                        await self._spool_queued()
                    if self._queue:
                        child(AUDIT_EVENTS, self.name, "failed").inc(len(self._queue))
                        log.error("audit: %d events could not be written at shutdown", len(self._queue))
                    return
                await asyncio.sleep(1.0)

    async def _write_until_closed(self) -> None:
        loop = asyncio.get_running_loop()
        retry_at, retry_delay = 0.0, _RETRY_FIRST
        while True:
            if not self._queue and not self._closing:
                # Degraded, wake up to retry Redis and to keep the spool's age gauge current.
                timeout = min(max(retry_at - loop.time(), 0.0), 1.0) if self._degraded else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
            if self._queue and len(self._queue) < self._batch_size and not self._closing:
                await asyncio.sleep(LINGER_SECONDS)
            self._wakeup.clear()
            if not self._degraded:
                if self._queue:
                    await self._write_queued()
                elif self._closing:
                    return  # everything is written
                continue
            await self._spool_queued()
            if self._closing:
                # Replaying is the next start's job: a stop must not wait for a long spool to reach Redis.
                if self._queue:
                    child(AUDIT_EVENTS, self.name, "failed").inc(len(self._queue))
                    log.error("audit: %d events could not be written at shutdown", len(self._queue))
                return
            if loop.time() >= retry_at:
                if await self._replay():
                    retry_delay = _RETRY_FIRST
                else:
                    retry_at, retry_delay = loop.time() + retry_delay, min(retry_delay * 2, _RETRY_MAX)
            self._update_gauges()

    async def _write_queued(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        _, error = await self._xadd(self._ids.prefix, [_event_entry(e) for e in batch])
        if error is None:
            child(AUDIT_EVENTS, self.name, "written").inc(len(batch))
        else:
            # Back to the front: the degraded path spools it first, so the order holds.
            self._queue.extendleft(reversed(batch))
            self._redis_down(error)
        AUDIT_QUEUE_DEPTH.set(len(self._queue))

    async def _xadd(self, prefix: str, entries: list[tuple[int, bytes]]) -> tuple[int, str | None]:
        """Run the script on one prefix's (number, entry) pairs: (events written, None) or (0, what went wrong)."""
        written, error = await self._call(
            self._script(
                keys=[self._stream, self._marks + prefix],
                args=[self._max_len, _MARK_TTL_SECONDS, *(part for entry in entries for part in entry)],
            )
        )
        return int(written or 0), error

    async def _call(self, command: Awaitable[T]) -> tuple[T | None, str | None]:
        """(result, None), or (None, what went wrong) when Redis fails, takes longer than `write_timeout`, or is
        abandoned because the queue reached half its size meanwhile (see `emit`): never wait on Redis for long."""
        call = asyncio.ensure_future(command)
        self._inflight = call
        try:
            await asyncio.wait((call,), timeout=self._write_timeout)
        finally:
            self._inflight = None
        if not call.done():
            call.cancel()
            return None, f"no answer within {self._write_timeout:g}s"
        if call.cancelled():
            return None, "the queue filled up faster than redis took it"
        exc = call.exception()
        if exc is not None:
            return None, f"{type(exc).__name__}: {exc}"
        return call.result(), None

    async def _spool_queued(self) -> None:
        """Append everything queued to our spool, oldest first; on failure it stays queued (and counts in `healthy`)."""
        while self._queue:
            batch = list(itertools.islice(self._queue, _SPOOL_BATCH))
            data = b"".join([encode_event(e) for e in batch])
            try:
                if self._own is None:
                    self._own = await asyncio.to_thread(Spool.create, self._spool_dir, self._ids.prefix)
                was_empty = not self._backlog
                await asyncio.to_thread(self._own.append, data)
            except OSError as exc:
                self._spool_failed(exc)
                return
            if was_empty:
                self._oldest_ts = batch[0].ts
            for _ in batch:
                self._queue.popleft()
            if self._spool_error is not None:
                log.info("audit: spool %s writable again", self._spool_dir)
                self._spool_error = None
                self._log.reset("spool")
            child(AUDIT_EVENTS, self.name, "spooled").inc(len(batch))
            AUDIT_QUEUE_DEPTH.set(len(self._queue))
            self._update_gauges()

    async def _replay(self) -> bool:
        """Write the spools to Redis, oldest first. True when they are empty and Redis takes events again."""
        _, error = await self._call(self._client.ping())
        if error is not None:
            self._redis_down(error)
            return False
        await self._adopt_orphans()
        for spool in self._spools:
            while (chunk := await asyncio.to_thread(spool.read, self._batch_size)) is not None:
                if self._closing:
                    return False  # the rest is the next start's to replay: a stop must not wait for a long spool
                if not await self._replay_chunk(spool, chunk):
                    return False
                await asyncio.to_thread(spool.commit, chunk)
                self._update_gauges()
                if len(self._queue) >= self._spill_at:
                    await self._spool_queued()  # newer than all that is spooled: it goes behind
            if spool.adopted:
                await asyncio.to_thread(spool.close)
                self._adopted.remove(spool)
        self._oldest_ts = None
        if self._redis_error is not None:
            log.info("audit: redis reachable again, spooled events replayed")
            self._redis_error = None
            self._log.reset("redis")
        return True

    async def _replay_chunk(self, spool: Spool, chunk: Chunk) -> bool:
        if chunk.torn:
            child(AUDIT_EVENTS, self.name, "failed").inc()
            log.error(
                "audit: spool %s ends in a torn event (%d bytes, its writer died mid-write): skipped",
                spool.name,
                len(chunk.torn),
            )
        groups: list[tuple[str, list[tuple[int, bytes]]]] = []
        for line in chunk.lines:
            try:
                fields = orjson.loads(line)
                prefix, _ = split_event_id(fields["id"])
                ts = parse_rfc3339(fields["ts"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                child(AUDIT_EVENTS, self.name, "failed").inc()
                log.error("audit: unreadable event in spool %s skipped: %r", spool.name, line[:200])
                continue
            if not groups:
                self._oldest_ts = ts
            if not groups or groups[-1][0] != prefix:
                groups.append((prefix, []))
            groups[-1][1].append(_entry(fields))
        for prefix, entries in groups:
            written, error = await self._xadd(prefix, entries)
            if error is not None:
                self._redis_down(error)
                return False
            child(AUDIT_EVENTS, self.name, "replayed").inc(written)
            if written < len(entries):
                child(AUDIT_EVENTS, self.name, "duplicate").inc(len(entries) - written)
        return True

    async def _adopt_orphans(self) -> None:
        known = {spool.name for spool in self._spools}
        try:
            adopted = await asyncio.to_thread(Spool.adopt_orphans, self._spool_dir, known)
        except OSError as exc:
            self._log.error(
                "adopt", "audit: cannot scan %s for spools left by stopped processes: %s", self._spool_dir, exc
            )
            return
        for spool in adopted:
            log.info("audit: replaying %d bytes spooled by a stopped process (%s)", spool.pending_bytes, spool.name)
        self._adopted += adopted
        if adopted and self._oldest_ts is None:
            chunk = await asyncio.to_thread(adopted[0].read, 1)
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                self._oldest_ts = parse_rfc3339(orjson.loads(chunk.lines[0])["ts"]) if chunk and chunk.lines else None
        self._update_gauges()

    def _redis_down(self, error: str) -> None:
        if self._redis_error is None:
            log.error("audit: redis cannot take events (%s): spooling them to %s", error, self._spool_dir)
        else:
            self._log.error(
                "redis", "audit: redis still cannot take events (%s), %d bytes spooled", error, self._spool_bytes
            )
        self._redis_error = error

    def _spool_failed(self, exc: OSError) -> None:
        self._spool_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        self._log.error("spool", "audit: cannot write the spool in %s: %s", self._spool_dir, exc)

    def _update_gauges(self) -> None:
        AUDIT_SPOOL_BYTES.set(self._spool_bytes)
        oldest = self._oldest_ts if self._backlog else None
        AUDIT_SPOOL_OLDEST_AGE.set(0 if oldest is None else max(0.0, time.time() - oldest))
