"""A stopping gateway loses no request already sent: counted across a SIGTERM under keep-alive load.

Gateway A serves under steady load from keep-alive connections while its replacement B already listens on the same
port (SO_REUSEPORT, as `--workers` and a rolling restart on one host use it). A gets SIGTERM mid-load. Every request
written on a connection A had already accepted must be answered — completed in flight, or read from the socket and
answered with `Connection: close` — never reset. The upstream and the two audit trails see each request exactly once.
"""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass, field

import pytest
from raw_http import request
from support import Gateway, Upstream, start_gateway, wait_until

CLIENTS = 16


@dataclass
class Tally:
    answered: list[str] = field(default_factory=list)  # request ids with a complete response
    closes: int = 0  # responses that said Connection: close
    lost: list[str] = field(default_factory=list)  # written on a reused connection, then reset or unanswered
    unaccepted: int = 0  # a fresh connection reset before any byte: the request was never read, so it is re-sent
    statuses: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    """One response (Content-Length framed, as the test upstream answers) and what follows it."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed before a response")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed in the middle of a body")
        rest += chunk
    return head, rest[length:]


def _client(port: int, token: str, stop: threading.Event, tally: Tally) -> None:
    sock: socket.socket | None = None
    served = 0  # responses read on this connection: 0 means it is fresh
    buffer = b""
    pending: str | None = None
    while not stop.is_set() or pending is not None:
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            served, buffer = 0, b""
        rid = pending or uuid.uuid4().hex
        pending = None
        writes = int(rid[0], 16) % 2  # half the requests are writes: the ones an agent must never lose
        method, target, body = (b"POST", b"/v1/customers", b'{"n": 1}') if writes else (b"GET", b"/v1/customers/7", b"")
        lines = [b"Authorization: Bearer " + token.encode(), b"X-Request-Id: " + rid.encode()]
        if body:
            lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        data = request(target, *lines, method=method, body=body).replace(b"Connection: close\r\n", b"")
        try:
            sock.sendall(data)
            head, buffer = _read_response(sock, buffer)
        except OSError:
            sock.close()
            sock = None
            with tally.lock:
                if served == 0:
                    tally.unaccepted += 1
                    pending = rid  # never read by anyone (checked against the upstream below): send it again
                else:
                    tally.lost.append(rid)
            continue
        served += 1
        with tally.lock:
            tally.statuses[head[9:12].decode()] = tally.statuses.get(head[9:12].decode(), 0) + 1
            tally.answered.append(rid)
            if b"\r\nconnection: close" in head.lower():
                tally.closes += 1
        if b"\r\nconnection: close" in head.lower():
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def _audited_ids(gw: Gateway) -> list[str]:
    return [e["request_id"] for e in gw.audit_events() if e.get("event") == "access"]


def test_no_request_already_sent_is_lost_when_the_gateway_stops(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
):
    env = {"TOLLBOOTH_REUSE_PORT": "1"}
    a = start_gateway(tmp_path_factory.mktemp("stop-a"), upstream.url, env=env)
    port = int(a.proxy_url.rsplit(":", 1)[1])
    issuer = a.config["issuer"]
    # B is A's replacement: the same proxy port, issuer name and signing keys; its own issuer and admin listeners.
    shared = {"proxy": {**a.config["proxy"]}, "issuer": {"url": issuer["url"], "keys_dir": issuer["keys_dir"]}}
    b = start_gateway(tmp_path_factory.mktemp("stop-b"), upstream.url, extra=shared, env=env)
    before = len(upstream.seen)
    tally, stop = Tally(), threading.Event()
    token = a.mint(["crm.read", "crm.write"])
    clients = [threading.Thread(target=_client, args=(port, token, stop, tally), daemon=True) for _ in range(CLIENTS)]
    try:
        for thread in clients:
            thread.start()
        wait_until(lambda: len(tally.answered) >= 500, what="steady load on both gateways")
        a.process.send_signal(15)
        a.process.wait(timeout=30)
        served_at_stop = len(tally.answered)
        wait_until(lambda: len(tally.answered) >= served_at_stop + 500, what="load carried on by the replacement")
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
        b.stop()
        a.stop()
    assert not any(thread.is_alive() for thread in clients)
    assert tally.lost == [], f"{len(tally.lost)} requests reset or unanswered on reused connections"
    assert tally.closes >= 1  # A told its keep-alive clients to go elsewhere, rather than cutting them
    # Every answered request reached the upstream exactly once, and nothing else did; each was audited once.
    seen = [s.header("x-request-id") for s in upstream.seen[before:]]
    assert set(tally.statuses) == {"200"}, tally.statuses  # every request was served, by A or by B
    assert sorted(seen) == sorted(tally.answered)
    wait_until(lambda: len(_audited_ids(b)) + len(_audited_ids(a)) >= len(tally.answered), what="audit events")
    assert sorted(_audited_ids(a) + _audited_ids(b)) == sorted(tally.answered)
    assert len(_audited_ids(a)) > 0 and len(_audited_ids(b)) > 0
