"""The OpenID provider's answers, checked without a network: the discovery document, the ID token's claims and
the person they name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, LoginOidcConfig, load_config
from gateway.issuer.federation import FederationError, check_id_token_claims, person_of, provider_metadata

ISSUER = "https://login.example.com"
DISCOVERY: dict[str, Any] = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "jwks_uri": f"{ISSUER}/jwks",
}
NOW = 1_700_000_000


def settings(**fields: Any) -> LoginOidcConfig:
    return LoginOidcConfig.model_validate({"issuer": ISSUER, "client_id": "tollbooth", **fields})


def test_discovery_gives_the_endpoints_and_rs256_by_default():
    metadata = provider_metadata(DISCOVERY, ISSUER)
    assert metadata.token_endpoint == f"{ISSUER}/token" and metadata.jwks.algorithms == ["RS256"]


@pytest.mark.parametrize(
    "change",
    [
        {"issuer": "https://login.example.com/"},  # OIDC Discovery §4.3: exactly the configured issuer
        {"token_endpoint": "http://login.example.com/token"},
        {"jwks_uri": None},
        {"authorization_endpoint": "https://login.example.com/a#frag"},
        {"id_token_signing_alg_values_supported": ["none", "HS256"]},
    ],
)
def test_a_discovery_document_that_cannot_be_trusted_is_refused(change: dict[str, Any]):
    with pytest.raises(FederationError):
        provider_metadata({**DISCOVERY, **change}, ISSUER)


def claims(**change: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": "tollbooth", "exp": NOW + 60, "iat": NOW, "nonce": "n-1", "sub": "carol"}
    return {k: v for k, v in {**base, **change}.items() if v is not None}


@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ({}, True),
        ({"aud": ["tollbooth"]}, True),
        ({"aud": ["tollbooth", "other"], "azp": "tollbooth"}, True),
        ({"aud": ["tollbooth", "other"]}, False),
        ({"exp": NOW - 61}, False),
        ({"exp": NOW - 30}, True),  # within the leeway
        ({"exp": True}, False),  # a JSON true is not a date
        ({"iat": None}, False),
        ({"nonce": "n-2"}, False),
    ],
)
def test_id_token_claims_are_checked_as_oidc_core_says(change: dict[str, Any], ok: bool):
    def check() -> None:
        check_id_token_claims(claims(**change), issuer=ISSUER, client_id="tollbooth", nonce="n-1", now=NOW, leeway=60)

    if ok:
        check()
    else:
        with pytest.raises(FederationError):
            check()


def test_the_person_is_the_prefixed_subject_with_the_scopes_their_claim_lists():
    oidc = settings(subject_prefix="corp:", scopes_claim="groups")
    assert person_of(claims(groups=["crm.read", "bad scope", 7]), oidc, {"alice"}) == ("corp:carol", ("crm.read",))
    assert person_of(claims(groups="crm.read crm.write"), oidc, set())[1] == ("crm.read", "crm.write")
    assert person_of(claims(), settings(default_scopes=["crm.read"]), set()) == ("carol", ("crm.read",))
    verified = claims(email="c@example.com", email_verified=True)
    assert person_of(verified, settings(subject_claim="email"), set())[0] == "c@example.com"


@pytest.mark.parametrize("subject", ["alice", "Alice", "billing-bot", "", "two words", "x" * 300, 42])
def test_a_subject_that_names_an_account_or_agent_or_is_not_header_safe_signs_nobody_in(subject: Any):
    with pytest.raises(FederationError):
        person_of(claims(sub=subject), settings(), {"alice", "billing-bot"})


def test_an_email_subject_needs_the_provider_to_have_verified_it():
    oidc = settings(subject_claim="email")
    with pytest.raises(FederationError, match="email_verified"):
        person_of(claims(email="ceo@example.com"), oidc, set())
    with pytest.raises(FederationError):
        person_of(claims(email="ceo@example.com", email_verified="true"), oidc, set())
    assert person_of(claims(email="c@example.com", email_verified=True), oidc, set())[0] == "c@example.com"


def test_the_provider_is_always_asked_for_openid():
    assert settings(provider_scopes=["email"]).provider_scopes == ["openid", "email"]


def test_the_provider_and_a_trusted_issuer_need_prefixes_apart(tmp_path: Path):
    path = tmp_path / "tollbooth.yaml"
    path.write_text(
        "trusted_issuers: [{issuer: 'https://idp.example.com', jwks_uri: 'https://idp.example.com/jwks'}]\n"
        "login: {oidc: {issuer: 'https://login.example.com', client_id: t}}\n"
    )
    with pytest.raises(ConfigError, match=r"login.oidc \(https://login.example.com\): subject_prefix: required"):
        load_config(path)


def test_the_token_service_cannot_be_its_own_provider(tmp_path: Path):
    path = tmp_path / "tollbooth.yaml"
    path.write_text(
        "issuer: {url: 'https://auth.example.com'}\n"
        "login: {oidc: {issuer: 'https://auth.example.com/', client_id: t}}\n"
    )
    with pytest.raises(ConfigError, match=r"login.oidc: issuer: .* is this token service itself"):
        load_config(path)
