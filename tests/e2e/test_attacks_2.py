"""A second attacker's pass over the proxy: the audit writer, hot reload, shutdown and the protocol layer.

Each test drives a real `tollbooth serve` process over real sockets. Tests marked xfail(strict=True) show a product
bug that is still open; the reason names it. test_attacks.py covers tokens, header policy, framing and a hostile
upstream; nothing here repeats those.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from support import (
    DEFAULT_ROUTES,
    Gateway,
    Upstream,
    start_gateway,
    start_upstream,
    wait_answering,
    wait_until,
    write_public_route_config,
)
from token_support import signed_by_gateway

# --- helpers --------------------------------------------------------------------------------------------------------


def _exchange(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` as is and read until the server closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer and close before it has read everything
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def _status_line(data: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    return int(match.group(1)) if match else None


def _audit_has(gw: Gateway, request_id: str, timeout: float = 5.0) -> dict[str, str]:
    return wait_until(
        lambda: next((e for e in gw.audit_events() if e.get("request_id") == request_id), None),
        timeout=timeout,
        what=f"audit event for {request_id}",
    )


def _barrier(gw: Gateway) -> None:
    """A request whose audit event, once written, shows the writer has flushed every event queued before it."""
    marker = "barrier-" + uuid.uuid4().hex
    assert httpx2.get(gw.proxy_url + "/status", headers={"X-Request-Id": marker}, timeout=10).status_code == 200
    _audit_has(gw, marker)


_IN_FLIGHT = re.compile(r"^tollbooth_requests_in_flight(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def _in_flight(gw: Gateway) -> float:
    return sum(float(v) for v in _IN_FLIGHT.findall(httpx2.get(gw.admin_url + "/metrics", timeout=5).text))


def _reloads(gw: Gateway) -> int:
    return len([e for e in gw.audit_events() if e.get("event") == "config.reloaded"])


@pytest.fixture
def slow_upstream() -> Iterator[Upstream]:
    """An upstream of the test's own: its /slow waits for `release`, which no other test sets."""
    up, stop = start_upstream()
    yield up
    stop()


# --- the audit writer ----------------------------------------------------------------------------------------------


def test_a_lone_surrogate_in_a_signed_claim_is_refused_and_the_audit_writer_lives_on(
    upstream: Upstream, tmp_path: Path
):
    # JSON lets a token carry "\ud800"; json.loads turns it into a lone surrogate, which no UTF-8 writer accepts.
    # Such a claim is not a valid identifier: 401. And the audit trail keeps recording whatever comes next.
    gw = start_gateway(tmp_path, upstream.url)
    try:
        token = signed_by_gateway(gw, sub="user-\ud800")
        odd = httpx2.get(gw.proxy_url + "/v1/customers/1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert odd.status_code == 401
        assert 'error="invalid_token"' in odd.headers["www-authenticate"]
        marker = "after-surrogate-" + uuid.uuid4().hex
        assert httpx2.get(gw.proxy_url + "/status", headers={"X-Request-Id": marker}, timeout=10).status_code == 200
        _audit_has(gw, marker, timeout=3)
        assert any(e.get("request_id") == odd.headers["x-request-id"] for e in gw.audit_events())
    finally:
        gw.stop()


# --- hot reload ----------------------------------------------------------------------------------------------------


def test_a_request_on_an_older_snapshot_survives_two_reloads(slow_upstream: Upstream, tmp_path: Path):
    # S1 and S2 share forwarder F1 (only the routes changed), S3 gets F3 (the upstream changed). retire(S1→S2) closes
    # nothing (F1 is shared); retire(S2→S3) closes F1 as soon as S2 is idle, and S2 never had a request. A request
    # that entered on S1 and is still waiting for F1 (here: for its one connection) then meets a closed pool.
    crm = {"url": slow_upstream.url, "timeout": "20s", "connect_timeout": "2s", "max_connections": 1}
    gw = start_gateway(tmp_path, slow_upstream.url, extra={"upstreams": {"crm": crm}})
    results: dict[str, Any] = {}

    def call(name: str, path: str) -> None:
        try:
            results[name] = httpx2.get(
                gw.proxy_url + path, headers={"Authorization": f"Bearer {gw.mint()}"}, timeout=30
            ).status_code
        except httpx2.TransportError as exc:
            results[name] = repr(exc)

    threads = [threading.Thread(target=call, args=("holder", "/slow"))]
    try:
        threads[0].start()
        wait_until(lambda: any(s.raw_path == b"/slow" for s in slow_upstream.seen), what="/slow at the upstream")
        threads.append(threading.Thread(target=call, args=("waiter", "/v1/customers/7")))
        threads[1].start()
        wait_until(lambda: _in_flight(gw) == 2, what="the second request waiting for the pool's one connection")

        gw.write_routes([*DEFAULT_ROUTES, {"name": "extra", "path": "/extra", "public": True}])
        wait_until(lambda: _reloads(gw) == 1, what="the routes reload")
        gw.config["upstreams"]["crm"]["timeout"] = "21s"
        tmp = gw.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(gw.config))
        tmp.replace(gw.config_path)
        wait_until(lambda: _reloads(gw) == 2, what="the upstream reload")

        assert "waiter" not in results, f"the waiting request ended early: {results}"
        slow_upstream.release.set()
        for thread in threads:
            thread.join(timeout=20)
        assert results == {"holder": 200, "waiter": 200}
    finally:
        slow_upstream.release.set()
        gw.stop()


# --- answers the protocol layer gives: are they audited? ------------------------------------------------------------


def test_a_431_refusal_is_audited(gateway: Gateway):
    probe = "/v1/customers/431-probe-" + uuid.uuid4().hex[:8]
    data = _exchange(
        gateway.proxy_url,
        f"GET {probe} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 70000}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert _status_line(data) == 431
    _barrier(gateway)
    assert any(e.get("path") == probe and e.get("status") == "431" for e in gateway.audit_events())


def test_a_token_in_the_query_of_a_refused_request_never_reaches_the_audit(gateway: Gateway):
    probe = "/v1/customers/query-probe-" + uuid.uuid4().hex[:8]
    secret = "SECRET" + uuid.uuid4().hex
    data = _exchange(
        gateway.proxy_url,
        f"GET {probe}?access_token={secret}&x=1 HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 70000}\r\n\r\n".encode(),
    )
    assert _status_line(data) == 431
    _barrier(gateway)
    assert any(e.get("path") == probe and e.get("status") == "431" for e in gateway.audit_events())
    assert secret not in (gateway.dir / "audit.jsonl").read_text()


# --- --workers and signals -----------------------------------------------------------------------------------------


def _log_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def test_workers_drain_in_flight_requests_when_the_whole_group_gets_sigterm(slow_upstream: Upstream, tmp_path: Path):
    _, proxy, admin = write_public_route_config(
        tmp_path, {"url": slow_upstream.url, "timeout": "20s"}, {"name": "slow", "path": "/slow", "methods": ["GET"]}
    )
    log = tmp_path / "log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "t.yaml"), "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115
        start_new_session=True,  # its own process group, as under systemd or a shell's job control
    )
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["status"] = httpx2.get(f"http://127.0.0.1:{proxy}/slow", timeout=30).status_code
        except httpx2.TransportError as exc:
            result["status"] = repr(exc)

    thread = threading.Thread(target=call)
    try:
        wait_answering(f"http://127.0.0.1:{admin}/readyz", "a worker ready")
        # Both workers, not just the one that answered: each has its signal handlers in place once it logs this.
        workers = wait_until(
            lambda: (
                (pids := {e["pid"] for e in _log_entries(log) if e.get("msg", "").startswith("Started server")})
                and len(pids) == 2
                and pids
            ),
            timeout=20,
            what="both workers serving",
        )
        thread.start()
        wait_until(lambda: any(s.raw_path == b"/slow" for s in slow_upstream.seen), what="/slow at the upstream")
        # What systemd's KillMode=control-group (the default) and a terminal's Ctrl-C do: every process in the group
        # gets the signal. Delivered here in one of its natural orders, workers first, so the kernel cannot merge the
        # copy each worker gets from the group with the one run_workers forwards.
        for pid in workers:
            os.kill(pid, signal.SIGTERM)

        def received(pid: int) -> bool:
            return any(e.get("pid") == pid and "received SIGTERM" in e.get("msg", "") for e in _log_entries(log))

        wait_until(lambda: all(received(pid) for pid in workers), what="both workers draining")
        os.kill(process.pid, signal.SIGTERM)
        # The idle worker stops at once; the busy one must keep its request open until the upstream answers.
        wait_until(
            lambda: not thread.is_alive() or any(e.get("msg") == "stopped" for e in _log_entries(log)),
            what="the idle worker to stop",
        )
        deadline = time.monotonic() + 1.5
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(timeout=0.05)
        assert thread.is_alive(), f"the in-flight request was dropped: {result}"
        slow_upstream.release.set()
        thread.join(timeout=20)
        assert result == {"status": 200}
        assert process.wait(timeout=20) == 0
        events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [e.get("status") for e in events if e.get("route") == "slow"] == ["200"]
    finally:
        slow_upstream.release.set()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        thread.join(timeout=5)
