"""Failed client authentication throttled per client address (issuer.auth_failure_limits), over real sockets:
clients on 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to loopback) guess while the real agents work
from 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from support import Gateway, Upstream, start_gateway
from token_support import TOKEN_PATH, SecretAgent, assert_oauth_error, proxy_get

AGENT = SecretAgent("assistant", "assistant-secret")
OTHER = SecretAgent("helper", "helper-secret")
THIRD = SecretAgent("third", "third-secret")
PER_CLIENT, PER_ADDRESS = 3, 6


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    limits = {"per_client": f"{PER_CLIENT}/minute", "per_address": f"{PER_ADDRESS}/minute"}
    gateway = start_gateway(
        tmp_path_factory.mktemp("throttle"),
        upstream.url,
        extra={
            "issuer": {"auth_failure_limits": limits},
            "agents": {
                AGENT.client_id: AGENT.config(scopes=["crm.read"]),
                OTHER.client_id: OTHER.config(scopes=["crm.read"]),
                THIRD.client_id: THIRD.config(scopes=["crm.read"]),
            },
        },
    )
    yield gateway
    gateway.stop()


def token_from(address: str, gw: Gateway, agent: SecretAgent, **fields: Any) -> httpx2.Response:
    """A client_credentials request sent from `address`, with `agent`'s Basic credentials unless `fields` say."""
    headers = {} if fields else agent.basic()
    with httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=10) as client:
        return client.post(
            gw.issuer_url + TOKEN_PATH, data={"grant_type": "client_credentials", **fields}, headers=headers
        )


def guess_until_throttled(address: str, gw: Gateway, agent: SecretAgent, limit: int) -> httpx2.Response:
    """Wrong secrets from `address` until the token service stops checking them; the budget is `limit` failures."""
    wrong = SecretAgent(agent.client_id, "not-the-secret")
    for _ in range(limit + 1):
        assert_oauth_error(token_from(address, gw, wrong), "invalid_client", 401)
    return token_from(address, gw, wrong)


def assert_throttled(response: httpx2.Response) -> int:
    assert_oauth_error(response, "temporarily_unavailable", 429)
    wait = int(response.headers["retry-after"])
    assert 1 <= wait <= 60
    return wait


def test_guessing_one_agents_secret_is_throttled_and_audited(gw: Gateway):
    assert_throttled(guess_until_throttled("127.0.0.2", gw, AGENT, PER_CLIENT))
    event = gw.wait_audit(lambda e: e["event"] == "token.denied" and e.get("reason") == "auth_throttled")
    assert (event["agent"], event["client_ip"], event["status"]) == (AGENT.client_id, "127.0.0.2", "429")
    # Held, even the right secret is not checked from there: the guesser cannot learn it was right.
    assert_throttled(token_from("127.0.0.2", gw, AGENT))


def test_the_real_agent_keeps_working_from_its_own_address(gw: Gateway):
    assert_throttled(guess_until_throttled("127.0.0.4", gw, AGENT, PER_CLIENT))
    response = token_from("127.0.0.1", gw, AGENT)
    assert response.status_code == 200, response.text
    # And the proxy never asks the throttle: the token it was given works.
    assert proxy_get(gw, "/v1/customers/1", response.json()["access_token"]).status_code == 200


def test_other_agents_at_the_guessing_address_are_not_slowed(gw: Gateway):
    assert_throttled(guess_until_throttled("127.0.0.5", gw, AGENT, PER_CLIENT))
    assert token_from("127.0.0.5", gw, OTHER).status_code == 200


def test_invented_client_ids_share_one_budget(gw: Gateway):
    # Names that are no agent's all count as one: inventing names makes no fresh budgets.
    address = "127.0.0.3"
    for n in range(PER_CLIENT + 1):
        guess = token_from(address, gw, AGENT, client_id=f"made-up-{n}", client_secret="x")
        assert_oauth_error(guess, "invalid_client", 401)
    assert_throttled(token_from(address, gw, AGENT, client_id="made-up-last", client_secret="x"))
    event = gw.wait_audit(lambda e: e.get("reason") == "auth_throttled" and e["client_ip"] == address)
    assert event["agent"] == "made-up-last"
    assert token_from(address, gw, OTHER).status_code == 200


def test_failures_spread_over_agents_spend_the_address_budget(gw: Gateway):
    address = "127.0.0.7"
    for agent in (AGENT, OTHER):
        for _ in range(PER_CLIENT):  # each within its own per-client budget
            assert_oauth_error(token_from(address, gw, SecretAgent(agent.client_id, "no")), "invalid_client", 401)
    assert PER_CLIENT * 2 == PER_ADDRESS
    assert_oauth_error(token_from(address, gw, SecretAgent(THIRD.client_id, "no")), "invalid_client", 401)
    # The address as a whole is held now, THIRD's own budget unspent (an address shared behind NAT would be held
    # too: per_address is set well above per_client for that).
    assert_throttled(token_from(address, gw, THIRD))
    assert token_from("127.0.0.1", gw, THIRD).status_code == 200


def test_successes_are_never_counted(gw: Gateway):
    for _ in range(PER_ADDRESS * 2):
        assert token_from("127.0.0.6", gw, OTHER).status_code == 200
