"""The audit event, schema v1 (DESIGN.md "Audit events"): flat string fields, never a token, secret or body."""

from __future__ import annotations

import functools
import itertools
import operator
import os
import socket
import time
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import orjson

SCHEMA_VERSION = "1"
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


class EventIds:
    """Event ids `<prefix>-<n>`: a random prefix and a counter. Unique across processes and restarts, stable for
    one event (a replay carries the same id), and far cheaper than a uuid4 per event. One generator hands out
    increasing numbers, which the Redis sink relies on to recognise what it already wrote (streams.py)."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"


def split_event_id(event_id: str) -> tuple[str, int]:
    """`<prefix>-<n>` → (prefix, n); ValueError for anything else."""
    prefix, _, number = event_id.rpartition("-")
    if not prefix or not number.isdigit():
        raise ValueError(f"not an event id: {event_id!r}")
    return prefix, int(number)


_process_ids = EventIds()


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
    # Rounded to the microsecond first, as datetime.fromtimestamp does, so 0.123 is not printed as .122.
    seconds, micros = divmod(round(epoch * 1_000_000), 1_000_000)
    return f"{_second_text(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(seconds: int) -> str:
    # Events arrive in bursts within the same second: format each second once, not once per event.
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d" % (t[0], t[1], t[2], t[3], t[4], t[5])  # noqa: UP031


def parse_rfc3339(text: str) -> float:
    """The inverse of `rfc3339_ms` (any RFC 3339 offset accepted) → Unix time; ValueError when malformed."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return parsed.timestamp()


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
    # MCP routes: the JSON-RPC method and the tool name, resource URI or prompt name it concerns.
    mcp_method: str = ""
    mcp_name: str = ""
    # Token-service events: the grant type a token came from (authorization_code for a person's client).
    grant: str = ""
    # Operator actions (the admin API, `tollbooth block`): who did it, the admin token's label or "cli".
    by: str = ""
    # A call held for a person's decision: the approval's id (approval.* events, and the crossing it let through).
    approval: str = ""
    # A stable id so a replayed batch can skip what was already written (audit issue: idempotent replay).
    id: str = ""

    def to_fields(self) -> dict[str, str]:
        """The flat string map written to the stream (and the audit file's JSON object); empty fields omitted."""
        out = {"v": SCHEMA_VERSION, "ts": rfc3339_ms(self.ts), "event": self.event, "instance": INSTANCE}
        # Written for speed (every crossing's event comes through here): one attrgetter, strings tested first.
        for name, value in zip(_OPTIONAL, _optional_values(self), strict=True):
            if value.__class__ is str:
                if value:
                    out[name] = value
            elif value is not None:
                out[name] = f"{value:.3f}" if value.__class__ is float else str(value)
        if not self.id:
            self.id = _process_ids.next()
        out["id"] = self.id
        return out

    def flat_fields(self) -> list[str]:
        """The stream entry's fields as [name, value, name, value, ...] (XADD's argument order)."""
        return list(itertools.chain.from_iterable(self.to_fields().items()))


_OPTIONAL = tuple(f.name for f in fields(AuditEvent) if f.name not in ("event", "ts", "id"))
_optional_values = operator.attrgetter(*_OPTIONAL)


def request_event(kind: str, request: Any, status: int, **fields: Any) -> AuditEvent:
    """An event about an HTTP request answered outside the proxy's pipeline (pages, the admin API): `request` is
    a Starlette Request (its client, method and path are recorded)."""
    client = request.client
    return AuditEvent(
        event=kind,
        ts=time.time(),
        client_ip=client.host if client else "",
        method=request.method,
        path=request.url.path,
        status=status,
        **fields,
    )


def config_event(kind: str, *, reason: str, path: str) -> AuditEvent:
    """`config.reloaded` / `config.rejected`: `path` is the file, `reason` what was wrong (or what changed)."""
    return AuditEvent(
        event=kind, ts=time.time(), path=path, reason=reason, decision="allow" if kind == "config.reloaded" else "deny"
    )


def encode_event(event: AuditEvent) -> bytes:
    """One JSON line (the audit file's and the spool's format). Never raises: see `dumps_lenient`."""
    return dumps_lenient(event.to_fields(), orjson.OPT_APPEND_NEWLINE)


def dumps_lenient(value: dict[str, str] | list[str], option: int = 0) -> bytes:
    """JSON for an event's fields. A string no JSON encoder accepts (a lone surrogate) is escaped, not fatal,
    because one bad event must not stop the writer that every later event depends on."""
    try:
        return orjson.dumps(value, option=option)
    except TypeError:
        if isinstance(value, dict):
            return orjson.dumps({k: _escaped(v) for k, v in value.items()}, option=option)
        return orjson.dumps([_escaped(v) for v in value], option=option)


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
