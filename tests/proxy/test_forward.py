"""The forward step over real sockets: a uvicorn upstream in a thread, and scripted asyncio servers for the
answers a well-behaved server never gives (stale keep-alive, garbage, truncation). Every test runs on asyncio's
default loop and on uvloop (the loop the gateway serves on)."""

from __future__ import annotations

import asyncio
import datetime
import gc
import gzip
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import UpstreamConfig
from gateway.proxy.forward import BodyTooLarge, Forwarder, UpstreamError, UpstreamResponse


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if request.param == "uvloop":
        return "asyncio", {"loop_factory": uvloop.new_event_loop}
    return "asyncio", {}


pytestmark = pytest.mark.anyio


# --- the upstream: uvicorn in a background thread, recording what it sees -------------------------------------------


@dataclass
class Seen:
    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client_port: int


@dataclass
class Upstream:
    port: int
    seen: list[Seen] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def host(self) -> bytes:
        return b"127.0.0.1:%d" % self.port

    def connections(self) -> int:
        return len({s.client_port for s in self.seen})


def upstream_app(up: Upstream) -> Callable[..., Awaitable[None]]:
    async def respond(send: Callable[..., Any], status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        up.seen.append(
            Seen(
                scope["method"],
                scope["raw_path"],
                scope["query_string"],
                list(scope["headers"]),
                body,
                scope["client"][1],
            )
        )
        path = scope["path"]
        if path == "/redirect":
            await respond(send, 302, [(b"location", b"/elsewhere"), (b"content-length", b"0")], b"")
        elif path == "/cookies":
            await respond(send, 200, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"0")], b"")
        elif path == "/gzip":
            await respond(send, 200, [(b"content-encoding", b"gzip")], gzip.compress(b"hello " * 100))
        elif path == "/thousand":
            await respond(send, 200, [(b"content-length", b"1000")], b"x" * 1000)  # uvicorn drops it for HEAD
        elif path == "/sse":
            sse = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": sse})
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await asyncio.to_thread(up.release.wait, 10)
            await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/slow":
            await asyncio.to_thread(up.release.wait, 10)
            await respond(send, 200, [], b"late")
        elif path == "/big":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(32):  # 2 MiB in 64 KiB pieces
                await send({"type": "http.response.body", "body": b"b" * 65536, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/hang":
            # One piece of body, then nothing until the client goes away.
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            if (await receive())["type"] == "http.disconnect":
                up.disconnects.append(path)
        else:
            await respond(send, 200, [(b"content-type", b"text/plain")], b"ok:" + body)

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(predicate: Callable[[], Any], what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server() -> Iterator[Upstream]:
    up = Upstream(port=free_port())
    config = uvicorn.Config(
        upstream_app(up),
        host="127.0.0.1",
        port=up.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    poll(lambda: uv.started, "the upstream server to start")
    yield up
    up.release.set()
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def upstream(server: Upstream) -> Iterator[Upstream]:
    server.seen.clear()
    server.disconnects.clear()
    server.release.clear()
    yield server
    server.release.set()  # let handlers parked on it finish before the next test


def forwarder(port: int, **options: Any) -> Forwarder:
    return Forwarder({"up": UpstreamConfig(url=f"http://127.0.0.1:{port}", **options)})


async def eventually(predicate: Callable[[], Any], what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def read_all(response: UpstreamResponse) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.iter_body()])
    finally:
        await response.aclose()


async def get(
    fw: Forwarder,
    up: Upstream | int,
    target: bytes,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: Any = None,
) -> tuple[UpstreamResponse, bytes]:
    host = up.host if isinstance(up, Upstream) else b"127.0.0.1:%d" % up
    response = await fw.send("up", method, target, [(b"host", host), *(headers or [])], body)
    return response, await read_all(response)


# --- what goes upstream ----------------------------------------------------------------------------------------------


async def test_target_is_forwarded_byte_exact(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    await get(fw, upstream, b"/a%20b/caf%C3%A9?x=%2F&y=1")
    assert (upstream.seen[0].raw_path, upstream.seen[0].query) == (b"/a%20b/caf%C3%A9", b"x=%2F&y=1")
    await fw.aclose()


async def test_no_default_headers_are_added(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    await get(fw, upstream, b"/", headers=[(b"x-one", b"1")])
    assert upstream.seen[0].headers == [(b"host", upstream.host), (b"x-one", b"1")]
    await fw.aclose()


async def test_repeated_headers_pass_in_order(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    await get(fw, upstream, b"/", headers=[(b"x-multi", b"a"), (b"x-other", b"o"), (b"x-multi", b"b")])
    assert upstream.seen[0].headers[1:] == [(b"x-multi", b"a"), (b"x-other", b"o"), (b"x-multi", b"b")]
    await fw.aclose()


async def test_bytes_body_gets_content_length(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    _, body = await get(fw, upstream, b"/", method="POST", body=b"payload")
    assert body == b"ok:payload"
    assert (b"content-length", b"7") in upstream.seen[0].headers
    await fw.aclose()


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_streamed_body_without_length_is_sent_chunked(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    _, body = await get(fw, upstream, b"/", method="POST", body=pieces(b"one,", b"", b"two,", b"three"))
    assert body == b"ok:one,two,three"
    assert (b"transfer-encoding", b"chunked") in upstream.seen[0].headers
    await fw.aclose()


async def test_streamed_body_with_length_is_sent_as_is(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    _, body = await get(
        fw, upstream, b"/", method="PUT", headers=[(b"content-length", b"6")], body=pieces(b"abc", b"def")
    )
    assert body == b"ok:abcdef"
    assert not any(name == b"transfer-encoding" for name, _ in upstream.seen[0].headers)
    await fw.aclose()


async def test_body_too_large_from_the_body_iterator_propagates(upstream: Upstream) -> None:
    async def too_big() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise BodyTooLarge(1000)

    fw = forwarder(upstream.port, max_connections=1)
    with pytest.raises(BodyTooLarge):
        await fw.send("up", "POST", b"/", [(b"host", upstream.host)], too_big())
    # The half-sent request's connection was closed and its slot freed: the next request gets through.
    assert (await get(fw, upstream, b"/after"))[1] == b"ok:"
    await fw.aclose()


async def test_crlf_in_a_header_is_refused(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    with pytest.raises(ValueError, match="CR or LF"):
        await fw.send("up", "GET", b"/", [(b"host", upstream.host), (b"x-evil", b"a\r\nx-injected: 1")], None)
    # Nothing of it arrived (a request an earlier test cut short may still land here late, so look for this one).
    assert not [seen for seen in upstream.seen if any(name in (b"x-evil", b"x-injected") for name, _ in seen.headers)]
    await fw.aclose()


# --- what comes back -------------------------------------------------------------------------------------------------


async def test_redirects_are_passed_through_not_followed(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    response, _ = await get(fw, upstream, b"/redirect")
    assert response.status == 302
    assert (b"location", b"/elsewhere") in response.headers
    assert [s.raw_path for s in upstream.seen] == [b"/redirect"]
    await fw.aclose()


async def test_repeated_set_cookie_headers_are_all_returned(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    response, _ = await get(fw, upstream, b"/cookies")
    assert [v for n, v in response.headers if n == b"set-cookie"] == [b"a=1", b"b=2"]
    await fw.aclose()


async def test_gzip_body_passes_compressed(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    response, body = await get(fw, upstream, b"/gzip", headers=[(b"accept-encoding", b"gzip")])
    assert (b"content-encoding", b"gzip") in response.headers
    assert body == gzip.compress(b"hello " * 100)
    await fw.aclose()


async def test_head_has_no_body_and_the_connection_is_reused(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    response, body = await get(fw, upstream, b"/thousand", method="HEAD")
    assert (response.status, body) == (200, b"")
    assert (b"content-length", b"1000") in response.headers
    _, body = await get(fw, upstream, b"/thousand")
    assert body == b"x" * 1000
    assert upstream.connections() == 1
    await fw.aclose()


async def test_sse_events_arrive_one_by_one(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    response = await fw.send("up", "GET", b"/sse", [(b"host", upstream.host)], None)
    events = response.iter_body()
    # The second event is only sent once we have the first: a buffering client would wait forever here.
    assert await events.__anext__() == b"data: 1\n\n"
    upstream.release.set()
    assert await events.__anext__() == b"data: 2\n\n"
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()
    await response.aclose()
    await fw.aclose()


# --- the pool --------------------------------------------------------------------------------------------------------


async def test_sequential_requests_share_one_keep_alive_connection(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    for i in range(5):
        await get(fw, upstream, b"/n%d" % i)
    assert len(upstream.seen) == 5
    assert upstream.connections() == 1
    await fw.aclose()


async def test_concurrent_requests_beyond_max_connections_wait_for_one(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, max_connections=2)
    results = await asyncio.gather(*[get(fw, upstream, b"/c%d" % i) for i in range(6)])
    assert [body for _, body in results] == [b"ok:"] * 6
    assert upstream.connections() <= 2
    await fw.aclose()


async def test_cancelled_mid_body_closes_the_connection_and_frees_it(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, max_connections=1)
    got_first = asyncio.Event()

    async def agent() -> None:  # what the app does: stream, aclose in a finally
        response = await fw.send("up", "GET", b"/hang", [(b"host", upstream.host)], None)
        try:
            async for _ in response.iter_body():
                got_first.set()
        finally:
            await response.aclose()

    task = asyncio.create_task(agent())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: upstream.disconnects == ["/hang"], "the upstream to see the disconnect")
    assert (await get(fw, upstream, b"/after"))[1] == b"ok:"  # one connection allowed: it was freed
    await fw.aclose()


async def test_cancelled_mid_body_frees_the_connection_even_without_aclose(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, max_connections=1)
    got_first = asyncio.Event()
    response = await fw.send("up", "GET", b"/hang", [(b"host", upstream.host)], None)

    async def careless() -> None:
        async for _ in response.iter_body():
            got_first.set()

    task = asyncio.create_task(careless())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: upstream.disconnects == ["/hang"], "the upstream to see the disconnect")
    assert (await get(fw, upstream, b"/after"))[1] == b"ok:"
    await fw.aclose()


async def test_cancelled_while_waiting_for_headers_frees_the_connection(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, max_connections=1)
    task = asyncio.create_task(fw.send("up", "GET", b"/slow", [(b"host", upstream.host)], None))
    await eventually(lambda: upstream.seen, "the upstream to get the request")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    upstream.release.set()
    assert (await get(fw, upstream, b"/after"))[1] == b"ok:"
    await fw.aclose()


async def test_a_slow_reader_stops_reading_from_the_upstream(upstream: Upstream) -> None:
    fw = forwarder(upstream.port)
    response = await fw.send("up", "GET", b"/big", [(b"host", upstream.host)], None)
    conn = response._conn
    assert conn is not None
    # Nobody reads the body yet: the forwarder must stop at its high-water mark, not buffer the upstream's 2 MiB.
    await eventually(lambda: conn._reading_paused, "reading from the upstream to pause")
    assert conn._buffered < 2 * 1024 * 1024
    assert await read_all(response) == b"b" * (2 * 1024 * 1024)
    await fw.aclose()


async def test_a_response_dropped_without_aclose_frees_its_connection(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, max_connections=1)
    response = await fw.send("up", "GET", b"/hang", [(b"host", upstream.host)], None)
    del response  # an app bug; the slot must not be lost for good
    gc.collect()
    assert (await get(fw, upstream, b"/after"))[1] == b"ok:"
    await fw.aclose()


# --- failures --------------------------------------------------------------------------------------------------------


async def test_connection_refused_is_502_upstream_unreachable() -> None:
    fw = forwarder(free_port())  # nothing listens there
    with pytest.raises(UpstreamError) as caught:
        await fw.send("up", "GET", b"/", [(b"host", b"x")], None)
    assert (caught.value.status, caught.value.reason) == (502, "upstream_unreachable")
    await fw.aclose()


async def test_an_upstream_certificate_that_does_not_verify_is_502_upstream_unreachable(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one_handshake() -> None:  # a plain thread: the server's failed handshake is expected, not news
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True).close()
        except OSError:
            conn.close()

    thread = threading.Thread(target=serve_one_handshake, daemon=True)
    thread.start()
    fw = Forwarder({"up": UpstreamConfig(url=f"https://127.0.0.1:{listener.getsockname()[1]}")})
    with pytest.raises(UpstreamError) as caught:  # self-signed: the default trust store must refuse it
        await fw.send("up", "GET", b"/", [(b"host", b"127.0.0.1")], None)
    assert (caught.value.status, caught.value.reason) == (502, "upstream_unreachable")
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    await fw.aclose()
    thread.join(timeout=5)
    listener.close()


async def test_upstream_slower_than_timeout_is_504_upstream_timeout(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, timeout=0.3)
    with pytest.raises(UpstreamError) as caught:
        await fw.send("up", "GET", b"/slow", [(b"host", upstream.host)], None)
    assert (caught.value.status, caught.value.reason) == (504, "upstream_timeout")
    await fw.aclose()


async def test_a_stalled_body_times_out_with_504(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, timeout=0.3)
    response = await fw.send("up", "GET", b"/hang", [(b"host", upstream.host)], None)
    body = response.iter_body()
    assert await body.__anext__() == b"first"
    with pytest.raises(UpstreamError) as caught:
        await body.__anext__()
    assert (caught.value.status, caught.value.reason) == (504, "upstream_timeout")
    await response.aclose()
    await fw.aclose()


async def test_waiting_for_a_connection_counts_against_timeout(upstream: Upstream) -> None:
    fw = forwarder(upstream.port, max_connections=1, timeout=0.3)
    hog = await fw.send("up", "GET", b"/hang", [(b"host", upstream.host)], None)  # holds the only connection
    with pytest.raises(UpstreamError) as caught:
        await fw.send("up", "GET", b"/", [(b"host", upstream.host)], None)
    assert (caught.value.status, caught.value.reason) == (504, "upstream_timeout")
    await hog.aclose()
    assert (await get(fw, upstream, b"/after"))[1] == b"ok:"
    await fw.aclose()


async def test_unknown_upstream_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="unknown upstream 'nope'"):
        await Forwarder({}).send("nope", "GET", b"/", [], None)


# --- scripted servers: answers a well-behaved upstream never gives ---------------------------------------------------

Script = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def scripted(script: Script) -> tuple[asyncio.Server, int, list[int]]:
    """A server running `script(connection_number, reader, writer)` for each connection it accepts."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await script(accepted[-1], reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed first: scripts wait for requests that may never come
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


async def test_stale_keep_alive_connection_is_retried_for_get_once() -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        if n == 0:
            await reader.readuntil(b"\r\n\r\n")  # the second request on this connection: close, no answer

    server, port, accepted = await scripted(script)
    fw = forwarder(port)
    assert (await get(fw, port, b"/1"))[1] == b"ok"
    assert (await get(fw, port, b"/2"))[1] == b"ok"
    assert len(accepted) == 2
    await fw.aclose()
    server.close()


async def test_the_retry_after_a_stale_connection_opens_a_new_one() -> None:
    both_connected = asyncio.Event()

    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if n < 2:  # the first two connections: one answer each, then they have "restarted" (close, no answer)
            if n == 1:
                both_connected.set()
            await both_connected.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await reader.readuntil(b"\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")

    server, port, accepted = await scripted(script)
    fw = forwarder(port)
    await asyncio.gather(get(fw, port, b"/a"), get(fw, port, b"/b"))  # two idle connections now
    assert (await get(fw, port, b"/c"))[1] == b"fresh"  # not the other stale idle connection
    assert len(accepted) == 3
    await fw.aclose()
    server.close()


async def test_stale_keep_alive_connection_is_not_retried_for_post() -> None:
    # RFC 9110 §9.2.2: a proxy must not retry a non-idempotent request by itself.
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")

    server, port, accepted = await scripted(script)
    fw = forwarder(port)
    await get(fw, port, b"/1")
    with pytest.raises(UpstreamError) as caught:
        await get(fw, port, b"/2", method="POST", body=b"x")
    assert (caught.value.status, caught.value.reason) == (502, "upstream_unreachable")
    assert len(accepted) == 1
    await fw.aclose()
    server.close()


@pytest.mark.parametrize(
    ("answer", "failure"),
    [
        (b"this is not http\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", "malformed"),
        (b"HTTP/1.1 200 OK\r\ncontent-len", "headers"),
    ],
    ids=["garbage", "conflicting-lengths", "cut-in-headers"],
)
async def test_a_broken_response_is_502_upstream_protocol_error(answer: bytes, failure: str) -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    server, port, _ = await scripted(script)
    fw = forwarder(port)
    with pytest.raises(UpstreamError) as caught:
        await fw.send("up", "GET", b"/", [(b"host", b"x")], None)
    assert (caught.value.status, caught.value.reason) == (502, "upstream_protocol_error")
    assert failure in str(caught.value)
    await fw.aclose()
    server.close()


async def test_an_early_answer_stops_the_upload() -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.Event().wait()  # reads no more: the client's writes back up

    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 1024 * 1024 * 1024:
            sent += 65536
            yield b"u" * 65536

    server, port, _ = await scripted(script)
    fw = forwarder(port)
    response, _ = await get(fw, port, b"/", method="POST", body=endless())
    assert response.status == 413
    assert sent < 1024 * 1024 * 1024
    await fw.aclose()
    server.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["length", "chunked"],
)
async def test_bytes_after_a_complete_response_are_never_delivered(answer: bytes) -> None:
    # A second response in the same breath: appended to the first, it would split the response; left on the
    # connection, it would answer the next request (desync).
    extra = b"HTTP/1.1 200 OK\r\nset-cookie: evil=1\r\ncontent-length: 4\r\n\r\nevil"

    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer + extra if n == 0 else b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nnormal")
        await reader.read()

    server, port, accepted = await scripted(script)
    fw = forwarder(port)
    response, body = await get(fw, port, b"/")
    assert (body, [n for n, _ in response.headers if n == b"set-cookie"]) == (b"ok", [])
    assert (await get(fw, port, b"/next"))[1] == b"normal"
    assert len(accepted) == 2  # the out-of-step connection was not reused
    await fw.aclose()
    server.close()


async def test_101_switching_protocols_is_502_upstream_protocol_error() -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nxx")
        await reader.read()

    server, port, _ = await scripted(script)
    fw = forwarder(port)
    with pytest.raises(UpstreamError) as caught:
        await fw.send("up", "GET", b"/", [(b"host", b"x")], None)
    assert (caught.value.status, caught.value.reason) == (502, "upstream_protocol_error")
    await fw.aclose()
    server.close()


async def test_a_truncated_body_ends_with_upstream_protocol_error() -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()

    server, port, _ = await scripted(script)
    fw = forwarder(port)
    response = await fw.send("up", "GET", b"/", [(b"host", b"x")], None)
    with pytest.raises(UpstreamError) as caught:
        await read_all(response)
    assert (caught.value.status, caught.value.reason) == (502, "upstream_protocol_error")
    await fw.aclose()
    server.close()


async def test_a_body_without_length_ends_when_the_connection_does() -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    server, port, _ = await scripted(script)
    fw = forwarder(port)
    assert (await get(fw, port, b"/"))[1] == b"all of it"
    await fw.aclose()
    server.close()


async def test_interim_100_continue_is_skipped() -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nx-final: yes\r\ncontent-length: 2\r\n\r\nok")
        await reader.read()

    server, port, _ = await scripted(script)
    fw = forwarder(port)
    response, body = await get(fw, port, b"/", method="POST", headers=[(b"expect", b"100-continue")], body=b"x")
    assert (response.status, response.headers, body) == (201, [(b"x-final", b"yes"), (b"content-length", b"2")], b"ok")
    await fw.aclose()
    server.close()
