"""The config's value types, each parsed and checked where it is read: durations, rates, byte sizes, listen
addresses, URLs, host names, header names and values, scopes, JSON Schemas.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import jsonschema_rs
from pydantic import (
    BeforeValidator,
    WithJsonSchema,
)

from gateway.hosts import parse_authority
from gateway.wire import SCOPE_TOKEN

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `24h`, `250ms`, or a plain number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 24h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: use 30s, 5m, 24h, or a number of seconds")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a duration: it must be a positive, finite number of seconds or like 30s")
    return seconds


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": _DURATION.pattern},
    ],
    "description": "a duration: 250ms, 30s, 5m, 24h, 7d, or a number of seconds",
}
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3}


def parse_byte_size(value: Any) -> int:
    """`1MiB`, `64KiB`, `500KB`, or a plain number of bytes → bytes (positive)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a size is a number of bytes or a string like 64KiB, 1MiB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size: use 64KiB, 1MiB, 500KB, or a number of bytes")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size <= 0:
        raise ValueError(f"{value!r}: a size must be positive")
    return size


_SIZE_SCHEMA = {
    "anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "string", "pattern": _SIZE.pattern}],
    "description": "a size: 64KiB, 1MiB, 500KB, or a number of bytes",
}
ByteSize = Annotated[int, BeforeValidator(parse_byte_size), WithJsonSchema(_SIZE_SCHEMA)]


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day|s|m|h|d)\s*$")
_RATE_WINDOW = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600, "day": 86400, "d": 86400}


@dataclass(frozen=True)
class RateLimit:
    """`60/minute` → 60 requests per 60-second window."""

    limit: int
    window_seconds: int

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_seconds}s"


# Budgets are kept in microseconds (gateway.state.gcra): N × interval must stay exact in the Lua script's doubles.
MAX_RATE_LIMIT = 1_000_000_000


def parse_rate_limit(value: Any) -> RateLimit | None:
    if value is None or isinstance(value, RateLimit):
        return value
    match = _RATE.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a rate limit: use a form like 60/minute or 10/second")
    if int(match.group(1)) > MAX_RATE_LIMIT:
        raise ValueError(f"{value!r}: at most {MAX_RATE_LIMIT:,} per window; leave rate_limit out for no limit")
    return RateLimit(int(match.group(1)), _RATE_WINDOW[match.group(2)])


# In YAML a rate limit is a string; the RateLimit it becomes is not what an editor should check against.
_RATE_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": _RATE.pattern}, {"type": "null"}],
    "default": None,
    "description": "requests per agent: 60/minute, 10/second, 1000/hour, 5000/day",
}

RateSetting = Annotated[RateLimit | None, BeforeValidator(parse_rate_limit), WithJsonSchema(_RATE_SCHEMA)]


def _listen(value: Any) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return str(value)


Listen = Annotated[str, BeforeValidator(_listen)]


def _http_url(value: Any) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL like https://api.example.com")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    if parts.username is not None or parts.password is not None:
        # The userinfo would travel in the Host header and in logs; credentials belong in `headers`.
        raise ValueError(
            f"{parts.scheme}://…@{parts.hostname}: no user or password in the URL; "
            "put credentials in the upstream's `headers`"
        )
    try:
        parts.port  # noqa: B018  (urlsplit checks the port only when asked)
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return text.rstrip("/")


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def _allowed_host(value: Any) -> str:
    text = str(value)
    if text == "*" or text.startswith("*."):
        # No wildcard: it would switch the DNS-rebinding check off for every name an attacker can point here.
        raise ValueError(f"{text!r}: no wildcards; list each name the gateway is reached by")
    if "://" in text:
        raise ValueError(f"{text!r}: write the host (and port), not a URL: {urlsplit(text).netloc or 'gw.example.com'}")
    if not text.isascii() or parse_authority(text.encode("ascii")) is None:
        raise ValueError(
            f"{text!r} is not a host or host:port (gw.example.com, gw.example.com:8443, 10.0.0.7, [::1]:8080; "
            "IDNA names as xn--)"
        )
    return text


AllowedHost = Annotated[str, BeforeValidator(_allowed_host)]

# RFC 9110 §5.6.2 token: what a field name may be.
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(value: Any) -> str:
    text = str(value)
    if not _FIELD_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a header name (letters, digits and !#$%&'*+.^_`|~- only)")
    # The proxy judges incoming names with '_' read as '-' (CGI servers do): an entry spelled x_debug_user must
    # strip X-Debug-User and x_debug_user alike, so it is kept in that one spelling.
    return text.lower().replace("_", "-")


HeaderName = Annotated[str, BeforeValidator(_header_name)]


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value has no CR, LF, NUL or other controls (HTAB aside).
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the proxy writes itself (stamp.py): an injected copy would duplicate or contradict them (two Host or
# Content-Length headers are request smuggling material; an injected X-Tollbooth-Agent would spoof identity).
_GATEWAY_OWNED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "traceparent",
        "tracestate",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    }
)


def _is_latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def check_scopes(scopes: list[str]) -> list[str]:
    for scope in scopes:
        if not SCOPE_TOKEN.match(scope):
            raise ValueError(f"{scope!r} is not a valid scope (RFC 6749 §3.3: no spaces, quotes or backslashes)")
    return scopes


def check_injected_headers(headers: dict[str, str]) -> dict[str, str]:
    """An upstream's `headers`: valid names and values, none the gateway writes itself, none given twice."""
    seen: dict[str, str] = {}
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name (RFC 9110 §5.1: letters, digits, -, no spaces)")
        lower = name.lower()
        if lower in _GATEWAY_OWNED_HEADERS or lower.startswith("x-tollbooth-"):
            raise ValueError(
                f"{name}: the gateway sets this header itself (framing, routing, tracing or identity); "
                "remove it from `headers`"
            )
        if lower in seen:
            raise ValueError(f"{name}: given twice (also as {seen[lower]}); header names ignore case")
        seen[lower] = name
        if _HEADER_VALUE_FORBIDDEN.search(value):
            # A CR or LF would end the header and start another one (request splitting) upstream.
            raise ValueError(f"{name}: the value has a line break, NUL or other control character")
        if not value.isascii() and not _is_latin1(value):
            raise ValueError(f"{name}: the value has characters a header cannot carry (use ASCII)")
    return headers


def _references(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["$ref"]] if isinstance(schema.get("$ref"), str) else []
        return found + [ref for value in schema.values() for ref in _references(value)]
    if isinstance(schema, list):
        return [ref for item in schema for ref in _references(item)]
    return []


def check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) that compiles, referring only within itself."""
    outside = [ref for ref in _references(schema) if not ref.startswith("#")]
    if outside:
        # A remote $ref would be fetched when the schema compiles: config loading must never reach the network.
        raise ValueError(f"$ref {outside[0]!r} points outside the schema; only local references (#/...) are allowed")
    try:
        jsonschema_rs.meta.validate(schema)
        jsonschema_rs.validator_for(schema)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"not a valid JSON Schema: {first}") from None
    return schema
