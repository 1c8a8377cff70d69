"""One request's crossing: the trace, the request id and the audit event it accumulates on its way through."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.audit.events import AuditEvent
from gateway.principal import Principal
from gateway.proxy.head import RequestHead
from gateway.tracing import TraceContext, continue_or_start, request_id_from


class Crossing:
    """What one request accumulates on its way through, for the response and the audit event."""

    __slots__ = ("event", "trace", "request_id", "started", "status", "task", "loop")

    def __init__(self, event: AuditEvent, trace: TraceContext, request_id: str, started: float) -> None:
        self.event = event
        self.trace = trace
        self.request_id = request_id
        self.started = started
        self.status = 0  # the status sent to the agent; 0 until the response has started
        # The task serving the request and its loop, found once: asyncio.current_task() and get_running_loop()
        # each cost a getpid() system call on CPython 3.11, which the hot path pays per call.
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None


def open_crossing(head: RequestHead) -> Crossing:
    """Start a crossing: trace and request id from the head, and the audit event that will record it."""
    started = time.perf_counter()
    trace = continue_or_start(head.traceparent, head.tracestate)
    request_id = request_id_from(head.request_id)
    event = AuditEvent(
        event="access",
        ts=time.time(),
        request_id=request_id,
        trace_id=trace.trace_id,
        client_ip=head.peer,
        method=head.method,
        # Only the bytes on the wire: a server that gives no raw_path offers an already-decoded path, which
        # would be decoded twice; an empty path is rejected by normalize_path.
        path=head.raw_path.decode("latin-1"),
    )
    return Crossing(event, trace, request_id, started)


def record_principal(event: AuditEvent, principal: Principal) -> None:
    event.agent = principal.agent
    event.subject = principal.subject
    event.delegation = ",".join(principal.delegation)
    event.granted_scopes = " ".join(sorted(principal.scopes))
    event.jti = principal.jti
