"""The token service over real sockets: client_credentials, client authentication, every RFC 6749 §5.2 error with
its exact status and body, RFC 8707 resources, RFC 8414 metadata and the JWKS (RFC 7517)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import jwt
import pytest
import yaml
from support import Gateway, Upstream, start_gateway, wait_until
from token_support import (
    INTROSPECT_PATH,
    REVOKE_PATH,
    TOKEN_EXCHANGE,
    TOKEN_PATH,
    KeyPair,
    SecretAgent,
    assertion_fields,
    claims_of,
    client_assertion,
    header_of,
    post_form,
    proxy_get,
    unsigned_jwt,
)

# A secret that reads differently when form-decoded: ':' splits Basic credentials, '%2B' and '+' decode.
READER = SecretAgent("reader", "p:a%2Bss+w%rd")
PLAIN = SecretAgent("plain-bot", "plain-secret-123")
KEYED_KEY = KeyPair()
KEYED = "keyed-bot"


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("token-service"),
        upstream.url,
        extra={
            "issuer": {"access_token_ttl": "5m", "scope_ttl": {"crm.admin": "30s"}},
            "agents": {
                READER.client_id: READER.config(
                    scopes=["crm.read", "crm.write", "crm.admin"], default_scopes=["crm.read"], max_token_ttl="2m"
                ),
                PLAIN.client_id: PLAIN.config(scopes=["crm.read", "crm.write"], refresh_tokens=True),
                KEYED: {"jwks": KEYED_KEY.jwks(), "scopes": ["crm.read"]},
            },
        },
    )
    yield gateway
    gateway.stop()


def token_endpoint(gw: Gateway) -> str:
    return gw.issuer_url + TOKEN_PATH


def assert_oauth_error(response: httpx2.Response, status: int, error: str) -> dict[str, Any]:
    """RFC 6749 §5.2: the status, a JSON body of exactly error and error_description, never cached."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error, body
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    return body


# --- client_credentials ---------------------------------------------------------------------------------------


def test_client_credentials_token_is_an_rfc9068_token_for_the_agent(gw: Gateway):
    response = PLAIN.token(gw)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    claims = claims_of(body["access_token"])
    assert claims["sub"] == claims["client_id"] == PLAIN.client_id
    assert claims["iss"] == gw.issuer_url and claims["aud"] == gw.proxy_url
    assert {"exp", "iat", "jti"} <= set(claims) and "act" not in claims
    assert header_of(body["access_token"])["typ"] == "at+jwt"


def test_token_response_is_never_cached(gw: Gateway):
    response = PLAIN.token(gw)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def test_client_credentials_issues_no_refresh_token_even_to_a_refresh_agent(gw: Gateway):
    body = PLAIN.token(gw).json()  # plain-bot has refresh_tokens: true
    assert "refresh_token" not in body and "issued_token_type" not in body


def test_no_scope_asked_grants_the_agents_default_scopes(gw: Gateway):
    body = READER.token(gw).json()
    assert body["scope"] == "crm.read"
    assert claims_of(body["access_token"])["scope"] == "crm.read"


def test_agent_without_default_scopes_gets_all_its_scopes(gw: Gateway):
    assert PLAIN.token(gw).json()["scope"] == "crm.read crm.write"


def test_asked_scopes_are_granted_as_asked(gw: Gateway):
    body = READER.token(gw, scope="crm.write crm.read").json()
    assert set(body["scope"].split()) == {"crm.read", "crm.write"}


def test_scope_the_agent_may_not_hold_is_invalid_scope_naming_it(gw: Gateway):
    body = assert_oauth_error(READER.token(gw, scope="crm.read crm.delete"), 400, "invalid_scope")
    assert "crm.delete" in body["error_description"] and "crm.read" not in body["error_description"]


@pytest.mark.parametrize(
    ("agent", "scope", "expires_in"),
    [
        pytest.param(PLAIN, None, 300, id="issuer-default"),
        pytest.param(READER, "crm.read", 120, id="agent-max-token-ttl"),
        pytest.param(READER, "crm.read crm.admin", 30, id="per-scope-cap"),
    ],
)
def test_token_ttl_is_the_smallest_of_issuer_agent_and_scope_caps(
    gw: Gateway, agent: SecretAgent, scope: str | None, expires_in: int
):
    body = agent.token(gw, scope=scope).json()
    claims = claims_of(body["access_token"])
    assert body["expires_in"] == expires_in == claims["exp"] - claims["iat"]


def test_issued_token_works_at_the_proxy(gw: Gateway, upstream: Upstream):
    response = proxy_get(gw, "/v1/customers/7", PLAIN.access_token(gw))
    assert response.status_code == 200
    assert upstream.last().header("x-tollbooth-agent") == PLAIN.client_id


# --- client authentication ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form_encoded", [True, False], ids=["rfc-form-encoded", "raw-authlib-style"])
def test_secret_with_colon_percent_and_plus_works_with_basic(gw: Gateway, form_encoded: bool):
    response = post_form(
        token_endpoint(gw), {"grant_type": "client_credentials"}, headers=READER.basic(form_encoded=form_encoded)
    )
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["client_id"] == READER.client_id


def test_secret_with_colon_percent_and_plus_works_with_client_secret_post(gw: Gateway):
    response = post_form(token_endpoint(gw), {"grant_type": "client_credentials", **READER.post_fields()})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "audience",
    [
        pytest.param(lambda gw: gw.issuer_url, id="issuer-identifier"),
        pytest.param(lambda gw: gw.issuer_url + TOKEN_PATH, id="token-endpoint"),
        pytest.param(lambda gw: [gw.issuer_url], id="issuer-in-array"),
        pytest.param(lambda gw: ["https://elsewhere.example", gw.issuer_url + TOKEN_PATH], id="endpoint-in-array"),
    ],
)
def test_private_key_jwt_accepts_issuer_or_token_endpoint_audience(gw: Gateway, audience: Callable[[Gateway], Any]):
    assertion = client_assertion(KEYED_KEY, KEYED, audience(gw))
    response = post_form(token_endpoint(gw), {"grant_type": "client_credentials", **assertion_fields(assertion)})
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["sub"] == claims["client_id"] == KEYED


def test_private_key_jwt_assertion_replay_is_invalid_client(gw: Gateway):
    fields = {"grant_type": "client_credentials", **assertion_fields(client_assertion(KEYED_KEY, KEYED, gw.issuer_url))}
    assert post_form(token_endpoint(gw), fields).status_code == 200
    body = assert_oauth_error(post_form(token_endpoint(gw), fields), 401, "invalid_client")
    assert "jti" in body["error_description"]


def _hs256_with_public_key(gw: Gateway) -> str:
    # The classic key-confusion attack: HMAC keyed with the agent's public key, which anyone may know.
    header = {"alg": "HS256", "typ": "JWT", "kid": KEYED_KEY.kid}
    claims = claims_of(client_assertion(KEYED_KEY, KEYED, gw.issuer_url))
    signing_input = unsigned_jwt(header, claims).rsplit(".", 1)[0]
    signature = hmac.new(KEYED_KEY.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return unsigned_jwt(header, claims, signature)


def _alg_none(gw: Gateway) -> str:
    claims = claims_of(client_assertion(KEYED_KEY, KEYED, gw.issuer_url))
    return unsigned_jwt({"alg": "none", "kid": KEYED_KEY.kid}, claims)


@pytest.mark.parametrize(
    "make_assertion",
    [
        pytest.param(lambda gw: client_assertion(KEYED_KEY, KEYED, gw.proxy_url), id="aud-is-the-proxy"),
        pytest.param(lambda gw: client_assertion(KEYED_KEY, KEYED, gw.issuer_url + "/other"), id="aud-elsewhere"),
        pytest.param(lambda gw: client_assertion(KEYED_KEY, KEYED, gw.issuer_url, lifetime=86400), id="far-future"),
        pytest.param(lambda gw: client_assertion(KEYED_KEY, KEYED, gw.issuer_url, lifetime=-120), id="expired"),
        pytest.param(lambda gw: client_assertion(KEYED_KEY, KEYED, gw.issuer_url, exp=None), id="no-exp"),
        pytest.param(lambda gw: client_assertion(KEYED_KEY, KEYED, gw.issuer_url, jti=None), id="no-jti"),
        pytest.param(lambda gw: client_assertion(KEYED_KEY, KEYED, gw.issuer_url, sub="reader"), id="sub-not-iss"),
        pytest.param(
            lambda gw: client_assertion(KeyPair(kid=KEYED_KEY.kid), KEYED, gw.issuer_url), id="unregistered-key"
        ),
        pytest.param(_alg_none, id="alg-none"),
        pytest.param(_hs256_with_public_key, id="hs256-with-public-key"),
    ],
)
def test_unacceptable_client_assertion_is_invalid_client(gw: Gateway, make_assertion: Callable[[Gateway], str]):
    fields = {"grant_type": "client_credentials", **assertion_fields(make_assertion(gw))}
    assert_oauth_error(post_form(token_endpoint(gw), fields), 401, "invalid_client")


# --- every error, with its exact status and body --------------------------------------------------------------

ERRORS: list[Any] = [
    pytest.param(
        lambda gw: post_form(token_endpoint(gw), {"grant_type": "client_credentials"}),
        401,
        "invalid_client",
        id="no-client-authentication",
    ),  # fmt: skip
    pytest.param(
        lambda gw: post_form(
            token_endpoint(gw), {"grant_type": "client_credentials", "client_id": PLAIN.client_id, "client_secret": "x"}
        ),
        401,
        "invalid_client",
        id="wrong-secret-post",
    ),
    pytest.param(
        lambda gw: post_form(
            token_endpoint(gw), {"grant_type": "client_credentials", **READER.post_fields(), "client_id": "nobody"}
        ),
        401,
        "invalid_client",
        id="unknown-client-post",
    ),
    pytest.param(
        lambda gw: post_form(
            token_endpoint(gw),
            {"grant_type": "client_credentials", "client_secret": READER.secret, "client_id": READER.client_id},
            headers=READER.basic(),
        ),
        400,
        "invalid_request",
        id="basic-and-post-at-once",
    ),
    pytest.param(
        lambda gw: post_form(
            token_endpoint(gw),
            {
                "grant_type": "client_credentials",
                **assertion_fields(client_assertion(KEYED_KEY, KEYED, gw.issuer_url)),
                **PLAIN.post_fields(),
            },
        ),
        400,
        "invalid_request",
        id="assertion-and-post-at-once",
    ),
    pytest.param(
        lambda gw: post_form(
            token_endpoint(gw),
            {"grant_type": "client_credentials", **assertion_fields(client_assertion(KEYED_KEY, KEYED, gw.issuer_url))},
            headers=PLAIN.basic(),
        ),
        400,
        "invalid_request",
        id="basic-and-assertion-at-once",
    ),
    pytest.param(
        lambda gw: httpx2.post(
            token_endpoint(gw), json={"grant_type": "client_credentials"}, headers=PLAIN.basic(), timeout=10
        ),
        400,
        "invalid_request",
        id="json-body",
    ),
    pytest.param(
        lambda gw: httpx2.post(
            token_endpoint(gw) + "?grant_type=client_credentials", headers=PLAIN.basic(), timeout=10
        ),
        400,
        "invalid_request",
        id="parameters-in-query-only",
    ),
    pytest.param(
        lambda gw: PLAIN.token(gw, scope=["crm.read", "crm.write"]), 400, "invalid_request", id="repeated-scope"
    ),
    pytest.param(
        lambda gw: PLAIN.post(gw.issuer_url, TOKEN_PATH, grant_type=["client_credentials", "client_credentials"]),
        400,
        "invalid_request",
        id="repeated-grant-type",
    ),
    pytest.param(
        lambda gw: PLAIN.post(gw.issuer_url, TOKEN_PATH, scope="crm.read"), 400, "invalid_request", id="no-grant-type"
    ),
    pytest.param(
        lambda gw: PLAIN.post(gw.issuer_url, TOKEN_PATH, grant_type="password", username="u", password="p"),
        400,
        "unsupported_grant_type",
        id="password-grant",
    ),
    pytest.param(
        lambda gw: PLAIN.post(gw.issuer_url, TOKEN_PATH, grant_type="authorization_code", code="abc"),
        400,
        "unsupported_grant_type",
        id="authorization-code-grant",
    ),
    pytest.param(
        lambda gw: PLAIN.token(gw, scope="crm.read crm.delete"), 400, "invalid_scope", id="scope-outside-allowance"
    ),
    pytest.param(lambda gw: PLAIN.token(gw, scope='crm"read'), 400, "invalid_scope", id="malformed-scope"),
    pytest.param(
        lambda gw: READER.post(gw.issuer_url, TOKEN_PATH, grant_type="refresh_token", refresh_token="x" * 43),
        400,
        "unauthorized_client",
        id="refresh-by-agent-without-refresh-tokens",
    ),
    pytest.param(
        lambda gw: READER.exchange(gw, "a.b.c"), 400, "unauthorized_client", id="exchange-by-agent-without-may-act-for"
    ),
    pytest.param(
        lambda gw: PLAIN.post(gw.issuer_url, TOKEN_PATH, grant_type="refresh_token", refresh_token="x" * 43),
        400,
        "invalid_grant",
        id="unknown-refresh-token",
    ),
    pytest.param(
        lambda gw: PLAIN.post(gw.issuer_url, TOKEN_PATH, grant_type="refresh_token"),
        400,
        "invalid_request",
        id="refresh-without-refresh-token",
    ),
    pytest.param(
        lambda gw: PLAIN.token(gw, resource="https://evil.example/mcp"), 400, "invalid_target", id="foreign-resource"
    ),
    pytest.param(lambda gw: PLAIN.post(gw.issuer_url, REVOKE_PATH), 400, "invalid_request", id="revoke-without-token"),
    pytest.param(
        lambda gw: post_form(gw.issuer_url + REVOKE_PATH, {"token": "abc"}),
        401,
        "invalid_client",
        id="revoke-without-client-authentication",
    ),
    pytest.param(
        lambda gw: post_form(gw.issuer_url + INTROSPECT_PATH, {"token": "abc"}),
        401,
        "invalid_client",
        id="introspect-without-client-authentication",
    ),
    pytest.param(
        lambda gw: PLAIN.post(gw.issuer_url, INTROSPECT_PATH), 400, "invalid_request", id="introspect-without-token"
    ),
]


@pytest.mark.parametrize(("send", "status", "error"), ERRORS)
def test_error_has_exact_status_and_body(gw: Gateway, send: Callable[[Gateway], httpx2.Response], status: int, error):
    assert_oauth_error(send(gw), status, error)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(lambda: SecretAgent(READER.client_id, "wrong").basic(), id="wrong-secret"),
        pytest.param(lambda: SecretAgent("nobody", READER.secret).basic(), id="unknown-client"),
        pytest.param(lambda: {"Authorization": "Basic !!!not-base64"}, id="not-base64"),
        pytest.param(lambda: {"Authorization": "Basic " + "cmVhZGVy"}, id="no-colon"),  # "reader"
    ],
)
def test_failed_basic_authentication_is_401_invalid_client_with_basic_challenge(
    gw: Gateway, authorization: Callable[[], dict[str, str]]
):
    response = post_form(token_endpoint(gw), {"grant_type": "client_credentials"}, headers=authorization())
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].lower().startswith("basic ")


def test_client_id_in_body_differing_from_basic_is_invalid_request(gw: Gateway):
    response = post_form(
        token_endpoint(gw), {"grant_type": "client_credentials", "client_id": PLAIN.client_id}, headers=READER.basic()
    )
    assert_oauth_error(response, 400, "invalid_request")


def test_token_exchange_refusal_does_not_depend_on_the_subject_token(gw: Gateway):
    """unauthorized_client is about the agent (no may_act_for), checked before the subject token is even read."""
    body = assert_oauth_error(READER.exchange(gw, "not a token"), 400, "unauthorized_client")
    assert "may_act_for" in body["error_description"]


# --- resource indicators (RFC 8707) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("resource", lambda gw: gw.proxy_url),
        ("resource", lambda gw: gw.proxy_url + "/"),
        ("resource", lambda gw: gw.proxy_url + "/mcp"),
        ("resource", lambda gw: [gw.proxy_url + "/mcp", gw.proxy_url + "/v1/customers"]),
        ("audience", lambda gw: gw.proxy_url),
        ("audience", lambda gw: gw.proxy_url + "/mcp"),
    ],
    ids=["public-url", "trailing-slash", "mcp-endpoint", "two-resources", "audience", "audience-mcp"],
)
def test_resource_at_or_under_the_proxy_gives_the_proxy_audience(gw: Gateway, name: str, value: Callable[..., Any]):
    response = PLAIN.token(gw, **{name: value(gw)})
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["aud"] == gw.proxy_url


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(lambda gw: "https://api.example.com/mcp", id="other-host"),
        pytest.param(lambda gw: gw.proxy_url.replace("http://", "https://"), id="other-scheme"),
        pytest.param(lambda gw: gw.proxy_url + "0", id="port-prefix"),
        pytest.param(lambda gw: gw.proxy_url.replace("127.0.0.1", "localhost"), id="other-host-name"),
        pytest.param(lambda gw: gw.issuer_url, id="the-issuer"),
        pytest.param(lambda gw: gw.proxy_url + "/mcp#frag", id="fragment"),
        pytest.param(lambda gw: gw.proxy_url + "/mcp/../../x", id="dot-segments"),
        pytest.param(lambda gw: "mcp", id="relative"),
        pytest.param(lambda gw: [gw.proxy_url + "/mcp", "https://api.example.com/"], id="one-of-two-foreign"),
    ],
)
def test_resource_outside_the_proxy_is_invalid_target(gw: Gateway, value: Callable[[Gateway], Any]):
    assert_oauth_error(PLAIN.token(gw, resource=value(gw)), 400, "invalid_target")


def test_audience_outside_the_proxy_is_invalid_target(gw: Gateway):
    assert_oauth_error(PLAIN.token(gw, audience="https://api.example.com"), 400, "invalid_target")


# --- metadata (RFC 8414) and keys (RFC 7517) ------------------------------------------------------------------


def test_authorization_server_metadata_describes_the_endpoints(gw: Gateway):
    response = httpx2.get(gw.issuer_url + "/.well-known/oauth-authorization-server", timeout=10)
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == gw.issuer_url == claims_of(PLAIN.access_token(gw))["iss"]
    assert meta["token_endpoint"] == gw.issuer_url + TOKEN_PATH
    assert meta["jwks_uri"] == gw.issuer_url + "/.well-known/jwks.json"
    assert meta["revocation_endpoint"] == gw.issuer_url + REVOKE_PATH
    assert meta["introspection_endpoint"] == gw.issuer_url + INTROSPECT_PATH
    assert isinstance(meta["response_types_supported"], list)
    assert {"client_credentials", TOKEN_EXCHANGE, "refresh_token"} <= set(meta["grant_types_supported"])
    assert {"crm.read", "crm.write", "crm.admin"} <= set(meta["scopes_supported"])
    methods = {"client_secret_basic", "client_secret_post", "private_key_jwt"}
    for endpoint in ("token_endpoint", "revocation_endpoint", "introspection_endpoint"):
        assert methods <= set(meta[f"{endpoint}_auth_methods_supported"])
        algorithms = set(meta[f"{endpoint}_auth_signing_alg_values_supported"])
        assert "ES256" in algorithms and not algorithms & {"none", "HS256", "HS384", "HS512"}


def test_metadata_for_another_issuer_path_is_not_found(gw: Gateway):
    response = httpx2.get(gw.issuer_url + "/.well-known/oauth-authorization-server/tenant", timeout=10)
    assert response.status_code == 404


def test_jwks_publishes_the_signing_key_and_no_private_part(gw: Gateway):
    keys = httpx2.get(gw.issuer_url + "/.well-known/jwks.json", timeout=10).json()["keys"]
    kid = header_of(PLAIN.access_token(gw))["kid"]
    assert kid in {key["kid"] for key in keys}
    assert all("d" not in key and key.get("use", "sig") == "sig" for key in keys)
    key = next(key for key in keys if key["kid"] == kid)
    public = jwt.PyJWK.from_dict(key).key
    claims = jwt.decode(PLAIN.access_token(gw), public, algorithms=["ES256"], audience=gw.proxy_url)
    assert claims["iss"] == gw.issuer_url


def test_jwks_keeps_the_previous_key_after_rotation_and_its_tokens_keep_working(gw: Gateway):
    from gateway.issuer.keystore import rotate_keys

    before = PLAIN.access_token(gw)
    old_kid = header_of(before)["kid"]
    rotate_keys(gw.dir / "keys", "ES256", token_lifetime=600)

    def rotated() -> str | None:
        kid = header_of(PLAIN.access_token(gw))["kid"]
        return kid if kid != old_kid else None

    new_kid = wait_until(rotated, timeout=10, what="the gateway to sign with the rotated key")
    kids = {key["kid"] for key in httpx2.get(gw.issuer_url + "/.well-known/jwks.json", timeout=10).json()["keys"]}
    assert {old_kid, new_kid} <= kids
    assert proxy_get(gw, "/v1/customers/1", before).status_code == 200


def test_a_key_rotated_with_activate_in_is_published_first_and_signs_later(gw: Gateway):
    from gateway.issuer.keystore import rotate_keys

    old_kid = header_of(PLAIN.access_token(gw))["kid"]
    new = rotate_keys(gw.dir / "keys", "ES256", token_lifetime=600, activate_in=4).generated
    assert new is not None

    def published() -> set[str]:
        return {key["kid"] for key in httpx2.get(gw.issuer_url + "/.well-known/jwks.json", timeout=10).json()["keys"]}

    # Every replica can verify the new key's tokens before any replica signs with it.
    wait_until(lambda: new.kid in published(), timeout=10, what="the pending key to be published")
    if time.time() < new.created_at - 0.5:
        assert header_of(PLAIN.access_token(gw))["kid"] == old_kid
    wait_until(lambda: header_of(PLAIN.access_token(gw))["kid"] == new.kid, timeout=15, what="the key to sign")
    assert old_kid in published()


def test_a_reload_that_changes_the_algorithm_switches_the_signing_key(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
):
    from gateway.issuer.keystore import generate_key

    gateway = start_gateway(
        tmp_path_factory.mktemp("algorithm"),
        upstream.url,
        extra={"agents": {PLAIN.client_id: PLAIN.config(scopes=["crm.read"])}},
    )
    try:
        assert header_of(PLAIN.access_token(gateway))["alg"] == "ES256"
        eddsa = generate_key(gateway.dir / "keys", "EdDSA")  # published as "next" while ES256 signs
        jwks = gateway.issuer_url + "/.well-known/jwks.json"
        wait_until(lambda: eddsa.kid in httpx2.get(jwks).text, what="the EdDSA key to be loaded (as next)")
        config = yaml.safe_load(gateway.config_path.read_text())
        config["issuer"]["algorithm"] = "EdDSA"
        gateway.config_path.write_text(yaml.safe_dump(config))
        wait_until(lambda: header_of(PLAIN.access_token(gateway))["alg"] == "EdDSA", timeout=15, what="EdDSA tokens")
    finally:
        gateway.stop()
