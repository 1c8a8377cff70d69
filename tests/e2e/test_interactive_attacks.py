"""Attacks on the sign-in and consent pages over real sockets: login CSRF with a request started elsewhere,
cross-site form posts, an account removed while its session lives, and client_ids aimed at the issuer's own host.
Each one is shown to issue nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
import yaml
from argon2 import PasswordHasher
from people_support import ClientHost, field, pkce
from support import Gateway, Upstream, start_gateway, wait_until
from token_support import revoke_cli

PASSWORD = "correct horse battery staple"
USERS = {
    "alice": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": ["crm.read"]},
    "bob": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": ["crm.read"]},
    "carol": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": ["crm.read", "crm.write"]},
}


@pytest.fixture(scope="module")
def gw(upstream: Upstream, client_host: ClientHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("interactive-attacks"),
        upstream.url,
        extra={
            "login": {"users": USERS},
            "interactive": {"scopes": ["crm.read", "crm.write"], "remember_consent": "30d"},
        },
    )
    yield gateway
    gateway.stop()


def start(
    browser: httpx2.Client, gw: Gateway, client_id: str, scope: str = "crm.read", port: int = 50123
) -> httpx2.Response:
    _, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": f"http://127.0.0.1:{port}/callback",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "s",
        "scope": scope,
    }
    return browser.get(f"{gw.issuer_url}/oauth/authorize", params=params)


def login_form(page: httpx2.Response, username: str = "alice") -> dict[str, str]:
    return {
        "csrf": field(page.text, "csrf"),
        "request": field(page.text, "request"),
        "username": username,
        "password": PASSWORD,
    }


def test_a_sign_in_started_in_another_browser_cannot_be_finished_in_this_one(gw: Gateway, client_host: ClientHost):
    """Login CSRF: the attacker starts a request, then has the victim's browser post its ids with the attacker's
    password; the victim would be signed in as the attacker and consent to the attacker's client."""
    with httpx2.Client(follow_redirects=False) as attacker, httpx2.Client(follow_redirects=False) as victim:
        form = login_form(start(attacker, gw, client_host.url), username="bob")
        answer = victim.post(f"{gw.issuer_url}/login", data=form)
        assert answer.status_code == 400 and "expired" in answer.text
        assert not any("session" in name for name in answer.cookies)
        # The same fields from the browser that started it work: the refusal was the binding, nothing else.
        assert attacker.post(f"{gw.issuer_url}/login", data=form).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"}, {"origin": "https://evil.example"}],
)
def test_a_form_posted_from_another_site_is_refused(gw: Gateway, client_host: ClientHost, headers: dict[str, str]):
    with httpx2.Client(follow_redirects=False) as browser:
        form = login_form(start(browser, gw, client_host.url))
        refused = browser.post(f"{gw.issuer_url}/login", data=form, headers=headers)
        assert refused.status_code == 403 and "another site" in refused.text
        assert not any("session" in name for name in refused.cookies)
        consent = browser.post(f"{gw.issuer_url}/login", data=form, headers={"sec-fetch-site": "same-origin"})
        assert consent.status_code == 200 and "Allow" in consent.text
        decision = {
            "csrf": field(consent.text, "csrf"),
            "request": field(consent.text, "request"),
            "decision": "approve",
        }
        refused = browser.post(f"{gw.issuer_url}/consent", data=decision, headers=headers)
        assert refused.status_code == 403 and "location" not in refused.headers


def test_a_password_typed_as_the_username_is_not_audited(gw: Gateway, client_host: ClientHost):
    with httpx2.Client(follow_redirects=False) as browser:
        form = login_form(start(browser, gw, client_host.url), username="my secret pass!")
        assert browser.post(f"{gw.issuer_url}/login", data=form).status_code == 401
    gw.wait_audit(lambda e: e["event"] == "login.failed" and e.get("subject") == "?")
    assert not any("my secret pass" in str(event) for event in gw.audit_events())


def test_an_account_removed_during_its_session_can_no_longer_consent(gw: Gateway, client_host: ClientHost):
    with httpx2.Client(follow_redirects=False) as browser:
        consent = browser.post(f"{gw.issuer_url}/login", data=login_form(start(browser, gw, client_host.url), "bob"))
        assert consent.status_code == 200
        decision = {
            "csrf": field(consent.text, "csrf"),
            "request": field(consent.text, "request"),
            "decision": "approve",
        }
        config = yaml.safe_load(gw.config_path.read_text())
        config["login"]["users"].pop("bob")
        gw.config_path.write_text(yaml.safe_dump(config))
        try:
            wait_until(
                lambda: start(browser, gw, client_host.url).text.count('name="password"') == 1,
                what="the reloaded config to forget bob: his session shows the sign-in page again",
            )
            refused = browser.post(f"{gw.issuer_url}/consent", data=decision)
            assert "location" not in refused.headers and "not signed in" in refused.text
        finally:
            config["login"]["users"]["bob"] = USERS["bob"]
            gw.config_path.write_text(yaml.safe_dump(config))


def test_a_remembered_consent_skips_the_page_for_the_same_client_and_scopes_only(gw: Gateway, client_host: ClientHost):
    with httpx2.Client(follow_redirects=False) as browser:
        consent = browser.post(f"{gw.issuer_url}/login", data=login_form(start(browser, gw, client_host.url), "carol"))
        assert "Remember this for" in consent.text and "30 days" in consent.text
        decision = {"csrf": field(consent.text, "csrf"), "request": field(consent.text, "request")}
        approved = browser.post(f"{gw.issuer_url}/consent", data={**decision, "decision": "approve", "remember": "1"})
        assert approved.status_code == 303 and "code=" in approved.headers["location"]
        again = start(browser, gw, client_host.url, port=50999)  # a native app's next sign-in, on a new port
        assert (
            again.status_code == 303 and "code=" in again.headers["location"] and "state=s" in again.headers["location"]
        )
        gw.wait_audit(lambda e: e["event"] == "consent.granted" and e.get("reason") == "remembered")
        # Another scope set is another question: the page again.
        wider = start(browser, gw, client_host.url, scope="crm.read crm.write")
        assert wider.status_code == 200 and "crm.write" in wider.text
        # Revoking the person voids what they remembered: the page is shown again.
        revoke_cli(gw, "--subject", "carol")
        wait_until(
            lambda: start(browser, gw, client_host.url).status_code == 200,
            what="the revocation to void carol's remembered consent",
        )


@pytest.fixture(scope="module")
def public_issuer(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """An issuer whose public URL is not loopback: loopback client_ids are its own host's ports, never documents."""
    gateway = start_gateway(
        tmp_path_factory.mktemp("public-issuer"),
        upstream.url,
        extra={"login": {"users": USERS}, "interactive": {"scopes": ["crm.read"]}},
    )
    config = yaml.safe_load(gateway.config_path.read_text())
    config["issuer"]["url"] = "https://login.tollbooth.example"
    gateway.config_path.write_text(yaml.safe_dump(config))
    wait_until(
        lambda: (
            httpx2.get(f"{gateway.issuer_url}/.well-known/oauth-authorization-server").json()["issuer"]
            == "https://login.tollbooth.example"
        ),
        what="the public issuer URL",
    )
    yield gateway
    gateway.stop()


def test_a_loopback_client_id_is_not_fetched_by_a_public_issuer(public_issuer: Gateway, client_host: ClientHost):
    before = len(client_host.fetched)
    with httpx2.Client(follow_redirects=False) as browser:
        refused = start(browser, public_issuer, client_host.url)
        closed = start(browser, public_issuer, "http://127.0.0.1:1/client.json")
    assert refused.status_code == 400 and "could not be fetched" in refused.text
    # A closed port and a refused address read the same: the page tells a stranger nothing about the host.
    assert closed.status_code == 400
    assert _page_message(refused.text) == _page_message(closed.text)
    assert len(client_host.fetched) == before


def _page_message(html: str) -> str:
    start = html.index("<main>")
    return html[start : html.index("</main>")]


@pytest.fixture(scope="module")
def tight(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    limits = {"authorize": "3/minute", "registration": "2/hour"}
    interactive = {"scopes": ["crm.read"], "dynamic_registration": True, "limits": limits}
    gateway = start_gateway(
        tmp_path_factory.mktemp("tight"), upstream.url, extra={"login": {"users": USERS}, "interactive": interactive}
    )
    yield gateway
    gateway.stop()


def test_a_flood_of_authorization_requests_or_registrations_is_cut_off(tight: Gateway, client_host: ClientHost):
    with httpx2.Client(follow_redirects=False) as browser:
        assert all(start(browser, tight, client_host.url).status_code == 200 for _ in range(3))
        flooded = start(browser, tight, client_host.url)
    assert flooded.status_code == 429 and int(flooded.headers["retry-after"]) > 0
    assert flooded.headers["content-type"].startswith("text/html") and "Too many" in flooded.text
    register = {"redirect_uris": ["http://127.0.0.1/callback"], "token_endpoint_auth_method": "none"}
    answers = [httpx2.post(f"{tight.issuer_url}/oauth/register", json=register) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].json()["error"] == "temporarily_unavailable" and "retry-after" in answers[2].headers
    tight.wait_audit(lambda e: e["event"] == "client.registration_denied" and e.get("reason") == "rate_limited")


def test_an_oversized_sign_in_form_is_refused_unread(tight: Gateway):
    huge = "x" * (9 * 1024)  # past the pages' 8 KiB
    login = httpx2.post(f"{tight.issuer_url}/login", data={"csrf": "c", "request": "r", "username": huge})
    assert login.status_code == 400 and "could not be read" in login.text and "set-cookie" not in login.headers
