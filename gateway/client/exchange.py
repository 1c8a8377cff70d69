"""Sans-I/O HTTP exchanges: discovery and token requests are written once, as generators that yield `Call`s
and receive `Reply`s, then driven by a blocking or an asyncio httpx2 client (the shape of httpx's own
`Auth.auth_flow`). One implementation of each protocol step serves both the sync and the async SDK."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2

from gateway.client.errors import ProtocolError

T = TypeVar("T")

# A server document we parse is small; a larger one is a misconfiguration or an attack, not metadata.
MAX_DOCUMENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    # Credentials and tokens travel in these: kept out of reprs, logs and tracebacks' locals.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    form: Mapping[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Reply:
    url: str
    status: int
    headers: httpx2.Headers = field(repr=False)
    body: bytes = field(repr=False)

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or ProtocolError naming the URL."""
        try:
            document = json.loads(self.body)
        except ValueError:
            raise ProtocolError(f"{self.url} answered {self.status} with a body that is not JSON") from None
        if not isinstance(document, dict):
            raise ProtocolError(f"{self.url} answered {self.status} with JSON that is not an object")
        return document


Exchange = Generator[Call, Reply, T]


class _Body:
    """A response body, collected up to MAX_DOCUMENT_BYTES."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > MAX_DOCUMENT_BYTES:
            raise ProtocolError(f"{self.call.url} sent more than {MAX_DOCUMENT_BYTES} bytes; refusing to parse it")

    def reply(self, response: httpx2.Response) -> Reply:
        return Reply(self.call.url, response.status_code, response.headers, bytes(self.data))


@contextmanager
def _transport_errors(call: Call) -> Iterator[None]:
    try:
        yield
    except httpx2.HTTPError as exc:
        raise ProtocolError(f"{call.method} {call.url} failed: {exc.__class__.__name__}: {exc}") from None


@dataclass(frozen=True)
class _Done:
    value: Any


def _advance(exchange: Exchange[T], reply: Reply) -> Call | _Done:
    try:
        return exchange.send(reply)
    except StopIteration as done:
        return _Done(done.value)


def run_sync(exchange: Exchange[T], http: httpx2.Client) -> T:
    """Drive `exchange` with a blocking client; returns what the exchange returns."""
    step: Call | _Done = next(exchange)
    while isinstance(step, Call):
        body = _Body(step)
        with (
            _transport_errors(step),
            http.stream(step.method, step.url, headers=dict(step.headers), data=step.form) as r,
        ):
            for chunk in r.iter_bytes():
                body.add(chunk)
        step = _advance(exchange, body.reply(r))
    return step.value  # type: ignore[no-any-return]


async def run_async(exchange: Exchange[T], http: httpx2.AsyncClient) -> T:
    """Drive `exchange` with an asyncio client; returns what the exchange returns."""
    step: Call | _Done = next(exchange)
    while isinstance(step, Call):
        body = _Body(step)
        with _transport_errors(step):
            async with http.stream(step.method, step.url, headers=step.headers, data=step.form) as r:
                async for chunk in r.aiter_bytes():
                    body.add(chunk)
        step = _advance(exchange, body.reply(r))
    return step.value  # type: ignore[no-any-return]
