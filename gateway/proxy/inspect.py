"""Inspect: on an MCP route, the POST body is read whole (up to `max_message_bytes`), parsed the strict way and
decided by the route's `mcp:` rules before anything is forwarded; the exact bytes that were checked are what goes
upstream. GET (the server's event stream) and DELETE (ending a session) carry no message: the route's own checks
are all they need. Other routes never come here and keep streaming their bodies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.audit.events import AuditEvent
from gateway.mcp.lists import LIST_METHODS, ListFilter
from gateway.mcp.message import McpMessage, MessageRefused, check_content_type, check_headers, parse_message
from gateway.mcp.rules import DENIED, Rule, decide
from gateway.metrics import MCP_DECISIONS, child
from gateway.principal import Principal
from gateway.proxy.admit import body_too_large
from gateway.proxy.answers import Refusal
from gateway.proxy.authorize import Route
from gateway.proxy.head import RequestHead

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


def _mcp_headers(head: RequestHead) -> tuple[bytes | None, list[bytes], list[bytes]]:
    """Content-Type (the first), and every Mcp-Method and Mcp-Name, in one pass over the headers."""
    content_type: bytes | None = None
    methods: list[bytes] = []
    names: list[bytes] = []
    for key, value in head.headers:
        if key == b"content-type":
            content_type = value if content_type is None else content_type
        elif key == b"mcp-method":
            methods.append(value)
        elif key == b"mcp-name":
            names.append(value)
    return content_type, methods, names


async def read_body(head: RequestHead, receive: Receive, limit: int) -> bytes:
    """The whole request body, at most `limit` bytes (413 beyond), for a step that must see all of it first."""
    if head.content_length is not None and int(head.content_length) > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(400, "invalid_request", "the client went away mid-body", reason="client_disconnected")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _refusal(verdict_reason: str, description: str, scopes: tuple[str, ...], message: McpMessage) -> Refusal:
    if verdict_reason == "insufficient_scope":
        # MCP clients step up on this challenge; the route's scopes come first, then the rule's.
        return Refusal(
            403,
            "insufficient_scope",
            description,
            reason="insufficient_scope",
            challenge="insufficient_scope",
            scope=scopes,
            rpc=(DENIED, message.id),
        )
    return Refusal(403, "access_denied", description, reason=verdict_reason, rpc=(DENIED, message.id))


# JSON-RPC methods counted by name in the metrics; any other is "other" (a caller can send any string).
_COUNTED_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "notification",
        "response",
    }
)


def _count(route: str, message: McpMessage | None, rule: str, allow: bool, reason: str) -> None:
    """One decision in tollbooth_mcp_decisions_total; `message` None: refused before it could be read."""
    if message is None:
        method = "invalid"
    else:
        method = (message.method if message.kind == "request" else message.kind) or "other"
        method = method if method in _COUNTED_METHODS else "other"
    child(MCP_DECISIONS, route, method, rule, "allow" if allow else "deny", reason).inc()


async def inspect_mcp(
    head: RequestHead,
    route: Route,
    principal: Principal,
    receive: Receive,
    event: AuditEvent,
    *,
    max_body_bytes: int,
) -> tuple[bytes | None, ListFilter | None, McpMessage | None, Rule | None]:
    """Decide one MCP request: the body it read and checked (None for a GET or DELETE, whose body the forward step
    reads as usual), for a list request the filter its answer goes through, and the message with the rule that
    decided it (the hold step reads its `approval`)."""
    rules = route.mcp
    assert rules is not None
    if head.method != "POST":
        # Only a POST carries a message. A body on any other method would reach the server unread: a server that
        # took it as a message would have been sent a call no rule decided.
        if head.chunked or (head.content_length is not None and head.content_length.strip() != b"0"):
            _count(route.name, None, "none", False, "mcp_unexpected_body")
            raise Refusal(400, "invalid_request", f"an MCP {head.method} carries no body", reason="mcp_unexpected_body")
        # The GET stream may replay stored answers (Last-Event-ID), lists among them: they are filtered too.
        return None, ListFilter(None, None, rules, principal) if head.method == "GET" else None, None, None
    limit = min(rules.max_message_bytes, max_body_bytes)
    try:
        content_type, mcp_methods, mcp_names = _mcp_headers(head)
        check_content_type(content_type)
        body = await read_body(head, receive, limit)
        message = parse_message(body)
        check_headers(message, mcp_methods, mcp_names)
    except MessageRefused as refused:
        _count(route.name, None, "none", False, refused.reason)
        raise Refusal(
            refused.status,
            "invalid_request",
            refused.description,
            reason=refused.reason,
            rpc=(refused.code, refused.request_id),
        ) from None
    event.mcp_method = message.method or message.kind
    event.mcp_name = message.name or ""
    verdict = decide(rules, route.scopes, message, principal)
    _count(route.name, message, verdict.rule.glob if verdict.rule else "none", verdict.allow, verdict.reason)
    if not verdict.allow:
        raise _refusal(verdict.reason, verdict.description, verdict.scopes, message)
    lists = None
    if message.kind == "request" and message.method in LIST_METHODS:
        lists = ListFilter(message.method, message.id, rules, principal)
    return body, lists, message, verdict.rule
