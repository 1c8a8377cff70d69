"""Where audit events go: a sink takes events without blocking and writes them off the request path.

The JSON-lines file sink is the embedded default (no Redis configured). A sink that cannot accept an
event says so (`emit` returns False) so the caller can refuse to serve unaudited; it never drops silently.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from pathlib import Path
from typing import Protocol

from gateway.audit.events import AuditEvent, encode_event
from gateway.metrics import AUDIT_EVENTS, AUDIT_QUEUE_DEPTH

log = logging.getLogger("tollbooth.audit")

# How long a writer waits for a batch to fill: a busy gateway writes a few large batches, not one per event.
LINGER_SECONDS = 0.01


class AuditSink(Protocol):
    name: str

    def emit(self, event: AuditEvent) -> bool:
        """Queue an event without blocking; False when it cannot be accepted (the caller decides what to do)."""
        ...

    @property
    def healthy(self) -> bool:
        """The sink can take events now; with `on_failure: deny` the proxy answers 503 while it cannot."""
        ...

    @property
    def problem(self) -> str | None:
        """None when the audit path works as configured; else what is wrong, degraded states included (/readyz)."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None:
        """Stop accepting and write everything still queued."""
        ...


class FileSink:
    """Appends events as JSON lines, in batches, from a background task; the write itself runs in a thread."""

    name = "file"

    def __init__(self, path: str | Path, *, queue_size: int = 100_000, batch_size: int = 1024) -> None:
        self.path = Path(path)
        self._queue: collections.deque[AuditEvent] = collections.deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False
        self._fd: int | None = None

    @property
    def healthy(self) -> bool:
        running = self._task is not None and not self._task.done()
        return running and not self._failing and len(self._queue) < self._queue_size

    @property
    def problem(self) -> str | None:
        if self._task is None or self._task.done():
            return "audit writer not running"
        if self._failing:
            return f"audit file {self.path} not writable"
        if len(self._queue) >= self._queue_size:
            return "audit queue full"
        return None

    def emit(self, event: AuditEvent) -> bool:
        if self._closing or len(self._queue) >= self._queue_size:
            AUDIT_EVENTS.labels(self.name, "failed").inc()
            why = "the sink is closing" if self._closing else "the queue is full"
            log.error("audit event %s for request %s not accepted: %s", event.event, event.request_id, why)
            return False
        self._queue.append(event)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return True

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._task = asyncio.create_task(self._run(), name="audit-file-sink")

    async def aclose(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def _run(self) -> None:
        backoff = 0.05
        count = 0
        unwritten: memoryview | None = None  # what is left of the batch being written, the first `count` events
        while True:
            await self._wakeup.wait()
            if not self._closing and len(self._queue) < self._batch_size:
                await asyncio.sleep(LINGER_SECONDS)
            self._wakeup.clear()
            while self._queue:
                if unwritten is None:
                    count = min(self._batch_size, len(self._queue))
                    unwritten = memoryview(b"".join([encode_event(self._queue[i]) for i in range(count)]))
                written, exc = await asyncio.to_thread(self._write, unwritten)
                # Only the rest of a partly written batch is retried: rewriting it whole would duplicate events.
                unwritten = unwritten[written:]
                if exc is not None:
                    # Keep the batch queued and retry: an event is never dropped because a disk hiccuped.
                    if not self._failing:
                        log.error("audit file %s not writable, retrying: %s", self.path, exc)
                    self._failing = True
                    if self._closing:
                        AUDIT_EVENTS.labels(self.name, "failed").inc(len(self._queue))
                        log.error("audit: %d events could not be written at shutdown", len(self._queue))
                        return
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                self._failing = False
                unwritten = None
                for _ in range(count):
                    self._queue.popleft()
                AUDIT_EVENTS.labels(self.name, "written").inc(count)
                AUDIT_QUEUE_DEPTH.set(len(self._queue))
            if self._closing:
                return

    def _write(self, data: memoryview) -> tuple[int, OSError | None]:
        """Write `data`; (bytes written, None), or (bytes written before the failure, the failure)."""
        assert self._fd is not None
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            return done, exc
        return done, None
