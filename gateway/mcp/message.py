"""One MCP POST body → the JSON-RPC message it holds, read the strict way, or `MessageRefused`.

Parser differentials are how requests slip past MCP gateways: the gateway reads one thing, the server another.
So the body must be exactly one JSON object in UTF-8, with no duplicate keys, no NaN/Infinity, no lone
surrogates and bounded nesting, and the name a rule is decided by must be a string. `Mcp-Method`/`Mcp-Name`
headers never decide anything: when sent they must say what the body says.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

# JSON-RPC 2.0 §5.1 codes, and MCP's for a header that disagrees with the body.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
HEADER_MISMATCH = -32020

MAX_DEPTH = 64
_ESCAPED_COLON = re.compile(rb"\\u003a", re.IGNORECASE)
# Dot segments (`/../`, `/.` at the end), their encodings, encoded slashes, backslashes and controls.
_AMBIGUOUS_URI = re.compile(r"(^|/)\.\.?(/|$|[?#])|%2e|%2f|%5c|\\|[\x00-\x1f\x7f]", re.IGNORECASE)
# The method → (rule kind, the params field naming what the rule is about).
NAMED_METHODS: dict[str, tuple[Literal["tools", "resources", "prompts"], str]] = {
    "tools/call": ("tools", "name"),
    "resources/read": ("resources", "uri"),
    "resources/subscribe": ("resources", "uri"),
    "resources/unsubscribe": ("resources", "uri"),
    "prompts/get": ("prompts", "name"),
}


class MessageRefused(Exception):
    """A body or header the gateway will not decide on: answered 400 (or 415) with a JSON-RPC error."""

    def __init__(self, status: int, code: int, reason: str, description: str, request_id: Any = None) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.reason = reason
        self.description = description
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class McpMessage:
    """What the rules look at. `kind` "response" is a client's answer to a server request (sampling, roots)."""

    kind: Literal["request", "notification", "response"]
    method: str | None
    id: Any
    name: str | None  # the tool or prompt name, or the resource URI, for the methods in NAMED_METHODS
    arguments: Any  # tools/call's `arguments`, else None


def check_content_type(value: bytes | None) -> None:
    """Only `application/json` (in UTF-8) is read: anything else could be parsed differently upstream."""
    if value == b"application/json":
        return
    media, _, params = (value or b"").decode("latin-1").partition(";")
    charset = next(
        (
            p.split("=", 1)[1].strip().strip('"').lower()
            for p in params.split(";")
            if "=" in p and p.split("=", 1)[0].strip().lower() == "charset"
        ),
        "utf-8",
    )
    if media.strip().lower() != "application/json" or charset != "utf-8":
        raise MessageRefused(
            415, INVALID_REQUEST, "unsupported_media_type", "an MCP message is sent as Content-Type: application/json"
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {duplicate!r}")
    return obj


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return deepest


def _refused(detail: str) -> MessageRefused:
    return MessageRefused(400, PARSE_ERROR, "mcp_parse_error", f"the body is not one JSON value: {detail}")


def parse_json(body: bytes) -> Any:
    """The one JSON value of `body`, or MessageRefused (parse error).

    orjson refuses what is not strict JSON in UTF-8 (a BOM, lone surrogates, NaN or Infinity, anything after the
    value) but silently keeps the last of duplicate keys, which a server may read the other way. Every member has
    one ':' outside strings, and orjson writes a string's ':' as it is, so a body without duplicates has exactly as
    many ':' as orjson's own rendering of what it parsed, and one with duplicates has more (the dropped members'
    colons). That holds while no string spells a ':' as an escape; a body that does is checked key by key with the
    standard library instead.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _refused(str(exc).split(":")[0]) from None
    # Walking the tree costs more than parsing it: only a body with that many brackets can be that deep.
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise _refused(f"nested deeper than {MAX_DEPTH} levels")
    # A one-byte search runs at memchr speed; most bodies have no backslash and skip the escape search.
    escaped_colon = b"\\" in body and _ESCAPED_COLON.search(body) is not None
    if escaped_colon or body.count(b":") != orjson.dumps(value).count(b":"):
        try:
            json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
        except ValueError as exc:
            raise _refused(str(exc)) from None
    return value


def _valid_id(value: Any) -> bool:
    # MCP: a request id is a string or an integer, never null; JSON-RPC discourages fractions.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _invalid(description: str, request_id: Any = None) -> MessageRefused:
    return MessageRefused(400, INVALID_REQUEST, "mcp_invalid_message", description, request_id)


def parse_message(body: bytes) -> McpMessage:
    """The JSON-RPC message in one POST body (a request, a notification or a response), or MessageRefused."""
    value = parse_json(body)
    if isinstance(value, list):
        raise _invalid("a batch (JSON array) is not accepted: send one JSON-RPC message per POST")
    if not isinstance(value, dict):
        raise _invalid("the body must be one JSON-RPC message (a JSON object)")
    request_id = value.get("id") if _valid_id(value.get("id")) else None
    if value.get("jsonrpc") != "2.0":
        raise _invalid('a JSON-RPC message carries "jsonrpc": "2.0"', request_id)
    method = value.get("method")
    if "method" in value:
        if not isinstance(method, str) or not method:
            raise _invalid('"method" must be a non-empty string', request_id)
        if "result" in value or "error" in value:
            raise _invalid("a message is a request or a response, not both", request_id)
        if "id" in value and not _valid_id(value["id"]):
            raise _invalid('"id" must be a string or an integer', None)
        params = value.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise _invalid('"params" must be an object', request_id)
        kind: Literal["request", "notification"] = "request" if "id" in value else "notification"
        if kind == "notification" and method in NAMED_METHODS:
            # Without an id it would be a notification, which rules do not decide, yet a dispatcher may run it.
            raise _invalid(f"{method} is a request: it needs an id")
        name, arguments = _named(method, params, request_id)
        return McpMessage(kind, method, value.get("id"), name, arguments)
    if "id" not in value or ("result" in value) == ("error" in value):
        raise _invalid("neither a request, a notification nor a response", request_id)
    if not (_valid_id(value["id"]) or value["id"] is None):
        raise _invalid('"id" must be a string or an integer', None)
    return McpMessage("response", None, value["id"], None, None)


def _named(method: str, params: Any, request_id: Any) -> tuple[str | None, Any]:
    named = NAMED_METHODS.get(method)
    if named is None:
        return None, None
    field = named[1]
    if not isinstance(params, dict) or not isinstance(params.get(field), str):
        raise MessageRefused(
            400, INVALID_PARAMS, "mcp_invalid_params", f'{method} needs a string "params.{field}"', request_id
        )
    if field == "uri" and _AMBIGUOUS_URI.search(params["uri"]):
        # A server that normalizes the URI would read another resource than the one the rules matched.
        raise MessageRefused(
            400,
            INVALID_PARAMS,
            "mcp_invalid_params",
            "a resource URI with dot segments, encoded dots or slashes, or a backslash is ambiguous",
            request_id,
        )
    arguments = params.get("arguments")
    if method == "tools/call" and arguments is not None and not isinstance(arguments, dict):
        raise MessageRefused(
            400, INVALID_PARAMS, "mcp_invalid_params", 'tools/call "params.arguments" must be an object', request_id
        )
    return params[field], arguments


_BASE64_PREFIX, _BASE64_SUFFIX = "=?base64?", "?="


def header_text(value: bytes, request_id: Any = None) -> str:
    """An Mcp-Name value: plain, or `=?base64?...?=` for a name a header cannot carry as it is."""
    text = value.decode("latin-1").strip()
    if text.startswith(_BASE64_PREFIX) and text.endswith(_BASE64_SUFFIX):
        encoded = text[len(_BASE64_PREFIX) : -len(_BASE64_SUFFIX)]
        try:
            return base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise MessageRefused(
                400, HEADER_MISMATCH, "mcp_header_mismatch", "Mcp-Name holds malformed base64", request_id
            ) from None
    return text


def check_headers(message: McpMessage, mcp_method: list[bytes], mcp_name: list[bytes]) -> None:
    """`Mcp-Method` and `Mcp-Name`, when sent (once each), must say what the body says."""
    for header, values, body_value in (
        ("Mcp-Method", mcp_method, message.method),
        ("Mcp-Name", mcp_name, message.name),
    ):
        if not values:
            continue
        if len(values) > 1:
            raise MessageRefused(
                400, HEADER_MISMATCH, "mcp_header_mismatch", f"{header} sent more than once", message.id
            )
        sent = header_text(values[0], message.id) if header == "Mcp-Name" else values[0].decode("latin-1").strip()
        if sent != body_value:
            raise MessageRefused(
                400, HEADER_MISMATCH, "mcp_header_mismatch", f"{header} does not match the message body", message.id
            )
