"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, made strict about what it accepts and in what order
it answers.

The stock protocol leaves gaps that matter for a gateway:
- llhttp accepts framing RFC 9112 calls faulty: Transfer-Encoding in an HTTP/1.0 request (§6.1), codings before a
  final chunked (`gzip, chunked`), and versions other than 1.0 and 1.1 (HTTP/2.0, HTTP/0.9). Each is refused here,
  before any app runs, with `Connection: close`: two parsers reading one request two ways is request smuggling.
- Any `Upgrade` (WebSocket, h2c, anything) and CONNECT are refused, never tunnelled: once a connection switches
  protocols, nothing after it is checked, so a proxy that tunnels has no rules at all.
- Its 400 is written the moment the parser fails, even while an earlier pipelined request is still being
  answered: the agent would read the error first and believe its earlier write failed. Every refusal here waits
  for the answers to the requests before it (RFC 9112 §9.3.2).
- It has no limit on the header section (431 here), and it appends chunked trailer fields to the headers, so a
  trailer `Authorization` would authenticate a request that had none (RFC 9110 §6.5.1: trailers are not headers).
- On shutdown it closes every connection that looks idle, including one whose next request already sits unread in
  the socket: the agent gets a reset for a request it sent. Here an idle connection stays open for a short grace,
  answers what arrives with `Connection: close`, and is closed only once nothing is waiting.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How long a connection that is idle when the gateway stops still reads: a request the agent wrote just before it
# saw the stop is answered (with Connection: close) rather than reset. Load balancers re-send within milliseconds.
STOP_GRACE_SECONDS = 1.0
_RECHECK_SECONDS = 0.05


@dataclass(frozen=True)
class HeadRefused:
    """An answer the HTTP layer gives itself, before any app runs; always followed by closing the connection."""

    status: int
    error: str
    description: str
    reason: str  # the audit event's reason

    def response(self) -> bytes:
        body = json.dumps({"error": self.error, "error_description": self.description}).encode()
        return (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (self.status, _PHRASES[self.status], len(body), body)
        )


_PHRASES = {
    400: b"Bad Request",
    403: b"Forbidden",
    431: b"Request Header Fields Too Large",
    505: b"HTTP Version Not Supported",
}

_UPGRADE = HeadRefused(
    403, "upgrade_not_supported", "protocol upgrades (WebSocket, h2c) are not proxied", "upgrade_not_supported"
)
_CONNECT = HeadRefused(
    400, "invalid_request", "CONNECT is not supported: this is not a forward proxy", "connect_not_supported"
)
_VERSION = HeadRefused(
    505, "http_version_not_supported", "only HTTP/1.1 and HTTP/1.0 are served", "http_version_not_supported"
)
_TE_IN_1_0 = HeadRefused(400, "invalid_request", "Transfer-Encoding in an HTTP/1.0 request", "malformed_request")
_TE_CODING = HeadRefused(
    400,
    "invalid_request",
    "unsupported Transfer-Encoding: only a single chunked coding is accepted",
    "malformed_request",
)
# llhttp's messages for a version it cannot parse (HTTP/1.2, HTTP/3.0) and for the HTTP/2 preface (PRI * HTTP/2.0).
_VERSION_ERRORS = frozenset({"Invalid HTTP version", "Pause on PRI/Upgrade"})


def framing_problem(method: bytes, version: str, transfer_encoding: bytes | None, upgrade: bool) -> HeadRefused | None:
    """What is wrong with a request head that llhttp accepted, or None. `transfer_encoding` is the field's value
    (b"\\0" when it came twice), `upgrade` whether an Upgrade field was sent at all."""
    if version not in ("1.1", "1.0"):
        return _VERSION
    if upgrade:
        return _UPGRADE
    if method == b"CONNECT":
        return _CONNECT
    if transfer_encoding is not None:
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (1.0 has no chunked coding).
        if version == "1.0":
            return _TE_IN_1_0
        # §6.3: only a final chunked frames a request; a coding before it (`gzip, chunked`) would reach an upstream
        # that may decode or frame it another way. Codings are case-insensitive (§7).
        if transfer_encoding.strip(b" \t").lower() != b"chunked":
            return _TE_CODING
    return None


def authority_as_host(target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """RFC 9112 §3.2.2: with an absolute-form target, the target's authority is the host and Host is ignored.

    The Host/Origin check (gateway/hosts.py) reads Host, so it is made to say what the target says: otherwise
    `GET http://evil.example/ HTTP/1.1` with `Host: gw.example` would pass for a request to gw.example. A request
    without exactly one Host is left as it is, for the proxy to refuse.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or not scheme.isalpha():
        return  # origin-form's cousins ("*", authority-form) are refused elsewhere
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0].split(b"#", 1)[0]
    hosts = [i for i, (name, _) in enumerate(headers) if name == b"host"]
    if len(hosts) == 1:
        headers[hosts[0]] = (b"host", authority)


def parse_failure(message: str) -> HeadRefused:
    """The answer to a request llhttp could not parse; `message` is llhttp's (a fixed text, never request bytes)."""
    if message in _VERSION_ERRORS:
        return _VERSION
    return HeadRefused(400, "invalid_request", f"malformed request: {message}", "malformed_request")


class RequestRefused(Exception):
    """Raised from a parser callback to stop llhttp once the request is refused."""


# Called for a request the HTTP layer refuses before any app runs: (client, target so far, status, reason).
OnRefuse = Callable[[tuple[str, int] | None, bytes, int, str], None]


def guarded_protocol(
    max_header_bytes: int, max_headers: int, on_refuse: OnRefuse | None = None
) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol class with the checks above, reporting each refusal to `on_refuse` so that it is audited
    like any other request."""
    too_large = HeadRefused(
        431,
        "request_header_fields_too_large",
        f"request line and headers exceed {max_header_bytes} bytes",
        "header_too_large",
    )
    too_many = HeadRefused(
        431, "request_header_fields_too_large", f"more than {max_headers} header fields", "header_too_large"
    )

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _refused = False
        _deferred: bytes | None = None  # a refusal waiting for the answers to the requests before it
        _stopping = False

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                # A refusal raised from a callback surfaces here too, already answered; a dead parser keeps raising.
                if not self._refused:
                    self._answer(parse_failure(str(exc)))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._head_done = False
            self._te: bytes | None = None
            self._upgrade = False

        def on_url(self, url: bytes) -> None:
            self.url += url  # first: the refusal's audit event names the path
            self._head_bytes += len(url)
            if self._head_bytes > max_header_bytes:
                self._refuse(too_large)

        def on_header(self, name: bytes, value: bytes) -> None:
            # uvicorn's own on_header, inlined: this runs for every field of every request.
            if self._head_done:
                return  # a trailer field: never a header
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > max_header_bytes:
                self._refuse(too_large)
            if len(self.headers) >= max_headers:
                self._refuse(too_many)
            name = name.lower()
            # llhttp keeps trailing OWS, which RFC 9110 §5.5 excludes from the value.
            value = value.rstrip(b" \t")
            if name in _WATCHED:
                if name == b"transfer-encoding":
                    self._te = value if self._te is None else b"\0"  # two fields: never one valid coding
                elif name == b"upgrade":
                    self._upgrade = True
                elif value.lower() == b"100-continue":
                    self.expect_100_continue = True
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            problem = framing_problem(self.parser.get_method(), self.parser.get_http_version(), self._te, self._upgrade)
            if problem is not None:
                self._refuse(problem)
            if self.url[:1] != b"/":
                authority_as_host(self.url, self.headers)
            super().on_headers_complete()
            # From here on the request has its cycle: a failure in its body is this request's answer.
            self._head_done = True
            if self._stopping:
                self.cycle.keep_alive = False

        def on_message_complete(self) -> None:
            # uvicorn's, inlined (upgrades never get this far), and the end of this request's body.
            self._head_done = False
            if self.cycle.response_complete:
                return
            self.cycle.more_body = False
            self.cycle.message_event.set()

        def on_response_complete(self) -> None:
            if self._deferred is not None and not self.pipeline:
                self.server_state.total_requests += 1
                if not self.transport.is_closing():
                    self.transport.write(self._deferred)
                    self.transport.close()
                return
            super().on_response_complete()

        def _refuse(self, refusal: HeadRefused) -> NoReturn:
            self._answer(refusal)
            raise RequestRefused(refusal.reason)

        def _answer(self, refusal: HeadRefused) -> None:
            """Answer `refusal` and close, after every earlier request on this connection has been answered."""
            self._refused = True
            if on_refuse is not None:
                on_refuse(self.client, getattr(self, "url", b""), refusal.status, refusal.reason)
            self.flow.pause_reading()
            own = self.cycle if getattr(self, "_head_done", False) else None
            if own is not None:
                # The body of a request whose head was accepted failed (a bad chunk size, say).
                if self.pipeline and self.pipeline[0][0] is own:
                    self.pipeline.popleft()  # queued behind an earlier request: it never runs
                    self._deferred = refusal.response()
                    return
                # It is running: this refusal is its answer, and whatever the app still sends goes nowhere. After
                # its own answer has begun, the connection can only be cut.
                own.disconnected = True
                if not own.response_started:
                    self.transport.write(refusal.response())
                self.transport.close()
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self._deferred = refusal.response()  # sent by on_response_complete once the pipeline is answered
                return
            self.transport.write(refusal.response())
            self.transport.close()

        def shutdown(self) -> None:
            """Called by the server when it stops: it no longer accepts, and every connection is told."""
            self._stopping = True
            if self.cycle is None or self.cycle.response_complete:
                self.loop.call_later(STOP_GRACE_SECONDS, self._close_when_idle)
            else:
                # The last request already read carries the Connection: close.
                (self.pipeline[0][0] if self.pipeline else self.cycle).keep_alive = False

        def _close_when_idle(self) -> None:
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request arrived meanwhile: its answer says Connection: close and closes
            if _bytes_waiting(self.transport):
                # Read but not yet handed to us: wait for it rather than reset a request the agent sent.
                self.loop.call_later(_RECHECK_SECONDS, self._close_when_idle)
                return
            self.transport.close()

    return GuardedHttpToolsProtocol


_WATCHED = frozenset({b"transfer-encoding", b"upgrade", b"expect"})


def _bytes_waiting(transport: object) -> bool:
    """Whether the kernel holds bytes from the peer that the event loop has not read yet."""
    raw = transport.get_extra_info("socket")  # type: ignore[attr-defined]
    if raw is None:
        return False
    try:
        # A duplicate descriptor: uvloop's transport socket cannot recv, and closing the copy leaves the connection.
        with socket.fromfd(raw.fileno(), raw.family, raw.type) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing waiting; anything else: the connection is gone
        return False
