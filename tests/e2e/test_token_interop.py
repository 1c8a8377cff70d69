"""Interop with real third-party clients: Authlib's OAuth2Client fetches, revokes and introspects tokens
(client_secret_basic, client_secret_post, private_key_jwt through authlib.oauth2.rfc7523.PrivateKeyJWT), PyJWT's
PyJWKClient verifies them from our JWKS, and the tokens then work at the proxy."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import jwt
import pytest
from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey
from support import Gateway, Upstream, start_gateway
from token_support import INTROSPECT_PATH, REVOKE_PATH, TOKEN_PATH, KeyPair, SecretAgent, claims_of, proxy_get

# Authlib sends Basic credentials raw (not form-encoded): a secret with ':' '%' '+' must still work.
BASIC = SecretAgent("authlib-basic", "se:cr%et+1")
KEYED_KEY = KeyPair()
KEYED = "authlib-keyed"


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("token-interop"),
        upstream.url,
        extra={
            "agents": {
                BASIC.client_id: BASIC.config(scopes=["crm.read", "crm.write"]),
                KEYED: {"jwks": KEYED_KEY.jwks(), "scopes": ["crm.read"]},
            }
        },
    )
    yield gateway
    gateway.stop()


def basic_client(gw: Gateway, method: str = "client_secret_basic", secret: str = BASIC.secret) -> OAuth2Client:
    return OAuth2Client(BASIC.client_id, secret, token_endpoint_auth_method=method, timeout=10)


def key_client(gw: Gateway, *, kid: bool) -> OAuth2Client:
    """Authlib's private_key_jwt, as its documentation shows it, with an EC key (it defaults to RS256)."""
    auth = PrivateKeyJWT(gw.issuer_url + TOKEN_PATH, alg="ES256", headers={"kid": KEYED_KEY.kid} if kid else None)
    client = OAuth2Client(KEYED, ECKey.import_key(KEYED_KEY.private_pem()), token_endpoint_auth_method=auth, timeout=10)
    return client


def verify_with_pyjwkclient(gw: Gateway, token: str) -> dict[str, object]:
    jwks_uri = httpx2.get(gw.issuer_url + "/.well-known/oauth-authorization-server", timeout=10).json()["jwks_uri"]
    key = jwt.PyJWKClient(jwks_uri).get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=gw.proxy_url,
        issuer=gw.issuer_url,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_fetches_a_token_that_pyjwkclient_verifies_and_the_proxy_accepts(
    gw: Gateway, upstream: Upstream, method: str
):
    with basic_client(gw, method) as client:
        token = client.fetch_token(gw.issuer_url + TOKEN_PATH, grant_type="client_credentials", scope="crm.read")
    assert token["token_type"] == "Bearer" and token["scope"] == "crm.read"
    claims = verify_with_pyjwkclient(gw, token["access_token"])
    assert claims["sub"] == claims["client_id"] == BASIC.client_id
    response = proxy_get(gw, "/v1/customers/3", token["access_token"])
    assert response.status_code == 200
    assert upstream.last().header("x-tollbooth-agent") == BASIC.client_id


@pytest.mark.parametrize("kid", [True, False], ids=["with-kid", "without-kid"])
def test_authlib_private_key_jwt_fetches_a_token_that_works_at_the_proxy(gw: Gateway, upstream: Upstream, kid: bool):
    with key_client(gw, kid=kid) as client:
        token = client.fetch_token(gw.issuer_url + TOKEN_PATH, grant_type="client_credentials")
    claims = verify_with_pyjwkclient(gw, token["access_token"])
    assert claims["sub"] == KEYED and claims["scope"] == "crm.read"
    assert proxy_get(gw, "/v1/customers/4", token["access_token"]).status_code == 200
    assert upstream.last().header("x-tollbooth-agent") == KEYED


def test_authlib_private_key_jwt_client_fetches_repeatedly(gw: Gateway):
    """Each request carries a fresh assertion (new jti): replay protection must not refuse an honest client."""
    with key_client(gw, kid=True) as client:
        tokens = [client.fetch_token(gw.issuer_url + TOKEN_PATH, grant_type="client_credentials") for _ in range(3)]
    assert len({t["access_token"] for t in tokens}) == 3


def test_authlib_reads_our_invalid_client_error(gw: Gateway):
    with basic_client(gw, secret="wrong") as client, pytest.raises(OAuthError) as raised:
        client.fetch_token(gw.issuer_url + TOKEN_PATH, grant_type="client_credentials")
    assert raised.value.error == "invalid_client"


def test_authlib_reads_our_invalid_scope_error(gw: Gateway):
    with basic_client(gw) as client, pytest.raises(OAuthError) as raised:
        client.fetch_token(gw.issuer_url + TOKEN_PATH, grant_type="client_credentials", scope="crm.delete")
    assert raised.value.error == "invalid_scope" and "crm.delete" in raised.value.description


def test_authlib_introspects_and_revokes_its_token(gw: Gateway):
    with basic_client(gw) as client:
        token = client.fetch_token(gw.issuer_url + TOKEN_PATH, grant_type="client_credentials")["access_token"]
        active = client.introspect_token(gw.issuer_url + INTROSPECT_PATH, token=token).json()
        assert active["active"] is True and active["jti"] == claims_of(token)["jti"]
        assert client.revoke_token(gw.issuer_url + REVOKE_PATH, token=token).status_code == 200
        assert client.introspect_token(gw.issuer_url + INTROSPECT_PATH, token=token).json() == {"active": False}
