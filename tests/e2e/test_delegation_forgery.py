"""Delegation an agent cannot forge, over real sockets: acting for itself, chains that name a party twice, two
identity providers' users with the same `sub`, and `may_act` (RFC 8693 §4.4) held at every hop."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support import Gateway, Upstream, start_gateway, wait_until
from token_support import (
    SecretAgent,
    TestIdP,
    assert_oauth_error,
    claims_of,
    exchanged,
    mint_at,
    proxy_get,
    refused_at_proxy,
    revoke_cli,
    signed_by_gateway,
    user_token,
)

ASSISTANT = SecretAgent("assistant", "assistant-secret")
HELPER = SecretAgent("helper", "helper-secret")
CORP_ONLY = SecretAgent("corp-only", "corp-only-secret")  # may act for corp's users only
CORP, PARTNER = "corp:", "partner:"


@pytest.fixture(scope="module")
def partner() -> Iterator[TestIdP]:
    provider = TestIdP()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def gw(idp: TestIdP, partner: TestIdP, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory):
    everyone = {"scopes": ["crm.read", "crm.write"], "may_act_for": ["*"]}
    gateway = start_gateway(
        tmp_path_factory.mktemp("forgery"),
        upstream.url,
        extra={
            "agents": {
                ASSISTANT.client_id: ASSISTANT.config(**everyone),
                HELPER.client_id: HELPER.config(**everyone),
                CORP_ONLY.client_id: CORP_ONLY.config(scopes=["crm.read"], may_act_for=[CORP + "*"]),
            },
            "trusted_issuers": [
                idp.trusted_issuer(subject_prefix=CORP),
                partner.trusted_issuer(subject_prefix=PARTNER),
            ],
        },
    )
    yield gateway
    gateway.stop()


def corp_token(idp: TestIdP, gw: Gateway, subject: str = "alice", **claims: object) -> str:
    return user_token(idp, gw, subject, **claims)


# --- an agent acting for itself -------------------------------------------------------------------------------


def test_exchanging_its_own_token_is_refused_as_self_delegation(gw: Gateway):
    own = ASSISTANT.access_token(gw)
    description = assert_oauth_error(ASSISTANT.exchange(gw, own), "invalid_request")
    assert "itself" in description
    event = gw.wait_audit(lambda e: e["event"] == "token.denied" and e.get("reason") == "self_delegation")
    assert event["agent"] == ASSISTANT.client_id


def test_a_minted_token_naming_the_agent_as_its_subject_is_refused_too(gw: Gateway):
    # A token of ours whose subject is the agent (however it came to be) is the agent's own authority.
    own = mint_at(gw, issued_at=time.time(), agent=ASSISTANT.client_id, subject=ASSISTANT.client_id)
    assert_oauth_error(ASSISTANT.exchange(gw, own), "invalid_request")


# --- chains naming a party twice ------------------------------------------------------------------------------


def test_a_chain_coming_back_to_an_agent_is_refused(idp: TestIdP, gw: Gateway):
    first = exchanged(ASSISTANT, gw, corp_token(idp, gw))["access_token"]
    second = exchanged(HELPER, gw, first)["access_token"]
    description = assert_oauth_error(ASSISTANT.exchange(gw, second), "invalid_request")
    assert ASSISTANT.client_id in description and "twice" in description
    gw.wait_audit(lambda e: e["event"] == "token.denied" and e.get("reason") == "repeated_party")


def test_an_agent_cannot_exchange_a_token_it_already_acts_in(idp: TestIdP, gw: Gateway):
    first = exchanged(ASSISTANT, gw, corp_token(idp, gw))["access_token"]
    assert_oauth_error(ASSISTANT.exchange(gw, first), "invalid_request")


def test_an_idp_token_whose_act_names_its_subject_is_refused(idp: TestIdP, gw: Gateway):
    token = corp_token(idp, gw, "alice", act={"sub": "alice"})
    assert "twice" in assert_oauth_error(ASSISTANT.exchange(gw, token), "invalid_request")


def test_a_circular_chain_in_one_of_our_tokens_is_refused_at_the_proxy(gw: Gateway):
    # Never minted by the exchange; a token signed with our key that carries one is still not honoured.
    looped = {"sub": HELPER.client_id, "act": {"sub": ASSISTANT.client_id, "act": {"sub": HELPER.client_id}}}
    token = signed_by_gateway(gw, sub="corp:alice", client_id=HELPER.client_id, act=looped)
    response = proxy_get(gw, "/v1/customers/1", token)
    assert response.status_code == 401 and "twice" in response.headers["www-authenticate"]
    gw.wait_audit(lambda e: e["event"] == "access" and e.get("reason") == "circular_delegation")


# --- two identity providers, one `sub` ------------------------------------------------------------------------


def test_the_same_sub_from_two_issuers_is_two_subjects(idp: TestIdP, partner: TestIdP, gw: Gateway):
    ours = claims_of(exchanged(ASSISTANT, gw, corp_token(idp, gw))["access_token"])
    theirs = claims_of(exchanged(ASSISTANT, gw, user_token(partner, gw))["access_token"])
    assert (ours["sub"], theirs["sub"]) == (CORP + "alice", PARTNER + "alice")


def test_the_proxy_stamps_and_audits_the_prefixed_subject(idp: TestIdP, gw: Gateway, upstream: Upstream):
    token = exchanged(ASSISTANT, gw, user_token(idp, gw, "erin"))["access_token"]
    assert proxy_get(gw, "/v1/customers/5", token).status_code == 200
    assert upstream.last().header("x-tollbooth-subject") == CORP + "erin"
    event = gw.wait_audit(lambda e: e.get("subject") == CORP + "erin" and e["event"] == "access")
    assert event["agent"] == ASSISTANT.client_id


def test_may_act_for_patterns_see_the_prefix(idp: TestIdP, partner: TestIdP, gw: Gateway):
    assert CORP_ONLY.exchange(gw, corp_token(idp, gw), scope="crm.read").status_code == 200
    response = CORP_ONLY.exchange(gw, user_token(partner, gw), scope="crm.read")
    assert "may_act_for" in assert_oauth_error(response, "invalid_request")


def test_revoking_one_issuers_subject_leaves_the_other_alone(idp: TestIdP, partner: TestIdP, gw: Gateway):
    ours = exchanged(ASSISTANT, gw, corp_token(idp, gw, "frank"))["access_token"]
    theirs = exchanged(ASSISTANT, gw, user_token(partner, gw, "frank"))["access_token"]
    revoke_cli(gw, f"--subject={PARTNER}frank")
    wait_until(lambda: refused_at_proxy(gw, theirs), 10, "partner's frank revoked")
    assert proxy_get(gw, "/v1/customers/1", ours).status_code == 200


def test_an_idp_user_named_like_an_agent_is_an_other_party(idp: TestIdP, gw: Gateway):
    # The prefix makes the IdP's "helper" corp:helper, so the chain names two parties, not helper twice.
    token = exchanged(HELPER, gw, corp_token(idp, gw, HELPER.client_id))["access_token"]
    assert claims_of(token)["sub"] == CORP + HELPER.client_id


# --- may_act at every hop -------------------------------------------------------------------------------------


def test_may_act_holds_at_the_second_hop(idp: TestIdP, gw: Gateway):
    token = corp_token(idp, gw, may_act={"sub": ASSISTANT.client_id})
    first = exchanged(ASSISTANT, gw, token)["access_token"]
    assert claims_of(first)["may_act"] == {"sub": ASSISTANT.client_id}
    description = assert_oauth_error(HELPER.exchange(gw, first), "invalid_request")
    assert "may_act" in description


def test_may_act_naming_another_agent_refuses_the_first_hop(idp: TestIdP, gw: Gateway):
    token = corp_token(idp, gw, may_act={"sub": HELPER.client_id})
    assert "may_act" in assert_oauth_error(ASSISTANT.exchange(gw, token), "invalid_request")
