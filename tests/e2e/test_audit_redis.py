"""Audit to Redis Streams end to end: a real gateway, a real redis-server that goes away and comes back."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import redis
from support import Gateway, RedisServer, Upstream, start_gateway, wait_answering, wait_until

STREAM = "tollbooth:audit"


def stream_events(server: RedisServer) -> list[dict[str, str]]:
    client = redis.Redis(port=server.port, decode_responses=True)
    return [fields for _, fields in client.xrange(STREAM)]


def stop_redis_keeping_its_data(server: RedisServer) -> None:
    """SHUTDOWN SAVE: the next redis-server on this port and dir starts with everything this one acknowledged, so a
    test can check the whole stream for exactly once (a fresh Redis without it could hide a loss)."""
    # A raw socket: redis-py would retry the command against the server that is going away.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"SHUTDOWN SAVE\r\n")
        assert sock.recv(64) == b"", "redis-server refused to shut down"
    assert server.process is not None
    server.process.wait(timeout=10)


def counter(gw: Gateway, outcome: str) -> float:
    pattern = rf'^tollbooth_audit_events_total\{{(?=[^}}]*outcome="{outcome}")(?=[^}}]*sink="redis")[^}}]*\}} (\S+)$'
    match = re.search(pattern, gw.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def gauge(gw: Gateway, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", gw.metrics(), re.M)
    assert match, name
    return float(match.group(1))


class Traffic:
    """Sequential requests to the public route from a background thread, each with its own X-Request-Id."""

    def __init__(self, gw: Gateway, tag: str) -> None:
        self.url = f"{gw.proxy_url}/status"
        self.tag = tag
        self.sent: list[str] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx2.Client(timeout=10) as client:
            while not self._stop.is_set():
                request_id = f"{self.tag}-{len(self.sent)}"
                response = client.get(self.url, headers={"x-request-id": request_id})
                self.statuses.append(response.status_code)
                self.sent.append(request_id)

    def wait_for(self, more: int) -> None:
        target = len(self.sent) + more
        wait_until(lambda: len(self.sent) >= target, timeout=15, what=f"{more} more requests from {self.tag}")

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=15)
        assert set(self.statuses) == {200}, "the proxy stopped serving while Redis was away"
        return self.sent


def redis_gateway(tmp: Path, upstream: Upstream, server: RedisServer, **audit: object) -> Gateway:
    return start_gateway(tmp, upstream.url, extra={"redis": {"url": server.url}, "audit": audit})


def relaunch(gw: Gateway, *args: str) -> None:
    """Start `serve` again on the same config. Not `start_gateway`: with Redis down it is not ready, by design."""
    gw.process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path), "--log-format", "json", *args],
        cwd=gw.dir,
        env={**os.environ, "TEST_UPSTREAM_KEY": "upstream-secret"},
        stdout=subprocess.DEVNULL,
        stderr=open(gw.dir / "gateway-2.log", "wb"),  # noqa: SIM115
    )
    wait_answering(f"{gw.admin_url}/healthz", "the relaunched gateway")


def test_allow_and_deny_events_have_the_contract_fields_and_no_secret(
    upstream: Upstream, redis_server: RedisServer, tmp_path: Path
):
    gw = redis_gateway(tmp_path, upstream, redis_server)
    try:
        token = gw.mint("crm.read", subject="user:alice", act={"sub": "billing-bot"})
        auth = {"authorization": f"Bearer {token}"}
        allowed = httpx2.get(f"{gw.proxy_url}/v1/customers/42", headers={**auth, "x-request-id": "allow-1"})
        denied = httpx2.post(
            f"{gw.proxy_url}/v1/customers",
            headers={**auth, "x-request-id": "deny-1", "content-type": "application/json"},
            content=b'{"card": "body-marker-4111"}',
        )
        assert (allowed.status_code, denied.status_code) == (200, 403)
        events = wait_until(lambda: len(stream_events(redis_server)) >= 2 and stream_events(redis_server))
    finally:
        gw.stop()
    allow, deny = (next(e for e in events if e["request_id"] == rid) for rid in ("allow-1", "deny-1"))
    assert {k: allow[k] for k in ("v", "event", "agent", "subject", "delegation", "decision", "route", "upstream")} == {
        "v": "1",
        "event": "access",
        "agent": "billing-bot",
        "subject": "user:alice",
        "delegation": "billing-bot",
        "decision": "allow",
        "route": "get-customer",
        "upstream": "crm",
    }
    assert (allow["method"], allow["path"], allow["status"], allow["required_scopes"]) == (
        "GET",
        "/v1/customers/42",
        "200",
        "crm.read",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", allow["ts"])
    assert allow["jti"] and allow["trace_id"] and allow["client_ip"] == "127.0.0.1" and allow["id"] != deny["id"]
    assert (deny["decision"], deny["reason"], deny["status"], deny["route"]) == (
        "deny",
        "insufficient_scope",
        "403",
        "create-customer",
    )
    raw = repr(redis.Redis(port=redis_server.port).xrange(STREAM))
    for secret in (token, token.split(".")[2], "upstream-secret", "body-marker-4111", "Bearer"):
        assert secret not in raw


def test_a_redis_outage_loses_nothing_and_duplicates_nothing(
    upstream: Upstream, redis_server: RedisServer, tmp_path: Path
):
    gw = redis_gateway(tmp_path, upstream, redis_server)
    try:
        traffic = Traffic(gw, "outage")
        traffic.wait_for(100)
        stop_redis_keeping_its_data(redis_server)
        traffic.wait_for(300)  # served while Redis is away
        wait_until(lambda: counter(gw, "spooled") > 0, what="events spooled")
        assert gauge(gw, "tollbooth_audit_spool_bytes") > 0
        readiness = httpx2.get(f"{gw.admin_url}/readyz")
        assert readiness.status_code == 503 and readiness.json()["checks"]["audit"].startswith("degraded: redis")
        redis_server.start()
        traffic.wait_for(100)
        sent = traffic.stop()
        wait_until(lambda: len(stream_events(redis_server)) >= len(sent), timeout=15, what="every event in Redis")
        assert [e["request_id"] for e in stream_events(redis_server)] == sent
        assert counter(gw, "replayed") > 0
        wait_until(lambda: gauge(gw, "tollbooth_audit_spool_bytes") == 0, what="the spool emptied")
    finally:
        assert gw.stop() == 0


def test_a_gateway_restart_during_the_outage_loses_nothing(
    upstream: Upstream, redis_server: RedisServer, tmp_path: Path
):
    gw = redis_gateway(tmp_path, upstream, redis_server)
    try:
        before = Traffic(gw, "first")
        before.wait_for(50)
        stop_redis_keeping_its_data(redis_server)
        before.wait_for(200)
        sent = before.stop()
        assert gw.stop() == 0  # SIGTERM: what is queued goes to the spool
        assert any((tmp_path / "spool").glob("*.seg"))
        relaunch(gw)
        after = Traffic(gw, "second")
        after.wait_for(100)  # spooled behind the first process's events
        redis_server.start()
        after.wait_for(100)
        sent += after.stop()
        wait_until(lambda: len(stream_events(redis_server)) >= len(sent), timeout=15, what="every event in Redis")
        assert [e["request_id"] for e in stream_events(redis_server)] == sent
        wait_until(lambda: not any((tmp_path / "spool").glob("*.seg")), what="replayed segments deleted")
    finally:
        gw.stop()


def test_on_failure_deny_answers_503_while_neither_redis_nor_the_spool_takes_events(
    upstream: Upstream, redis_server: RedisServer, tmp_path: Path
):
    gw = redis_gateway(tmp_path, upstream, redis_server, on_failure="deny")
    status = f"{gw.proxy_url}/status"
    try:
        assert httpx2.get(status).status_code == 200
        shutil.rmtree(tmp_path / "spool")
        (tmp_path / "spool").write_text("a file where the spool directory was: the spool cannot be written")
        redis_server.stop()
        served = []

        def refused() -> httpx2.Response | None:
            response = httpx2.get(status, headers={"x-request-id": f"during-{len(served)}"})
            if response.status_code == 200:  # before the sink found out: held in memory, written later
                served.append(response.headers["x-request-id"])
            # The first refusals may name the revocation list instead: it notices a lost Redis first.
            return response if response.status_code == 503 and response.json()["error"] == "audit_unavailable" else None

        wait_until(refused, what="503 audit_unavailable while the audit path is down")
        assert httpx2.get(status).status_code == 503
        redis_server.start()
        wait_until(lambda: httpx2.get(status).status_code == 200, what="serving again once Redis is back")
        events = wait_until(lambda: [e for e in stream_events(redis_server) if e.get("reason") == "audit_unavailable"])
        assert events[0]["decision"] == "deny" and events[0]["status"] == "503"
        written = {e["request_id"] for e in stream_events(redis_server)}
        assert set(served) <= written, "a request served during the outage was never audited"
    finally:
        gw.stop()


def test_workers_write_one_stream_and_release_their_spools(
    upstream: Upstream, redis_server: RedisServer, tmp_path: Path
):
    gw = redis_gateway(tmp_path, upstream, redis_server)
    gw.stop()
    relaunch(gw, "--workers", "2")
    try:
        wait_until(lambda: len(_listening_pids(gw.dir / "gateway-2.log")) == 2, timeout=20, what="both workers")
        ids = [f"w-{n}" for n in range(60)]
        with httpx2.Client() as client:
            for request_id in ids:
                # A new connection each time, so the kernel spreads the requests over the workers.
                client.get(f"{gw.proxy_url}/status", headers={"x-request-id": request_id, "connection": "close"})
        events = wait_until(lambda: len(stream_events(redis_server)) >= len(ids) and stream_events(redis_server))
        assert sorted(e["request_id"] for e in events) == sorted(ids)
        assert len({e["instance"] for e in events}) == 2
    finally:
        assert gw.stop() == 0
    assert not any((tmp_path / "spool").iterdir()), "a worker left spool files behind"


def _listening_pids(log: Path) -> set[int]:
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {e["pid"] for e in entries if e["msg"].startswith("proxy listening")}


def test_a_second_sigterm_during_the_drain_loses_nothing(upstream: Upstream, redis_server: RedisServer, tmp_path: Path):
    gw = redis_gateway(tmp_path, upstream, redis_server, write_timeout="1s")
    admin = redis.Redis(port=redis_server.port)
    try:
        admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")  # writes hang: the queue is still full at SIGTERM
        sent = [f"drain-{n}" for n in range(20)]
        for request_id in sent:
            assert httpx2.get(f"{gw.proxy_url}/status", headers={"x-request-id": request_id}).status_code == 200
        assert gw.process.poll() is None
        gw.process.send_signal(signal.SIGTERM)
        # The listeners are closed and the audit queue is draining into a Redis that does not answer:
        wait_until(
            lambda: (tmp_path / "gateway.log").read_text().count("Finished server process") == 3,
            what="the listeners to close",
        )
        gw.process.send_signal(signal.SIGTERM)  # a supervisor forwarding twice, a group-wide signal
        assert gw.process.wait(timeout=20) == 0
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    relaunch(gw)
    try:

        def drained() -> list[str]:
            return [e["request_id"] for e in stream_events(redis_server) if e.get("request_id", "").startswith("drain")]

        wait_until(lambda: drained() == sent, what="every event of the stopped gateway replayed once, in order")
    finally:
        gw.stop()
