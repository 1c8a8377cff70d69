"""Raw HTTP/1.1 over a socket, nothing normalised on the way, and a Watch on what reaches the upstream.

Shared by the end-to-end attack tests: requests are written byte for byte, responses split from the stream as sent.
"""

from __future__ import annotations

import re
import socket
import uuid
from dataclasses import dataclass

import httpx2
import pytest
from support import Gateway, Seen, Upstream, wait_until

# --- raw HTTP over a socket: nothing normalised on the way --------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[str, str]]  # names lower-cased, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


def _port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def exchange(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` as is and read until the server closes (every request here says Connection: close)."""
    received = b""
    with socket.create_connection(_port(url), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer (431, 400) and close before it has read everything
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def parse_responses(data: bytes) -> list[Response]:
    """Split a byte stream into HTTP/1.1 responses (Content-Length, chunked, or up to the end)."""
    responses = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        _, status, *reason = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
        names = dict(headers)
        if "chunked" in names.get("transfer-encoding", ""):
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    data = data.partition(b"\r\n")[2]
                    break
                body += data[:size]
                data = data[size + 2 :]
        elif "content-length" in names:
            length = int(names["content-length"])
            body, data = data[:length], data[length:]
        else:
            body, data = data, b""
        responses.append(Response(int(status), reason[0] if reason else b"", headers, body))
    return responses


def send_raw(url: str, data: bytes) -> Response | None:
    """One raw request; the first response, or None when the server closed without answering."""
    responses = parse_responses(exchange(url, data))
    return responses[0] if responses else None


def request(
    target: bytes,
    *headers: bytes,
    method: bytes = b"GET",
    body: bytes = b"",
    host: bytes | None = b"tollbooth.test",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A request's bytes: Host (unless None), the given header lines, Connection: close, then `body` as is."""
    lines = [method + b" " + target + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += headers
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def bearer(token: str) -> bytes:
    return b"Authorization: Bearer " + token.encode()


# --- did anything reach the upstream? -----------------------------------------------------------------------------

_IN_FLIGHT = re.compile(r"^tollbooth_requests_in_flight(?:\{[^}]*\})? (\S+)$", re.MULTILINE)
_MARKER = "barrier-"


def _idle(gateway: Gateway) -> bool:
    text = httpx2.get(gateway.admin_url + "/metrics", timeout=5).text
    return sum(float(value) for value in _IN_FLIGHT.findall(text)) == 0


class Watch:
    """Counts what reaches the upstream from now on, apart from our own marker requests."""

    def __init__(self, gateway: Gateway, upstream: Upstream, marker_path: str = "/status") -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.marker_path = marker_path
        self.before = len(upstream.seen)

    def forwarded(self) -> list[Seen]:
        # The gateway answers some refusals (a parser error on the body) while its own forward is still under way:
        # wait until nothing is in flight, then push a marker through, so anything sent before it has landed.
        wait_until(lambda: _idle(self.gateway), what="no request in flight at the gateway")
        marker = _MARKER + uuid.uuid4().hex
        httpx2.get(self.gateway.proxy_url + self.marker_path, headers={"X-Request-Id": marker}, timeout=10)
        wait_until(
            lambda: any(s.header("x-request-id") == marker for s in self.upstream.seen[self.before :]),
            what="marker request at the upstream",
        )
        return [
            s for s in self.upstream.seen[self.before :] if not (s.header("x-request-id") or "").startswith(_MARKER)
        ]


@pytest.fixture
def watch(gateway: Gateway, upstream: Upstream) -> Watch:
    return Watch(gateway, upstream)
