"""Federation end to end over real sockets: a person signs in at the organisation's OpenID provider (a real one
written in tests/oidc_provider.py, over TLS with a private CA named in tls.ca_file), consents, and the client acts
for them. Every bad answer from the provider (wrong nonce, audience, issuer, signature, an expired token, a state
from elsewhere, a replayed callback, a refusal) signs nobody in and issues nothing."""

from __future__ import annotations

import html
import re
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import jwt
import pytest
import yaml
from argon2 import PasswordHasher
from oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider, serve_oidc_provider
from people_support import ClientHost, field, pkce
from support import Gateway, Upstream, start_gateway, wait_until
from tls_support import CertificateFiles, make_test_ca

CALLBACK = "http://127.0.0.1:50123/callback"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_test_ca(tmp_path_factory.mktemp("oidc-ca"))


@pytest.fixture(scope="module")
def provider(certificate: CertificateFiles) -> Iterator[OidcProvider]:
    yield from serve_oidc_provider(certificate, {"sub": "carol", "tollbooth_scopes": "crm.read crm.admin"})


@pytest.fixture
def idp(provider: OidcProvider) -> Iterator[OidcProvider]:
    provider.reset()
    yield provider
    provider.reset()


@pytest.fixture(scope="module")
def gw(
    upstream: Upstream,
    provider: OidcProvider,
    certificate: CertificateFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    login = {
        "users": {"alice": {"password_hash": PasswordHasher().hash("pw"), "scopes": ["crm.read"]}},
        "oidc": {
            "issuer": provider.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "subject_prefix": "corp:",
            "scopes_claim": "tollbooth_scopes",
            "label": "Sign in with Corp SSO",
        },
    }
    gateway = start_gateway(
        tmp_path_factory.mktemp("oidc"),
        upstream.url,
        extra={
            "login": login,
            "interactive": {"scopes": ["crm.read", "crm.write"]},
            "tls": {"ca_file": certificate.ca_file},
        },
    )
    yield gateway
    gateway.stop()


def browser(certificate: CertificateFiles) -> httpx2.Client:
    return httpx2.Client(follow_redirects=False, verify=ssl.create_default_context(cafile=certificate.ca_file))


def authorize_params(client_host: ClientHost, challenge: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_host.url,
        "redirect_uri": CALLBACK,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st",
        "scope": "crm.read crm.write",
    }


def redeem(gw: Gateway, client_host: ClientHost, code: str, verifier: str) -> dict[str, Any]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client_host.url,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }
    answer = httpx2.post(f"{gw.issuer_url}/oauth/token", data=form)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def to_provider_and_back(
    client: httpx2.Client, gw: Gateway, client_host: ClientHost, challenge: str
) -> httpx2.Response:
    """The client sends the person to authorize; they pick the provider, which answers; the callback's response."""
    login = client.get(f"{gw.issuer_url}/oauth/authorize", params=authorize_params(client_host, challenge))
    assert login.status_code == 200 and "Sign in with Corp SSO" in login.text
    link = re.search(r'href="(/login/oidc\?[^"]+)"', login.text)
    assert link, login.text
    leave = client.get(gw.issuer_url + html.unescape(link.group(1)))
    assert leave.status_code == 303, leave.text
    at_provider = client.get(leave.headers["location"])
    assert at_provider.status_code == 302
    return client.get(at_provider.headers["location"])


def test_a_person_signs_in_at_the_provider_and_the_client_acts_for_them(
    gw: Gateway, idp: OidcProvider, client_host: ClientHost, certificate: CertificateFiles, upstream: Upstream
):
    verifier, challenge = pkce()
    with browser(certificate) as client:
        consent = to_provider_and_back(client, gw, client_host, challenge)
        assert consent.status_code == 200 and "corp:carol" in consent.text, consent.text
        asked = idp.authorize_requests[-1]
        assert asked["code_challenge_method"] == "S256" and asked["nonce"] and asked["scope"] == "openid"
        assert asked["redirect_uri"] == f"{gw.issuer_url}/login/oidc/callback"
        form = {"csrf": field(consent.text, "csrf"), "request": field(consent.text, "request"), "decision": "approve"}
        decision = client.post(f"{gw.issuer_url}/consent", data=form)
    code = parse_qs(urlsplit(decision.headers["location"]).query)["code"][0]
    token = redeem(gw, client_host, code, verifier)
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    # requested (read, write) ∩ interactive (read, write) ∩ the provider's claim (read, admin)
    assert (claims["sub"], claims["scope"], claims["act"]) == ("corp:carol", "crm.read", {"sub": client_host.url})
    answer = httpx2.get(f"{gw.proxy_url}/v1/on-behalf", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert answer.status_code == 200 and upstream.last().header("x-tollbooth-subject") == "corp:carol"
    refreshed = httpx2.post(
        f"{gw.issuer_url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": client_host.url},
    )
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == "crm.read"
    gw.wait_audit(lambda e: e["event"] == "login.succeeded" and e.get("subject") == "corp:carol")
    assert idp.token_requests[-1]["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("tamper", "sign_with"),
    [
        ({"nonce": "another sign-in's nonce"}, "own"),
        ({"nonce": None}, "own"),
        ({"aud": "some-other-client"}, "own"),
        ({"aud": [CLIENT_ID, "other"]}, "own"),  # several audiences need azp naming us
        ({"azp": "other"}, "own"),
        ({"iss": "https://evil.example"}, "own"),
        ({"exp": 1_000_000}, "own"),
        ({"iat": 99_999_999_999}, "own"),
        ({}, "stranger"),
        ({}, "hs256"),
        ({"sub": "carol\r\nX-Tollbooth-Subject: admin"}, "own"),
        ({"sub": None}, "own"),
    ],
)
def test_a_bad_id_token_signs_nobody_in(
    gw: Gateway,
    idp: OidcProvider,
    client_host: ClientHost,
    certificate: CertificateFiles,
    tamper: dict[str, Any],
    sign_with: str,
):
    idp.tamper, idp.sign_with = tamper, sign_with
    _, challenge = pkce()
    with browser(certificate) as client:
        answer = to_provider_and_back(client, gw, client_host, challenge)
        assert answer.status_code == 401 and 'class="error"' in answer.text
        assert not any("session" in name for name in client.cookies)
    reasons = {"id_token_invalid", "oidc_subject"}
    gw.wait_audit(lambda e: e["event"] == "login.failed" and e.get("reason") in reasons)


def test_a_callback_from_another_browser_or_replayed_is_refused(
    gw: Gateway, idp: OidcProvider, client_host: ClientHost, certificate: CertificateFiles
):
    _, challenge = pkce()
    with browser(certificate) as victim, browser(certificate) as attacker:
        # The attacker signs in at the provider as themselves and hands the callback URL to the victim.
        login = attacker.get(f"{gw.issuer_url}/oauth/authorize", params=authorize_params(client_host, challenge))
        request_id = field(login.text, "request")
        leave = attacker.get(f"{gw.issuer_url}/login/oidc", params={"request": request_id})
        callback = attacker.get(leave.headers["location"]).headers["location"]
        planted = victim.get(callback)
        assert planted.status_code == 400 and not victim.cookies
        # The state was spent by that attempt: not even the attacker's own browser can use it now.
        assert attacker.get(callback).status_code == 400
    gw.wait_audit(lambda e: e["event"] == "login.failed" and e.get("reason") == "oidc_state")


def test_a_refusal_at_the_provider_shows_the_sign_in_page_again(
    gw: Gateway, idp: OidcProvider, client_host: ClientHost, certificate: CertificateFiles
):
    idp.deny = True
    _, challenge = pkce()
    with browser(certificate) as client:
        answer = to_provider_and_back(client, gw, client_host, challenge)
    assert answer.status_code == 401 and "did not complete" in answer.text and "Sign in with Corp SSO" in answer.text
    gw.wait_audit(lambda e: e["event"] == "login.failed" and e.get("reason") == "oidc_error")


def test_an_account_removed_from_login_users_loses_its_refresh_tokens_though_a_provider_is_set(
    gw: Gateway, client_host: ClientHost
):
    """With login.oidc configured, a name missing from login.users must not pass for a provider's person: the
    refresh family remembers how its person signed in."""
    verifier, challenge = pkce()
    with httpx2.Client(follow_redirects=False) as client:
        login = client.get(f"{gw.issuer_url}/oauth/authorize", params=authorize_params(client_host, challenge))
        form = {"csrf": field(login.text, "csrf"), "request": field(login.text, "request")}
        consent = client.post(f"{gw.issuer_url}/login", data={**form, "username": "alice", "password": "pw"})
        decision = {"csrf": field(consent.text, "csrf"), "request": field(consent.text, "request")}
        answer = client.post(f"{gw.issuer_url}/consent", data={**decision, "decision": "approve"})
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    tokens = redeem(gw, client_host, code, verifier)
    config = yaml.safe_load(gw.config_path.read_text())
    saved = config["login"].pop("users")
    gw.config_path.write_text(yaml.safe_dump(config))
    try:
        refresh = {"grant_type": "refresh_token", "client_id": client_host.url}

        def refused() -> bool:
            answer = httpx2.post(
                f"{gw.issuer_url}/oauth/token", data={**refresh, "refresh_token": tokens["refresh_token"]}
            )
            if answer.status_code == 200:  # before the reload: keep the rotated one
                tokens["refresh_token"] = answer.json()["refresh_token"]
                return False
            return answer.json()["error"] == "invalid_grant"

        wait_until(refused, what="alice's refresh token refused once login.users no longer has her")
    finally:
        config["login"]["users"] = saved
        gw.config_path.write_text(yaml.safe_dump(config))
