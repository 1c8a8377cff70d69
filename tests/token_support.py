"""Helpers for the token service's end-to-end tests: agents and their credentials, a test identity provider with
its own key and JWKS server, and small wrappers for the token, revocation and introspection endpoints."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote_plus

import httpx2
import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from support import Gateway, free_port

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_PATH = "/oauth/token"
REVOKE_PATH = "/oauth/revoke"
INTROSPECT_PATH = "/oauth/introspect"

# The server verifies with the parameters stored in the hash: cheap ones keep the suite fast, and the hash is
# still the argon2id `tollbooth hash-secret` format the config requires.
_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS put together by hand, for the tokens no library will sign (alg none, HMAC with a public key)."""
    segments = [b64url(json.dumps(part).encode()) for part in (header, claims)]
    return ".".join([*segments, b64url(signature)])


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def header_of(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


@dataclass
class KeyPair:
    """An EC P-256 key with a kid: an agent's private_key_jwt key, or an identity provider's signing key."""

    kid: str = field(default_factory=lambda: secrets.token_hex(8))
    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.private_key, algorithm="ES256", headers={"kid": self.kid, **headers})


def client_assertion(key: KeyPair, client_id: str, audience: Any, *, lifetime: float = 60, **claims: Any) -> str:
    """An RFC 7523 §3 client assertion; `claims` override or (with None) remove the defaults."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + int(lifetime),
        "jti": secrets.token_urlsafe(16),
    }
    body.update(claims)
    return key.sign({k: v for k, v in body.items() if v is not None})


def assertion_fields(assertion: str) -> dict[str, str]:
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


@dataclass(frozen=True)
class SecretAgent:
    """An agent authenticating with a client secret (client_secret_basic by default)."""

    client_id: str
    secret: str

    def config(self, **settings: Any) -> dict[str, Any]:
        return {"secret_hash": hash_secret(self.secret), **settings}

    def basic(self, *, form_encoded: bool = True) -> dict[str, str]:
        """RFC 6749 §2.3.1 form-encodes id and secret before base64; Authlib and many clients send them raw."""
        if form_encoded:
            text = f"{quote_plus(self.client_id)}:{quote_plus(self.secret)}"
        else:
            text = f"{self.client_id}:{self.secret}"
        return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode("ascii")}

    def post_fields(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.secret}

    def post(
        self, issuer_url: str, path: str, *, headers: dict[str, str] | None = None, **params: Any
    ) -> httpx2.Response:
        return post_form(issuer_url + path, params, headers={**self.basic(), **(headers or {})})

    def token(self, gw: Gateway, **params: Any) -> httpx2.Response:
        return self.post(gw.issuer_url, TOKEN_PATH, **{"grant_type": "client_credentials", **params})

    def access_token(self, gw: Gateway, **params: Any) -> str:
        response = self.token(gw, **params)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def exchange(self, gw: Gateway, subject_token: str, **params: Any) -> httpx2.Response:
        """RFC 8693 §2.1 token exchange with `subject_token` as the subject."""
        fields = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            **params,
        }
        return self.post(gw.issuer_url, TOKEN_PATH, **fields)

    def refresh(self, gw: Gateway, refresh_token: str, **params: Any) -> httpx2.Response:
        return self.post(gw.issuer_url, TOKEN_PATH, grant_type="refresh_token", refresh_token=refresh_token, **params)

    def revoke(self, gw: Gateway, token: str, **params: Any) -> httpx2.Response:
        return self.post(gw.issuer_url, REVOKE_PATH, token=token, **params)

    def introspect(self, gw: Gateway, token: str) -> httpx2.Response:
        return self.post(gw.issuer_url, INTROSPECT_PATH, token=token)


def post_form(url: str, params: dict[str, Any], *, headers: dict[str, str] | None = None) -> httpx2.Response:
    """POST `params` form-encoded (a list value repeats the parameter); None values are left out."""
    fields = {name: value for name, value in params.items() if value is not None}
    return httpx2.post(url, data=fields, headers=headers or {}, timeout=10)


def proxy_get(gw: Gateway, path: str, token: str) -> httpx2.Response:
    return httpx2.get(gw.proxy_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def refused_at_proxy(gw: Gateway, token: str, path: str = "/v1/customers/1") -> bool:
    """Whether the proxy now answers the token with 401 invalid_token (RFC 6750 §3.1)."""
    response = proxy_get(gw, path, token)
    return response.status_code == 401 and 'error="invalid_token"' in response.headers.get("www-authenticate", "")


def revoke_cli(gw: Gateway, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "revoke", "--config", str(gw.config_path), *args],
        cwd=gw.dir,
        env={**os.environ, "TEST_UPSTREAM_KEY": "upstream-secret"},  # the config names it, as start_gateway sets it
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def signed_by_gateway(gw: Gateway, **claims: object) -> str:
    """A token signed with the gateway's own key, bypassing mint_access_token's checks."""
    from gateway.issuer.keystore import KeyStore

    key = KeyStore.load(gw.dir / "keys", "ES256", generate_if_empty=False).active
    now = int(time.time())
    payload = {
        "iss": gw.issuer_url,
        "aud": gw.proxy_url,
        "sub": "billing-bot",
        "client_id": "billing-bot",
        "scope": "crm.read",
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(16),
        **claims,
    }
    return jwt.encode(payload, key.private_key, algorithm="ES256", headers={"typ": "at+jwt", "kid": key.kid})


def mint_at(gw: Gateway, *, issued_at: float, ttl: float = 60, agent: str = "billing-bot", **kwargs: Any) -> str:
    """One of the gateway's own tokens issued at `issued_at` (in the past: already expired)."""
    from gateway.issuer.keystore import KeyStore
    from gateway.tokens.access_token import mint_access_token

    keys = KeyStore.load(gw.dir / "keys", "ES256", generate_if_empty=False)
    kwargs.setdefault("scopes", ["crm.read"])
    kwargs.setdefault("subject", agent)
    token, _ = mint_access_token(
        keys.active,
        issuer=gw.issuer_url,
        audience=gw.proxy_url,
        client_id=agent,
        ttl=ttl,
        now=issued_at,
        **kwargs,
    )
    return token


class TestIdP:
    """An external identity provider: an EC signing key and a JWKS served on a free loopback port."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self) -> None:
        self.key = KeyPair()
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.jwks_uri = f"{self.issuer}/.well-known/jwks.json"
        body = json.dumps(self.key.jwks()).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                found = self.path == "/.well-known/jwks.json"
                self.send_response(200 if found else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def trusted_issuer(self, **settings: Any) -> dict[str, Any]:
        """This IdP's `trusted_issuers` entry (audiences default to the token service's issuer URL)."""
        return {"issuer": self.issuer, "jwks_uri": self.jwks_uri, **settings}

    def token(
        self,
        subject: str,
        audience: Any,
        scope: str = "crm.read crm.write",
        *,
        ttl: float = 300,
        key: KeyPair | None = None,
        **claims: Any,
    ) -> str:
        """A user's access token for `audience`, signed with this IdP's key (or `key`, keeping this IdP's kid)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + int(ttl),
            "jti": secrets.token_urlsafe(12),
            "scope": scope,
            **claims,
        }
        signer = KeyPair(kid=self.key.kid, private_key=key.private_key) if key is not None else self.key
        return signer.sign({k: v for k, v in body.items() if v is not None}, typ="JWT")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def user_token(idp: TestIdP, gw: Gateway, subject: str = "alice", scope: str = "crm.read crm.write", **kw: Any) -> str:
    """A user's token from the IdP, for the token service (its audience is the issuer URL)."""
    return idp.token(subject, gw.issuer_url, scope, **kw)


def exchanged(agent: SecretAgent, gw: Gateway, subject_token: str, **params: Any) -> dict[str, Any]:
    """A successful token exchange's response body."""
    response = agent.exchange(gw, subject_token, **params)
    assert response.status_code == 200, response.text
    return response.json()


def assert_oauth_error(response: httpx2.Response, error: str, status: int = 400) -> str:
    """RFC 6749 §5.2: exactly {error, error_description}, not cached; returns the description."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error, body
    assert response.headers["cache-control"] == "no-store"
    return body["error_description"]


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdP]:
    """A test identity provider for one module's tests."""
    provider = TestIdP()
    yield provider
    provider.stop()
