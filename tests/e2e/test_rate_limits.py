"""Per-agent rate limits end to end: a real gateway process and upstream, and a real redis-server of the tests' own.

Budgets are per minute, so nothing here depends on how fast the machine is: a budget of N refills one request every
60/N seconds, far longer than any of these tests runs between its requests.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from support import Gateway, RedisServer, Upstream, start_gateway, wait_until

LIMITED = {"name": "get-customer", "methods": ["GET"], "path": "/v1/customers/{id}", "scopes": ["crm.read"]}
ROUTES: list[dict[str, Any]] = [
    {**LIMITED, "rate_limit": "3/minute"},
    {"name": "files", "path": "/files/{rest:path}", "scopes": ["crm.read"]},  # no rate limit
    {"name": "health", "methods": ["GET"], "path": "/status", "public": True, "rate_limit": "2/minute"},
]


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("rate-limits"), upstream.url, routes=ROUTES)
    yield gateway
    gateway.stop()


def agent_token(gw: Gateway, **claims: Any) -> str:
    """A token for an agent of its own: every test starts with a full budget."""
    return gw.mint("crm.read", agent=claims.pop("agent", f"bot-{secrets.token_hex(4)}"), **claims)


def get(gw: Gateway, path: str, token: str | None = None) -> httpx2.Response:
    headers = {"X-Request-Id": f"rl-{secrets.token_hex(8)}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx2.get(gw.proxy_url + path, headers=headers)


def statuses(gw: Gateway, token: str | None, n: int, path: str = "/v1/customers/1") -> list[int]:
    return [get(gw, path, token).status_code for _ in range(n)]


def counter(gw: Gateway, route: str, outcome: str, store: str) -> float:
    labels = rf'(?=[^}}]*route="{route}")(?=[^}}]*outcome="{outcome}")(?=[^}}]*store="{store}")'
    match = re.search(rf"^tollbooth_rate_limit_decisions_total\{{{labels}[^}}]*\}} (\S+)$", gw.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def test_the_request_over_the_budget_is_429_with_retry_after(gw: Gateway) -> None:
    token = agent_token(gw)
    assert statuses(gw, token, 3) == [200, 200, 200]
    refused = get(gw, "/v1/customers/1", token)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 60
    body = refused.json()
    assert body["error"] == "rate_limited"
    assert "3/minute" in body["error_description"] and "get-customer" in body["error_description"]
    assert body["request_id"] == refused.headers["x-request-id"]
    assert token not in refused.text and token not in str(refused.headers)


def test_the_refusal_is_audited_as_a_deny_with_reason_rate_limited(gw: Gateway) -> None:
    token = agent_token(gw, agent="audited-bot")
    statuses(gw, token, 3)
    refused = get(gw, "/v1/customers/1", token)
    event = gw.wait_audit(lambda e: e.get("request_id") == refused.headers["x-request-id"], "the 429's audit event")
    assert (event["decision"], event["reason"], event["status"]) == ("deny", "rate_limited", "429")
    assert (event["route"], event["agent"]) == ("get-customer", "audited-bot")
    assert token not in str(event)


def test_decisions_are_counted_in_the_metrics(gw: Gateway) -> None:
    before = counter(gw, "get-customer", "limited", "memory"), counter(gw, "get-customer", "allowed", "memory")
    assert statuses(gw, agent_token(gw), 4) == [200, 200, 200, 429]
    after = counter(gw, "get-customer", "limited", "memory"), counter(gw, "get-customer", "allowed", "memory")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 3)


def test_agents_have_budgets_of_their_own(gw: Gateway) -> None:
    first, second = agent_token(gw), agent_token(gw)
    assert statuses(gw, first, 4) == [200, 200, 200, 429]
    assert statuses(gw, second, 3) == [200, 200, 200]


def test_a_delegated_token_counts_against_its_agent_not_its_user(gw: Gateway) -> None:
    agent = f"bot-{secrets.token_hex(4)}"
    direct = agent_token(gw, agent=agent)
    for user in ("user:alice", "user:bob"):
        delegated = agent_token(gw, agent=agent, subject=user, act={"sub": agent})
        assert get(gw, "/v1/customers/1", delegated).status_code == 200
    assert statuses(gw, direct, 2) == [200, 429]


def test_a_route_without_a_rate_limit_is_not_limited(gw: Gateway) -> None:
    token = agent_token(gw)
    assert statuses(gw, token, 4)[-1] == 429
    assert set(statuses(gw, token, 10, "/files/report.csv")) == {200}


def test_a_public_route_is_limited_per_client_address(gw: Gateway) -> None:
    # One client address for the whole module: this is the only test that requests /status.
    assert statuses(gw, None, 3, "/status") == [200, 200, 429]


def test_a_changed_rate_limit_applies_on_reload(upstream: Upstream, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, upstream.url, routes=[LIMITED])
    try:
        token = agent_token(gateway)
        assert set(statuses(gateway, token, 5)) == {200}
        gateway.write_routes([{**LIMITED, "rate_limit": "1/minute"}])
        gateway.wait_audit(lambda e: e.get("event") == "config.reloaded", "the reload")
        fresh = agent_token(gateway)
        assert statuses(gateway, fresh, 2) == [200, 429]
    finally:
        gateway.stop()


# --- with Redis -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_failure", ["spool", "deny"])
def test_while_redis_is_away_budgets_fall_back_to_memory_or_strict_mode_refuses(
    upstream: Upstream, redis_server: RedisServer, tmp_path: Path, on_failure: str
) -> None:
    gateway = start_gateway(
        tmp_path,
        upstream.url,
        routes=[{**LIMITED, "rate_limit": "3/minute"}],
        extra={"redis": {"url": redis_server.url}, "audit": {"on_failure": on_failure}},
    )
    try:
        token = agent_token(gateway)
        assert get(gateway, "/v1/customers/1", token).status_code == 200
        assert counter(gateway, "get-customer", "allowed", "redis") == 1

        redis_server.stop()
        answer = get(gateway, "/v1/customers/1", token)
        if on_failure == "deny":
            assert answer.status_code == 503 and answer.json()["error"] == "rate_limits_unavailable"
            assert counter(gateway, "get-customer", "unavailable", "memory") == 1
        else:
            assert answer.status_code == 200  # counted in this process's memory, and said so
            assert counter(gateway, "get-customer", "allowed", "memory") == 1
            readiness = wait_until(
                lambda: (r := httpx2.get(f"{gateway.admin_url}/readyz")).status_code == 503 and r.json(),
                what="readiness to report the outage",
            )
            assert "rate limits counted per process" in readiness["checks"]["rate_limits"]
            log = (tmp_path / "gateway.log").read_text()
            assert log.count("rate limits: redis unreachable") == 1
    finally:
        gateway.stop()
