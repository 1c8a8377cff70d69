"""Minting RFC 9068 access tokens, and the pure checking steps (the full attack table is at the Verifier level,
tests/proxy/test_identify.py)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from gateway.issuer.keystore import KeyStore
from gateway.tokens.access_token import (
    InvalidToken,
    check_header,
    delegation_chain,
    mint_access_token,
    parse_unverified,
    validate_claims,
    verify_signature,
)
from gateway.tokens.jwk import SIGNING_ALGORITHMS, SigningKey

ISSUER = "http://127.0.0.1:8081"
AUDIENCE = "http://127.0.0.1:8080"
NOW = 1_750_000_000.0


@pytest.fixture(scope="module", params=SIGNING_ALGORITHMS)
def key(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return KeyStore.load(tmp_path_factory.mktemp("keys"), request.param).active


@pytest.fixture(scope="module")
def es256(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return KeyStore.load(tmp_path_factory.mktemp("es256"), "ES256").active


def mint(key: SigningKey, **overrides: object) -> tuple[str, dict]:
    args: dict = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "subject": "billing-bot",
        "client_id": "billing-bot",
        "scopes": ["crm.read", "crm.write"],
        "ttl": 300,
        "now": NOW,
    } | overrides
    return mint_access_token(key, **args)


def segment(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_minted_claims_follow_rfc9068(es256: SigningKey) -> None:
    token, claims = mint(es256, scopes=["crm.read", "crm.write", "crm.read"])
    assert segment(token, 1) == claims
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["sub"] == claims["client_id"] == "billing-bot"
    assert claims["iat"] == int(NOW) and claims["exp"] == int(NOW) + 300
    assert claims["scope"] == "crm.read crm.write"  # space-separated, duplicates dropped, order kept
    assert len(claims["jti"]) >= 22


def test_header_is_at_jwt_with_kid_and_the_keys_algorithm(key: SigningKey) -> None:
    token, _ = mint(key)
    assert segment(token, 0) == {"alg": key.algorithm, "kid": key.kid, "typ": "at+jwt"}


def test_every_algorithm_round_trips_through_the_checks(key: SigningKey) -> None:
    token, claims = mint(key)
    unverified = parse_unverified(token)
    assert check_header(unverified.header) == (key.kid, key.algorithm)
    verified = verify_signature(token, key.algorithm, key)
    principal = validate_claims(verified, issuer=ISSUER, audience=AUDIENCE, now=NOW, leeway=0)
    assert principal.jti == claims["jti"] and principal.scopes == {"crm.read", "crm.write"}


def test_plain_pyjwt_accepts_our_tokens(key: SigningKey) -> None:
    token, claims = mint(key, now=None)
    decoded = jwt.decode(token, key.public_key, algorithms=[key.algorithm], audience=AUDIENCE, issuer=ISSUER)
    assert decoded == claims


def test_jti_is_unique_per_token(es256: SigningKey) -> None:
    assert len({mint(es256)[1]["jti"] for _ in range(50)}) == 50


def test_no_scopes_means_no_scope_claim(es256: SigningKey) -> None:
    assert "scope" not in mint(es256, scopes=[])[1]


def test_delegated_token_nests_act_and_keeps_sub(es256: SigningKey) -> None:
    act = {"sub": "billing-bot", "act": {"sub": "planner"}}
    token, claims = mint(es256, subject="user:alice", act=act)
    assert claims["act"] == act and claims["sub"] == "user:alice"
    principal = validate_claims(segment(token, 1), issuer=ISSUER, audience=AUDIENCE, now=NOW, leeway=0)
    assert principal.delegation == ("billing-bot", "planner")
    assert principal.delegated


def test_extra_claims_are_added_but_cannot_override(es256: SigningKey) -> None:
    _, claims = mint(es256, extra_claims={"cnf": {"jkt": "abc"}})
    assert claims["cnf"] == {"jkt": "abc"}
    with pytest.raises(ValueError, match="aud, exp"):
        mint(es256, extra_claims={"exp": NOW + 10**9, "aud": "elsewhere"})


@pytest.mark.parametrize(
    "overrides",
    [
        {"scopes": ["crm read"]},
        {"scopes": ['say"hi']},
        {"subject": "alice\r\nX-Tollbooth-Agent: admin"},
        {"client_id": ""},
        {"act": {"act": {"sub": "x"}}},
        {"ttl": 0},
        {"subject": "alice", "act": {"sub": "alice"}},
        {"act": {"sub": "a", "act": {"sub": "b", "act": {"sub": "a"}}}},
    ],
    ids=[
        "space-in-scope",
        "quote-in-scope",
        "crlf-in-sub",
        "empty-client-id",
        "act-without-sub",
        "zero-ttl",
        "acting-for-itself",
        "circular-chain",
    ],
)
def test_refuses_to_mint_what_the_verifier_would_refuse(es256: SigningKey, overrides: dict) -> None:
    with pytest.raises(ValueError):
        mint(es256, **overrides)


def test_a_public_only_key_cannot_sign(es256: SigningKey) -> None:
    public_only = SigningKey(es256.kid, es256.algorithm, None, es256.public_key, es256.created_at, None)
    with pytest.raises(ValueError, match="no private part"):
        mint(public_only)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "ES256", "kid": "k", "typ": "at+jwt"}, None),
        ({"alg": "ES256", "kid": "k", "typ": "application/AT+JWT"}, None),
        ({"alg": "ES256", "kid": "k", "typ": "JWT"}, "wrong_typ"),
        ({"alg": "ES256", "kid": "k", "typ": ["at+jwt"]}, "wrong_typ"),
        ({"alg": "ES256", "kid": "k"}, "wrong_typ"),
        ({"alg": "ES256", "typ": "at+jwt"}, "missing_kid"),
        ({"alg": "ES256", "kid": 7, "typ": "at+jwt"}, "missing_kid"),
        ({"alg": "nOnE", "kid": "k", "typ": "at+jwt"}, "bad_alg"),
        ({"alg": "HS512", "kid": "k", "typ": "at+jwt"}, "bad_alg"),
        ({"alg": "ES512", "kid": "k", "typ": "at+jwt"}, "bad_alg"),
        ({"kid": "k", "typ": "at+jwt"}, "bad_alg"),
        ({"alg": "ES256", "kid": "k", "typ": "at+jwt", "crit": ["exp"]}, "forbidden_header"),
        ({"alg": "ES256", "kid": "k", "typ": "at+jwt", "x5c": ["MII..."]}, "forbidden_header"),
    ],
)
def test_check_header(header: dict, reason: str | None) -> None:
    if reason is None:
        assert check_header(header) == ("k", "ES256")
    else:
        with pytest.raises(InvalidToken) as caught:
            check_header(header)
        assert caught.value.reason == reason


def test_delegation_chain_is_bounded() -> None:
    act: dict | None = None
    for i in range(40):
        act = {"sub": f"agent-{i}", **({"act": act} if act else {})}
    with pytest.raises(InvalidToken, match="too long"):
        delegation_chain(act)


def test_azp_stands_in_for_client_id_only_when_allowed() -> None:
    claims = {"iss": "https://idp", "aud": AUDIENCE, "sub": "alice", "azp": "app", "iat": NOW, "exp": NOW + 60}
    claims["jti"] = "j1"
    principal = validate_claims(claims, issuer="https://idp", audience=AUDIENCE, now=NOW, leeway=0, allow_azp=True)
    assert principal.agent == "app"
    assert "client_id" not in principal.claims  # the claims are the token's, as issued
    with pytest.raises(InvalidToken, match="client_id"):
        validate_claims(claims, issuer="https://idp", audience=AUDIENCE, now=NOW, leeway=0)


def test_descriptions_never_echo_the_claims() -> None:
    claims = {"iss": 'evil"\\', "aud": 'x"y', "sub": "s", "client_id": "c", "iat": NOW, "exp": NOW + 60, "jti": "j"}
    for issuer in ("http://issuer", 'evil"\\'):
        with pytest.raises(InvalidToken) as caught:
            validate_claims(claims, issuer=issuer, audience=AUDIENCE, now=NOW, leeway=0)
        assert '"' not in caught.value.description and "evil" not in caught.value.description
