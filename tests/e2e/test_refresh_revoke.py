"""Refresh rotation and reuse detection (RFC 9700 §4.14), revocation (RFC 7009), introspection (RFC 7662), the
`tollbooth revoke` CLI, revocations shared between gateways (one Redis, or one revocations file), and the audit
events of the token service."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from support import Gateway, RedisServer, Upstream, free_port, start_gateway, wait_until
from token_support import (
    TOKEN_PATH,
    KeyPair,
    SecretAgent,
    TestIdP,
    assert_oauth_error,
    assertion_fields,
    claims_of,
    client_assertion,
    mint_at,
    post_form,
    proxy_get,
    refused_at_proxy,
    revoke_cli,
    user_token,
)

ASSISTANT = SecretAgent("assistant", "assistant-s3cret:%+")
OTHER = SecretAgent("other-bot", "other-s3cret")
CLI_AGENT = SecretAgent("cli-bot", "cli-s3cret")
KEYED_KEY = KeyPair()
KEYED = "keyed-bot"
PROPAGATION = 1.0  # seconds within which every gateway refuses a revoked token (the issue's deadline)
FILE_PROPAGATION = 3.0  # without Redis: the revocations file is polled every 0.5 s


def agents() -> dict[str, Any]:
    refreshing = {"scopes": ["crm.read", "crm.write"], "may_act_for": ["*"], "refresh_tokens": True}
    return {
        ASSISTANT.client_id: ASSISTANT.config(**refreshing),
        OTHER.client_id: OTHER.config(**refreshing),
        CLI_AGENT.client_id: CLI_AGENT.config(scopes=["crm.read"]),
        KEYED: {"jwks": KEYED_KEY.jwks(), "scopes": ["crm.read"]},
    }


@pytest.fixture(scope="module")
def gw(idp: TestIdP, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("refresh-revoke")
    gateway = start_gateway(
        tmp,
        upstream.url,
        extra={
            "issuer": {"revocations_file": str(tmp / "revocations.jsonl")},
            "agents": agents(),
            "trusted_issuers": [idp.trusted_issuer()],
        },
    )
    yield gateway
    gateway.stop()


def twin_of(first: Gateway, tmp: Path, upstream_url: str, **sections: dict[str, Any]) -> Gateway:
    """A second gateway that accepts the first one's tokens: the same issuer name, audience, keys and agents."""
    # url, keys_dir and revocations_file (when set) from the first; its own listen address.
    issuer = {name: value for name, value in first.config["issuer"].items() if name != "listen"}
    return start_gateway(
        tmp,
        upstream_url,
        extra={
            "issuer": issuer,
            "proxy": {"public_url": first.config["proxy"]["public_url"]},
            "agents": first.config["agents"],
            "trusted_issuers": first.config.get("trusted_issuers", []),
            **sections,
        },
    )


@pytest.fixture(scope="module")
def twin(gw: Gateway, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second gateway on this machine sharing `gw`'s revocations file, without Redis."""
    gateway = twin_of(gw, tmp_path_factory.mktemp("twin"), upstream.url)
    yield gateway
    gateway.stop()


def delegated(agent: SecretAgent, gw: Gateway, idp: TestIdP, subject: str = "alice", **params: Any) -> dict[str, Any]:
    response = agent.exchange(gw, user_token(idp, gw, subject), **params)
    assert response.status_code == 200, response.text
    return response.json()


def refreshed(agent: SecretAgent, gw: Gateway, refresh_token: str, **params: Any) -> dict[str, Any]:
    response = agent.refresh(gw, refresh_token, **params)
    assert response.status_code == 200, response.text
    return response.json()


def works_at_proxy(gw: Gateway, token: str) -> bool:
    return proxy_get(gw, "/v1/customers/1", token).status_code == 200


# --- refresh tokens -------------------------------------------------------------------------------------------


def test_delegated_grant_of_a_refresh_agent_carries_an_opaque_refresh_token(gw: Gateway, idp: TestIdP):
    refresh_token = delegated(ASSISTANT, gw, idp)["refresh_token"]
    assert len(refresh_token) >= 32 and refresh_token.count(".") != 2  # random, not a JWT


def test_refresh_rotates_the_refresh_token_on_every_use(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp)
    second = refreshed(ASSISTANT, gw, first["refresh_token"])
    third = refreshed(ASSISTANT, gw, second["refresh_token"])
    assert len({first["refresh_token"], second["refresh_token"], third["refresh_token"]}) == 3
    assert len({first["access_token"], second["access_token"], third["access_token"]}) == 3


def test_refreshed_token_keeps_subject_delegation_and_scope(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp, scope="crm.read")
    body = refreshed(ASSISTANT, gw, first["refresh_token"])
    claims = claims_of(body["access_token"])
    assert (claims["sub"], claims["act"], claims["scope"]) == ("alice", {"sub": ASSISTANT.client_id}, "crm.read")
    assert body["scope"] == "crm.read" and body["token_type"] == "Bearer"
    assert works_at_proxy(gw, body["access_token"])


def test_refresh_may_narrow_the_scope(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp, scope="crm.read crm.write")
    assert refreshed(ASSISTANT, gw, first["refresh_token"], scope="crm.read")["scope"] == "crm.read"


def test_refresh_cannot_widen_the_scope(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp, scope="crm.read")
    description = assert_oauth_error(
        ASSISTANT.refresh(gw, first["refresh_token"], scope="crm.read crm.write"), "invalid_scope"
    )
    assert "crm.write" in description


def test_reused_refresh_token_is_invalid_grant(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp)
    refreshed(ASSISTANT, gw, first["refresh_token"])
    assert_oauth_error(ASSISTANT.refresh(gw, first["refresh_token"]), "invalid_grant")


def test_reused_refresh_token_revokes_the_family(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp)
    second = refreshed(ASSISTANT, gw, first["refresh_token"])
    assert works_at_proxy(gw, first["access_token"]) and works_at_proxy(gw, second["access_token"])
    assert ASSISTANT.refresh(gw, first["refresh_token"]).status_code == 400  # the replay
    # The newest refresh token of the family, and every access token issued from it, are dead too.
    assert_oauth_error(ASSISTANT.refresh(gw, second["refresh_token"]), "invalid_grant")
    for body in (first, second):
        wait_until(lambda b=body: refused_at_proxy(gw, b["access_token"]), PROPAGATION, "family revoked at proxy")


def test_refresh_token_of_another_agent_is_invalid_grant_and_stays_usable(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp)
    assert_oauth_error(OTHER.refresh(gw, first["refresh_token"]), "invalid_grant")
    assert "refresh_token" in refreshed(ASSISTANT, gw, first["refresh_token"])


# --- revocation (RFC 7009) ------------------------------------------------------------------------------------


UNKNOWN_TOKENS: list[Any] = [
    pytest.param(lambda gw, idp: "garbage", id="garbage"),
    pytest.param(lambda gw, idp: secrets.token_urlsafe(32), id="unknown-opaque"),
    pytest.param(lambda gw, idp: user_token(idp, gw), id="another-issuers-token"),
    pytest.param(lambda gw, idp: mint_at(gw, agent=ASSISTANT.client_id, issued_at=time.time() - 600), id="expired"),
]


@pytest.mark.parametrize("make_token", UNKNOWN_TOKENS)
def test_revoking_an_unknown_token_is_200_with_an_empty_body(
    gw: Gateway, idp: TestIdP, make_token: Callable[[Gateway, TestIdP], str]
):
    response = ASSISTANT.revoke(gw, make_token(gw, idp))
    assert response.status_code == 200 and response.content == b""


def test_revoking_an_already_revoked_token_is_200(gw: Gateway):
    token = ASSISTANT.access_token(gw)
    assert ASSISTANT.revoke(gw, token).status_code == 200
    response = ASSISTANT.revoke(gw, token)
    assert response.status_code == 200 and response.content == b""


def test_revoked_access_token_is_refused_at_the_proxy_within_a_second(gw: Gateway):
    token = ASSISTANT.access_token(gw)
    assert works_at_proxy(gw, token)
    assert ASSISTANT.revoke(gw, token).status_code == 200
    wait_until(lambda: refused_at_proxy(gw, token), PROPAGATION, "revoked token refused at the proxy")


def test_token_type_hint_is_only_a_hint(gw: Gateway):
    token = ASSISTANT.access_token(gw)
    assert ASSISTANT.revoke(gw, token, token_type_hint="refresh_token").status_code == 200
    wait_until(lambda: refused_at_proxy(gw, token), PROPAGATION, "revoked token refused at the proxy")


def test_revoking_another_agents_access_token_is_refused_and_it_stays_valid(gw: Gateway):
    token = OTHER.access_token(gw)
    assert_oauth_error(ASSISTANT.revoke(gw, token), "invalid_grant")
    assert works_at_proxy(gw, token)
    assert OTHER.introspect(gw, token).json()["active"] is True


def test_revoking_another_agents_refresh_token_is_refused_and_it_stays_usable(gw: Gateway, idp: TestIdP):
    first = delegated(OTHER, gw, idp)
    assert_oauth_error(ASSISTANT.revoke(gw, first["refresh_token"]), "invalid_grant")
    assert works_at_proxy(gw, first["access_token"])
    refreshed(OTHER, gw, first["refresh_token"])


def test_revoking_a_refresh_token_ends_its_family_and_its_access_tokens(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp)
    second = refreshed(ASSISTANT, gw, first["refresh_token"])
    assert ASSISTANT.revoke(gw, second["refresh_token"], token_type_hint="refresh_token").status_code == 200
    assert_oauth_error(ASSISTANT.refresh(gw, second["refresh_token"]), "invalid_grant")
    for body in (first, second):
        wait_until(lambda b=body: refused_at_proxy(gw, b["access_token"]), PROPAGATION, "family revoked at proxy")


# --- introspection (RFC 7662) ---------------------------------------------------------------------------------


def test_introspection_of_an_active_delegated_token_lists_its_claims(gw: Gateway, idp: TestIdP):
    token = delegated(ASSISTANT, gw, idp, scope="crm.read")["access_token"]
    response = ASSISTANT.introspect(gw, token)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    claims = claims_of(token)
    assert body["active"] is True and body["token_type"] == "Bearer"
    for name in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "act"):
        assert body[name] == claims[name], name
    assert body["sub"] == "alice" and body["act"] == {"sub": ASSISTANT.client_id}


def test_introspection_of_a_live_refresh_token_describes_its_grant(gw: Gateway, idp: TestIdP):
    grant = delegated(ASSISTANT, gw, idp, scope="crm.read")
    body = ASSISTANT.introspect(gw, grant["refresh_token"]).json()
    assert body["active"] is True and "token_type" not in body  # RFC 7662: token_type is an access token's type
    assert (body["client_id"], body["sub"], body["scope"]) == (ASSISTANT.client_id, "alice", "crm.read")
    assert body["act"] == {"sub": ASSISTANT.client_id} and body["iss"] == gw.issuer_url


def test_introspection_of_a_spent_or_foreign_refresh_token_is_inactive(gw: Gateway, idp: TestIdP):
    grant = delegated(ASSISTANT, gw, idp, scope="crm.read")
    assert OTHER.introspect(gw, grant["refresh_token"]).json() == {"active": False}
    successor = refreshed(ASSISTANT, gw, grant["refresh_token"])["refresh_token"]
    assert ASSISTANT.introspect(gw, grant["refresh_token"]).json() == {"active": False}
    assert ASSISTANT.introspect(gw, successor).json()["active"] is True


def _revoked(gw: Gateway, idp: TestIdP) -> str:
    token = ASSISTANT.access_token(gw)
    assert ASSISTANT.revoke(gw, token).status_code == 200
    return token


INACTIVE_TOKENS: list[Any] = [
    pytest.param(_revoked, id="revoked"),
    pytest.param(lambda gw, idp: mint_at(gw, agent=ASSISTANT.client_id, issued_at=time.time() - 600), id="expired"),
    pytest.param(lambda gw, idp: OTHER.access_token(gw), id="another-agents"),
    pytest.param(lambda gw, idp: user_token(idp, gw), id="another-issuers"),
    pytest.param(lambda gw, idp: "garbage", id="garbage"),
    pytest.param(lambda gw, idp: ASSISTANT.access_token(gw)[:-4] + "AAAA", id="bad-signature"),
]


@pytest.mark.parametrize("make_token", INACTIVE_TOKENS)
def test_introspection_of_an_inactive_token_is_exactly_active_false(
    gw: Gateway, idp: TestIdP, make_token: Callable[[Gateway, TestIdP], str]
):
    response = ASSISTANT.introspect(gw, make_token(gw, idp))
    assert response.status_code == 200
    assert response.json() == {"active": False}


# --- the CLI and gateways sharing revocations -----------------------------------------------------------------


def _token_for_cli(kind: str, gw: Gateway, idp: TestIdP) -> tuple[str, str]:
    if kind == "--jti":
        token = ASSISTANT.access_token(gw)
        return token, claims_of(token)["jti"]
    if kind == "--agent":
        return CLI_AGENT.access_token(gw), CLI_AGENT.client_id
    subject = f"carol-{secrets.token_hex(4)}"
    return delegated(ASSISTANT, gw, idp, subject=subject)["access_token"], subject


@pytest.mark.parametrize("kind", ["--jti", "--agent", "--subject"])
def test_cli_revoke_makes_the_proxy_refuse(gw: Gateway, idp: TestIdP, kind: str):
    token, value = _token_for_cli(kind, gw, idp)
    assert works_at_proxy(gw, token)
    revoke_cli(gw, f"{kind}={value}")  # `=`: a jti may begin with "-", which argparse would take for an option
    wait_until(lambda: refused_at_proxy(gw, token), FILE_PROPAGATION, f"revoke {kind} refused at the proxy")
    # The operator's act is in the audit trail like an agent's RFC 7009 revocation.
    event = gw.wait_audit(lambda e: e["event"] == "token.revoked" and e.get("reason") == f"operator_revoke_{kind[2:]}")
    assert event[kind[2:]] == value and event["decision"] == "allow"


def test_cli_revoke_of_a_subject_also_ends_its_refresh_tokens(gw: Gateway, idp: TestIdP):
    subject = f"dave-{secrets.token_hex(4)}"
    first = delegated(ASSISTANT, gw, idp, subject=subject)
    revoke_cli(gw, "--subject", subject)
    wait_until(lambda: refused_at_proxy(gw, first["access_token"]), FILE_PROPAGATION, "subject revoked")
    assert_oauth_error(ASSISTANT.refresh(gw, first["refresh_token"]), "invalid_grant")


def test_gateways_sharing_a_revocations_file_see_each_others_revocations(gw: Gateway, twin: Gateway):
    token = ASSISTANT.access_token(gw)
    assert works_at_proxy(twin, token)
    assert ASSISTANT.revoke(gw, token).status_code == 200
    wait_until(lambda: refused_at_proxy(twin, token), FILE_PROPAGATION, "the twin gateway to refuse the token")


def test_revocation_through_the_twin_reaches_the_first_gateway(gw: Gateway, twin: Gateway):
    token = ASSISTANT.access_token(twin)
    assert works_at_proxy(gw, token)
    assert ASSISTANT.revoke(twin, token).status_code == 200
    wait_until(lambda: refused_at_proxy(gw, token), FILE_PROPAGATION, "the first gateway to refuse the token")


@pytest.fixture(scope="module")
def redis_pair(
    idp: TestIdP, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateway processes sharing one redis-server of this module's own (never the shared one on 6379)."""
    redis = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    gateways: list[Gateway] = []
    try:
        tmp = tmp_path_factory.mktemp("redis-a")
        shared = {"redis": {"url": redis.url}, "trusted_issuers": [idp.trusted_issuer()], "agents": agents()}
        gateways.append(start_gateway(tmp, upstream.url, extra=shared))
        gateways.append(twin_of(gateways[0], tmp_path_factory.mktemp("redis-b"), upstream.url, redis=shared["redis"]))
        yield gateways[0], gateways[1]
    finally:
        for gateway in gateways:
            gateway.stop()
        redis.stop()


def test_revocation_through_one_gateway_reaches_the_other_through_redis_within_a_second(
    redis_pair: tuple[Gateway, Gateway],
):
    first, second = redis_pair
    token = ASSISTANT.access_token(first)
    assert works_at_proxy(second, token)
    assert ASSISTANT.revoke(first, token).status_code == 200
    wait_until(lambda: refused_at_proxy(second, token), PROPAGATION, "the other gateway to refuse the token")


def test_refresh_token_reuse_is_detected_across_gateways_sharing_redis(
    redis_pair: tuple[Gateway, Gateway], idp: TestIdP
):
    first, second = redis_pair
    issued = delegated(ASSISTANT, first, idp)
    rotated = refreshed(ASSISTANT, second, issued["refresh_token"])  # the family lives in Redis
    assert_oauth_error(ASSISTANT.refresh(first, issued["refresh_token"]), "invalid_grant")
    for gateway in (first, second):
        wait_until(lambda g=gateway: refused_at_proxy(g, rotated["access_token"]), PROPAGATION, "family revoked")


def test_cli_revoke_with_redis_reaches_both_gateways_and_the_audit_stream(redis_pair: tuple[Gateway, Gateway]):
    first, second = redis_pair
    token = ASSISTANT.access_token(first)
    jti = claims_of(token)["jti"]
    revoke_cli(first, f"--jti={jti}")
    wait_until(lambda: refused_at_proxy(second, token), PROPAGATION, "the other gateway to refuse the token")
    client = redis.Redis.from_url(first.config["redis"]["url"], decode_responses=True)
    try:
        entries = client.xrange("tollbooth:audit")
    finally:
        client.close()
    assert any(
        f.get("event") == "token.revoked" and f.get("jti") == jti and f.get("reason") == "operator_revoke_jti"
        for _, f in entries
    )


def test_client_assertion_replay_is_detected_across_gateways_sharing_redis(redis_pair: tuple[Gateway, Gateway]):
    first, second = redis_pair
    fields = {
        "grant_type": "client_credentials",
        **assertion_fields(client_assertion(KEYED_KEY, KEYED, first.issuer_url)),
    }
    assert post_form(first.issuer_url + TOKEN_PATH, fields).status_code == 200
    # The twin's issuer URL (the assertion's audience) is the first gateway's: the same token service.
    assert_oauth_error(post_form(second.issuer_url + TOKEN_PATH, fields), "invalid_client", status=401)


# --- audit ----------------------------------------------------------------------------------------------------


def request_id() -> dict[str, str]:
    return {"X-Request-Id": f"test-{secrets.token_hex(8)}"}


def audited(gw: Gateway, headers: dict[str, str], event: str) -> dict[str, str]:
    rid = headers["X-Request-Id"]
    return gw.wait_audit(lambda e: e.get("request_id") == rid and e.get("event") == event, f"{event} {rid}")


def test_delegated_issue_is_audited_as_token_issued(gw: Gateway, idp: TestIdP):
    headers = request_id()
    body = ASSISTANT.exchange(gw, user_token(idp, gw), scope="crm.read", headers=headers).json()
    event = audited(gw, headers, "token.issued")
    assert event["agent"] == ASSISTANT.client_id and event["subject"] == "alice"
    assert event["delegation"] == ASSISTANT.client_id and event["granted_scopes"] == "crm.read"
    assert event["jti"] == claims_of(body["access_token"])["jti"] and event["decision"] == "allow"


def test_refresh_is_audited_as_token_refreshed(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp, scope="crm.read")
    headers = request_id()
    body = ASSISTANT.refresh(gw, first["refresh_token"], headers=headers).json()
    event = audited(gw, headers, "token.refreshed")
    assert (event["agent"], event["subject"], event["delegation"]) == (ASSISTANT.client_id, "alice", "assistant")
    assert event["jti"] == claims_of(body["access_token"])["jti"] and event["granted_scopes"] == "crm.read"


def test_revocation_is_audited_as_token_revoked(gw: Gateway):
    token = ASSISTANT.access_token(gw)
    headers = request_id()
    assert ASSISTANT.revoke(gw, token, headers=headers).status_code == 200
    event = audited(gw, headers, "token.revoked")
    assert event["agent"] == ASSISTANT.client_id and event["jti"] == claims_of(token)["jti"]
    assert event["subject"] == ASSISTANT.client_id and event["reason"] == "access_token"


def test_refresh_token_revocation_is_audited_with_subject_and_delegation(gw: Gateway, idp: TestIdP):
    refresh_token = delegated(ASSISTANT, gw, idp)["refresh_token"]
    headers = request_id()
    assert ASSISTANT.revoke(gw, refresh_token, headers=headers).status_code == 200
    event = audited(gw, headers, "token.revoked")
    assert (event["agent"], event["subject"], event["delegation"]) == (ASSISTANT.client_id, "alice", "assistant")
    assert event["reason"] == "refresh_token"


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        pytest.param(lambda gw, idp, h: ASSISTANT.token(gw, scope="crm.delete", headers=h), "scope", id="scope"),
        pytest.param(
            lambda gw, idp, h: ASSISTANT.refresh(gw, secrets.token_urlsafe(32), headers=h), "refresh", id="refresh"
        ),
        pytest.param(
            lambda gw, idp, h: ASSISTANT.exchange(gw, idp.token("alice", "https://other.example"), headers=h),
            "audience",
            id="subject-token",
        ),
    ],
)
def test_refusal_is_audited_as_token_denied_with_agent_and_reason(
    gw: Gateway, idp: TestIdP, send: Callable[..., httpx2.Response], reason: str
):
    headers = request_id()
    assert send(gw, idp, headers).status_code == 400
    event = audited(gw, headers, "token.denied")
    assert event["agent"] == ASSISTANT.client_id and event["decision"] == "deny"
    assert reason in event["reason"]


def test_refresh_token_reuse_is_audited_as_token_denied(gw: Gateway, idp: TestIdP):
    first = delegated(ASSISTANT, gw, idp)
    refreshed(ASSISTANT, gw, first["refresh_token"])
    headers = request_id()
    assert ASSISTANT.refresh(gw, first["refresh_token"], headers=headers).status_code == 400
    assert audited(gw, headers, "token.denied")["reason"] == "reused"


def test_audit_file_never_holds_a_token_or_a_secret(gw: Gateway, idp: TestIdP):
    subject_token = user_token(idp, gw)
    first = ASSISTANT.exchange(gw, subject_token).json()
    second = refreshed(ASSISTANT, gw, first["refresh_token"])
    cc = ASSISTANT.access_token(gw)
    wrong = SecretAgent(ASSISTANT.client_id, "wrong-" + secrets.token_hex(8))
    assert wrong.token(gw).status_code == 401
    assert (
        post_form(gw.issuer_url + TOKEN_PATH, {"grant_type": "client_credentials", **wrong.post_fields()}).status_code
        == 401
    )
    headers = request_id()
    assert ASSISTANT.revoke(gw, second["refresh_token"], headers=headers).status_code == 200
    audited(gw, headers, "token.revoked")  # the last of them, so every earlier event is written too
    text = (gw.dir / "audit.jsonl").read_text()
    tokens = [subject_token, first["access_token"], first["refresh_token"], second["access_token"], cc]
    tokens.append(second["refresh_token"])
    for token in tokens:
        assert token not in text
        assert token.split(".")[-1] not in text  # not even a JWT's signature, or an opaque token's whole
    for secret in (ASSISTANT.secret, wrong.secret):
        assert secret not in text


def test_failed_client_authentication_is_audited_with_the_claimed_client_id(gw: Gateway):
    headers = request_id()
    fields = {"grant_type": "client_credentials", "client_id": ASSISTANT.client_id, "client_secret": "wrong"}
    assert post_form(gw.issuer_url + TOKEN_PATH, fields, headers=headers).status_code == 401
    event = audited(gw, headers, "token.denied")
    assert event["agent"] == ASSISTANT.client_id and event["reason"] == "bad_secret"
