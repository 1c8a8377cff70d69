"""A person's client end to end over real sockets: a Client ID Metadata Document served on loopback, the
authorization request, the sign-in and consent pages, the code exchanged with PKCE, and a proxy call on which the
upstream sees the client acting for the person. Every refusal on the way issues nothing."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx2
import jwt
import pytest
from argon2 import PasswordHasher
from people_support import ClientHost, field, pkce
from support import Gateway, Upstream, start_gateway

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def gw(upstream: Upstream, client_host: ClientHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("interactive"),
        upstream.url,
        extra={
            "login": {"users": {"alice": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": ["crm.read"]}}},
            "interactive": {"scopes": ["crm.read", "crm.write"]},
        },
    )
    yield gateway
    gateway.stop()


def authorize_params(client_id: str, challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": "http://127.0.0.1:50123/callback",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st-1",
        "scope": "crm.read crm.write",
        **extra,
    }


def sign_in(
    browser: httpx2.Client, gw: Gateway, client_id: str, challenge: str, password: str = PASSWORD
) -> httpx2.Response:
    page = browser.get(f"{gw.issuer_url}/oauth/authorize", params=authorize_params(client_id, challenge))
    assert page.status_code == 200, page.text
    assert "Test IDE" in page.text and "127.0.0.1" in page.text
    form = {
        "csrf": field(page.text, "csrf"),
        "request": field(page.text, "request"),
        "username": "alice",
        "password": password,
    }
    return browser.post(f"{gw.issuer_url}/login", data=form)


def redeem(gw: Gateway, code: str, client_id: str, verifier: str) -> httpx2.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client_id,
        "redirect_uri": "http://127.0.0.1:50123/callback",
        "code_verifier": verifier,
    }
    return httpx2.post(f"{gw.issuer_url}/oauth/token", data=form)


def test_a_person_signs_in_consents_and_the_client_acts_for_them(
    gw: Gateway, client_host: ClientHost, upstream: Upstream
):
    verifier, challenge = pkce()
    with httpx2.Client(follow_redirects=False) as browser:
        consent = sign_in(browser, gw, client_host.url, challenge)
        assert consent.status_code == 200, consent.text
        assert consent.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in consent.headers["content-security-policy"]
        cookie = consent.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        # The page names the client, its host, the redirect host and each scope granted (alice may not write).
        assert "Test IDE" in consent.text and "127.0.0.1:50123" in consent.text
        assert "crm.read" in consent.text and "crm.write" not in consent.text
        decision = browser.post(
            f"{gw.issuer_url}/consent",
            data={
                "csrf": field(consent.text, "csrf"),
                "request": field(consent.text, "request"),
                "decision": "approve",
            },
        )
    assert decision.status_code == 303
    back = urlsplit(decision.headers["location"])
    query = parse_qs(back.query)
    assert (back.netloc, back.path) == ("127.0.0.1:50123", "/callback")
    assert query["state"] == ["st-1"] and query["iss"] == [gw.issuer_url]
    token = redeem(gw, query["code"][0], client_host.url, verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["client_id"], claims["aud"]) == ("alice", client_host.url, gw.proxy_url)
    assert claims["act"] == {"sub": client_host.url} and body["scope"] == "crm.read"
    answer = httpx2.get(f"{gw.proxy_url}/v1/on-behalf", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert answer.status_code == 200, answer.text
    seen = upstream.last()
    assert seen.header("x-tollbooth-subject") == "alice" and seen.header("x-tollbooth-agent") == client_host.url
    # Never the person's token upstream: the upstream's own credential instead.
    assert seen.header("authorization") == "Bearer upstream-secret"
    event = gw.wait_audit(lambda e: e["event"] == "token.issued" and e.get("grant") == "authorization_code")
    assert event["subject"] == "alice" and event["agent"] == client_host.url
    # The same code again: refused, and the token it issued is revoked.
    again = redeem(gw, query["code"][0], client_host.url, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    refused = httpx2.get(f"{gw.proxy_url}/v1/on-behalf", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert refused.status_code == 401
    # ... and so is the refresh token that came with it.
    assert refresh(gw, client_host.url, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_wrong_password_shows_the_form_again_and_issues_nothing(gw: Gateway, client_host: ClientHost):
    _, challenge = pkce()
    with httpx2.Client(follow_redirects=False) as browser:
        answer = sign_in(browser, gw, client_host.url, challenge, password="wrong")
    assert answer.status_code == 401 and "not right" in answer.text and "set-cookie" not in answer.headers
    gw.wait_audit(lambda e: e["event"] == "login.failed" and e.get("subject") == "alice")


def test_an_unregistered_redirect_uri_is_shown_on_a_page_never_redirected(gw: Gateway, client_host: ClientHost):
    _, challenge = pkce()
    params = authorize_params(client_host.url, challenge, redirect_uri="https://evil.example/cb")
    answer = httpx2.get(f"{gw.issuer_url}/oauth/authorize", params=params)
    assert answer.status_code == 400 and "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")


def test_a_request_without_pkce_goes_back_to_the_client_with_an_error(gw: Gateway, client_host: ClientHost):
    params = authorize_params(client_host.url, "")
    answer = httpx2.get(f"{gw.issuer_url}/oauth/authorize", params=params)
    assert answer.status_code == 303
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and query["state"] == ["st-1"]


def test_a_consent_post_without_the_sessions_csrf_is_refused(gw: Gateway, client_host: ClientHost):
    _, challenge = pkce()
    with httpx2.Client(follow_redirects=False) as browser:
        consent = sign_in(browser, gw, client_host.url, challenge)
        forged = browser.post(
            f"{gw.issuer_url}/consent",
            data={"csrf": "forged", "request": field(consent.text, "request"), "decision": "approve"},
        )
    assert forged.status_code == 403 and "location" not in forged.headers


def test_the_metadata_advertises_the_code_flow(gw: Gateway):
    metadata = httpx2.get(f"{gw.issuer_url}/.well-known/oauth-authorization-server").json()
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_code" in metadata["grant_types_supported"]
    assert "none" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["client_id_metadata_document_supported"] is True


def tokens_for_alice(gw: Gateway, client_host: ClientHost) -> dict[str, str]:
    """The whole flow, quietly: sign in, approve, redeem; the token response."""
    verifier, challenge = pkce()
    with httpx2.Client(follow_redirects=False) as browser:
        consent = sign_in(browser, gw, client_host.url, challenge)
        form = {"csrf": field(consent.text, "csrf"), "request": field(consent.text, "request"), "decision": "approve"}
        decision = browser.post(f"{gw.issuer_url}/consent", data=form)
    code = parse_qs(urlsplit(decision.headers["location"]).query)["code"][0]
    token = redeem(gw, code, client_host.url, verifier)
    assert token.status_code == 200, token.text
    body: dict[str, str] = token.json()
    return body


def refresh(gw: Gateway, client_id: str, refresh_token: str) -> httpx2.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return httpx2.post(f"{gw.issuer_url}/oauth/token", data=form)


def test_refresh_tokens_rotate_and_a_reused_one_ends_the_family(gw: Gateway, client_host: ClientHost):
    first = tokens_for_alice(gw, client_host)
    second = refresh(gw, client_host.url, first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"] and rotated["scope"] == "crm.read"
    claims = jwt.decode(rotated["access_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["act"]) == ("alice", {"sub": client_host.url})
    # Another client presenting it gets nothing; the spent one presented again revokes the newest too.
    assert refresh(gw, "https://other.example.com/c.json", rotated["refresh_token"]).json()["error"] == "invalid_grant"
    reused = refresh(gw, client_host.url, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert refresh(gw, client_host.url, rotated["refresh_token"]).status_code == 400
    gone = httpx2.get(f"{gw.proxy_url}/v1/on-behalf", headers={"Authorization": f"Bearer {rotated['access_token']}"})
    assert gone.status_code == 401


def test_a_refresh_from_a_client_that_is_neither_a_document_nor_registered_is_refused(
    gw: Gateway, client_host: ClientHost
):
    tokens = tokens_for_alice(gw, client_host)
    for client_id in ("dcr_forgotten-registration", "billing-bot"):
        refused = refresh(gw, client_id, tokens["refresh_token"])
        # An agent's id goes to the agent path (its own authentication); anything else is unknown here.
        assert refused.status_code in (400, 401) and refused.json()["error"] in ("invalid_client", "invalid_grant")
    unknown = refresh(gw, "dcr_forgotten-registration", tokens["refresh_token"])
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    # The refusals spent nothing: the real client still refreshes.
    assert refresh(gw, client_host.url, tokens["refresh_token"]).status_code == 200
