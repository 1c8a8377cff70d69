"""W3C Trace Context level 1: continue the caller's trace or start one, one new span per proxied request.

Section names below are those of https://www.w3.org/TR/trace-context-1/ ("traceparent Header Field Values",
"Versioning of traceparent", "Tracestate Header").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# HEXDIGLC: "traceparent Header Field Values" allows lowercase hex only, so "AB" makes the header invalid.
_HEXDIGLC = b"0123456789abcdef"
# The sampled flag is the least significant bit: odd last hex digit ("Sampled flag").
_SAMPLED_LAST_DIGIT = frozenset(b"13579bdf")
_DASH = ord("-")
# version(2) "-" trace-id(32) "-" parent-id(16) "-" trace-flags(2)
_VERSION_00_LENGTH = 55
_ZERO_TRACE_ID = b"0" * 32
_ZERO_PARENT_ID = b"0" * 16
_ZERO_TRACE_ID_STR = "0" * 32
_ZERO_SPAN_ID_STR = "0" * 16
# When Tollbooth starts a trace it has made a definitive recording decision: every request is audited with its
# trace-id, and "Sampled flag" says such a decision SHOULD be reflected in the flag.
_FLAGS_STARTED = "01"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The trace this request belongs to, as sent upstream and echoed to the agent.

    `span_id` is the parent-id Tollbooth sends upstream: a fresh id for the gateway's own span, never the
    caller's parent-id. `flags` carries only the sampled bit: level 1 "Other Flags" says vendors MUST set the
    undefined bits to zero. `tracestate` is the caller's, unchanged, and only when its traceparent was valid.
    """

    trace_id: str
    span_id: str
    flags: str
    tracestate: bytes | None

    def traceparent(self) -> bytes:
        # Always version 00: "Versioning of traceparent" says to emit the highest version we know.
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}".encode("ascii")


def _new_id(size: int, zero: str) -> str:
    # Trace ids need to be unique, not secret (Trace Context §"Security considerations": they carry no
    # authority), so the Mersenne Twister serves: no system call per request, unlike os.urandom.
    # An all-zero id is invalid ("trace-id", "parent-id"); 2^-64 at worst, but a guarantee costs one compare.
    while True:
        value = f"{random.getrandbits(size * 8):0{size * 2}x}"
        if value != zero:
            return value


def _is_lower_hex(value: bytes) -> bool:
    # bytes.translate deletes every lowercase hex digit in C; anything left over is not HEXDIGLC.
    return not value.translate(None, _HEXDIGLC)


def _parse(traceparent: bytes) -> tuple[str, str] | None:
    """Return (trace_id, flags) of a usable traceparent, None when the trace must be restarted."""
    # OWS around a field value is not part of it (RFC 9110 §5.5); servers usually strip it already.
    value = traceparent.strip(b" \t")
    size = len(value)
    if size < _VERSION_00_LENGTH or value[2] != _DASH or value[35] != _DASH or value[52] != _DASH:
        return None
    version = value[:2]
    if not _is_lower_hex(version) or version == b"ff":
        return None
    if version == b"00":
        if size != _VERSION_00_LENGTH:  # version 00 has exactly four fields
            return None
    elif size > _VERSION_00_LENGTH and value[55] != _DASH:
        # "Versioning of traceparent": a higher version may append fields, but only after a dash.
        return None
    trace_id = value[3:35]
    parent_id = value[36:52]
    flags = value[53:55]
    if not _is_lower_hex(trace_id + parent_id + flags):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    return trace_id.decode("ascii"), "01" if flags[1] in _SAMPLED_LAST_DIGIT else "00"


def continue_or_start(traceparent: bytes | None, tracestate: bytes | None) -> TraceContext:
    """Continue a valid incoming trace (same trace-id, new span id), else start a new trace.

    Invalid, hence restarted: wrong length or shape, non-hex or uppercase hex, all-zero trace-id or parent-id,
    version "ff", version 00 with extra fields, a higher version whose fourth field is not followed by a dash
    or the end. Higher versions (01-fe) are read as their first four fields ("Versioning of traceparent").

    The sampled bit of a continued trace is kept, so upstream tracers respect the caller's decision; a trace
    we start is sampled ("01", see `_FLAGS_STARTED`). `tracestate` is passed through unchanged with a valid
    traceparent and dropped otherwise: "Tracestate Header" says a vendor that failed to parse traceparent
    MUST NOT parse tracestate. An empty, oversized (> 512) or non-ASCII tracestate is dropped too.
    """
    parsed = _parse(traceparent) if traceparent else None
    span_id = _new_id(8, _ZERO_SPAN_ID_STR)
    if parsed is None:
        return TraceContext(_new_id(16, _ZERO_TRACE_ID_STR), span_id, _FLAGS_STARTED, None)
    trace_id, flags = parsed
    if tracestate is not None and (len(tracestate) > _TRACESTATE_MAX or tracestate.translate(None, _TRACESTATE_CHARS)):
        # "Tracestate Limits": 512 characters must propagate; past that, or with bytes no list-member may hold
        # (controls, obs-text), it is dropped whole rather than relayed to the upstream as sent.
        tracestate = None
    return TraceContext(trace_id, span_id, flags, tracestate or None)


_TRACESTATE_MAX = 512
_TRACESTATE_CHARS = bytes(range(0x20, 0x7F)) + b"\t"


# Request ids we keep: 1-128 of [A-Za-z0-9._:-]. Enough for UUIDs, ULIDs and "svc:123" styles, and free of
# anything that could split a header, a log line or an audit field.
_REQUEST_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
_REQUEST_ID_MAX = 128


def _new_request_id() -> str:
    # A version-4 UUID (RFC 9562 §5.4), as uuid.uuid4().hex. Like the trace ids, a request id must be unique, not
    # secret (it authorizes nothing), so it comes from the Mersenne Twister: os.urandom releases the GIL for its
    # system call, and with the audit writer's thread waiting for the GIL that release cost ~18 µs a request
    # under load, not the call's 0.3 µs.
    raw = bytearray(random.getrandbits(128).to_bytes(16, "big"))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def request_id_from(value: bytes | None) -> str:
    """Keep a well-formed incoming X-Request-Id (1-128 chars of [A-Za-z0-9._:-]), else make a uuid4 hex.

    The caller's id is kept so its logs and ours correlate; anything else (empty, too long, spaces, CR/LF,
    non-ASCII, quotes) is replaced rather than cleaned, since a partial id would correlate with nothing.
    """
    if value and len(value) <= _REQUEST_ID_MAX and not value.translate(None, _REQUEST_ID_CHARS):
        return value.decode("ascii")
    return _new_request_id()
