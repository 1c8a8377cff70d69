"""How an agent proves who it is to the token service: a signed assertion (RFC 7523 `private_key_jwt`, the
recommended way: no shared secret exists to leak) or a client secret (RFC 6749 §2.3.1)."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.client.errors import TollboothError
from gateway.tokens.jwk import public_members, thumbprint
from gateway.wire import ASSERTION_TYPE

# An assertion is for one request: a short life bounds what a captured one is worth (RFC 7523 §3, item 4).
ASSERTION_LIFETIME = 60


class Credential(Protocol):
    # Read-only properties, so that the frozen dataclasses below satisfy the protocol.
    @property
    def client_id(self) -> str: ...

    @property
    def method(self) -> str: ...  # the RFC 8414 token_endpoint_auth_method it uses

    def authenticate(self, issuer: str) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, form fields) that authenticate one request to the issuer's endpoints."""
        ...


@dataclass(frozen=True)
class ClientSecret:
    client_id: str
    secret: str = field(repr=False)
    method: str = "client_secret_basic"

    def authenticate(self, issuer: str) -> tuple[dict[str, str], dict[str, str]]:
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64-encoded.
        pair = f"{quote(self.client_id, safe='')}:{quote(self.secret, safe='')}".encode()
        return {"authorization": "Basic " + base64.b64encode(pair).decode("ascii")}, {}


def algorithm_for(key: Any) -> str:
    """The JWS algorithm a private key signs with (RFC 7518 §3, RFC 8037); the gateway checks the same pairing."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return "ES384"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"  # what the gateway implies for an RSA JWK without `alg`; pass algorithm="PS256" for PSS
    raise TollboothError(f"unsupported private key type {type(key).__name__}: use EC P-256, Ed25519 or RSA")


def load_private_key(key: str | bytes | Path | Any) -> Any:
    """A private key from a PEM file path, PEM bytes/text, or a `cryptography` key object."""
    if isinstance(key, str) and not key.lstrip().startswith("-----BEGIN"):
        key = Path(key)
    if isinstance(key, Path):
        path = key
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise TollboothError(f"cannot read the agent key {path}: {exc.strerror}") from None
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        try:
            return serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            raise TollboothError(f"the agent key is not an unencrypted PEM private key ({exc})") from None
    return key


@dataclass(frozen=True)
class PrivateKeyJwt:
    client_id: str
    key: Any = field(repr=False)
    algorithm: str
    kid: str
    method: str = "private_key_jwt"

    @classmethod
    def load(
        cls, client_id: str, key: str | bytes | Path | Any, *, algorithm: str | None = None, kid: str | None = None
    ) -> PrivateKeyJwt:
        private_key = load_private_key(key)
        chosen = algorithm or algorithm_for(private_key)
        # By default the kid is the RFC 7638 thumbprint, as `tollbooth keys agent` prints it in the agent's JWKS.
        return cls(client_id, private_key, chosen, kid or thumbprint(public_members(private_key.public_key())))

    def assertion(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,  # RFC 7523 §3: the authorization server, by its issuer identifier
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(24),  # single use: the gateway refuses a replay
        }
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers={"kid": self.kid})

    def authenticate(self, issuer: str) -> tuple[dict[str, str], dict[str, str]]:
        return {}, {
            "client_id": self.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(issuer),
        }
