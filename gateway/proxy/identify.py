"""The proxy's first step: bearer token → verified claims → Principal.

`extract_bearer` finds the token (RFC 6750 §2.1 only); `Verifier.verify` checks it (RFC 9068 §4, RFC 8725) with
the steps in gateway.tokens.access_token and the key gateway.trust finds by `iss` + `kid` (our own keys or a
trusted issuer's JWKS), caches the result until the token expires, and consults the revocation list on every
call, cached or not.
Failures are a Refusal carrying the RFC 6750 §3.1 error code, its challenge and the HTTP status.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from urllib.parse import parse_qsl

from gateway.config import TrustedIssuerConfig
from gateway.metrics import TOKEN_VERIFICATIONS
from gateway.principal import Principal
from gateway.proxy.answers import Refusal
from gateway.proxy.head import RequestHead
from gateway.state import RevocationList
from gateway.tokens.access_token import InvalidToken, validate_claims
from gateway.tokens.jwk import SigningKey
from gateway.trust import JwksCaches, TrustedIssuers
from gateway.wire import quotable

_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 §2.1 b64token
_CACHED = TOKEN_VERIFICATIONS.labels(outcome="cached")  # bound once: .labels() costs more than a cache hit
_VERIFIED = TOKEN_VERIFICATIONS.labels(outcome="verified")
_REJECTED = TOKEN_VERIFICATIONS.labels(outcome="rejected")


def _invalid_request(reason: str, description: str) -> Refusal:
    return Refusal(400, "invalid_request", quotable(description), reason=reason, challenge="invalid_request")


def _invalid_token(reason: str, description: str) -> Refusal:
    return Refusal(401, "invalid_token", quotable(description), reason=reason, challenge="invalid_token")


def _token_in_query(query_string: bytes) -> bool:
    if b"access_token" not in query_string.lower() and b"%" not in query_string:
        return False  # the common case, without parsing
    return any(name == "access_token" for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


async def identify(head: RequestHead, verifier: Verifier, *, max_token_bytes: int) -> Principal | None:
    """Who is calling: the verified token's Principal, None without a token (public routes), or Refusal."""
    token = extract_bearer(head.authorization, head.query, max_token_bytes=max_token_bytes)
    return None if token is None else await verifier.verify(token)


def extract_bearer(authorization: list[bytes], query_string: bytes, *, max_token_bytes: int = 8192) -> str | None:
    """The bearer token of a request (its Authorization fields), or None when it sent none.

    RFC 6750 §2.1 only: the URI query form (§2.3) leaks tokens into logs and is refused, and so is the form body
    (§2.2), by never looking there. Anything ambiguous is `invalid_request` (§3.1).
    """
    if _token_in_query(query_string):
        raise _invalid_request("token_in_query", "Send the access token in the Authorization header, not the URL")
    values = authorization
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
        jwks: JwksCaches | None = None,
    ):
        self._audience = audience
        self._revocations = revocations
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._cache_size = cache_size
        self._clock = clock
        self._cache: dict[str, Principal] = {}  # token -> principal; insertion order is age order
        caches = jwks if jwks is not None else JwksCaches(clock=clock)
        self._owned_jwks = None if jwks is not None else caches  # `tollbooth explain` and tests bring none
        self._trust = TrustedIssuers(issuer=issuer, own_keys=keys, trusted=trusted_issuers, caches=caches)

    async def verify(self, token: str) -> Principal:
        """The caller behind `token`, or Refusal(401, "invalid_token")."""
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
        blocked = self._revocations.blocked(principal.agent, principal.subject, principal.delegation)
        if blocked is not None:
            # 403, not 401: the token is fine and a new one would be refused too, so a client must not loop
            # re-authenticating (the kill switch, `tollbooth block`).
            _REJECTED.inc()
            raise Refusal(403, "access_denied", quotable(blocked), reason="blocked")
        if outcome is _VERIFIED:
            self._remember(token, principal, now)
        outcome.inc()
        return principal

    async def aclose(self) -> None:
        if self._owned_jwks is not None:
            await self._owned_jwks.aclose()

    def _admit(self, issuer: object) -> TrustedIssuerConfig:
        if issuer is None:
            raise InvalidToken("missing_claim", "The access token has no iss claim")
        if not isinstance(issuer, str):
            raise InvalidToken("bad_claim", "The access token's iss claim is not a string")
        entry = self._trust.entries.get(issuer)
        if entry is None:
            raise InvalidToken("wrong_issuer", "The access token was not issued by a trusted issuer")
        if not entry.accept_at_proxy:
            # DESIGN.md: its tokens are subject tokens for token exchange, never bearer tokens here.
            raise InvalidToken("issuer_not_accepted", "Tokens from this issuer are not accepted at this resource")
        return entry

    async def _verify_uncached(self, token: str, now: float) -> Principal:
        signed = await self._trust.verify(token, admit=self._admit)
        principal = validate_claims(
            signed.claims,
            issuer=signed.issuer,
            audience=self._audience,
            now=now,
            leeway=self._leeway,
            allow_azp=signed.entry is not None,
        )
        prefix = signed.entry.subject_prefix if signed.entry else ""
        if not prefix:
            return principal
        # trusted_issuers[].subject_prefix: every party an identity provider names lives in its own namespace.
        return replace(
            principal,
            agent=prefix + principal.agent,
            subject=prefix + principal.subject,
            delegation=tuple(prefix + actor for actor in principal.delegation),
        )

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
