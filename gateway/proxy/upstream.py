"""The seam between the proxy and its upstream client: what the forward step needs, and nothing more.

gateway/proxy/forward.py's Forwarder is the real one (pooled keep-alive HTTP/1.1, chosen by benchmark); tests
that drive the proxy app without sockets hand the snapshot a small fake of the same shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

Headers = list[tuple[bytes, bytes]]


class UpstreamReply(Protocol):
    """The upstream's status and headers once they are in; the body streams from iter_body(). Always aclose()."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Headers: ...

    def iter_body(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    """Sends one request to a named upstream. Raises forward.UpstreamError (502/504) when it cannot."""

    async def send(
        self,
        upstream: str,
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamReply: ...

    async def aclose(self) -> None: ...
