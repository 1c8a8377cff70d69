"""The request head, read once from the ASGI scope: every step reads this, none rescans the headers.

ASGI servers hand over header names lower-cased (uvicorn's parsers do), so names are compared as they come; the
stamp step, which copies the headers upstream, still judges each name case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from gateway.hosts import AllowedHosts
from gateway.proxy.answers import Refusal
from gateway.proxy.authorize import PathRejected, normalize_path


class RequestHead:
    """What the pipeline reads from a request before its body, in one pass, and any framing problem."""

    __slots__ = (
        "method",
        "raw_path",
        "query",
        "http_version",
        "peer",
        "headers",
        "host",
        "origin",
        "traceparent",
        "tracestate",
        "request_id",
        "content_length",
        "chunked",
        "authorization",
        "forwarded_for",
        "connection_options",
        "problem",
    )

    def __init__(
        self,
        *,
        method: str = "",
        raw_path: bytes = b"",
        query: bytes = b"",
        http_version: str = "1.1",
        peer: str = "",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path  # the bytes on the wire, never a server's decoded `path`
        self.query = query
        self.http_version = http_version
        self.peer = peer  # the socket peer's address, "" when the server gives none
        self.headers: list[tuple[bytes, bytes]] = headers if headers is not None else []
        self.host: bytes | None = None
        self.origin: bytes | None = None
        self.traceparent: bytes | None = None
        self.tracestate: bytes | None = None
        self.request_id: bytes | None = None
        self.content_length: bytes | None = None
        self.chunked = False
        self.authorization: list[bytes] = []  # every Authorization field: more than one is refused
        self.forwarded_for = b""  # the last X-Forwarded-For field, which ends the list (RFC 9110 §5.3)
        self.connection_options: frozenset[bytes] = frozenset()
        self.problem: str | None = None

    @property
    def has_body(self) -> bool:
        return self.content_length is not None or self.chunked


def read_head(scope: MutableMapping[str, Any]) -> RequestHead:
    """The head of an ASGI HTTP request."""
    client = scope.get("client")
    head = RequestHead(
        method=scope["method"],
        raw_path=scope.get("raw_path") or b"",
        query=scope.get("query_string", b""),
        http_version=scope.get("http_version", "1.1"),
        peer=client[0] if client else "",
        headers=scope["headers"],
    )
    scan_headers(head, head.headers)
    return head


def scan_headers(head: RequestHead, headers: Iterable[tuple[bytes, bytes]]) -> None:
    hosts = 0
    connection: list[bytes] = []
    for name, value in headers:
        if name == b"traceparent":
            # Trace Context §3.2: two traceparent headers are invalid (b"" never parses: a new trace starts).
            head.traceparent = b"" if head.traceparent is not None else value
        elif name == b"tracestate":
            # Trace Context §3.3: several tracestate headers are one list, joined in order.
            head.tracestate = value if head.tracestate is None else head.tracestate + b"," + value
        elif name == b"x-request-id":
            # Two ids are no id: b"" is malformed, so a fresh one is made.
            head.request_id = b"" if head.request_id is not None else value
        elif name == b"authorization":
            head.authorization.append(value)
        elif name == b"content-length":
            head.content_length = value
        elif name == b"transfer-encoding":
            # RFC 9112 §6.3: a request whose final coding is not chunked cannot be framed. The server's parser
            # notices only after the app has started, so refuse here, before anything goes upstream.
            if value.strip().lower() != b"chunked" or head.chunked:
                head.problem = "unsupported Transfer-Encoding: only a single chunked coding is accepted"
            head.chunked = True
        elif name == b"host":
            hosts += 1
            # Two Hosts (allowed by HTTP/1.0 framing) are no Host: b"" is malformed.
            head.host = b"" if head.host is not None else value
        elif name == b"origin":
            head.origin = b"" if head.origin is not None else value
        elif name == b"x-forwarded-for":
            head.forwarded_for = value
        elif name == b"connection":
            connection.append(value)
    if connection:
        head.connection_options = connection_options(connection)
    if hosts != 1 and head.http_version == "1.1":
        # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without exactly one Host.
        head.problem = "an HTTP/1.1 request needs exactly one Host header"


def connection_options(values: Iterable[bytes]) -> frozenset[bytes]:
    """The names Connection fields list: RFC 9110 §7.6.1 says they are removed with it before forwarding.

    Connection = #connection-option: comma-separated tokens, case-insensitive, optional whitespace around.
    """
    named: set[bytes] = set()
    for value in values:
        for option in value.split(b","):
            option = option.strip(b" \t").lower()
            if option:
                named.add(option)
    return frozenset(named)


def checked_path(head: RequestHead, allowed_hosts: AllowedHosts) -> str:
    """The normalized path of a request whose head can be framed and is addressed to us; Refusal otherwise."""
    if head.problem is not None:
        raise Refusal(400, "invalid_request", head.problem, reason="bad_request")
    # DNS rebinding: a Host or Origin we do not answer for is refused before any other step, on every path.
    refused = allowed_hosts.refusal(head.host, head.origin)
    if refused is not None:
        raise Refusal(refused.status, refused.error, refused.description, reason=refused.reason)
    try:
        return normalize_path(head.raw_path)
    except PathRejected as exc:
        raise Refusal(400, "invalid_request", exc.reason, reason="path_rejected") from None
