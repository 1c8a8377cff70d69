"""The proxy's first step: bearer token → verified claims → Principal.

`extract_bearer` finds the token (RFC 6750 §2.1 only); `Verifier.verify` checks it (RFC 9068 §4, RFC 8725) with
the steps in gateway.issuer.tokens, the key chosen by `iss` + `kid` among our own keys or a trusted issuer's JWKS,
caches the result until the token expires, and consults the revocation list on every call, cached or not.
Failures are TokenRejected, which carries the RFC 6750 §3.1 error code and HTTP status for errors.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from urllib.parse import parse_qsl

import httpx2

from gateway.config import TrustedIssuerConfig
from gateway.issuer.keys import SigningKey
from gateway.issuer.tokens import InvalidToken, check_header, parse_unverified, validate_claims, verify_signature
from gateway.metrics import TOKEN_VERIFICATIONS
from gateway.principal import Principal
from gateway.proxy.jwks import JwksCache
from gateway.state import RevocationList

_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 §2.1 b64token
_CACHED = TOKEN_VERIFICATIONS.labels(outcome="cached")  # bound once: .labels() costs more than a cache hit
_VERIFIED = TOKEN_VERIFICATIONS.labels(outcome="verified")
_REJECTED = TOKEN_VERIFICATIONS.labels(outcome="rejected")


class TokenRejected(Exception):
    """No usable token. `description` is safe for `error_description`; `reason` is for audit and metrics."""

    def __init__(self, status: int, error: str, description: str, reason: str):
        # RFC 6750 §3: error_description is a quoted-string of %x20-21 / %x23-5B / %x5D-7E; keep it that way.
        description = description.replace('"', "'").replace("\\", "/")
        super().__init__(f"{error} ({reason}): {description}")
        self.status = status
        self.error = error
        self.description = description
        self.reason = reason


def _invalid_request(reason: str, description: str) -> TokenRejected:
    return TokenRejected(400, "invalid_request", description, reason)


def _invalid_token(reason: str, description: str) -> TokenRejected:
    return TokenRejected(401, "invalid_token", description, reason)


def _token_in_query(query_string: bytes) -> bool:
    if b"access_token" not in query_string.lower() and b"%" not in query_string:
        return False  # the common case, without parsing
    return any(name == "access_token" for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


def extract_bearer(
    headers: list[tuple[bytes, bytes]], query_string: bytes, *, max_token_bytes: int = 8192
) -> str | None:
    """The bearer token of an ASGI request, or None when no Authorization header was sent.

    RFC 6750 §2.1 only: the URI query form (§2.3) leaks tokens into logs and is refused, and so is the form body
    (§2.2), by never looking there. Anything ambiguous is `invalid_request` (§3.1).
    """
    if _token_in_query(query_string):
        raise _invalid_request("token_in_query", "Send the access token in the Authorization header, not the URL")
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise _invalid_request("duplicate_authorization", "Send exactly one Authorization header")
    scheme, _, credentials = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 9110 §11.1: auth schemes are case-insensitive
        raise _invalid_request("wrong_scheme", "Use the Bearer authorization scheme")
    token = credentials.lstrip(" ")
    if len(token) > max_token_bytes:  # before the regex: bound the work an oversized header can cause
        raise _invalid_token("oversized", "The access token is too large")
    if not _B64TOKEN.match(token):
        raise _invalid_request("malformed_bearer", "The Authorization header must be Bearer followed by one token")
    return token


class Verifier:
    """Verifies access tokens for one audience; one instance per proxy, shared by all requests."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: Callable[[], dict[str, SigningKey]],
        trusted_issuers: Sequence[TrustedIssuerConfig],
        revocations: RevocationList,
        leeway: float = 30,
        max_token_bytes: int = 8192,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        jwks_http: httpx2.AsyncClient | None = None,
    ):
        self._issuer = issuer
        self._audience = audience
        self._keys = keys
        self._revocations = revocations
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._cache_size = cache_size
        self._clock = clock
        self._cache: dict[str, Principal] = {}  # token -> principal; insertion order is age order
        self._jwks: dict[str, JwksCache] = {}
        self._not_at_proxy: set[str] = set()
        self._prefixes = {t.issuer: t.subject_prefix for t in trusted_issuers if t.issuer != issuer}
        self._owned_http: httpx2.AsyncClient | None = None
        for trusted in trusted_issuers:
            if trusted.issuer == issuer:
                continue  # our own keys, never a JWKS fetched for our own name
            if not trusted.accept_at_proxy:
                # DESIGN.md: its tokens are subject tokens for token exchange, never bearer tokens here.
                self._not_at_proxy.add(trusted.issuer)
            elif trusted.issuer not in self._jwks:
                if jwks_http is None:
                    jwks_http = self._owned_http = httpx2.AsyncClient(follow_redirects=False)
                self._jwks[trusted.issuer] = JwksCache(trusted, jwks_http, clock=clock)

    async def verify(self, token: str) -> Principal:
        """The caller behind `token`, or TokenRejected(401, "invalid_token")."""
        if len(token) > self._max_token_bytes:  # before any parsing or hashing
            _REJECTED.inc()
            raise _invalid_token("oversized", "The access token is too large")
        now = self._clock()
        principal = self._cache.get(token)
        if principal is not None and now - self._leeway >= principal.expires_at:
            del self._cache[token]
            principal = None
        if principal is None:
            try:
                principal = await self._verify_uncached(token, now)
            except InvalidToken as exc:
                _REJECTED.inc()
                raise _invalid_token(exc.reason, exc.description) from None
            outcome = _VERIFIED
        else:
            outcome = _CACHED
        if self._revocations.is_revoked(principal):  # every call: a revocation must not wait for the cache
            _REJECTED.inc()
            raise _invalid_token("revoked", "The access token has been revoked")
        if outcome is _VERIFIED:
            self._remember(token, principal, now)
        outcome.inc()
        return principal

    async def aclose(self) -> None:
        for jwks in self._jwks.values():
            await jwks.aclose()
        if self._owned_http is not None:
            await self._owned_http.aclose()

    async def _verify_uncached(self, token: str, now: float) -> Principal:
        unverified = parse_unverified(token)
        kid, alg = check_header(unverified.header)
        issuer = unverified.claims.get("iss")
        if issuer is None:
            raise InvalidToken("missing_claim", "The access token has no iss claim")
        if not isinstance(issuer, str):
            raise InvalidToken("bad_claim", "The access token's iss claim is not a string")
        key = await self._key_for(issuer, kid)
        claims = verify_signature(token, alg, key)
        principal = validate_claims(
            claims,
            issuer=issuer,
            audience=self._audience,
            now=now,
            leeway=self._leeway,
            allow_azp=issuer != self._issuer,
        )
        prefix = self._prefixes.get(issuer, "")
        if not prefix:
            return principal
        # trusted_issuers[].subject_prefix: every party an identity provider names lives in its own namespace.
        return replace(
            principal,
            agent=prefix + principal.agent,
            subject=prefix + principal.subject,
            delegation=tuple(prefix + actor for actor in principal.delegation),
        )

    async def _key_for(self, issuer: str, kid: str) -> SigningKey:
        """The key named by the (still unverified) `iss` and `kid`; RFC 8725 §3.8: the key must be the issuer's."""
        if issuer == self._issuer:
            key = self._keys().get(kid)
        elif issuer in self._jwks:
            key = await self._jwks[issuer].get(kid)
        elif issuer in self._not_at_proxy:
            raise InvalidToken("issuer_not_accepted", "Tokens from this issuer are not accepted at this resource")
        else:
            raise InvalidToken("wrong_issuer", "The access token was not issued by a trusted issuer")
        if key is None:
            raise InvalidToken("unknown_kid", "The access token was signed with an unknown key")
        return key

    def _remember(self, token: str, principal: Principal, now: float) -> None:
        if self._cache_size <= 0:
            return
        if len(self._cache) >= self._cache_size:
            for stale in [t for t, p in self._cache.items() if now - self._leeway >= p.expires_at]:
                del self._cache[stale]
            # Still full of live tokens: drop the oldest tenth at once, so the scan above runs once per
            # cache_size/10 insertions rather than on every one.
            while len(self._cache) > self._cache_size - max(1, self._cache_size // 10):
                del self._cache[next(iter(self._cache))]
        self._cache[token] = principal
