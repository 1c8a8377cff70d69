"""The authorization request and its codes: what is shown on a page, what goes back to the client, and codes that
are single use and bound to client, redirect URI, PKCE verifier and lifetime."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.issuer.authorization import (
    AuthorizationRequest,
    PageError,
    RedirectError,
    authorization_request,
    check_redirect_uri,
    client_and_redirect,
    display_name,
    redirect_host_allowed,
    redirect_matches,
    redirect_with,
    verifier_matches,
)
from gateway.issuer.pages import form_target

PUBLIC = "https://gw.example.com"
CLIENT = "https://client.example.com/oauth/metadata.json"
LOOPBACK = "http://127.0.0.1:33418/callback"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 appendix B
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def params(**values: str | list[str]) -> dict[str, list[str]]:
    return {name: value if isinstance(value, list) else [value] for name, value in values.items()}


def good(**overrides: str | list[str]) -> dict[str, list[str]]:
    base: dict[str, str | list[str]] = {
        "client_id": CLIENT,
        "redirect_uri": LOOPBACK,
        "response_type": "code",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "state": "xyz",
        "scope": "crm.read crm.read mcp",
    }
    return params(**{**base, **overrides})


def test_the_rfc_7636_example_verifier_matches_its_challenge_and_nothing_else_does():
    assert verifier_matches(VERIFIER, CHALLENGE)
    assert not verifier_matches(VERIFIER[:-1] + "l", CHALLENGE)
    assert not verifier_matches(None, CHALLENGE)
    assert not verifier_matches("short", base64.urlsafe_b64encode(hashlib.sha256(b"short").digest()).decode())


@pytest.mark.parametrize(
    ("requested", "ok"),
    [
        (LOOPBACK, True),
        ("http://127.0.0.1:51000/callback", True),  # RFC 8252 §7.3: any port on loopback
        ("http://[::1]:51000/callback", False),  # another loopback host than the registered one
        ("http://127.0.0.1:51000/callback/../evil", False),
        ("http://127.0.0.1:51000/callback?x=1", False),
        ("http://localhost:33418/callback", False),  # a name, not a loopback literal
        ("https://client.example.com/cb", True),
        ("https://client.example.com/cb/", False),  # exact match: no prefix, no trailing slash
        ("https://client.example.com:444/cb", False),
        ("https://CLIENT.example.com/cb", False),
    ],
)
def test_redirect_uris_match_exactly_except_a_loopback_port(requested: str, ok: bool):
    assert redirect_matches(requested, [LOOPBACK, "https://client.example.com/cb"]) is ok


@pytest.mark.parametrize(
    ("uri", "usable"),
    [
        ("https://client.example.com/cb", True),
        ("http://127.0.0.1/cb", True),
        ("http://example.com/cb", False),
        ("http://0.0.0.0:80/cb", False),
        ("https://client.example.com/cb#frag", False),
        ("com.example.app:/oauth2redirect", True),
        ("javascript:alert(1)", False),
        ("data:text/html,x", False),
        ("https://a.example;script-src */cb", False),  # would end the consent page's form-action directive
        ("https://a.example/cb x", False),
        ("https://a.example/c\u00e9", False),
        ("https://a.example/cb;v=1", True),  # a ; in the path is fine
        ("https://app.example.com@evil.example/cb", False),  # shows one host, sends the code to another
        ("http://127.0.0.1@evil.example/cb", False),
    ],
)
def test_only_redirect_uris_that_carry_a_code_safely_are_usable(uri: str, usable: bool):
    assert (check_redirect_uri(uri) is None) is usable


def test_redirect_hosts_allow_loopback_always_and_patterns_otherwise():
    assert redirect_host_allowed(LOOPBACK, [])
    assert redirect_host_allowed("https://app.example.com/cb", ["*.example.com"])
    assert not redirect_host_allowed("https://example.com.evil.net/cb", ["*.example.com"])
    assert not redirect_host_allowed("https://evil.net/cb", ["app.example.com"])


@pytest.mark.parametrize(
    ("request_params", "registered", "reason"),
    [
        (params(redirect_uri=LOOPBACK), [LOOPBACK], "missing_client_id"),
        (params(client_id=CLIENT, redirect_uri=LOOPBACK), None, "unknown_client"),
        (params(client_id=CLIENT, redirect_uri="https://evil.example/cb"), [LOOPBACK], "redirect_uri_mismatch"),
        (params(client_id=CLIENT), [LOOPBACK, "https://client.example.com/cb"], "missing_redirect_uri"),
        (params(client_id=[CLIENT, "other"], redirect_uri=LOOPBACK), [LOOPBACK], "duplicate_parameter"),
        (params(client_id=CLIENT, redirect_uri=[LOOPBACK, LOOPBACK]), [LOOPBACK], "duplicate_parameter"),
    ],
)
def test_errors_before_the_redirect_uri_is_trusted_are_page_errors(
    request_params: dict[str, list[str]], registered: list[str] | None, reason: str
):
    with pytest.raises(PageError) as refused:
        client_and_redirect(request_params, registered)
    assert refused.value.reason == reason


def test_a_client_with_one_redirect_uri_may_leave_it_out():
    assert client_and_redirect(params(client_id=CLIENT), [LOOPBACK]) == (CLIENT, LOOPBACK)


def test_a_good_request_is_read_with_its_scopes_deduplicated_and_the_resource_defaulted():
    checked = authorization_request(good(), CLIENT, LOOPBACK, PUBLIC)
    assert checked == AuthorizationRequest(CLIENT, LOOPBACK, "xyz", CHALLENGE, ("crm.read", "mcp"), PUBLIC)
    under = authorization_request(good(resource=f"{PUBLIC}/mcp"), CLIENT, LOOPBACK, PUBLIC)
    assert under.resource == PUBLIC


@pytest.mark.parametrize(
    ("overrides", "error", "reason"),
    [
        ({"response_type": "token"}, "unsupported_response_type", "bad_response_type"),
        ({"code_challenge": ""}, "invalid_request", "pkce_missing"),
        ({"code_challenge_method": "plain"}, "invalid_request", "pkce_method"),
        ({"code_challenge": "too-short"}, "invalid_request", "pkce_challenge"),
        ({"resource": "https://other.example.com/mcp"}, "invalid_target", "wrong_resource"),
        ({"resource": f"{PUBLIC}/mcp/../admin"}, "invalid_target", "wrong_resource"),
        ({"scope": 'crm.read "x'}, "invalid_scope", "invalid_scope"),
        ({"state": "a\nb"}, "invalid_request", "bad_state"),
        ({"response_type": ["code", "code"]}, "invalid_request", "duplicate_parameter"),
    ],
)
def test_errors_after_the_redirect_uri_is_trusted_go_back_to_the_client(
    overrides: dict[str, str | list[str]], error: str, reason: str
):
    with pytest.raises(RedirectError) as refused:
        authorization_request(good(**overrides), CLIENT, LOOPBACK, PUBLIC)
    assert (refused.value.error, refused.value.reason) == (error, reason)


def test_the_redirect_keeps_the_clients_own_query_and_adds_code_and_state():
    target = redirect_with("https://client.example.com/cb?tenant=7", {"code": "c&d", "state": "s t", "x": None})
    parts = urlsplit(target)
    assert parse_qs(parts.query) == {"tenant": ["7"], "code": ["c&d"], "state": ["s t"]}


def test_the_consent_pages_form_action_names_only_a_plain_origin():
    assert form_target("https://app.example.com:8443/cb?x=1") == "https://app.example.com:8443"
    assert form_target("com.example.app:/oauth2redirect") == "com.example.app:"
    assert form_target("https://a.example,b;script-src */cb") == "'none'"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Claude Code", "Claude Code"),
        (None, "client.example.com"),
        ("\u200b\n\t", "client.example.com"),  # nothing printable: the host instead
        ("Line one\nVerified by Tollbooth", "Line one Verified by Tollbooth"),  # one line, never page text
        ("x" * 500, "x" * 59 + "…"),
    ],
)
def test_a_clients_name_is_shown_printable_one_line_and_bounded(name: str | None, shown: str):
    assert display_name(name, "client.example.com") == shown


def test_localhost_redirects_are_loopback_only_when_the_config_allows_them():
    uri, registered = "http://localhost:61234/callback", ["http://localhost/callback"]
    assert check_redirect_uri(uri) is not None and not redirect_matches(uri, registered)
    assert not redirect_host_allowed(uri, ["app.example.com"])
    assert check_redirect_uri(uri, localhost=True) is None and redirect_matches(uri, registered, localhost=True)
    assert redirect_host_allowed(uri, ["app.example.com"], localhost=True)
    # Only the name itself: a name that merely starts or ends like it is any other host.
    for other in ("http://localhost.evil.example/cb", "http://evil-localhost/cb"):
        assert check_redirect_uri(other, localhost=True) is not None
