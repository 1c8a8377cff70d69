"""Delegation by token exchange (RFC 8693) end to end: a test identity provider with its own key and JWKS server,
its users' tokens exchanged into delegated tokens, chains of agents, and what the proxy's upstream sees."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import Gateway, Upstream, start_gateway
from token_support import (
    ACCESS_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    KeyPair,
    SecretAgent,
    TestIdP,
    assert_oauth_error,
    claims_of,
    exchanged,
    proxy_get,
    unsigned_jwt,
    user_token,
)

ASSISTANT = SecretAgent("assistant", "assistant-secret")
HELPER = SecretAgent("helper", "helper-secret")
WORKER = SecretAgent("worker", "worker-secret")
FOURTH = SecretAgent("fourth", "fourth-secret")
PICKY = SecretAgent("picky", "picky-secret")  # may act for alice only
LONER = SecretAgent("loner", "loner-secret")  # may act for nobody
MAX_DEPTH = 3


@pytest.fixture(scope="module")
def gw(idp: TestIdP, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    everyone = {"scopes": ["crm.read", "crm.write"], "may_act_for": ["*"]}
    gateway = start_gateway(
        tmp_path_factory.mktemp("delegation"),
        upstream.url,
        extra={
            "issuer": {"max_delegation_depth": MAX_DEPTH},
            "agents": {
                ASSISTANT.client_id: ASSISTANT.config(**everyone),
                HELPER.client_id: HELPER.config(**everyone),
                WORKER.client_id: WORKER.config(**everyone),
                FOURTH.client_id: FOURTH.config(**everyone),
                PICKY.client_id: PICKY.config(scopes=["crm.read"], may_act_for=["alice"]),
                LONER.client_id: LONER.config(scopes=["crm.read"]),
            },
            "trusted_issuers": [idp.trusted_issuer()],
        },
    )
    yield gateway
    gateway.stop()


# --- one hop --------------------------------------------------------------------------------------------------


def test_user_token_is_exchanged_into_a_delegated_token(idp: TestIdP, gw: Gateway):
    body = exchanged(ASSISTANT, gw, user_token(idp, gw), scope="crm.read")
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    assert body["scope"] == "crm.read" and body["expires_in"] > 0
    assert "refresh_token" not in body  # assistant is not configured for refresh tokens
    claims = claims_of(body["access_token"])
    assert claims["sub"] == "alice" and claims["act"] == {"sub": ASSISTANT.client_id}
    assert claims["client_id"] == ASSISTANT.client_id
    assert claims["iss"] == gw.issuer_url and claims["aud"] == gw.proxy_url


def test_jwt_subject_token_type_is_accepted(idp: TestIdP, gw: Gateway):
    body = exchanged(ASSISTANT, gw, user_token(idp, gw), subject_token_type=JWT_TOKEN_TYPE)
    assert claims_of(body["access_token"])["sub"] == "alice"


def test_proxy_stamps_subject_and_delegation_and_never_forwards_the_agent_token(
    idp: TestIdP, gw: Gateway, upstream: Upstream
):
    token = exchanged(ASSISTANT, gw, user_token(idp, gw), scope="crm.read")["access_token"]
    response = proxy_get(gw, "/v1/on-behalf", token)  # a route with delegation: required
    assert response.status_code == 200, response.text
    seen = upstream.last()
    assert seen.header("x-tollbooth-subject") == "alice"
    assert seen.header("x-tollbooth-delegation") == ASSISTANT.client_id
    assert seen.header("x-tollbooth-agent") == ASSISTANT.client_id
    assert seen.headers_named("authorization") == ["Bearer upstream-secret"]
    everything = json.dumps([(k.decode("latin-1"), v.decode("latin-1")) for k, v in seen.headers]) + seen.query.decode()
    assert token not in everything and token.split(".")[2] not in everything


def test_no_scope_asked_grants_what_both_agent_and_subject_token_allow(idp: TestIdP, gw: Gateway):
    body = exchanged(ASSISTANT, gw, user_token(idp, gw, scope="crm.read openid"))
    assert body["scope"] == "crm.read"


def test_widening_scopes_beyond_the_subject_token_is_invalid_scope_naming_the_scope(idp: TestIdP, gw: Gateway):
    response = ASSISTANT.exchange(gw, user_token(idp, gw, scope="crm.read"), scope="crm.read crm.write")
    description = assert_oauth_error(response, "invalid_scope")
    assert "crm.write" in description and "crm.read" not in description


def test_scope_beyond_the_agent_is_invalid_scope_naming_the_scope(idp: TestIdP, gw: Gateway):
    response = PICKY.exchange(gw, user_token(idp, gw), scope="crm.write")
    assert "crm.write" in assert_oauth_error(response, "invalid_scope")


def test_subject_token_without_a_common_scope_is_invalid_scope(idp: TestIdP, gw: Gateway):
    assert_oauth_error(ASSISTANT.exchange(gw, user_token(idp, gw, scope="mail.read")), "invalid_scope")


def test_agent_without_may_act_for_is_unauthorized_client(idp: TestIdP, gw: Gateway):
    assert_oauth_error(LONER.exchange(gw, user_token(idp, gw)), "unauthorized_client")


@pytest.mark.parametrize(("subject", "status"), [("alice", 200), ("bob", 400)])
def test_agent_acts_only_for_subjects_in_may_act_for(idp: TestIdP, gw: Gateway, subject: str, status: int):
    response = PICKY.exchange(gw, user_token(idp, gw, subject=subject), scope="crm.read")
    assert response.status_code == status, response.text
    if status == 400:
        assert "may_act_for" in assert_oauth_error(response, "invalid_request")


def test_may_act_naming_the_agent_is_accepted(idp: TestIdP, gw: Gateway):
    token = user_token(idp, gw, may_act={"sub": ASSISTANT.client_id})
    assert claims_of(exchanged(ASSISTANT, gw, token)["access_token"])["act"] == {"sub": ASSISTANT.client_id}


def test_an_idp_user_named_like_one_of_our_agents_is_refused_without_a_prefix(idp: TestIdP, gw: Gateway):
    # With no subject_prefix, the IdP's "helper" would be our agent helper to every rule downstream.
    response = ASSISTANT.exchange(gw, user_token(idp, gw, subject=HELPER.client_id))
    assert "subject_prefix" in assert_oauth_error(response, "invalid_request")
    gw.wait_audit(lambda e: e["event"] == "token.denied" and e.get("reason") == "subject_is_agent")


def _revoked_own_token(idp: TestIdP, gw: Gateway) -> str:
    token = exchanged(ASSISTANT, gw, user_token(idp, gw))["access_token"]
    assert ASSISTANT.revoke(gw, token).status_code == 200
    return token


REFUSED_SUBJECT_TOKENS: list[Any] = [
    pytest.param(lambda idp, gw: user_token(idp, gw, ttl=-120), "expired", id="expired"),
    pytest.param(lambda idp, gw: user_token(idp, gw, nbf=int(time.time()) + 600), "not valid yet", id="not-yet-valid"),
    pytest.param(lambda idp, gw: user_token(idp, gw, key=KeyPair()), "signature", id="forged-by-another-key"),
    pytest.param(lambda idp, gw: idp.token("alice", "https://other.example"), "not meant for", id="wrong-audience"),
    pytest.param(lambda idp, gw: idp.token("alice", gw.proxy_url), "not meant for", id="audience-is-the-proxy"),
    pytest.param(
        lambda idp, gw: user_token(idp, gw, may_act={"sub": HELPER.client_id}), "may_act", id="may-act-names-another"
    ),
    pytest.param(
        lambda idp, gw: KeyPair().sign({**claims_of(user_token(idp, gw)), "iss": "https://untrusted.example"}),
        "trusted issuer",
        id="untrusted-issuer",
    ),
    pytest.param(
        lambda idp, gw: unsigned_jwt({"alg": "none", "kid": idp.key.kid}, claims_of(user_token(idp, gw))),
        "not signed",
        id="alg-none",
    ),
    pytest.param(lambda idp, gw: "not-a-jwt", "well-formed", id="garbage"),
    pytest.param(_revoked_own_token, "revoked", id="revoked-tollbooth-token"),
]


@pytest.mark.parametrize(("make_token", "why"), REFUSED_SUBJECT_TOKENS)
def test_unacceptable_subject_token_is_invalid_request(
    idp: TestIdP, gw: Gateway, make_token: Callable[[TestIdP, Gateway], str], why: str
):
    """RFC 8693 §2.2.2: an invalid or unacceptable subject_token is invalid_request, saying what is wrong."""
    description = assert_oauth_error(ASSISTANT.exchange(gw, make_token(idp, gw)), "invalid_request")
    assert why in description


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"subject_token": None}, id="no-subject-token"),
        pytest.param({"subject_token_type": None}, id="no-subject-token-type"),
        pytest.param({"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}, id="id-token-type"),
        pytest.param({"actor_token": "x.y.z", "actor_token_type": ACCESS_TOKEN_TYPE}, id="actor-token"),
        pytest.param({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, id="refresh-type"),
    ],
)
def test_malformed_token_exchange_request_is_invalid_request(idp: TestIdP, gw: Gateway, params: dict[str, Any]):
    fields = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": user_token(idp, gw),
        "subject_token_type": ACCESS_TOKEN_TYPE,
        **params,
    }
    assert_oauth_error(ASSISTANT.post(gw.issuer_url, "/oauth/token", **fields), "invalid_request")


def test_exchange_for_a_resource_outside_the_proxy_is_invalid_target(idp: TestIdP, gw: Gateway):
    response = ASSISTANT.exchange(gw, user_token(idp, gw), resource="https://api.example.com/mcp")
    assert_oauth_error(response, "invalid_target")


def test_exchange_for_the_mcp_endpoint_is_for_the_proxy(idp: TestIdP, gw: Gateway):
    body = exchanged(ASSISTANT, gw, user_token(idp, gw), resource=gw.proxy_url + "/mcp")
    assert claims_of(body["access_token"])["aud"] == gw.proxy_url


def test_delegated_token_never_outlives_its_subject_token(idp: TestIdP, gw: Gateway):
    subject_token = user_token(idp, gw, ttl=60)
    claims = claims_of(exchanged(ASSISTANT, gw, subject_token)["access_token"])
    assert claims["exp"] <= claims_of(subject_token)["exp"]


def test_identity_provider_token_is_not_accepted_at_the_proxy(idp: TestIdP, gw: Gateway):
    """accept_at_proxy is false: the IdP's tokens are subject tokens only, even with the proxy as audience."""
    response = proxy_get(gw, "/v1/customers/1", idp.token("alice", gw.proxy_url, "crm.read"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# --- chains ---------------------------------------------------------------------------------------------------


def chain(idp: TestIdP, gw: Gateway, hops: list[tuple[SecretAgent, str]]) -> list[str]:
    """alice's token exchanged by each (agent, scope) in turn, each hop's token the next hop's subject token."""
    tokens = [user_token(idp, gw)]
    for agent, scope in hops:
        tokens.append(exchanged(agent, gw, tokens[-1], scope=scope)["access_token"])
    return tokens[1:]


THREE_HOPS = [(ASSISTANT, "crm.read crm.write"), (HELPER, "crm.read crm.write"), (WORKER, "crm.read")]


def test_three_hop_chain_nests_act_with_the_latest_actor_outermost(idp: TestIdP, gw: Gateway):
    claims = claims_of(chain(idp, gw, THREE_HOPS)[-1])
    assert claims["sub"] == "alice" and claims["client_id"] == WORKER.client_id
    assert claims["act"] == {"sub": "worker", "act": {"sub": "helper", "act": {"sub": "assistant"}}}


def test_three_hop_chain_scopes_and_lifetimes_only_narrow(idp: TestIdP, gw: Gateway):
    hops = [claims_of(token) for token in chain(idp, gw, THREE_HOPS)]
    assert [set(c["scope"].split()) for c in hops] == [{"crm.read", "crm.write"}] * 2 + [{"crm.read"}]
    assert hops[0]["exp"] >= hops[1]["exp"] >= hops[2]["exp"]


def test_three_hop_chain_reaches_upstream_with_the_whole_delegation(idp: TestIdP, gw: Gateway, upstream: Upstream):
    token = chain(idp, gw, THREE_HOPS)[-1]
    assert proxy_get(gw, "/v1/customers/9", token).status_code == 200
    seen = upstream.last()
    assert seen.header("x-tollbooth-subject") == "alice"
    assert seen.header("x-tollbooth-delegation") == "worker,helper,assistant"
    assert seen.header("x-tollbooth-agent") == "worker"


def test_a_later_hop_cannot_widen_scopes_back(idp: TestIdP, gw: Gateway):
    first = chain(idp, gw, [(ASSISTANT, "crm.read")])[-1]
    response = HELPER.exchange(gw, first, scope="crm.read crm.write")
    assert "crm.write" in assert_oauth_error(response, "invalid_scope")


def test_a_later_hop_without_scope_asked_keeps_the_narrowed_scopes(idp: TestIdP, gw: Gateway):
    first = chain(idp, gw, [(ASSISTANT, "crm.read")])[-1]
    assert exchanged(HELPER, gw, first)["scope"] == "crm.read"


def test_chain_longer_than_max_delegation_depth_is_refused(idp: TestIdP, gw: Gateway):
    third = chain(idp, gw, THREE_HOPS)[-1]
    assert len(THREE_HOPS) == MAX_DEPTH
    description = assert_oauth_error(FOURTH.exchange(gw, third, scope="crm.read"), "invalid_request")
    assert str(MAX_DEPTH) in description
