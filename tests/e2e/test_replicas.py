"""Scaling out: two gateway processes on one redis-server (of this module's own, never the shared one on 6379), as
two replicas behind a load balancer, agree on revocations, refresh families, rate limits and the audit stream; and
the `--workers` processes of one gateway share one rate-limit budget through Redis."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
import uvicorn
from argon2 import PasswordHasher
from people_support import ClientHost, field, pkce
from support import (
    DEFAULT_ROUTES,
    Gateway,
    RedisServer,
    Upstream,
    free_port,
    read_asgi_body,
    serve_in_thread,
    start_gateway,
    wait_answering,
    wait_until,
)
from token_support import SecretAgent, TestIdP, assert_oauth_error, exchanged, proxy_get, refused_at_proxy, user_token

from gateway.proxy.hold import body_digest

ASSISTANT = SecretAgent("assistant", "assistant-s3cret")
LIMITED = {
    "name": "limited",
    "methods": ["GET"],
    "path": "/v1/limited",
    "scopes": ["crm.read"],
    "rate_limit": "4/minute",
}
STREAM = "tollbooth:audit"
NOTIFY_SECRET = "webhook-secret"  # noqa: S105
REFUNDS = {
    "name": "refunds",
    "methods": ["POST"],
    "path": "/v1/refunds",
    "scopes": ["crm.read"],
    "approval": "required",
    "approval_wait": "2s",
    "approval_valid_for": "60s",
}


@dataclass
class Notices:
    url: str
    seen: list[tuple[dict[str, Any], bool]]  # (the notice, whether its signature checked out)


PASSWORD = "correct horse battery staple"
ADMIN_TOKEN = "admin-token-for-tests"  # noqa: S105
AGREEMENT = 5.0  # seconds; revocations reach every replica within a second, tested in test_refresh_revoke.py


def stream_events(server: RedisServer) -> list[dict[str, str]]:
    with redis.Redis(port=server.port, decode_responses=True) as client:
        return [fields for _, fields in client.xrange(STREAM)]


@pytest.fixture(scope="module")
def redis_server_of_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def notices() -> Iterator[Notices]:
    """The approvals webhook's receiver: records each notice and whether its signature checked out."""
    received = Notices(f"http://127.0.0.1:{free_port()}/approvals", [])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_asgi_body(receive)
        signature = dict(scope["headers"]).get(b"x-tollbooth-signature", b"").decode()
        expected = "sha256=" + hmac.new(NOTIFY_SECRET.encode(), body, hashlib.sha256).hexdigest()
        received.seen.append((json.loads(body), hmac.compare_digest(signature, expected)))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = int(received.url.rsplit(":", 1)[1].split("/")[0])
    stop = serve_in_thread(
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")), "notices"
    )
    yield received
    stop()


@pytest.fixture(scope="module")
def replicas(
    idp: TestIdP,
    upstream: Upstream,
    redis_server_of_module: RedisServer,
    notices: Notices,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas of one deployment: the same config (issuer name, public URL, keys, agents, routes) and Redis;
    each its own process and listeners, as pods behind one Service."""
    shared = {
        "redis": {"url": redis_server_of_module.url},
        "agents": {ASSISTANT.client_id: ASSISTANT.config(scopes=["crm.read"], may_act_for=["*"], refresh_tokens=True)},
        "trusted_issuers": [idp.trusted_issuer()],
        "login": {"users": {"alice": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": ["crm.read"]}}},
        "interactive": {"scopes": ["crm.read"]},
        "admin": {"token_hash": PasswordHasher().hash(ADMIN_TOKEN), "token_label": "ops-alice"},
        "approvals": {"notify_url": notices.url, "notify_secret": NOTIFY_SECRET},
    }
    routes = [*DEFAULT_ROUTES, LIMITED, REFUNDS]
    first = start_gateway(tmp_path_factory.mktemp("replica-a"), upstream.url, routes=routes, extra=shared)
    try:
        deployment = {
            "issuer": {name: value for name, value in first.config["issuer"].items() if name != "listen"},
            "proxy": {"public_url": first.config["proxy"]["public_url"]},
        }
        second = start_gateway(
            tmp_path_factory.mktemp("replica-b"), upstream.url, routes=routes, extra={**shared, **deployment}
        )
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def test_a_token_revoked_at_one_replica_is_refused_at_the_other(replicas: tuple[Gateway, Gateway]) -> None:
    first, second = replicas
    token = ASSISTANT.access_token(first)
    assert proxy_get(second, "/v1/customers/1", token).status_code == 200
    assert ASSISTANT.revoke(first, token).status_code == 200
    wait_until(lambda: refused_at_proxy(second, token), AGREEMENT, "the other replica to refuse the revoked token")


def test_a_refresh_token_reused_at_the_other_replica_ends_the_family(
    replicas: tuple[Gateway, Gateway], idp: TestIdP
) -> None:
    first, second = replicas
    issued = exchanged(ASSISTANT, first, user_token(idp, first, scope="crm.read"))
    rotated = ASSISTANT.refresh(first, issued["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    assert_oauth_error(ASSISTANT.refresh(second, issued["refresh_token"]), "invalid_grant")  # the old one, again
    # RFC 9700 §4.14.2: the whole family is revoked, its newest refresh token and access token too, everywhere.
    assert_oauth_error(ASSISTANT.refresh(first, rotated.json()["refresh_token"]), "invalid_grant")
    for replica in (first, second):
        wait_until(
            lambda r=replica: refused_at_proxy(r, rotated.json()["access_token"]), AGREEMENT, "the family's token"
        )


def test_replicas_share_one_rate_limit_budget(replicas: tuple[Gateway, Gateway]) -> None:
    first, second = replicas
    token = first.mint("crm.read", agent=f"bot-{secrets.token_hex(4)}")
    statuses = [proxy_get(replica, "/v1/limited", token).status_code for replica in (first, second, first, second)]
    assert statuses == [200, 200, 200, 200]
    over = [proxy_get(replica, "/v1/limited", token) for replica in (first, second)]
    assert [response.status_code for response in over] == [429, 429]
    assert all(0 < int(response.headers["retry-after"]) <= 60 for response in over)


def test_both_replicas_audit_to_one_stream_each_under_its_own_instance(
    replicas: tuple[Gateway, Gateway], redis_server_of_module: RedisServer
) -> None:
    ids = {}
    for replica in replicas:
        ids[replica.proxy_url] = request_id = f"replica-{secrets.token_hex(8)}"
        httpx2.get(f"{replica.proxy_url}/status", headers={"X-Request-Id": request_id})

    def ours() -> dict[str, dict[str, str]]:
        found = {
            e["request_id"]: e for e in stream_events(redis_server_of_module) if e.get("request_id") in ids.values()
        }
        return found if len(found) == 2 else {}

    events = wait_until(ours, what="both replicas' events in the one stream")
    assert len({event["instance"] for event in events.values()}) == 2


def test_the_workers_of_one_gateway_share_one_budget_through_redis(
    upstream: Upstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    # start_gateway writes the config and the keys; the same config is then served by two workers.
    gateway = start_gateway(
        tmp_path,
        upstream.url,
        routes=[{**LIMITED, "rate_limit": "4/hour"}],
        extra={"redis": {"url": redis_server.url}},
    )
    gateway.stop()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(gateway.config_path), "--workers", "2"],
        cwd=tmp_path,
        env={**os.environ, "TEST_UPSTREAM_KEY": "upstream-secret"},
        stderr=open(tmp_path / "workers.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_answering(f"{gateway.admin_url}/readyz", "two workers ready")
        bearer = {"Authorization": f"Bearer {gateway.mint('crm.read')}"}
        statuses: list[int] = []

        def both_workers_answered() -> bool:
            # A fresh connection each time: the kernel spreads connections over the workers (SO_REUSEPORT).
            statuses.append(httpx2.get(f"{gateway.proxy_url}/v1/limited", headers=bearer).status_code)
            instances = {e["instance"] for e in stream_events(redis_server) if e.get("route") == "limited"}
            return len(instances) == 2 and len(statuses) >= 6

        wait_until(both_workers_answered, what="requests answered by both workers")
        assert statuses.count(200) == 4 and set(statuses) == {200, 429}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_a_persons_sign_in_moves_between_replicas(replicas: tuple[Gateway, Gateway], client_host: ClientHost) -> None:
    """Behind a load balancer each step of a sign-in may land on another replica: the pending request, the session,
    the code and the refresh family are in Redis, so every replica knows them."""
    first, second = replicas
    verifier, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client_host.url,
        "redirect_uri": "http://127.0.0.1:50123/callback",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "s",
    }
    with httpx2.Client(follow_redirects=False) as browser:  # cookies for 127.0.0.1 reach both ports
        login = browser.get(f"{first.issuer_url}/oauth/authorize", params=params)
        form = {"csrf": field(login.text, "csrf"), "request": field(login.text, "request")}
        consent = browser.post(f"{second.issuer_url}/login", data={**form, "username": "alice", "password": PASSWORD})
        assert consent.status_code == 200, consent.text
        decision = {"csrf": field(consent.text, "csrf"), "request": field(consent.text, "request")}
        answer = browser.post(f"{first.issuer_url}/consent", data={**decision, "decision": "approve"})
    code = httpx2.QueryParams(answer.headers["location"].split("?", 1)[1])["code"]
    redeem = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client_host.url,
        "redirect_uri": params["redirect_uri"],
        "code_verifier": verifier,
    }
    token = httpx2.post(f"{second.issuer_url}/oauth/token", data=redeem)
    assert token.status_code == 200, token.text
    again = httpx2.post(f"{first.issuer_url}/oauth/token", data=redeem)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"  # the code was spent on the other
    # ... and its replay revoked what the first redemption issued, on every replica.
    wait_until(lambda: refused_at_proxy(first, token.json()["access_token"]), AGREEMENT, "the replayed code's token")


def admin(gw: Gateway, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> httpx2.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx2.request(method, f"{gw.admin_url}/api{path}", headers=headers, **kwargs)


def audited(server: RedisServer, predicate: Any) -> dict[str, str]:
    found: dict[str, str] = wait_until(
        lambda: next((e for e in stream_events(server) if predicate(e)), None), what="the audit event in the stream"
    )
    return found


def test_the_admin_api_refuses_a_missing_or_wrong_token(
    replicas: tuple[Gateway, Gateway], redis_server_of_module: RedisServer
) -> None:
    first, _ = replicas
    for token in (None, "wrong", ADMIN_TOKEN + "x"):
        refused = admin(first, "POST", "/blocks", token, json={"agent": ASSISTANT.client_id})
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert admin(first, "GET", "/blocks").json() == {"blocks": []}  # nothing was blocked by the refusals
    audited(redis_server_of_module, lambda e: e["event"] == "admin.denied" and e.get("reason") == "bad_admin_token")


def test_a_block_stops_an_agent_on_every_replica_within_a_second(
    replicas: tuple[Gateway, Gateway], upstream: Upstream, redis_server_of_module: RedisServer
) -> None:
    first, second = replicas
    token = ASSISTANT.access_token(first)
    assert proxy_get(second, "/v1/customers/1", token).status_code == 200
    upstream.release.clear()
    with httpx2.stream("GET", f"{second.proxy_url}/sse", headers={"Authorization": f"Bearer {token}"}) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "data: one"
        blocked = admin(first, "POST", "/blocks", json={"agent": ASSISTANT.client_id, "reason": "runaway loop"})
        assert blocked.status_code == 201, blocked.text
        started = time.monotonic()
        rest: list[str] = []
        with contextlib.suppress(httpx2.HTTPError):
            rest.extend(lines)  # ends when the replica closes the stream
        assert time.monotonic() - started < 1.5 and "data: two" not in rest
    try:
        for replica in (first, second):
            refused = proxy_get(replica, "/v1/customers/1", token)
            assert refused.status_code == 403 and refused.json()["error"] == "access_denied"
            assert "runaway loop" in refused.json()["error_description"]
            # The token service issues it nothing either.
            assert_oauth_error(ASSISTANT.token(replica), "unauthorized_client")
        listed = admin(second, "GET", "/blocks").json()["blocks"]
        assert [(b["block"], b["id"], b["by"]) for b in listed] == [("agent", ASSISTANT.client_id, "ops-alice")]
        event = audited(redis_server_of_module, lambda e: e["event"] == "agent.blocked")
        assert event["agent"] == ASSISTANT.client_id and event["by"] == "ops-alice"
        assert 'tollbooth_blocks_active{kind="agent"} 1.0' in second.metrics()
    finally:
        upstream.release.set()
        assert admin(second, "DELETE", f"/blocks/agent/{ASSISTANT.client_id}").status_code == 200
    wait_until(
        lambda: all(proxy_get(r, "/v1/customers/1", token).status_code == 200 for r in (first, second)),
        AGREEMENT,
        "the unblock on every replica",
    )


def refund(
    gw: Gateway, token: str, body: dict[str, Any], query: str = "", content_type: str = "application/json"
) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}", "content-type": content_type}
    url = f"{gw.proxy_url}/v1/refunds{query}"
    return httpx2.post(url, content=json.dumps(body).encode(), headers=headers, timeout=30)


def pending_for(gw: Gateway, amount: int) -> dict[str, Any]:
    """The pending approval for a refund of `amount`, as the admin API lists it."""
    digest = body_digest(b"application/json", json.dumps({"amount": amount}).encode())

    def find() -> dict[str, Any] | None:
        listed = admin(gw, "GET", "/approvals").json()["approvals"]
        return next((a for a in listed if a["call"]["body_sha256"] == digest), None)

    found: dict[str, Any] = wait_until(find, what=f"the pending approval of the {amount} refund")
    return found


def held(gw: Gateway, token: str, body: dict[str, Any]) -> tuple[threading.Thread, list[httpx2.Response]]:
    answers: list[httpx2.Response] = []
    thread = threading.Thread(target=lambda: answers.append(refund(gw, token, body)))
    thread.start()
    return thread, answers


def test_a_held_call_on_one_replica_is_approved_through_the_other(
    replicas: tuple[Gateway, Gateway], upstream: Upstream, notices: Notices, redis_server_of_module: RedisServer
) -> None:
    first, second = replicas
    token = ASSISTANT.access_token(first)
    thread, answers = held(second, token, {"amount": 100})
    approval = pending_for(first, 100)
    assert approval["call"]["agent"] == ASSISTANT.client_id and approval["call"]["route"] == "refunds"
    decided = admin(first, "POST", f"/approvals/{approval['id']}/approve", json={"reason": "ticket 42"})
    assert decided.status_code == 200 and decided.json()["status"] == "approved"
    thread.join(10)
    assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
    assert upstream.last().raw_path == b"/v1/refunds" and upstream.last().body == json.dumps({"amount": 100}).encode()
    crossing = audited(redis_server_of_module, lambda e: e["event"] == "access" and e.get("approval") == approval["id"])
    assert crossing["by"] == "ops-alice"
    audited(redis_server_of_module, lambda e: e["event"] == "approval.granted" and e.get("approval") == approval["id"])
    notice = wait_until(lambda: next((n for n in notices.seen if n[0]["id"] == approval["id"]), None), what="notice")
    assert notice[1] and notice[0]["call"]["path"] == "/v1/refunds"  # signed with the shared secret


def test_a_denied_call_is_refused_with_the_reason(replicas: tuple[Gateway, Gateway]) -> None:
    first, second = replicas
    token = ASSISTANT.access_token(first)
    thread, answers = held(first, token, {"amount": 200})
    approval = pending_for(second, 200)
    assert admin(second, "POST", f"/approvals/{approval['id']}/deny", json={"reason": "too much"}).status_code == 200
    thread.join(10)
    assert answers[0].status_code == 403
    assert answers[0].json()["error"] == "approval_denied" and "too much" in answers[0].json()["error_description"]


def test_a_call_approved_late_passes_once_on_its_identical_retry(
    replicas: tuple[Gateway, Gateway], upstream: Upstream
) -> None:
    first, second = replicas
    token = ASSISTANT.access_token(first)
    waited = refund(first, token, {"amount": 300})  # nobody decides within approval_wait (2 s)
    assert waited.status_code == 403 and waited.json()["error"] == "approval_pending"
    approval_id = waited.headers["x-tollbooth-approval"]
    assert int(waited.headers["retry-after"]) > 0
    assert admin(second, "POST", f"/approvals/{approval_id}/approve").status_code == 200
    # A changed body is another call: it needs an approval of its own.
    changed = refund(second, token, {"amount": 3000})
    assert changed.status_code == 403 and changed.headers["x-tollbooth-approval"] != approval_id
    retried = refund(second, token, {"amount": 300})
    assert retried.status_code == 200 and upstream.last().body == json.dumps({"amount": 300}).encode()
    again = refund(first, token, {"amount": 300})  # the approval let one call through, not two
    assert again.status_code == 403 and again.headers["x-tollbooth-approval"] != approval_id
    # Deciding an approval twice is refused.
    assert admin(first, "POST", f"/approvals/{approval_id}/deny").status_code == 409


def test_a_block_ends_a_held_call_and_denies_its_approval(
    replicas: tuple[Gateway, Gateway], redis_server_of_module: RedisServer
) -> None:
    first, second = replicas
    token = ASSISTANT.access_token(first)
    thread, answers = held(second, token, {"amount": 400})
    approval = pending_for(first, 400)
    assert admin(first, "POST", "/blocks", json={"agent": ASSISTANT.client_id, "reason": "stop"}).status_code == 201
    try:
        thread.join(5)
        assert answers and answers[0].status_code == 403 and answers[0].json()["error"] == "access_denied"
        wait_until(
            lambda: admin(first, "GET", f"/approvals/{approval['id']}").json()["status"] == "denied",
            what="the blocked agent's pending approval denied",
        )
    finally:
        assert admin(first, "DELETE", f"/blocks/agent/{ASSISTANT.client_id}").status_code == 200
    wait_until(lambda: proxy_get(second, "/v1/customers/1", token).status_code == 200, AGREEMENT, "the unblock")


def test_an_approval_does_not_cover_another_query_or_content_type(replicas: tuple[Gateway, Gateway]) -> None:
    """The query and the Content-Type are part of the call: approving ?to=alice is not approving ?to=mallory, and
    the same bytes sent as a form are another call."""
    first, second = replicas
    token = ASSISTANT.access_token(first)
    waited = refund(first, token, {"amount": 500}, query="?to=alice")
    approval_id = waited.headers["x-tollbooth-approval"]
    assert admin(first, "POST", f"/approvals/{approval_id}/approve").status_code == 200
    for other in (
        refund(second, token, {"amount": 500}, query="?to=mallory"),
        refund(second, token, {"amount": 500}, query="?to=alice", content_type="application/x-www-form-urlencoded"),
    ):
        assert other.status_code == 403 and other.headers["x-tollbooth-approval"] != approval_id
    assert refund(second, token, {"amount": 500}, query="?to=alice").status_code == 200
