"""A loopback relay that adds an agent's bearer token to every request it passes on, streaming both ways.

Clients that send no Authorization header of their own (the official MCP conformance suite's server mode has no
option for one) reach the gateway through it. The first path segment picks the token: `/<agent>/mcp` goes to
the gateway's `/mcp` carrying that agent's token, so one relay serves agents with different rights. Everything
else (Origin, Mcp-Session-Id, Last-Event-ID, the body) passes as sent, and so does a Host naming anything but
the relay itself, and an Origin naming anything but the relay (a DNS rebinding attempt must reach the gateway as
the attacker sent it; the relay's own name becomes the gateway's).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx2
import uvicorn
from support import free_port, serve_in_thread

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
# Set by the relay itself (framing, the connection) or replaced by it (the token).
_NOT_PASSED = frozenset({b"authorization", b"content-length", b"transfer-encoding", b"connection"})
_ANSWER_NOT_PASSED = _NOT_PASSED - {b"authorization"}


class BearerRelay:
    """The ASGI app: `tokens` maps the first path segment to the bearer token sent on to `target`."""

    def __init__(self, target: str, tokens: dict[str, str]) -> None:
        self.target = target
        self.tokens = tokens
        self.client = httpx2.AsyncClient(timeout=httpx2.Timeout(60.0), trust_env=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        _, agent, rest = scope["raw_path"].split(b"/", 2) if scope["raw_path"].count(b"/") >= 2 else (b"", b"", b"")
        token = self.tokens.get(agent.decode())
        if token is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no such agent in the relay"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        own = f"127.0.0.1:{scope['server'][1]}".encode()
        headers = [
            (k, self.target.encode() if (k, v) == (b"origin", b"http://" + own) else v)
            for k, v in scope["headers"]
            if k not in _NOT_PASSED and (k, v) != (b"host", own)
        ]
        headers.append((b"authorization", f"Bearer {token}".encode()))
        query = scope["query_string"].decode()
        url = f"{self.target}/{rest.decode()}" + (f"?{query}" if query else "")
        relaying = asyncio.ensure_future(self._relay(scope["method"], url, headers, body, send))
        hung_up = asyncio.ensure_future(_disconnected(receive))
        await asyncio.wait({relaying, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        for task in (relaying, hung_up):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _relay(self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes, send: Send) -> None:
        request = self.client.build_request(method, url, headers=headers, content=body or None)
        response = await self.client.send(request, stream=True)
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _ANSWER_NOT_PASSED]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def start_bearer_relay(target: str, tokens: dict[str, str]) -> tuple[str, Callable[[], None]]:
    """Serve a BearerRelay to `target` on a free loopback port: its base URL and a function that stops it."""
    port = free_port()
    config = uvicorn.Config(
        BearerRelay(target, tokens),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    return f"http://127.0.0.1:{port}", serve_in_thread(uvicorn.Server(config), "bearer relay")
