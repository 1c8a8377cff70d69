"""One candidate upstream client inside a minimal raw-ASGI pass-through proxy, run by benchmarks/transports.py.

    python benchmarks/_transports_candidates.py CANDIDATE UPSTREAM_URL PORT

Every candidate does the same work per request: forward method, raw target and the incoming headers, then stream
the response body back chunk by chunk (the gateway streams; nothing is buffered on purpose). Only the client differs.
The proxy runs as the gateway does: uvicorn, one process, uvloop, httptools, access log off.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Response headers a proxy never passes on (RFC 9110 §7.6.1); the same filter for every candidate.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
)

Handler = Callable[[dict[str, Any], Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


def target_of(scope: dict[str, Any]) -> bytes:
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope["query_string"]
    return raw + b"?" + query if query else raw


async def stream_back(
    send: Callable[..., Awaitable[Any]], status: int, headers: list[tuple[bytes, bytes]], body: AsyncIterator[bytes]
) -> None:
    out = [(name.lower(), value) for name, value in headers if name.lower() not in HOP_BY_HOP]
    await send({"type": "http.response.start", "status": status, "headers": out})
    async for chunk in body:
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- candidates: each is a factory called inside the running loop, returning (handler, close) -----------------------


async def make_fixed(upstream: str) -> tuple[Handler, Callable[[], Awaitable[None]]]:
    """No upstream at all: the ceiling set by uvicorn itself on this box."""
    payload = b'{"id":42,"name":"Ada Lovelace"}'

    async def handle(scope, receive, send):
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def close() -> None:
        return None

    return handle, close


def _httpx_handler(httpx: Any, client: Any, upstream: str) -> Handler:
    async def handle(scope, receive, send):
        url = httpx.URL(upstream + target_of(scope).decode("latin-1"))
        request = client.build_request(scope["method"], url, headers=scope["headers"])
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            await stream_back(send, response.status_code, response.headers.raw, response.aiter_raw())
        finally:
            await response.aclose()

    return handle


async def make_httpx2_default(upstream: str):
    import httpx2

    client = httpx2.AsyncClient()
    return _httpx_handler(httpx2, client, upstream), client.aclose


async def make_httpx2_tuned(upstream: str):
    import httpx2

    limits = httpx2.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=60)
    client = httpx2.AsyncClient(
        limits=limits, http1=True, http2=False, trust_env=False, timeout=httpx2.Timeout(30, connect=5)
    )
    return _httpx_handler(httpx2, client, upstream), client.aclose


async def make_httpx028(upstream: str):
    """The original httpx (0.28), for reference; needs an interpreter that has it (see transports.py --httpx-python)."""
    import httpx

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=60)
    client = httpx.AsyncClient(limits=limits, trust_env=False, timeout=httpx.Timeout(30, connect=5))
    return _httpx_handler(httpx, client, upstream), client.aclose


async def make_httpcore2(upstream: str):
    """httpx2's transport layer used directly: no Client, no httpx2.Request/Response models."""
    import httpcore2

    parts = urlsplit(upstream)
    pool = httpcore2.AsyncConnectionPool(
        max_connections=256, max_keepalive_connections=256, keepalive_expiry=60, http1=True, http2=False
    )
    scheme, host, port = parts.scheme.encode(), parts.hostname.encode(), parts.port
    extensions = {"timeout": {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}}

    async def handle(scope, receive, send):
        url = httpcore2.URL(scheme=scheme, host=host, port=port, target=target_of(scope))
        request = httpcore2.Request(scope["method"].encode(), url, headers=scope["headers"], extensions=extensions)
        response = await pool.handle_async_request(request)
        try:
            await stream_back(send, response.status, response.headers, response.aiter_stream())
        finally:
            await response.aclose()

    return handle, pool.aclose


async def make_aiohttp_default(upstream: str):
    """aiohttp as it comes (the pool's default limit of 100, its default timeouts and headers)."""
    import aiohttp
    from multidict import CIMultiDict
    from yarl import URL

    session = aiohttp.ClientSession()

    async def handle(scope, receive, send):
        headers = CIMultiDict([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]])
        url = URL(upstream + target_of(scope).decode("latin-1"), encoded=True)
        response = await session.request(scope["method"], url, headers=headers, allow_redirects=False)
        try:
            await stream_back(send, response.status, list(response.raw_headers), response.content.iter_any())
        finally:
            response.release()

    return handle, session.close


async def make_aiohttp(upstream: str):
    """aiohttp configured as a proxy needs it: no added headers, no decompression, no cookies, a bigger pool."""
    import aiohttp
    from multidict import CIMultiDict
    from yarl import URL

    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
    )
    base = upstream

    async def handle(scope, receive, send):
        headers = CIMultiDict([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]])
        url = URL(base + target_of(scope).decode("latin-1"), encoded=True)
        response = await session.request(scope["method"], url, headers=headers, allow_redirects=False)
        try:
            await stream_back(send, response.status, list(response.raw_headers), response.content.iter_any())
        finally:
            response.release()

    return handle, session.close


async def make_forwarder(upstream: str):
    """The product's own gateway/proxy/forward.py, to measure what the seam costs on top of its client."""
    from gateway.config import UpstreamConfig
    from gateway.proxy.forward import Forwarder

    forwarder = Forwarder({"up": UpstreamConfig(url=upstream)})

    async def handle(scope, receive, send):
        response = await forwarder.send("up", scope["method"], target_of(scope), scope["headers"], None)
        try:
            await stream_back(send, response.status, response.headers, response.iter_body())
        finally:
            await response.aclose()

    return handle, forwarder.aclose


# --- a deliberately small hand-rolled HTTP/1.1 client: asyncio.Protocol + httptools' llhttp response parser ---------
# GET-only prototype, enough to bound what any library could still gain here. Not for production use.


class _RawConnection(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.headers_done: asyncio.Future[None] | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.done = False
        self.keep_alive = False
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        for fut in (self.headers_done, self.wakeup):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("upstream closed"))

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.headers_done.set_result(None)

    def on_body(self, body):
        self.chunks.append(body)
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def on_message_complete(self):
        # Read keep-alive here: llhttp resets its flags once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def start(self, request: bytes) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        self.headers = []
        self.done = False
        self.headers_done = loop.create_future()
        self.transport.write(request)
        return self.headers_done

    async def body(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            while self.chunks:
                yield self.chunks.popleft()
            if self.done:
                return
            self.wakeup = loop.create_future()
            await self.wakeup


async def make_raw(upstream: str):
    parts = urlsplit(upstream)
    host, port = parts.hostname, parts.port
    loop = asyncio.get_running_loop()
    idle: deque[_RawConnection] = deque()

    async def handle(scope, receive, send):
        while idle:
            conn = idle.pop()
            if not conn.closed:
                break
        else:
            _, conn = await loop.create_connection(_RawConnection, host, port)
        lines = [scope["method"].encode(), b" ", target_of(scope), b" HTTP/1.1\r\n"]
        for name, value in scope["headers"]:
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        await conn.start(b"".join(lines))
        try:
            await stream_back(send, conn.parser.get_status_code(), conn.headers, conn.body())
        finally:
            if conn.done and conn.keep_alive and not conn.closed:
                idle.append(conn)
            else:
                conn.transport.close()

    async def close() -> None:
        for conn in idle:
            conn.transport.close()

    return handle, close


CANDIDATES: dict[str, Callable[[str], Awaitable[tuple[Handler, Callable[[], Awaitable[None]]]]]] = {
    "uvicorn-fixed": make_fixed,
    "httpx-0.28": make_httpx028,
    "httpx2-default": make_httpx2_default,
    "httpx2-tuned": make_httpx2_tuned,
    "httpcore2": make_httpcore2,
    "aiohttp-default": make_aiohttp_default,
    "aiohttp-tuned": make_aiohttp,
    "handrolled": make_raw,
    "forwarder": make_forwarder,
}


def build_app(candidate: str, upstream: str):
    state: dict[str, Any] = {}

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await state["handle"](scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["handle"], state["close"] = await CANDIDATES[candidate](upstream)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await state["close"]()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    return app


def main() -> None:
    import uvicorn

    candidate, upstream, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    uvicorn.run(
        build_app(candidate, upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
