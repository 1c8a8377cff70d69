"""A small fake of the UpstreamClient Protocol (gateway/proxy/upstream.py): the proxy app tested without sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway.config import UpstreamConfig
from gateway.proxy.forward import UpstreamError
from gateway.proxy.upstream import Headers


@dataclass
class Sent:
    """One request as the proxy handed it to the upstream client."""

    upstream: str
    method: str
    target: bytes
    headers: Headers
    body: bytes | None

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


@dataclass
class FakeReply:
    status: int = 200
    headers: Headers = field(default_factory=lambda: [(b"content-type", b"application/json")])
    chunks: list[bytes] = field(default_factory=lambda: [b'{"ok":true}'])
    closed: bool = False

    async def iter_body(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class FakeUpstream:
    """Records every request; answers with `reply`, or raises `error` (an UpstreamError) when it is set."""

    def __init__(self, upstreams: dict[str, UpstreamConfig] | None = None) -> None:
        self.upstreams = upstreams or {}
        self.sent: list[Sent] = []
        self.reply = FakeReply()
        self.error: UpstreamError | None = None
        self.closed = False

    async def send(
        self,
        upstream: str,
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> FakeReply:
        if isinstance(body, bytes) or body is None:
            data = body
        else:
            data = b"".join([chunk async for chunk in body])
        self.sent.append(Sent(upstream, method, target, list(headers), data))
        if self.error is not None:
            raise self.error
        return self.reply

    async def aclose(self) -> None:
        self.closed = True
