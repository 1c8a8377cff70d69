"""An OpenID Connect provider for the federation tests, served over TLS on loopback: discovery, authorize (the
person is already signed in there, so it answers at once), token (PKCE and client authentication checked, as a
real provider does) and JWKS. `tamper` changes the next ID tokens' claims and `sign_with` their signature, so a
test can hand the gateway each kind of bad ID token."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from support import free_port, serve_in_thread
from tls_support import CertificateFiles

CLIENT_ID = "tollbooth-test"
CLIENT_SECRET = "provider-side secret"  # noqa: S105  (a test fixture's)


@dataclass
class OidcProvider:
    issuer: str
    person: dict[str, Any]  # the claims of whoever is signed in at the provider
    tamper: dict[str, Any] = field(default_factory=dict)  # claim overrides (None removes the claim)
    sign_with: str = "own"  # "own", "stranger" (another key, same kid) or "hs256" (the client secret as HMAC key)
    deny: bool = False  # answer authorize with error=access_denied
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def reset(self) -> None:
        self.tamper, self.sign_with, self.deny = {}, "own", False


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _app(provider: OidcProvider, key: rsa.RSAPrivateKey, stranger: rsa.RSAPrivateKey) -> Starlette:
    async def discovery(request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": provider.issuer,
                "authorization_endpoint": f"{provider.issuer}/authorize",
                "token_endpoint": f"{provider.issuer}/token",
                "jwks_uri": f"{provider.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def jwks(request: Request) -> Response:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return JSONResponse({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]})

    async def authorize(request: Request) -> Response:
        params = dict(request.query_params)
        provider.authorize_requests.append(params)
        target = params["redirect_uri"]
        if provider.deny:
            return RedirectResponse(
                f"{target}?{urlencode({'error': 'access_denied', 'state': params['state']})}", status_code=302
            )
        code = secrets.token_urlsafe(16)
        provider.codes[code] = params
        return RedirectResponse(f"{target}?{urlencode({'code': code, 'state': params['state']})}", status_code=302)

    async def token(request: Request) -> Response:
        form = dict(await request.form())
        provider.token_requests.append({**form, "authorization": request.headers.get("authorization", "")})
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET.replace(' ', '%20')}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        asked = provider.codes.pop(str(form.get("code")), None)
        if (
            asked is None
            or form.get("redirect_uri") != asked["redirect_uri"]
            or _s256(str(form.get("code_verifier"))) != asked["code_challenge"]
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": provider.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": asked["nonce"],
            **provider.person,
        }
        for name, value in provider.tamper.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if provider.sign_with == "hs256":
            id_token = jwt.encode(claims, CLIENT_SECRET * 2, algorithm="HS256", headers={"kid": "k1"})
        else:
            signer = key if provider.sign_with == "own" else stranger
            id_token = jwt.encode(claims, signer, algorithm="RS256", headers={"kid": "k1"})
        return JSONResponse({"access_token": "provider-token", "token_type": "Bearer", "id_token": id_token})

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/jwks", jwks),
            Route("/authorize", authorize),
            Route("/token", token, methods=["POST"]),
        ]
    )


def serve_oidc_provider(certificate: CertificateFiles, person: dict[str, Any]) -> Iterator[OidcProvider]:
    """A provider at https://localhost:PORT (the certificate names localhost), for a pytest fixture to yield."""
    port = free_port()
    provider = OidcProvider(f"https://localhost:{port}", person)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    config = uvicorn.Config(
        _app(provider, key, stranger),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=certificate.cert_file,
        ssl_keyfile=certificate.key_file,
    )
    stop: Callable[[], None] = serve_in_thread(uvicorn.Server(config), "OpenID provider")
    yield provider
    stop()
