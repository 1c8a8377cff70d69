"""The forward step in ASGI terms: the agent's body streamed up, the upstream's answer streamed back.

A client that goes away cancels the upstream call; a body over the limit or an upstream that fails becomes a
Refusal (after the response has started, the refusal only ends the stream: the server closes it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from gateway.mcp.lists import MAX_ANSWER_BYTES, ListFilter
from gateway.metrics import UPSTREAM_SECONDS, child
from gateway.proxy.admit import body_too_large
from gateway.proxy.answers import Refusal
from gateway.proxy.crossing import Crossing
from gateway.proxy.forward import BodyTooLarge, UpstreamError
from gateway.proxy.stamp import downstream_response_headers
from gateway.proxy.upstream import Headers, UpstreamClient

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("tollbooth.proxy")

# Most answers come back in a millisecond or two, so the disconnect watcher starts only for requests still
# running after this long: a timer per request is far cheaper than a task per request.
_WATCH_AFTER = 0.05
_UPSTREAM_TEXT = {
    502: "the upstream could not be reached or answered badly",
    504: "the upstream did not answer in time",
}


class ClientDisconnected(Exception):
    """The agent hung up before its request body was complete."""


async def relay(
    client: UpstreamClient,
    upstream: str,
    method: str,
    target: bytes,
    headers: Headers,
    *,
    has_body: bool,
    limit: int,
    receive: Receive,
    send: Send,
    crossing: Crossing,
    read: bytes | None = None,
    lists: ListFilter | None = None,
) -> None:
    """Send the stamped request to `upstream` and stream its answer to the agent (`read`: a body already read
    whole and checked, sent as it is; `lists`: an MCP list request's answer, filtered on the way)."""
    event = crossing.event
    body_state = _BodyState(has_body and read is None)
    body: bytes | AsyncIterator[bytes] | None = read
    if read is not None:
        body_state.total = len(read)
    elif has_body:
        body = _request_body(receive, limit, body_state)
    upstream_started = time.perf_counter()
    # A client that goes away cancels the upstream call: a watcher cancels this task on http.disconnect.
    this_task = crossing.task or asyncio.current_task()
    loop = crossing.loop or asyncio.get_running_loop()
    assert this_task is not None
    watcher: list[asyncio.Task[None]] = []
    timer = loop.call_later(
        _WATCH_AFTER, lambda: watcher.append(loop.create_task(_watch_disconnect(receive, body_state, this_task)))
    )
    try:
        await _exchange(client, upstream, method, target, headers, body, send, crossing, upstream_started, lists)
    except (asyncio.CancelledError, ClientDisconnected) as exc:
        if not body_state.client_gone:
            raise
        if isinstance(exc, asyncio.CancelledError):
            this_task.uncancel()
        # 499: nginx's convention for "client closed the request", so dashboards read it the same way.
        crossing.status = crossing.status or 499
        event.reason = "client_disconnected"
    except BodyTooLarge:
        raise body_too_large(limit) from None
    except UpstreamError as exc:
        event.upstream_ms = (time.perf_counter() - upstream_started) * 1000
        # The agent sees only "bad gateway"; the operator needs the cause (which host, refused or which timeout).
        log.warning("request %s: %s", crossing.request_id, exc)
        raise Refusal(exc.status, exc.reason, _UPSTREAM_TEXT[exc.status], reason=exc.reason, decision="allow") from None
    finally:
        timer.cancel()
        for task in watcher:
            task.cancel()
        event.bytes_in = body_state.total


async def _exchange(
    client: UpstreamClient,
    upstream: str,
    method: str,
    target: bytes,
    headers: Headers,
    body: bytes | AsyncIterator[bytes] | None,
    send: Send,
    crossing: Crossing,
    upstream_started: float,
    lists: ListFilter | None,
) -> None:
    response = await client.send(upstream, method, target, headers, body)
    try:
        upstream_seconds = time.perf_counter() - upstream_started
        crossing.event.upstream_ms = upstream_seconds * 1000
        child(UPSTREAM_SECONDS, upstream).observe(upstream_seconds)
        out_headers = downstream_response_headers(
            response.headers, trace=crossing.trace, request_id=crossing.request_id
        )
        crossing.status = response.status
        crossing.event.bytes_out = 0
        if lists is not None and response.status == 200:
            await _filtered(response, out_headers, lists, send, crossing)
            return
        await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
        async for chunk in response.iter_body():
            if chunk:
                # Counted as it goes, so a stream cut by either side is audited with what was delivered.
                crossing.event.bytes_out += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await response.aclose()


def _content_type(headers: Headers) -> bytes:
    return next((value for name, value in headers if name.lower() == b"content-type"), b"").split(b";")[0].strip()


async def _filtered(response: Any, out_headers: Headers, lists: ListFilter, send: Send, crossing: Crossing) -> None:
    """An MCP list answer with only what the agent may use: JSON whole, SSE event by event as it streams."""
    media = _content_type(out_headers).lower()
    kept = [(name, value) for name, value in out_headers if name.lower() != b"content-length"]
    if media == b"application/json":
        chunks: list[bytes] = []
        held = 0
        async for chunk in response.iter_body():
            held += len(chunk)
            if held > MAX_ANSWER_BYTES:
                chunks = []
                break
            chunks.append(chunk)
        filtered = lists.message(b"".join(chunks)) if chunks else lists.unreadable()
        kept.append((b"content-length", str(len(filtered)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": kept})
        crossing.event.bytes_out = len(filtered)
        await send({"type": "http.response.body", "body": filtered, "more_body": False})
        return
    await send({"type": "http.response.start", "status": 200, "headers": kept})
    sse = media == b"text/event-stream"
    sent = 0
    async for chunk in response.iter_body():
        out = lists.sse(chunk) if sse else b""  # neither JSON nor SSE: a list no one can check is not shown
        if out:
            sent += len(out)
            crossing.event.bytes_out = sent
            await send({"type": "http.response.body", "body": out, "more_body": True})
    rest = lists.sse_end() if sse else b""
    await send({"type": "http.response.body", "body": rest, "more_body": False})


class _BodyState:
    """How far the agent's request body has been read, shared by the body stream and the disconnect watcher."""

    __slots__ = ("total", "read", "client_gone")

    def __init__(self, has_body: bool) -> None:
        self.total = 0
        self.read = asyncio.Event()
        self.client_gone = False
        if not has_body:
            self.read.set()


async def _request_body(receive: Receive, limit: int, state: _BodyState) -> AsyncIterator[bytes]:
    """The agent's body, streamed; raises BodyTooLarge past the limit (a chunked body has no length up front)."""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                state.client_gone = True
                raise ClientDisconnected("the client went away while sending the body")
            chunk = message.get("body", b"")
            if chunk:
                state.total += len(chunk)
                if state.total > limit:
                    raise BodyTooLarge(limit)
                yield chunk
            if not message.get("more_body", False):
                return
    finally:
        state.read.set()


async def _watch_disconnect(receive: Receive, state: _BodyState, task: asyncio.Task[Any]) -> None:
    """Cancel `task` when the client disconnects. Listens only once the body stream has read the whole body."""
    await state.read.wait()
    if state.client_gone:
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            state.client_gone = True
            task.cancel()
            return
