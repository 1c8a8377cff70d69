"""JSON Web Keys (RFC 7517): the key a token is signed with, its public members and RFC 7638 thumbprint.

Shared by the token service (which signs), the proxy (which verifies) and the SDK (whose agents sign client
assertions): nothing here reads files or config.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

# What we sign with, and what we accept a signature in (ES384: some identity providers sign with P-384 keys).
SigningAlgorithm = Literal["ES256", "EdDSA", "RS256", "PS256"]
VerifyAlgorithm = Literal["ES256", "ES384", "EdDSA", "RS256", "PS256"]
SIGNING_ALGORITHMS: tuple[str, ...] = get_args(SigningAlgorithm)
VERIFY_ALGORITHMS: tuple[str, ...] = get_args(VerifyAlgorithm)
MIN_RSA_BITS = 2048  # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used"
_GENERATED_RSA_BITS = 3072

# RFC 7638 §3.2: the thumbprint (and the public JWK) carry exactly the required members of each key type.
JWK_REQUIRED_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def reject_constant(name: str) -> Any:
    """json.loads' parse_constant: NaN and Infinity are not JSON (RFC 8259 §6)."""
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class SigningKey:
    kid: str  # RFC 7638 JWK thumbprint (base64url SHA-256) for our keys; the IdP's `kid` for a trusted issuer's
    algorithm: str  # decided by the key, never by a token header (RFC 8725 §2.1, §3.1)
    private_key: Any | None
    public_key: Any
    created_at: float
    path: Path | None

    def public_jwk(self) -> dict[str, Any]:
        return {**public_members(self.public_key), "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def check_key_fits(algorithm: str, public_key: Any) -> None:
    """Raise ValueError unless `public_key` is the kind of key `algorithm` signs with (RFC 7518 §3, RFC 8037)."""
    if algorithm in ("ES256", "ES384"):
        curve = ec.SECP256R1 if algorithm == "ES256" else ec.SECP384R1
        if not (isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, curve)):
            raise ValueError(f"{algorithm} needs an EC {curve.name} key")
    elif algorithm == "EdDSA":
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise ValueError("EdDSA needs an Ed25519 key")
    elif algorithm in ("RS256", "PS256"):
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise ValueError(f"{algorithm} needs an RSA key")
        if public_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{algorithm} needs an RSA key of at least {MIN_RSA_BITS} bits")
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r}")


def public_members(public_key: Any) -> dict[str, str]:
    """The required public JWK members of a key, as RFC 7638 §3.2 lists them (no private parts, ever)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise ValueError(f"unsupported key type {type(public_key).__name__}")
    return {name: jwk[name] for name in JWK_REQUIRED_MEMBERS[jwk["kty"]]}


def thumbprint(members: dict[str, str]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, no whitespace; base64url without padding."""
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_private_key(algorithm: str) -> Any:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=_GENERATED_RSA_BITS)  # RS256, PS256
