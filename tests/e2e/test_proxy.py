"""The proxy end to end: a real gateway process, a real upstream, real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx2
import pytest
import yaml
from support import Gateway, Upstream, free_port, start_gateway, start_upstream, wait_until


def raw_request(url: str, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (no client-side path normalisation) and read one response."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


def get(gw: Gateway, path: str, token: str | None = None, **headers: str) -> httpx2.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx2.get(gw.proxy_url + path, headers=headers, timeout=10)


# --- the happy path -------------------------------------------------------------------------------------------


def test_allowed_request_reaches_upstream_with_identity_and_without_agent_token(gateway: Gateway, upstream: Upstream):
    token = gateway.mint("crm.read")
    response = get(gateway, "/v1/customers/42?expand=orders", token)
    assert response.status_code == 200
    seen = upstream.last()
    assert seen.raw_path == b"/v1/customers/42" and seen.query == b"expand=orders"
    assert seen.headers_named("authorization") == ["Bearer upstream-secret"]
    assert token not in json.dumps([(k.decode(), v.decode("latin-1")) for k, v in seen.headers])
    assert seen.header("x-tollbooth-agent") == "billing-bot"
    assert seen.header("x-tollbooth-subject") == "billing-bot"
    assert seen.header("x-tollbooth-scopes") == "crm.read"
    assert seen.header("x-tollbooth-route") == "get-customer"
    assert seen.header("x-tollbooth-token-id")
    assert response.headers["x-request-id"] == seen.header("x-request-id")
    assert response.headers["traceparent"].split("-")[1] == seen.header("traceparent").split("-")[1]


def test_upstream_response_hop_by_hop_headers_are_removed_and_cookies_kept(gateway: Gateway):
    response = get(gateway, "/v1/customers/42", gateway.mint())
    assert "x-upstream-private" not in response.headers
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


def test_public_route_needs_no_token(gateway: Gateway, upstream: Upstream):
    response = get(gateway, "/status")
    assert response.status_code == 200
    assert upstream.last().header("x-tollbooth-route") == "health"
    assert upstream.last().header("x-tollbooth-agent") is None


def test_delegated_token_stamps_subject_and_chain(gateway: Gateway, upstream: Upstream):
    token = gateway.mint("crm.read", subject="user:alice", act={"sub": "billing-bot", "act": {"sub": "planner"}})
    assert get(gateway, "/v1/on-behalf", token).status_code == 200
    assert upstream.last().header("x-tollbooth-subject") == "user:alice"
    assert upstream.last().header("x-tollbooth-delegation") == "billing-bot,planner"


# --- denials --------------------------------------------------------------------------------------------------


def test_missing_token_is_401_with_resource_metadata_and_no_error(gateway: Gateway):
    response = get(gateway, "/v1/customers/42")
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{gateway.proxy_url}/.well-known/oauth-protected-resource"' in challenge
    assert "error=" not in challenge
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_insufficient_scope_is_403_naming_the_scope(gateway: Gateway, upstream: Upstream):
    before = len(upstream.seen)
    response = httpx2.post(
        gateway.proxy_url + "/v1/customers",
        json={"name": "x"},
        headers={"Authorization": f"Bearer {gateway.mint('crm.read')}"},
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert 'scope="crm.write"' in response.headers["www-authenticate"]
    assert response.json()["error"] == "insufficient_scope"
    assert len(upstream.seen) == before


def test_no_matching_route_is_403_default_deny(gateway: Gateway, upstream: Upstream):
    before = len(upstream.seen)
    response = get(gateway, "/v1/admin/users", gateway.mint("crm.read crm.write"))
    assert response.status_code == 403
    assert response.json()["error"] == "no_matching_route"
    assert len(upstream.seen) == before


@pytest.mark.parametrize(
    ("path", "scopes", "act", "reason"),
    [
        ("/v1/on-behalf", "crm.read", None, "delegation_required"),
        ("/v1/direct", "crm.read", {"sub": "billing-bot"}, "delegation_forbidden"),
    ],
)
def test_delegation_rules(gateway: Gateway, path: str, scopes: str, act: dict | None, reason: str):
    token = gateway.mint(scopes, subject="user:bob" if act else None, act=act)
    response = get(gateway, path, token)
    assert response.status_code == 403
    assert response.json()["error"] == reason


def test_token_in_query_string_is_refused(gateway: Gateway, upstream: Upstream):
    before = len(upstream.seen)
    response = get(gateway, f"/v1/customers/42?access_token={gateway.mint()}")
    assert response.status_code in (400, 401)
    assert len(upstream.seen) == before


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/v1/customers/..%2f..%2fadmin",
        b"/v1/customers/%2e%2e/admin",
        b"/files/../v1/customers/1",
        b"/files/a%5cb",
        b"/files/a;jsessionid=1",
        b"/files/a%00b",
        b"/files/%252e%252e/x",
        b"//v1/customers/42",
        b"/files/./x",
    ],
)
def test_ambiguous_path_is_400_and_never_forwarded(gateway: Gateway, upstream: Upstream, raw_path: bytes):
    before = len(upstream.seen)
    request = (
        b"GET "
        + raw_path
        + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + gateway.mint().encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    status, _, body = raw_request(gateway.proxy_url, request)
    assert status == 400, body
    assert json.loads(body)["error"] == "invalid_request"
    assert len(upstream.seen) == before


def test_path_is_forwarded_exactly_as_matched(gateway: Gateway, upstream: Upstream):
    raw = b"/files/caf%C3%A9/a%20b"
    request = (
        b"GET "
        + raw
        + b"?q=%2F HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + gateway.mint().encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    status, _, _ = raw_request(gateway.proxy_url, request)
    assert status == 200
    assert upstream.last().raw_path == raw
    assert upstream.last().query == b"q=%2F"


# --- stamping -------------------------------------------------------------------------------------------------


def test_spoofed_identity_and_method_override_headers_are_dropped(gateway: Gateway, upstream: Upstream):
    response = get(
        gateway,
        "/v1/customers/42",
        gateway.mint(),
        **{
            "X-Tollbooth-Agent": "admin-bot",
            "X-Tollbooth-Scopes": "everything",
            "x-tollbooth-extra": "1",
            "X-HTTP-Method-Override": "DELETE",
            "X-Method-Override": "DELETE",
            "X-HTTP-Method": "DELETE",
        },
    )
    assert response.status_code == 200
    seen = upstream.last()
    assert seen.headers_named("x-tollbooth-agent") == ["billing-bot"]
    assert seen.headers_named("x-tollbooth-scopes") == ["crm.read"]
    assert seen.header("x-tollbooth-extra") is None
    for name in ("x-http-method-override", "x-method-override", "x-http-method"):
        assert seen.header(name) is None


def test_connection_header_cannot_remove_injected_credential_or_identity(gateway: Gateway, upstream: Upstream):
    token = gateway.mint()
    request = (
        b"GET /v1/customers/42 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\nConnection: close, authorization, x-tollbooth-agent, traceparent, x-request-id\r\n"
        b"X-Custom: gone\r\nConnection: x-custom\r\n\r\n"
    )
    status, _, _ = raw_request(gateway.proxy_url, request)
    assert status == 200
    seen = upstream.last()
    assert seen.headers_named("authorization") == ["Bearer upstream-secret"]
    assert seen.header("x-tollbooth-agent") == "billing-bot"
    assert seen.header("traceparent") and seen.header("x-request-id")
    assert seen.header("x-custom") is None


def test_traceparent_is_continued_and_request_id_kept(gateway: Gateway, upstream: Upstream):
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = get(
        gateway,
        "/v1/customers/42",
        gateway.mint(),
        traceparent=incoming,
        tracestate="vendor=1",
        **{"X-Request-Id": "req-123"},
    )
    seen = upstream.last()
    trace_id = seen.header("traceparent").split("-")[1]
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert seen.header("traceparent").split("-")[2] != "00f067aa0ba902b7"
    assert seen.header("tracestate") == "vendor=1"
    assert seen.header("x-request-id") == "req-123" == response.headers["x-request-id"]


def test_invalid_traceparent_starts_a_new_trace(gateway: Gateway, upstream: Upstream):
    get(
        gateway,
        "/v1/customers/42",
        gateway.mint(),
        traceparent="00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        **{"X-Request-Id": "bad\tid"},
    )
    seen = upstream.last()
    assert seen.header("traceparent").split("-")[1] != "0" * 32
    assert seen.header("x-request-id") != "bad\tid"


# --- streaming and failures -----------------------------------------------------------------------------------


def test_sse_arrives_event_by_event(gateway: Gateway, upstream: Upstream):
    upstream.release.clear()
    headers = {"Authorization": f"Bearer {gateway.mint()}"}
    with httpx2.stream("GET", gateway.proxy_url + "/sse", headers=headers, timeout=10) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        first = next(chunks)
        # The upstream holds the second event until we release it: the first arrived on its own.
        assert first == b"data: one\n\n"
        upstream.release.set()
        assert b"".join(chunks) == b"data: two\n\n"


def test_slow_upstream_is_504(gateway: Gateway, upstream: Upstream):
    upstream.release.clear()
    response = get(gateway, "/slow", gateway.mint())
    upstream.release.set()
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"


def test_body_over_limit_is_413(gateway: Gateway, upstream: Upstream):
    before = len(upstream.seen)
    response = httpx2.post(
        gateway.proxy_url + "/upload",
        content=b"x" * 100_000,
        headers={"Authorization": f"Bearer {gateway.mint('crm.write')}"},
    )
    assert response.status_code == 413
    assert len(upstream.seen) == before


def test_chunked_body_over_limit_is_413(gateway: Gateway):
    def body():
        for _ in range(20):
            yield b"y" * 8192

    response = httpx2.post(
        gateway.proxy_url + "/upload", content=body(), headers={"Authorization": f"Bearer {gateway.mint('crm.write')}"}
    )
    assert response.status_code == 413


def test_body_within_limit_is_streamed_upstream(gateway: Gateway, upstream: Upstream):
    response = httpx2.put(
        gateway.proxy_url + "/upload",
        content=b"z" * 50_000,
        headers={"Authorization": f"Bearer {gateway.mint('crm.write')}"},
    )
    assert response.status_code == 200
    assert upstream.last().body == b"z" * 50_000


def test_large_response_streams_through(gateway: Gateway):
    response = get(gateway, "/big", gateway.mint())
    assert response.status_code == 200
    assert len(response.content) == 1024 * 1024


def test_upstream_status_passes_through(gateway: Gateway):
    assert get(gateway, "/status/418", gateway.mint()).status_code == 418


def test_unreachable_upstream_is_502(tmp_path):
    dead = start_gateway(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        response = get(dead, "/v1/customers/1", dead.mint())
        assert response.status_code == 502
        assert response.json()["error"] == "upstream_unreachable"
        request_id = response.headers["x-request-id"]
        # The cause is in the operator's log, tied to the request; the agent's answer does not reveal it.
        logged = wait_until(
            lambda: next(
                (line for line in (tmp_path / "gateway.log").read_text().splitlines() if request_id in line), None
            ),
            what="the upstream failure logged",
        )
        assert "cannot connect to 127.0.0.1:" in logged and "cannot connect" not in response.text
    finally:
        dead.stop()


def test_client_disconnect_cancels_the_upstream_call(gateway: Gateway, upstream: Upstream):
    upstream.release.clear()
    count = len(upstream.seen)
    sock = socket.create_connection(("127.0.0.1", int(gateway.proxy_url.rsplit(":", 1)[1])))
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gateway.mint().encode() + b"\r\n\r\n")
    wait_until(lambda: len(upstream.seen) > count, what="upstream received the request")
    sock.close()
    event = gateway.wait_audit(lambda e: e.get("reason") == "client_disconnected", what="client_disconnected audit")
    assert event["route"] == "slow"
    upstream.release.set()


# --- metadata, audit, metrics ---------------------------------------------------------------------------------


def test_protected_resource_metadata(gateway: Gateway):
    document = httpx2.get(gateway.proxy_url + "/.well-known/oauth-protected-resource").json()
    assert document["resource"] == gateway.proxy_url
    assert document["authorization_servers"] == [gateway.issuer_url]
    assert "crm.read" in document["scopes_supported"]
    assert document["bearer_methods_supported"] == ["header"]
    path_form = httpx2.get(gateway.proxy_url + "/.well-known/oauth-protected-resource/mcp").json()
    assert path_form["resource"] == gateway.proxy_url + "/mcp"


def test_every_crossing_is_audited_without_the_token(gateway: Gateway):
    token = gateway.mint()
    allowed = get(gateway, "/v1/customers/7", token, **{"X-Request-Id": "audit-allow-1"})
    denied = get(gateway, "/v1/nope", token, **{"X-Request-Id": "audit-deny-1"})
    assert (allowed.status_code, denied.status_code) == (200, 403)
    allow = gateway.wait_audit(lambda e: e.get("request_id") == "audit-allow-1")
    deny = gateway.wait_audit(lambda e: e.get("request_id") == "audit-deny-1")
    assert allow["event"] == "access" and allow["v"] == "1"
    assert allow["decision"] == "allow" and allow["status"] == "200" and allow["route"] == "get-customer"
    assert allow["agent"] == "billing-bot" and allow["jti"] and allow["upstream"] == "crm"
    assert allow["granted_scopes"] == "crm.read" and allow["required_scopes"] == "crm.read"
    assert float(allow["duration_ms"]) > 0 and "upstream_ms" in allow
    assert deny["decision"] == "deny" and deny["reason"] == "no_matching_route" and deny["status"] == "403"
    text = (gateway.dir / "audit.jsonl").read_text()
    assert token not in text and token.split(".")[2] not in text
    assert "upstream-secret" not in text


def test_metrics_count_requests(gateway: Gateway):
    get(gateway, "/v1/customers/1", gateway.mint())
    text = gateway.metrics()
    assert 'tollbooth_requests_total{decision="allow",route="get-customer",status="200"}' in text
    assert "tollbooth_request_duration_seconds_bucket" in text
    assert "tollbooth_upstream_duration_seconds_bucket" in text


def test_readyz_and_healthz(gateway: Gateway):
    assert httpx2.get(gateway.admin_url + "/healthz").json() == {"status": "ok"}
    ready = httpx2.get(gateway.admin_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_jwks_is_published_by_the_issuer_listener(gateway: Gateway):
    document = httpx2.get(gateway.issuer_url + "/.well-known/jwks.json").json()
    assert document["keys"] and all("d" not in key for key in document["keys"])


# --- hot reload -----------------------------------------------------------------------------------------------


def test_hot_reload_applies_a_valid_edit_and_rejects_an_invalid_one(upstream: Upstream, tmp_path):
    gw = start_gateway(tmp_path, upstream.url)
    try:
        token = gw.mint()
        assert get(gw, "/v1/new", token).status_code == 403
        gw.write_routes([{"name": "new-route", "path": "/v1/new", "scopes": ["crm.read"]}])
        wait_until(lambda: get(gw, "/v1/new", token).status_code == 200, what="new route applied")
        gw.wait_audit(lambda e: e["event"] == "config.reloaded")

        gw.write_routes("routes:\n  - name: broken\n    path: /v1/new\n    methds: [GET]\n")
        rejected = gw.wait_audit(lambda e: e["event"] == "config.rejected")
        assert 'unknown key "methds"' in rejected["reason"] and "routes.yaml" in rejected["reason"]
        # The last good config stays in force.
        assert get(gw, "/v1/new", token).status_code == 200
        assert 'tollbooth_config_reloads_total{outcome="rejected"} 1.0' in gw.metrics()
    finally:
        gw.stop()


def test_reload_does_not_fail_an_in_flight_request(upstream: Upstream, tmp_path):
    gw = start_gateway(tmp_path, upstream.url)
    try:
        upstream.release.clear()
        token = gw.mint()
        with httpx2.stream("GET", gw.proxy_url + "/sse", headers={"Authorization": f"Bearer {token}"}) as response:
            chunks = response.iter_bytes()
            assert next(chunks) == b"data: one\n\n"
            gw.write_routes([{"name": "sse", "path": "/sse", "scopes": ["crm.write"]}])
            gw.wait_audit(lambda e: e["event"] == "config.reloaded")
            upstream.release.set()
            assert b"".join(chunks) == b"data: two\n\n"
        assert get(gw, "/sse", token).status_code == 403
    finally:
        gw.stop()


def test_sigterm_finishes_in_flight_request_then_exits(upstream: Upstream, tmp_path):
    gw = start_gateway(tmp_path, upstream.url)
    upstream.release.clear()
    count = len(upstream.seen)
    sock = socket.create_connection(("127.0.0.1", int(gw.proxy_url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.mint().encode() + b"\r\n\r\n")
    wait_until(lambda: len(upstream.seen) > count, what="request reached upstream")
    gw.process.terminate()
    upstream.release.set()
    data = b""
    while b"data: two" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert b"data: two" in data
    assert gw.process.wait(timeout=20) == 0


def test_a_new_signing_key_is_picked_up_without_restart(upstream: Upstream, tmp_path):
    gw = start_gateway(tmp_path, upstream.url)
    try:
        old_token = gw.mint()
        subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "generate", "--config", str(gw.config_path)],
            env={**os.environ, "TEST_UPSTREAM_KEY": "x"},
            check=True,
            capture_output=True,
        )
        new_token = gw.mint()
        assert new_token.split(".")[0] != old_token.split(".")[0]  # another kid in the header
        wait_until(lambda: get(gw, "/v1/customers/1", new_token).status_code == 200, what="new key accepted")
        assert get(gw, "/v1/customers/1", old_token).status_code == 200
        jwks = httpx2.get(gw.issuer_url + "/.well-known/jwks.json").json()
        assert len(jwks["keys"]) == 2
    finally:
        gw.stop()


def test_reload_to_another_upstream_lets_in_flight_requests_finish_on_the_old_one(upstream: Upstream, tmp_path):
    other, stop_other = start_upstream()
    gw = start_gateway(tmp_path, upstream.url)
    try:
        upstream.release.clear()
        token = gw.mint()
        with httpx2.stream("GET", gw.proxy_url + "/sse", headers={"Authorization": f"Bearer {token}"}) as response:
            chunks = response.iter_bytes()
            assert next(chunks) == b"data: one\n\n"
            config = yaml.safe_load(gw.config_path.read_text())
            config["upstreams"]["crm"]["url"] = other.url
            gw.config_path.write_text(yaml.safe_dump(config))
            gw.wait_audit(lambda e: e["event"] == "config.reloaded")
            assert get(gw, "/v1/customers/5", token).status_code == 200
            assert other.last().raw_path == b"/v1/customers/5"
            upstream.release.set()
            assert b"".join(chunks) == b"data: two\n\n"
    finally:
        gw.stop()
        stop_other()
