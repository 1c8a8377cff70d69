"""HTTP/1.1 framing from agents (RFC 9112), over raw sockets: every ambiguous or faulty request head is refused by
the HTTP layer with `Connection: close`, the connection is closed, nothing reaches the upstream, and the refusal is
audited with the status sent. Pipelined requests are answered in order, a refusal about a later one included.

None of these requests says `Connection: close`: a closed connection is the server's doing.
"""

from __future__ import annotations

import json
import socket
import uuid

import pytest
from raw_http import Response, Watch, bearer, parse_responses
from support import Gateway, Upstream, wait_until

_OK_BODY = b"3\r\nabc\r\n0\r\n\r\n"


def _target() -> bytes:
    return b"/upload/frame-" + uuid.uuid4().hex.encode()


def _head(target: bytes, *lines: bytes, method: bytes = b"POST", version: bytes = b"HTTP/1.1") -> bytes:
    return b"\r\n".join([method + b" " + target + b" " + version, b"Host: x", *lines]) + b"\r\n\r\n"


def _talk(gateway: Gateway, data: bytes, timeout: float = 5.0) -> tuple[list[Response], bool]:
    """Send `data`, read until the server closes or `timeout`; the responses and whether the server closed."""
    host, port = gateway.proxy_url.removeprefix("http://").rsplit(":", 1)
    received = b""
    closed = False
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # answered and closed before everything was read
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    return parse_responses(received), closed


def _audited(gateway: Gateway, target: bytes) -> dict[str, str]:
    path = target.decode()
    return gateway.wait_audit(lambda e: e.get("path") == path, what=f"audit event for {path}")


def _assert_refused(gateway: Gateway, watch: Watch, target: bytes, data: bytes, status: int, error: str) -> None:
    responses, closed = _talk(gateway, data)
    assert [r.status for r in responses] == [status]
    assert responses[0].header("connection") == "close"
    assert json.loads(responses[0].body)["error"] == error
    assert closed
    assert watch.forwarded() == []
    event = _audited(gateway, target)
    assert (event["status"], event["decision"]) == (str(status), "deny")


_TE = b"Transfer-Encoding: "
# (id, header lines, body, version): each a request head llhttp or our checks must refuse with 400.
_FRAMING_400 = [
    ("http10-with-te", [_TE + b"chunked"], _OK_BODY, b"HTTP/1.0"),
    ("http10-with-te-and-cl", [_TE + b"chunked", b"Content-Length: 3"], b"abc", b"HTTP/1.0"),
    ("cl-then-te", [b"Content-Length: 3", _TE + b"chunked"], _OK_BODY, b"HTTP/1.1"),
    ("te-then-cl", [_TE + b"chunked", b"Content-Length: 3"], _OK_BODY, b"HTTP/1.1"),
    ("te-gzip", [_TE + b"gzip"], _OK_BODY, b"HTTP/1.1"),
    ("te-identity", [_TE + b"identity"], _OK_BODY, b"HTTP/1.1"),
    ("te-gzip-then-chunked", [_TE + b"gzip, chunked"], _OK_BODY, b"HTTP/1.1"),
    ("te-gzip-then-chunked-two-fields", [_TE + b"gzip", _TE + b"chunked"], _OK_BODY, b"HTTP/1.1"),
    ("te-chunked-then-gzip", [_TE + b"chunked, gzip"], _OK_BODY, b"HTTP/1.1"),
    ("te-chunked-twice", [_TE + b"chunked, chunked"], _OK_BODY, b"HTTP/1.1"),
    ("te-chunked-twice-two-fields", [_TE + b"chunked", _TE + b"chunked"], _OK_BODY, b"HTTP/1.1"),
    ("te-chunked-with-params", [_TE + b"chunked;q=1"], _OK_BODY, b"HTTP/1.1"),
    ("te-empty", [_TE], _OK_BODY, b"HTTP/1.1"),
    ("te-empty-list-member", [_TE + b",chunked"], _OK_BODY, b"HTTP/1.1"),
    ("te-trailing-comma", [_TE + b"chunked,"], _OK_BODY, b"HTTP/1.1"),
    ("cl-plus-sign", [b"Content-Length: +5"], b"hello", b"HTTP/1.1"),
    ("cl-hex", [b"Content-Length: 0x5"], b"hello", b"HTTP/1.1"),
    ("cl-negative", [b"Content-Length: -5"], b"hello", b"HTTP/1.1"),
    ("cl-list", [b"Content-Length: 5,5"], b"hello", b"HTTP/1.1"),
    ("cl-list-with-space", [b"Content-Length: 5, 5"], b"hello", b"HTTP/1.1"),
    ("cl-inner-space", [b"Content-Length: 5 5"], b"hello", b"HTTP/1.1"),
    ("cl-empty", [b"Content-Length: "], b"hello", b"HTTP/1.1"),
    ("cl-twice-same", [b"Content-Length: 5", b"Content-Length: 5"], b"hello", b"HTTP/1.1"),
    ("cl-twice-different", [b"Content-Length: 5", b"Content-Length: 6"], b"hello!", b"HTTP/1.1"),
    ("cl-overflow", [b"Content-Length: 99999999999999999999999"], b"hello", b"HTTP/1.1"),
    ("obs-fold-space", [b"X-A: a", b" b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("obs-fold-tab", [b"X-A: a", b"\tb", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("obs-fold-hides-te", [b"X-A: a", b" Transfer-Encoding: chunked"], _OK_BODY, b"HTTP/1.1"),
    ("space-before-colon", [b"Transfer-Encoding : chunked"], _OK_BODY, b"HTTP/1.1"),
    ("tab-before-colon", [b"Content-Length\t: 3"], b"abc", b"HTTP/1.1"),
    ("bare-cr-in-field", [b"X-A: a\rX-B: b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("bare-lf-in-field", [b"X-A: a\nX-B: b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("nul-in-value", [b"X-A: a\x00b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("soh-in-value", [b"X-A: a\x01b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("vt-in-value", [b"X-A: a\x0bb", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("del-in-value", [b"X-A: a\x7fb", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("nul-in-name", [b"X-\x00A: b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("control-in-name", [b"X-\x01A: b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("empty-name", [b": b", b"Content-Length: 0"], b"", b"HTTP/1.1"),
    ("chunk-size-not-hex", [_TE + b"chunked"], b"zz\r\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-size-negative", [_TE + b"chunked"], b"-3\r\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-size-0x", [_TE + b"chunked"], b"0x3\r\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-size-space", [_TE + b"chunked"], b"3 \r\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-size-overflow", [_TE + b"chunked"], b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-extension-nul", [_TE + b"chunked"], b"3;\x00\r\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-extension-bare-lf", [_TE + b"chunked"], b"3;a\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-extension-bare-cr", [_TE + b"chunked"], b"3;a\rb\r\nabc\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-data-longer-than-size", [_TE + b"chunked"], b"3\r\nabcX\r\n0\r\n\r\n", b"HTTP/1.1"),
    ("chunk-bare-lf", [_TE + b"chunked"], b"3\nabc\n0\n\n", b"HTTP/1.1"),
]


@pytest.mark.parametrize(
    ("lines", "body", "version"), [case[1:] for case in _FRAMING_400], ids=[case[0] for case in _FRAMING_400]
)
def test_faulty_framing_is_400_closed_audited_and_never_forwarded(
    gateway: Gateway, watch: Watch, lines: list[bytes], body: bytes, version: bytes
):
    target = _target()
    data = _head(target, bearer(gateway.mint("crm.write")), *lines, version=version) + body
    _assert_refused(gateway, watch, target, data, 400, "invalid_request")


@pytest.mark.parametrize(
    "line_end",
    [b"\n", b"\r"],
    ids=["bare-lf", "bare-cr"],
)
def test_bare_line_ends_are_400_and_never_forwarded(gateway: Gateway, watch: Watch, line_end: bytes):
    target = _target()
    data = _head(target, bearer(gateway.mint("crm.write")), b"Content-Length: 0").replace(b"\r\n", line_end)
    _assert_refused(gateway, watch, target, data, 400, "invalid_request")


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0", b"HTTP/9.9"])
def test_http_versions_other_than_1_0_and_1_1_are_505(gateway: Gateway, watch: Watch, version: bytes):
    target = _target()
    data = _head(target, bearer(gateway.mint("crm.write")), b"Content-Length: 0", version=version)
    _assert_refused(gateway, watch, target, data, 505, "http_version_not_supported")


def test_http2_prior_knowledge_preface_is_505(gateway: Gateway, watch: Watch):
    responses, closed = _talk(gateway, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert [r.status for r in responses] == [505] and closed
    assert watch.forwarded() == []


@pytest.mark.parametrize("target", [b"127.0.0.1:22", b"/files/x"], ids=["authority-form", "origin-form"])
def test_connect_is_400_and_never_tunnelled(gateway: Gateway, watch: Watch, target: bytes):
    marker = _target()
    data = b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\nX-Marker: " + marker + b"\r\n\r\nSSH-2.0-x\r\n"
    responses, closed = _talk(gateway, data)
    assert [r.status for r in responses] == [400] and closed
    assert responses[0].header("connection") == "close"
    assert watch.forwarded() == []
    assert gateway.wait_audit(lambda e: e.get("path") == target.decode() and e.get("status") == "400")


def test_te_chunked_in_any_case_is_accepted(gateway: Gateway, upstream: Upstream):
    # Codings are case-insensitive (RFC 9112 §7): the strictness above refuses ambiguity, not spelling.
    data = _head(b"/upload", bearer(gateway.mint("crm.write")), _TE + b"Chunked", b"Connection: close") + _OK_BODY
    responses, _ = _talk(gateway, data)
    assert [r.status for r in responses] == [200]
    assert upstream.last().body == b"abc"


# --- upgrades -------------------------------------------------------------------------------------------------------

_WS_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
_UPGRADES = {
    "websocket": [b"Upgrade: websocket", b"Connection: Upgrade", _WS_KEY, b"Sec-WebSocket-Version: 13"],
    "websocket-bad-version": [b"Upgrade: websocket", b"Connection: Upgrade", _WS_KEY, b"Sec-WebSocket-Version: 7"],
    "websocket-no-key": [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13"],
    "websocket-malformed-key": [
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: not base64!",
        b"Sec-WebSocket-Version: 13",
    ],
    "websocket-no-connection-upgrade": [b"Upgrade: websocket", _WS_KEY, b"Sec-WebSocket-Version: 13"],
    "h2c": [b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", b"Connection: Upgrade, HTTP2-Settings"],
    "anything": [b"Upgrade: tls/1.3, foo", b"Connection: upgrade"],
    "empty": [b"Upgrade: ", b"Connection: upgrade"],
}


@pytest.mark.parametrize("lines", list(_UPGRADES.values()), ids=list(_UPGRADES))
def test_every_upgrade_is_403_audited_and_never_forwarded(gateway: Gateway, watch: Watch, lines: list[bytes]):
    target = b"/v1/customers/1?frame=" + uuid.uuid4().hex.encode()
    data = _head(target, bearer(gateway.mint()), *lines, method=b"GET") + b"\x81\x05hello"
    responses, closed = _talk(gateway, data)
    assert [r.status for r in responses] == [403] and closed
    assert responses[0].header("connection") == "close"
    assert json.loads(responses[0].body)["error"] == "upgrade_not_supported"
    assert watch.forwarded() == []
    events = [e for e in gateway.audit_events() if e.get("reason") == "upgrade_not_supported"]
    assert events and events[-1]["status"] == "403"


def test_a_request_pipelined_behind_a_refused_upgrade_is_never_silently_dropped(gateway: Gateway, watch: Watch):
    token = gateway.mint()
    upgrade = _head(b"/v1/customers/1", bearer(token), *_UPGRADES["websocket"], method=b"GET")
    after = _head(b"/v1/customers/2", bearer(token), method=b"GET")
    responses, closed = _talk(gateway, upgrade + after)
    # Answered in order or the connection closed: here the 403 says close, and the server closes.
    assert [r.status for r in responses] == [403] and responses[0].header("connection") == "close" and closed
    assert watch.forwarded() == []


# --- pipelining: answers in order ----------------------------------------------------------------------------------

_BAD_NEXT = {
    "malformed-header": b"GET /v1/customers/2 HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "ambiguous-framing": b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "http10-te": b"POST /upload HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "upgrade": b"GET /v1/customers/2 HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    "bad-version": b"GET /v1/customers/2 HTTP/1.2\r\nHost: x\r\n\r\n",
    "too-many-headers": b"GET /v1/customers/2 HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    + b"\r\n",
    "head-too-large": b"GET /v1/customers/2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
}
_BAD_STATUS = {"upgrade": 403, "bad-version": 505, "too-many-headers": 431, "head-too-large": 431}


@pytest.mark.parametrize("slow", [False, True], ids=["fast-upstream", "slow-upstream"])
@pytest.mark.parametrize("bad", list(_BAD_NEXT.values()), ids=list(_BAD_NEXT))
def test_a_refusal_of_a_pipelined_request_waits_for_the_earlier_answer(
    gateway: Gateway, upstream: Upstream, watch: Watch, bad: bytes, slow: bool
):
    path = b"/slow" if slow else b"/files/patched"
    patch = _head(path, bearer(gateway.mint()), b"Content-Length: 5", method=b"PATCH") + b"hello"
    bad_id = next(k for k, v in _BAD_NEXT.items() if v == bad)
    if slow:
        upstream.release.clear()
        # Let the PATCH sit upstream while the bad request is parsed: its refusal must still come second.
        host, port = gateway.proxy_url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(patch + bad)
            wait_until(lambda: any(s.raw_path == b"/slow" for s in upstream.seen[watch.before :]), what="PATCH")
            early = _pending(sock)
            upstream.release.set()
            received = early + _read_all(sock)
        assert early == b"", "a response was sent before the PATCH's"
        responses = parse_responses(received)
    else:
        responses, _ = _talk(gateway, patch + bad)
    assert [r.status for r in responses] == [200, _BAD_STATUS.get(bad_id, 400)]
    assert responses[1].header("connection") == "close"
    assert [(s.method, s.raw_path) for s in watch.forwarded()] == [("PATCH", path)]


def _pending(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)
        sock.settimeout(5)


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def test_pipelined_good_requests_are_all_answered_in_order(gateway: Gateway, watch: Watch):
    token = gateway.mint()
    data = b"".join(_head(b"/files/p%d" % i, bearer(token), method=b"GET") for i in range(5))
    data += _head(b"/files/p5", bearer(token), b"Connection: close", method=b"GET")
    responses, closed = _talk(gateway, data)
    assert [r.status for r in responses] == [200] * 6 and closed
    assert [json.loads(r.body)["path"] for r in responses] == [f"/files/p{i}" for i in range(6)]
    assert len(watch.forwarded()) == 6


# --- oversized heads -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["one-large-value", "too-many-fields", "long-target"])
def test_oversized_head_is_431_audited_and_never_forwarded(gateway: Gateway, watch: Watch, shape: str):
    target = _target()
    if shape == "one-large-value":
        lines = [b"X-Big: " + b"a" * 70000]
    elif shape == "too-many-fields":
        lines = [b"X-H%d: v" % i for i in range(150)]
    else:
        target += b"?" + b"q" * 70000
        lines = []
    data = _head(target, bearer(gateway.mint("crm.write")), *lines, b"Content-Length: 0")
    responses, closed = _talk(gateway, data)
    assert [r.status for r in responses] == [431] and closed
    assert responses[0].header("connection") == "close"
    assert json.loads(responses[0].body)["error"] == "request_header_fields_too_large"
    assert watch.forwarded() == []
    path = target.split(b"?")[0].decode()
    event = gateway.wait_audit(lambda e: e.get("path") == path, what="audit event of the 431")
    assert event["status"] == "431"
