"""A hostile upstream behind the proxy: a raw socket that answers with whatever bytes a case needs.

The upstream is not trusted to be well-formed. Whatever it sends, the agent gets either a relayed answer that is
exactly what a well-formed upstream could have said, or the gateway's 502 — and the audit records the status the
agent got, never the upstream's.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from raw_http import Response, bearer, exchange, request, send_raw
from support import Gateway, start_gateway, wait_until

# --- a hostile upstream ----------------------------------------------------------------------------------------------

MANY_300 = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
MANY_250 = b"".join(b"X-H%d: v\r\n" % i for i in range(250))

_UPSTREAM_RESPONSES: dict[bytes, bytes] = {
    b"/files/hop": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: from-upstream\r\nX-REQUEST-ID: again\r\n"
    b"traceparent: 00-11111111111111111111111111111111-1111111111111111-01\r\nConnection: keep-alive, x-private\r\n"
    b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\n"
    b"Trailer: x-t\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok",
    b"/files/101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    b"\x81\x05hello",
    b"/files/extra-after-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    b"/files/extra-after-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    b"/files/cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"/files/duplicate-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nokok",
    b"/files/obs-fold": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fold: a\r\n Set-Cookie: evil=1\r\n\r\nok",
    b"/files/bare-cr": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\rSet-Cookie: evil=1\r\n\r\nok",
    b"/files/nul": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00b\r\n\r\nok",
    b"/files/space-in-name": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A : b\r\n\r\nok",
    b"/files/bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok",
    b"/files/date": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\n\r\nok",
    # Status lines: llhttp takes any three digits, so the range is ours to check.
    b"/files/status-999": b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\nSet-Cookie: evil=1\r\n\r\nok",
    b"/files/status-600": b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"/files/status-000": b"HTTP/1.1 000 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"/files/status-099": b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"/files/status-two-digits": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/files/status-four-digits": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/files/status-letters": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/files/status-signed": b"HTTP/1.1 +20 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/files/no-version": b"200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/files/not-http": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    b"/files/interim-999": b"HTTP/1.1 199 Odd\r\n\r\nHTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
    # Header sections: the default limits are 256 fields and 64 KiB (UpstreamConfig).
    b"/files/many-headers": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + MANY_300 + b"\r\nok",
    b"/files/huge-header": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\nok",
    b"/files/interim-flood": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
    + b"X-Pad: "
    + b"p" * 1000
    + b"\r\n\r\n" * 1
    + (b"HTTP/1.1 103 Early Hints\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n") * 80
    + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/files/under-the-limits": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    + MANY_250
    + b"X-Big: "
    + b"a" * 40000
    + b"\r\n\r\nok",
    b"/files/interim-then-final": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
    b"Link: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    # Bodies cut short: the agent must never take them for complete ones.
    b"/files/short-length": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
    b"/files/short-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
}
_UPSTREAM_DEFAULT = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nnormal"
_CLOSE_AFTER = {b"/files/101", b"/files/short-length", b"/files/short-chunked", b"/files/not-http"}


class HostileUpstream:
    """A raw-socket upstream that answers each path with the canned bytes above; records request heads."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.heads: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ")[1]
                try:
                    conn.sendall(_UPSTREAM_RESPONSES.get(path, _UPSTREAM_DEFAULT))
                except OSError:
                    return
                if path in _CLOSE_AFTER:
                    return

    def sent_header(self, head: bytes, name: bytes) -> bytes | None:
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, HostileUpstream]]:
    evil = HostileUpstream()
    gw = start_gateway(tmp_path_factory.mktemp("hostile"), evil.url)
    yield gw, evil
    gw.stop()
    evil.close()


def _via_hostile(hostile: tuple[Gateway, HostileUpstream], path: bytes) -> tuple[Response | None, bytes]:
    gw, evil = hostile
    count = len(evil.heads)
    response = send_raw(gw.proxy_url, request(path, bearer(gw.mint())))
    head = evil.heads[count] if len(evil.heads) > count else b""
    return response, head


def test_upstream_cannot_set_request_id_traceparent_or_hop_by_hop_headers(hostile):
    response, head = _via_hostile(hostile, b"/files/hop")
    assert response is not None and response.status == 200 and response.body == b"ok"
    _, evil = hostile
    assert response.headers_named("x-request-id") == [evil.sent_header(head, b"x-request-id").decode()]
    assert response.headers_named("traceparent") == [evil.sent_header(head, b"traceparent").decode()]
    for name in ("x-private", "keep-alive", "proxy-connection", "upgrade", "te", "trailer"):
        assert response.header(name) is None, name
    assert response.headers_named("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize(
    "path",
    [
        b"/files/cl-and-te",
        b"/files/duplicate-cl",
        b"/files/obs-fold",
        b"/files/bare-cr",
        b"/files/nul",
        b"/files/space-in-name",
        b"/files/bare-lf",
    ],
    ids=lambda p: p.decode().rsplit("/", 1)[1],
)
def test_malformed_upstream_response_is_502(hostile, path: bytes):
    response, _ = _via_hostile(hostile, path)
    assert response is not None and response.status == 502
    assert json.loads(response.body)["error"] == "upstream_protocol_error"
    assert response.header("set-cookie") is None


def test_upstream_101_switching_protocols_is_502(hostile):
    response, _ = _via_hostile(hostile, b"/files/101")
    assert response is not None and response.status == 502


@pytest.mark.parametrize(
    "path", [b"/files/extra-after-length", b"/files/extra-after-chunked"], ids=["length", "chunked"]
)
def test_bytes_after_a_complete_upstream_response_never_reach_the_agent(hostile, path: bytes):
    response, _ = _via_hostile(hostile, path)
    assert response is not None and response.status == 200
    assert response.body == b"ok"


def test_an_extra_upstream_response_never_answers_the_next_request(hostile):
    for path in (b"/files/extra-after-length", b"/files/extra-after-chunked"):
        _via_hostile(hostile, path)
        response, _ = _via_hostile(hostile, b"/files/next")
        assert response is not None and response.body == b"normal"


def test_upstream_date_is_not_duplicated(hostile):
    response, _ = _via_hostile(hostile, b"/files/date")
    assert response is not None and len(response.headers_named("date")) == 1


def _audited(gw: Gateway, response: Response) -> dict[str, str]:
    rid = response.header("x-request-id")
    return gw.wait_audit(lambda e: e.get("request_id") == rid and e.get("event") == "access", f"audit of {rid}")


@pytest.mark.parametrize(
    "path",
    [
        b"/files/status-999",
        b"/files/status-600",
        b"/files/status-000",
        b"/files/status-099",
        b"/files/status-two-digits",
        b"/files/status-four-digits",
        b"/files/status-letters",
        b"/files/status-signed",
        b"/files/no-version",
        b"/files/not-http",
        b"/files/interim-999",
    ],
    ids=lambda p: p.decode().rsplit("/", 1)[1],
)
def test_a_status_line_outside_100_to_599_or_malformed_is_502_and_audited_as_502(hostile, path: bytes):
    response, _ = _via_hostile(hostile, path)
    assert response is not None and response.status == 502
    assert json.loads(response.body)["error"] == "upstream_protocol_error"
    assert response.header("set-cookie") is None
    event = _audited(hostile[0], response)
    assert int(event["status"]) == 502 and event["reason"] == "upstream_protocol_error"


@pytest.mark.parametrize(
    "path", [b"/files/many-headers", b"/files/huge-header", b"/files/interim-flood"], ids=["count", "bytes", "interim"]
)
def test_a_response_header_section_over_the_limits_is_502_not_relayed(hostile, path: bytes):
    response, _ = _via_hostile(hostile, path)
    assert response is not None and response.status == 502
    assert json.loads(response.body)["error"] == "upstream_protocol_error"
    assert response.header("x-h1") is None and response.header("x-big") is None
    assert int(_audited(hostile[0], response)["status"]) == 502


def test_a_large_header_section_under_the_default_limits_is_relayed(hostile):
    response, _ = _via_hostile(hostile, b"/files/under-the-limits")
    assert response is not None and response.status == 200 and response.body == b"ok"
    assert response.header("x-h249") == "v" and response.header("x-big") == "a" * 40000


def test_interim_responses_are_not_relayed_and_the_final_one_is(hostile):
    response, _ = _via_hostile(hostile, b"/files/interim-then-final")
    assert response is not None and response.status == 201 and response.body == b"ok"
    assert response.header("link") is None


@pytest.mark.parametrize("path", [b"/files/short-length", b"/files/short-chunked"], ids=["length", "chunked"])
def test_a_truncated_body_is_never_presented_as_complete(hostile, path: bytes):
    gw, _ = hostile
    raw = exchange(gw.proxy_url, request(path, bearer(gw.mint())))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    lowered = head.lower()
    if b"content-length: 10" in lowered:
        assert len(body) < 10
    else:
        assert b"transfer-encoding: chunked" in lowered and not body.endswith(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, hostile) -> Iterator[Gateway]:
    """A gateway in front of the same hostile upstream with tight per-upstream limits."""
    _, evil = hostile
    limits = {"max_response_headers": 20, "max_response_header_bytes": 2048}
    upstream = {"crm": {"url": evil.url, "timeout": "2s", **limits}}
    gw = start_gateway(tmp_path_factory.mktemp("strict"), evil.url, extra={"upstreams": upstream})
    yield gw
    gw.stop()


def test_response_header_limits_are_set_per_upstream(hostile, strict: Gateway):
    # Relayed by the default gateway above (under 256 fields and 64 KiB), refused by this upstream's limits.
    response = send_raw(strict.proxy_url, request(b"/files/under-the-limits", bearer(strict.mint())))
    assert response is not None and response.status == 502
    assert json.loads(response.body)["error"] == "upstream_protocol_error"
    # The operator learns which limit it was from the log; the agent only that the upstream failed.
    wait_until(lambda: "max_response_headers" in (strict.dir / "gateway.log").read_text(), what="the cause logged")
    ok = send_raw(strict.proxy_url, request(b"/files/hop", bearer(strict.mint())))
    assert ok is not None and ok.status == 200
