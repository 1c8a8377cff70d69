"""The forward step: send the stamped request upstream and stream the answer back.

One keep-alive connection pool per upstream, over a small HTTP/1.1 client of our own: an asyncio.Protocol fed
by llhttp through httptools (the parser uvicorn already uses for our listeners). benchmarks/TRANSPORTS.md has
the numbers that chose it: on the proxy path it does about 2.4 times the requests per second of aiohttp and over
ten times those of httpx2. Either library's own cost per request would take most of the gateway's budget.

What this client does, and nothing more:
- the target goes out byte for byte as given (no re-encoding, no normalisation; the app has already put the
  upstream URL's path in front of it);
- the headers go out as given. Nothing is added (no User-Agent, Accept, Accept-Encoding, cookies) except the
  framing a body needs: Content-Length for a bytes body, Transfer-Encoding: chunked for a streamed body without a
  Content-Length. A Transfer-Encoding header in `headers` is ignored: framing is this module's job, and never
  sending both framings closes the door to request smuggling (RFC 9112 §6.1). Host is added only when missing
  (RFC 9112 §3.2). UpstreamConfig.headers are *not* added here: injecting credentials is stamp.py's job;
- no redirects followed, no cookies stored, no decompression: the response body arrives as the upstream sent it
  (only the chunked transfer coding, which is hop-by-hop, is removed), chunk by chunk, as soon as it is read.
  Response headers are returned as received, names lower-cased, hop-by-hop ones included: stamp.py strips those.

Timeouts (UpstreamConfig):
- `connect_timeout` bounds opening a TCP (and TLS) connection;
- `timeout` bounds each wait on the upstream: for a free connection when the pool is at `max_connections`, for the
  upstream to take more of the request body, for the response headers once the request is sent, and between two
  pieces of the response body. Time spent waiting on the agent's own request body is not counted.
Limits (UpstreamConfig): a response whose header section (interim responses included) has more than
`max_response_headers` fields or `max_response_header_bytes` bytes, or whose status is outside 100-599, is
refused as malformed: nothing of it reaches the agent.

Connect refused, reset, DNS or TLS failure → UpstreamError(502, "upstream_unreachable"); any timeout →
UpstreamError(504, "upstream_timeout"); a malformed or truncated response → UpstreamError(502,
"upstream_protocol_error").

Cancellation at any await (the agent went away) closes the upstream connection if it is mid-request and frees
its pool slot: a connection goes back to the pool only after a complete response on a keep-alive connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from gateway.config import UpstreamConfig

__all__ = ["BodyTooLarge", "Forwarder", "UpstreamError", "UpstreamResponse"]

# An idle connection older than this is closed rather than reused. Shorter than the 5 s keep-alive timeout of
# common upstream servers (uvicorn, Node.js, Apache), so we rarely reuse a connection the server is closing.
KEEPALIVE_EXPIRY = 4.0
# Response bytes buffered before we stop reading from the upstream (the agent is slower than the upstream).
READ_HIGH_WATER = 256 * 1024
# Bodies up to this size are joined with the request head into one write; larger ones are written separately.
_JOIN_LIMIT = 64 * 1024

# RFC 9110 §9.2.2: "A proxy MUST NOT automatically retry non-idempotent requests."
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamError(Exception):
    """The upstream could not give an answer: the app maps it to a 502 or 504 for the agent."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status  # 502 or 504
        self.reason = reason  # upstream_timeout | upstream_unreachable | upstream_protocol_error


def _timeout(upstream: str, what: str, seconds: float) -> UpstreamError:
    return UpstreamError(504, "upstream_timeout", f"upstream {upstream!r}: {what} took longer than {seconds:g}s")


def _unreachable(upstream: str, what: str) -> UpstreamError:
    return UpstreamError(502, "upstream_unreachable", f"upstream {upstream!r}: {what}")


def _protocol_error(upstream: str, what: str) -> UpstreamError:
    return UpstreamError(502, "upstream_protocol_error", f"upstream {upstream!r}: {what}")


class BodyTooLarge(Exception):
    """Raised by the request body iterator when the body exceeds proxy.max_body_bytes: the app answers 413.

    The forwarder lets it through unchanged (after closing the half-sent upstream request).
    """


class _ClosedBeforeResponse(Exception):
    """The connection closed before any byte of a response: maybe a stale keep-alive connection."""


class _StopParsing(Exception):
    """Raised in a parser callback to make llhttp stop at once: nothing after this point is delivered."""


def _fire_timeout(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Connection(asyncio.Protocol):
    """One upstream HTTP/1.1 connection; one request at a time, driven by the task that holds it."""

    __slots__ = (
        "_pool",
        "_loop",
        "_parser",
        "_parser_spent",
        "transport",
        "_waiter",
        "_headers",
        "_head_bytes",
        "_head_fields",
        "status",
        "_chunks",
        "_buffered",
        "_reading_paused",
        "_writing_paused",
        "_head",
        "_framed",
        "_started",
        "headers_complete",
        "complete",
        "keep_alive",
        "broken",
        "closed",
        "error",
        "idle_since",
        "in_pool",
    )

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = HttpResponseParser(self)
        self._parser_spent = False  # after a HEAD response llhttp still waits for a body: replace it
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # of this response's header sections, interim ones included
        self._head_fields = 0
        self.status = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._head = False
        self._framed = False
        self._started = False
        self.headers_complete = False
        self.complete = False
        self.keep_alive = False
        self.broken = False  # not reusable, whatever the parser says
        self.closed = False
        self.error: str | None = None  # why the response cannot be completed
        self.idle_since = 0.0
        self.in_pool = False

    # -- driven by the task --------------------------------------------------------------------------------------

    def begin(self, method: str) -> None:
        """Reset per-response state before writing a new request."""
        if self._parser_spent:
            self._parser = HttpResponseParser(self)
            self._parser_spent = False
        self._headers = []
        self._head_bytes = 0
        self._head_fields = 0
        self.status = 0
        if self._chunks:
            self._chunks.clear()  # the unread rest of the previous (complete) response
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._head = method == "HEAD"
        self._framed = False
        self._started = False
        self.headers_complete = False
        self.complete = False
        self.keep_alive = False
        self.error = None

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.broken and not self.closed

    async def wait(self, seconds: float) -> None:
        """Until the protocol has news (data, completion, close, drained) or `seconds` pass (TimeoutError).

        A timer on one future rather than asyncio.timeout(): this runs on every request, and costs less.
        """
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(seconds, _fire_timeout, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_body(self) -> bytes:
        """Everything buffered so far, as one piece (fewer sends downstream; no added delay)."""
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join([chunks.popleft() for _ in range(len(chunks))])
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    def has_body(self) -> bool:
        return bool(self._chunks)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    def abort(self) -> None:
        self.broken = True
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.in_pool:
            self._pool.discard_idle(self)
            return
        # When a parse error closed it, self.error already says why; otherwise find out how far the response got.
        if self.error is None and self.headers_complete and not self.complete:
            if not self._framed and not self._head:
                # RFC 9112 §6.3 (8): no Content-Length, no Transfer-Encoding: the body ends when the connection does.
                self.complete = True
            else:
                self.error = "closed the connection in the middle of the response body"
        elif self.error is None and not self.headers_complete:
            if self._started:
                self.error = "closed the connection in the middle of the response headers"
            else:
                self.error = "closed the connection before a response"
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too: we never half-close

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.in_pool:
            # An idle connection has nothing to say (some servers send a 408 before closing it): drop it.
            self.broken = True
            self.transport.close()  # type: ignore[union-attr]
            return
        self._started = True  # a byte of a response arrived: a failure from now on is not a stale connection
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if self.complete:
                # Bytes after the complete response (on_message_begin stopped the parser): the answer we have
                # stands, but this upstream is out of step with us; never reuse the connection.
                self.abort()
                return
            if self.error is None:
                self.error = f"sent a malformed response ({exc})"
            self.abort()
            self._wake()

    # -- httptools callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second response to one request. Never parse it: its headers or body would be appended to the
            # first (response splitting), or answer the next request on this connection (desync).
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_complete:
            return  # trailer fields: not forwarded
        # The limits count interim (1xx) responses too, so a stream of 103s cannot grow without end either.
        self._head_bytes += len(name) + len(value) + 4
        self._head_fields += 1
        pool = self._pool
        if self._head_bytes > pool.max_head_bytes or self._head_fields > pool.max_head_fields:
            self.error = (
                f"sent a response header section over its limits ({pool.max_head_fields} fields, "
                f"{pool.max_head_bytes} bytes: max_response_headers, max_response_header_bytes)"
            )
            raise _StopParsing
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self._framed = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            # llhttp takes any three digits. RFC 9110 §15 defines 1xx-5xx; anything else is no answer we can relay,
            # and the agent (and the audit) must see our 502, not a status its HTTP stack may choke on.
            self.error = f"sent status {status}, outside 100-599"
            raise _StopParsing
        if 100 <= status < 200:
            if status == 101:
                # We never ask to switch protocols (stamp.py drops Upgrade): a 101 is not an answer we can relay.
                self.error = "switched protocols (101), which the gateway never asks for"
                raise _StopParsing
            # RFC 9110 §15.2: interim responses (100 Continue, 103 Early Hints) are skipped; the final one follows.
            self._headers = []
            self._framed = False
            return
        self.status = status
        self.headers_complete = True
        if self._head:
            # httptools cannot tell llhttp that a HEAD response has no body: finish here, use a new parser next time.
            self.keep_alive = self._parser.should_keep_alive()
            self.complete = True
            self._parser_spent = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head:
            self.broken = True  # body bytes after a HEAD response
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_complete:
            return  # the end of an interim (1xx) response
        if not self._head:
            # Read keep-alive now: llhttp clears its flags once the message is complete.
            self.keep_alive = self._parser.should_keep_alive()
            self.complete = True
        self._wake()


class _Pool:
    """Keep-alive connections to one upstream, at most `max_connections` open (idle or busy) at once."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        parts = urlsplit(config.url)
        self.name = name
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # bound on first use
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.default_host = parts.netloc.rpartition("@")[2].encode("idna")
        self.timeout = config.timeout
        self.connect_timeout = config.connect_timeout
        self.max_connections = config.max_connections
        self.max_head_bytes = config.max_response_header_bytes
        self.max_head_fields = config.max_response_headers
        self.idle: deque[_Connection] = deque()
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self.open = 0  # connections counted against max_connections (idle, busy, or being opened)
        self.closed = False

    async def acquire(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection for one request, and whether it was reused (a stale one may fail before answering).

        `fresh`: a new connection, not an idle one (retrying after a stale one: its idle siblings may be stale too).
        """
        if self.closed:
            raise RuntimeError("the forwarder is closed")
        idle = self.idle
        if fresh:
            while idle and self.open >= self.max_connections:
                conn = idle.popleft()  # the oldest idle connection gives up its slot
                conn.in_pool = False
                conn.abort()
                self.open -= 1
        elif idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to have been closed by the server
                conn.in_pool = False
                if not conn.closed and now - conn.idle_since < KEEPALIVE_EXPIRY:
                    return conn, True
                conn.abort()
                self.open -= 1
        if self.open >= self.max_connections:
            conn_or_slot = await self._wait_for_slot()
            if conn_or_slot is not None:
                return conn_or_slot, True
        else:
            self.open += 1
        try:
            return await self._connect(), False
        except BaseException:
            self._free_slot()
            raise

    async def _wait_for_slot(self) -> _Connection | None:
        """Wait for a released connection (returned) or a freed slot (None) to open one with."""
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        timer = self.loop.call_later(self.timeout, _fire_timeout, waiter)
        try:
            return await waiter
        except TimeoutError:
            what = f"waiting for one of its {self.max_connections} connections"
            raise _timeout(self.name, what, self.timeout) from None
        except BaseException:
            # Cancelled after a connection or slot was handed over: give it back, or it leaks.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    self.release(handed)
            raise
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise _timeout(self.name, f"connecting to {self.host}:{self.port}", self.connect_timeout) from None
        except OSError as exc:  # refused, reset, DNS (gaierror), TLS (SSLError)
            raise _unreachable(self.name, f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def release(self, conn: _Connection) -> None:
        """Back to the pool after a complete keep-alive response; otherwise closed, its slot freed."""
        if conn.reusable() and not self.closed:
            waiters = self.waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = time.monotonic()
            conn.in_pool = True
            self.idle.append(conn)
        else:
            conn.abort()
            self._free_slot()

    def _free_slot(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter, which opens a connection
                return
        self.open -= 1

    def discard_idle(self, conn: _Connection) -> None:
        """An idle connection closed by the upstream."""
        if conn.in_pool:
            conn.in_pool = False
            self.idle.remove(conn)
            self._free_slot()

    def close(self) -> None:
        self.closed = True
        while self.idle:
            conn = self.idle.pop()
            conn.in_pool = False
            conn.abort()
            self.open -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("the forwarder is closed"))


@dataclass(slots=True, eq=False)
class UpstreamResponse:
    """The upstream's status and headers; the body is read with iter_body(). Always aclose() it."""

    status: int
    headers: list[tuple[bytes, bytes]]  # as received, names lower-cased, repeated ones (set-cookie) kept
    _conn: _Connection | None = field(default=None, repr=False)
    _pool: _Pool | None = field(default=None, repr=False)

    def iter_body(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it: each piece as soon as it is read, nothing decoded or buffered."""
        return _Body(self)

    async def aclose(self) -> None:
        """Give the connection back (complete keep-alive response) or close it (anything else). Idempotent."""
        self._finish()

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)  # type: ignore[union-attr]

    def __del__(self) -> None:
        # A response dropped without aclose() must not hold a pool slot forever.
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.abort()
            if not self._pool.loop.is_closed():  # type: ignore[union-attr]
                self._pool.loop.call_soon_threadsafe(self._pool._free_slot)  # type: ignore[union-attr]


class _Body:
    __slots__ = ("_response",)

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        response = self._response
        conn = response._conn
        if conn is None:
            raise StopAsyncIteration
        pool = response._pool
        assert pool is not None  # UpstreamResponse gets its pool together with its connection
        while True:
            if conn.has_body():
                return conn.take_body()
            if conn.complete:
                response._finish()  # back to the pool as soon as the body is in, before the app's aclose()
                raise StopAsyncIteration
            if conn.error is not None:
                response._finish()
                raise _protocol_error(pool.name, conn.error)
            try:
                await conn.wait(pool.timeout)
            except TimeoutError:
                response._finish()
                raise _timeout(pool.name, "sending the next piece of the response body", pool.timeout) from None
            except BaseException:
                conn.abort()  # cancelled mid-body: the rest of this response must never reach another request
                response._finish()
                raise


class Forwarder:
    """A pooled keep-alive client per upstream. One per config; aclose() it when the config is replaced."""

    def __init__(self, upstreams: Mapping[str, UpstreamConfig]) -> None:
        self._pools = {name: _Pool(name, config) for name, config in upstreams.items()}

    async def send(
        self,
        upstream: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        """Send one request and return once the response headers are in (the body is streamed by iter_body)."""
        pool = self._pools.get(upstream)
        if pool is None:
            raise KeyError(f"unknown upstream {upstream!r} (known: {', '.join(self._pools) or 'none'})")
        if pool.loop is None:
            pool.loop = asyncio.get_running_loop()
        head, content_length, chunked = _request_head(pool, method, target, headers, body)
        replayable = body is None or isinstance(body, bytes | bytearray | memoryview)
        retry = replayable and method in _IDEMPOTENT
        fresh = False
        while True:
            conn, reused = await pool.acquire(fresh)
            try:
                await _exchange(pool, conn, method, head, body, content_length, chunked)
            except _ClosedBeforeResponse as exc:
                pool.release(conn)
                if reused and retry:
                    # The upstream closed an idle keep-alive connection as we reused it: once more, on a new one.
                    retry, fresh = False, True
                    continue
                raise _unreachable(pool.name, str(exc)) from None
            except BaseException:
                conn.abort()
                pool.release(conn)
                raise
            break
        return UpstreamResponse(conn.status, conn.response_headers(), conn, pool)

    async def aclose(self) -> None:
        """Close idle connections; connections still streaming close when their response is closed."""
        for pool in self._pools.values():
            pool.close()


def _request_head(
    pool: _Pool, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Any
) -> tuple[bytes, int | None, bool]:
    """The request line and header block, and the body framing: (head, content-length or None, chunked)."""
    lines = [b"%s %s HTTP/1.1" % (method.encode("ascii"), target)]
    content_length: int | None = None
    has_host = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            content_length = int(value)
        elif lowered == b"transfer-encoding":
            continue  # hop-by-hop; we frame the body ourselves
        elif lowered == b"host":
            has_host = True
        lines.append(name + b": " + value)
    if not has_host:
        lines.insert(1, b"host: " + pool.default_host)
    chunked = False
    if body is None:
        pass
    elif isinstance(body, bytes | bytearray | memoryview):
        if content_length is None:
            if len(body):
                content_length = len(body)
                lines.append(b"content-length: %d" % content_length)
        elif content_length != len(body):
            raise ValueError(f"the body is {len(body)} bytes but its content-length header says {content_length}")
    elif content_length is None:
        chunked = True
        lines.append(b"transfer-encoding: chunked")
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    # A CR or LF inside the target, a name or a value would split the request (RFC 9112 §2.2): refuse it.
    if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
        raise ValueError("a header or the target contains a CR or LF character; refusing to send it upstream")
    return head, content_length, chunked


async def _exchange(
    pool: _Pool,
    conn: _Connection,
    method: str,
    head: bytes,
    body: bytes | AsyncIterator[bytes] | None,
    content_length: int | None,
    chunked: bool,
) -> None:
    """Write the request on `conn` and wait for the response headers."""
    conn.begin(method)
    transport = conn.transport
    if conn.closed or transport is None or transport.is_closing():
        raise _ClosedBeforeResponse("closed the connection before a response")
    if body is None or not isinstance(body, bytes | bytearray | memoryview):
        transport.write(head)
        if body is not None:
            await _stream_body(pool, conn, body, content_length, chunked)
    elif len(body) <= _JOIN_LIMIT:
        transport.write(head + body)
    else:
        transport.write(head)
        transport.write(body)
    while not conn.headers_complete:
        if conn.error is not None:
            if not conn._started:
                raise _ClosedBeforeResponse(conn.error)
            raise _protocol_error(pool.name, conn.error)
        try:
            await conn.wait(pool.timeout)
        except TimeoutError:
            raise _timeout(pool.name, "answering with response headers", pool.timeout) from None


async def _stream_body(
    pool: _Pool, conn: _Connection, body: AsyncIterator[bytes], content_length: int | None, chunked: bool
) -> None:
    transport = conn.transport
    assert transport is not None
    sent = 0
    async for chunk in body:
        if not chunk:
            continue
        sent += len(chunk)
        if content_length is not None and sent > content_length:
            raise ValueError(f"the request body is longer than its content-length header ({content_length})")
        if conn.closed or transport.is_closing():
            break  # the upstream closed: whatever it answered (if anything) is read below
        transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        while conn._writing_paused and not conn.closed:
            if conn.headers_complete:
                # It answered early and stopped reading (a 413, a 401): stop sending; the connection is spent.
                conn.broken = True
                return
            try:
                await conn.wait(pool.timeout)
            except TimeoutError:
                raise _timeout(pool.name, "taking the request body", pool.timeout) from None
    else:
        if content_length is not None and sent != content_length:
            raise ValueError(f"the request body is {sent} bytes but its content-length header says {content_length}")
        if chunked and not conn.closed:
            transport.write(b"0\r\n\r\n")
        return
    conn.broken = True  # the body was cut short
