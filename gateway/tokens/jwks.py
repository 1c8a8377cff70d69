"""A JWK Set (RFC 7517 §5) → the verification keys in it, keeping only usable signing keys of allowed algorithms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from gateway.tokens.jwk import JWK_REQUIRED_MEMBERS, SigningKey, check_key_fits, reject_constant

# A JWK without `alg`: the one algorithm its type implies. RSA keys say nothing about RS256 vs PS256; RS256 is
# what IdPs that omit `alg` sign with (RFC 7518 §3.1 makes it the recommended RSA algorithm).
_IMPLIED_ALG = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("OKP", "Ed25519"): "EdDSA", ("RSA", None): "RS256"}
_FROM_JWK = {"EC": ECAlgorithm.from_jwk, "OKP": OKPAlgorithm.from_jwk, "RSA": RSAAlgorithm.from_jwk}


class JwksError(Exception):
    """A JWKS response that cannot be used; the message is safe to log (no key material)."""


def _public_key(jwk: dict[str, Any], allowed: Sequence[str]) -> SigningKey | None:
    """One JWK → a verification key, or None when it is not a usable signing key of an allowed algorithm."""
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kty not in JWK_REQUIRED_MEMBERS or not isinstance(kid, str) or not kid:
        return None  # we select keys by kid only (RFC 7517 §4.5), so a key without one is unreachable
    key_ops = jwk.get("key_ops", ["verify"])
    if jwk.get("use", "sig") != "sig" or not isinstance(key_ops, list) or "verify" not in key_ops:
        return None  # RFC 7517 §4.2-4.3: an encryption key must not verify signatures
    alg = jwk.get("alg") or _IMPLIED_ALG.get((kty, jwk.get("crv") if kty != "RSA" else None))
    if not isinstance(alg, str) or alg not in allowed:
        return None  # the entry's `algorithms` is the allow-list (RFC 8725 §3.1)
    # Only the public members reach the parser: a JWKS that leaks a private `d` still yields a public key.
    members = {name: jwk.get(name) for name in JWK_REQUIRED_MEMBERS[kty]}
    if not all(isinstance(value, str) for value in members.values()):
        return None
    try:
        public_key = _FROM_JWK[kty](members)
        check_key_fits(alg, public_key)
    except (PyJWTError, ValueError, TypeError):
        return None  # PyJWT's messages may quote the JWK: never log them
    # created_at: an IdP does not publish when it made a key; 0 marks "unknown".
    return SigningKey(kid=kid, algorithm=alg, private_key=None, public_key=public_key, created_at=0.0, path=None)


def parse_jwks(body: bytes, allowed: Sequence[str]) -> dict[str, SigningKey]:
    """A JWKS document → kid → key, keeping only usable keys; JwksError when none is usable."""
    try:
        document = json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        raise JwksError("the response is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError('the response is not a JWK Set (no "keys" array)')
    keys: dict[str, SigningKey] = {}
    ambiguous: set[str] = set()
    for jwk in document["keys"]:
        key = _public_key(jwk, allowed) if isinstance(jwk, dict) else None
        if key is None:
            continue
        if key.kid in keys:
            ambiguous.add(key.kid)  # two keys, one kid: which one the IdP signs with is anyone's guess
        keys[key.kid] = key
    for kid in ambiguous:
        del keys[kid]
    if not keys:
        raise JwksError(f"no usable signing key (algorithms allowed: {', '.join(allowed)})")
    return keys
