"""A trusted issuer's JWKS (RFC 7517): fetched on demand, cached, refetched at a bounded rate.

DESIGN.md "Tokens": fetched over HTTPS (plain HTTP only to loopback, which the config checks), refetched when a
token names an unknown kid but at most once per `min_refetch_interval` (a flood of made-up kids must not turn
into a flood of requests to the IdP), and the last good key set is kept while the IdP is down or serves garbage.
Concurrent misses share one fetch. A set older than `max_age` is refreshed in the background, so a key the IdP
withdrew stops working even when no unknown kid ever shows up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx2
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from gateway.config import TrustedIssuerConfig
from gateway.issuer.keys import JWK_REQUIRED_MEMBERS, SigningKey, check_key_fits
from gateway.metrics import JWKS_FETCHES

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024
# A JWK without `alg`: the one algorithm its type implies. RSA keys say nothing about RS256 vs PS256; RS256 is
# what IdPs that omit `alg` sign with (RFC 7518 §3.1 makes it the recommended RSA algorithm).
_IMPLIED_ALG = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("OKP", "Ed25519"): "EdDSA", ("RSA", None): "RS256"}
_FROM_JWK = {"EC": ECAlgorithm.from_jwk, "OKP": OKPAlgorithm.from_jwk, "RSA": RSAAlgorithm.from_jwk}


class JwksError(Exception):
    """A JWKS response that cannot be used; the message is safe to log (no key material)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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
    if alg not in allowed:
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
        document = json.loads(body, parse_constant=_reject_constant)
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


class JwksCache:
    """The keys of one trusted issuer. `get` never raises: a fetch failure leaves the last good set in place."""

    def __init__(
        self,
        config: TrustedIssuerConfig,
        http: httpx2.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_refetch_interval: float = 60.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
        max_bytes: int = MAX_JWKS_BYTES,
    ):
        self._config = config
        self._http = http
        self._clock = clock
        self._min_interval = min_refetch_interval
        self._max_age = max_age
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch started, successful or not
        self._inflight: asyncio.Task[None] | None = None

    async def get(self, kid: str) -> SigningKey | None:
        now = self._clock()
        key = self._keys.get(kid)
        if key is not None:
            if self._fetched_at is not None and now - self._fetched_at >= self._max_age:
                self._start_fetch(now)  # stale: refresh in the background, answer with what we have
            return key
        fetch = self._start_fetch(now)
        if fetch is not None:
            # shield: a caller that goes away (client disconnect) must not cancel the fetch the others wait on.
            await asyncio.shield(fetch)
        return self._keys.get(kid)

    async def aclose(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)

    def _start_fetch(self, now: float) -> asyncio.Task[None] | None:
        """The fetch in flight, or a new one when the rate limit allows; None when it does not."""
        if self._inflight is None:
            if self._attempted_at is not None and now - self._attempted_at < self._min_interval:
                return None
            self._attempted_at = now
            self._inflight = asyncio.create_task(self._fetch(), name=f"jwks {self._config.issuer}")
        return self._inflight

    async def _fetch(self) -> None:
        issuer = self._config.issuer
        try:
            keys = await self._download()
        except Exception as exc:  # whatever went wrong (network, TLS, garbage), the last good set stays in force
            JWKS_FETCHES.labels(issuer=issuer, outcome="error").inc()
            logger.warning(
                "trusted issuer %s: JWKS fetch from %s failed (%s); keeping the %d keys from the last good fetch",
                issuer,
                self._config.jwks_uri,
                str(exc) or type(exc).__name__,
                len(self._keys),
            )
        else:
            JWKS_FETCHES.labels(issuer=issuer, outcome="ok").inc()
            self._keys = keys
            self._fetched_at = self._clock()
            logger.info("trusted issuer %s: JWKS has %d usable keys, kids %s", issuer, len(keys), sorted(keys))
        finally:
            self._inflight = None

    async def _download(self) -> dict[str, SigningKey]:
        # One deadline for the whole exchange: httpx2's timeouts are per read, and a server dripping one byte
        # at a time would otherwise hold the fetch (and every request waiting on it) open for minutes.
        async with asyncio.timeout(self._timeout):
            async with self._http.stream(
                "GET",
                self._config.jwks_uri,
                headers={"Accept": "application/jwk-set+json, application/json"},
                follow_redirects=False,  # a redirect could leave HTTPS
            ) as response:
                if response.status_code != 200:
                    raise JwksError(f"HTTP status {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise JwksError(f"the response is larger than {self._max_bytes} bytes")
        return parse_jwks(bytes(body), self._config.algorithms)
