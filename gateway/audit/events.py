"""The audit event, schema v1 (DESIGN.md "Audit events"): flat string fields, never a token, secret or body."""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime

SCHEMA_VERSION = "1"
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"
# Event ids: a random per-process prefix and a counter. Unique across processes and restarts, stable for
# one event (a replay carries the same id), and far cheaper than a uuid4 per event.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


def _next_event_id() -> str:
    return f"{_ID_PREFIX}-{next(_ids)}"


EVENT_KINDS = frozenset(
    {
        "access",
        "token.issued",
        "token.refreshed",
        "token.revoked",
        "token.denied",
        "config.reloaded",
        "config.rejected",
    }
)


def rfc3339_ms(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-25T13:28:15.123Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(slots=True)
class AuditEvent:
    """One crossing or token-service action. Field names are the stream's contract: rename none."""

    event: str
    ts: float
    request_id: str = ""
    trace_id: str = ""
    agent: str = ""
    subject: str = ""
    delegation: str = ""
    client_ip: str = ""
    method: str = ""
    path: str = ""
    route: str = ""
    upstream: str = ""
    decision: str = ""
    reason: str = ""
    required_scopes: str = ""
    granted_scopes: str = ""
    status: int | None = None
    duration_ms: float | None = None
    upstream_ms: float | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    jti: str = ""
    # A stable id so a replayed batch can skip what was already written (audit issue: idempotent replay).
    id: str = ""

    def to_fields(self) -> dict[str, str]:
        """The flat string map written to the stream; empty fields are omitted."""
        out = {"v": SCHEMA_VERSION, "ts": rfc3339_ms(self.ts), "event": self.event, "instance": INSTANCE}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is None or value == "":
                continue
            out[name] = f"{value:.3f}" if isinstance(value, float) else str(value)
        if not self.id:
            self.id = _next_event_id()
        out["id"] = self.id
        return out


_OPTIONAL = tuple(f.name for f in fields(AuditEvent) if f.name not in ("event", "ts", "id"))


def config_event(kind: str, *, reason: str, path: str) -> AuditEvent:
    """`config.reloaded` / `config.rejected`: `path` is the file, `reason` what was wrong (or what changed)."""
    return AuditEvent(
        event=kind, ts=time.time(), path=path, reason=reason, decision="allow" if kind == "config.reloaded" else "deny"
    )
