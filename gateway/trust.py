"""Whose signatures we accept: our own keys, and each trusted identity provider's JWKS (RFC 7517).

One verification sequence (parse, issuer, header, key, signature) serves the proxy's bearer tokens and the token
service's subject tokens; each caller says which issuers it admits. One JWKS cache per identity provider lives
for the whole process, shared by both apps and kept across reloads.

A JWKS (DESIGN.md "Tokens": fetched over HTTPS (plain HTTP only to loopback, which the config checks), refetched when a
token names an unknown kid but at most once per `min_refetch_interval` (a flood of made-up kids must not turn
into a flood of requests to the IdP), and the last good key set is kept while the IdP is down or serves garbage.
Concurrent misses share one fetch. A set older than `max_age` is refreshed in the background, so a key the IdP
withdrew stops working even when no unknown kid ever shows up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2

from gateway.config import TrustedIssuerConfig
from gateway.metrics import JWKS_FETCHES
from gateway.outbound import tls_context
from gateway.tokens.access_token import (
    ACCESS_TOKEN_TYPES,
    InvalidToken,
    check_header,
    parse_unverified,
    verify_signature,
)
from gateway.tokens.jwk import SigningKey
from gateway.tokens.jwks import JwksError, parse_jwks

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024


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


class JwksCaches:
    """One JwksCache per trusted issuer for the process: both apps and every config generation share it."""

    def __init__(
        self,
        http: httpx2.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        ca_file: str | None = None,
    ):
        self._http = http
        self._ca_file = ca_file
        self._owns_http = http is None
        self._clock = clock
        self._caches: dict[tuple[str, str, tuple[str, ...]], JwksCache] = {}

    def cache(self, entry: TrustedIssuerConfig) -> JwksCache:
        # Keyed by what the cache fetches and keeps: an edited jwks_uri or algorithm list starts a fresh set.
        key = (entry.issuer, entry.jwks_uri, tuple(entry.algorithms))
        cache = self._caches.get(key)
        if cache is None:
            if self._http is None:
                self._http = httpx2.AsyncClient(follow_redirects=False, verify=tls_context(self._ca_file))
            cache = self._caches[key] = JwksCache(entry, self._http, clock=self._clock)
        return cache

    async def aclose(self) -> None:
        for cache in self._caches.values():
            await cache.aclose()
        if self._owns_http and self._http is not None:
            await self._http.aclose()


@dataclass(frozen=True)
class SignedToken:
    """A token whose signature checked out under its issuer's key; its claims are not validated yet."""

    issuer: str
    claims: dict[str, Any]
    entry: TrustedIssuerConfig | None  # None: one of our own tokens


# Given a token's (unverified) `iss`, the trusted issuer entry to check it against, or InvalidToken saying why
# this caller does not admit that issuer. Called only for issuers other than our own.
Admit = Callable[[object], TrustedIssuerConfig]


class TrustedIssuers:
    """The verification keys of one config: ours by kid, and each trusted issuer's through the shared caches."""

    def __init__(
        self,
        *,
        issuer: str,
        own_keys: Callable[[], dict[str, SigningKey]],
        trusted: Sequence[TrustedIssuerConfig],
        caches: JwksCaches,
    ):
        self.issuer = issuer
        self._own_keys = own_keys
        self._caches = caches
        self.entries = {t.issuer: t for t in trusted if t.issuer != issuer}  # our own name never fetches a JWKS

    async def verify(
        self,
        token: str,
        *,
        admit: Admit,
        external_types: frozenset[str | None] = ACCESS_TOKEN_TYPES,
        noun: str = "access token",
    ) -> SignedToken:
        """Check `token`'s signature under its issuer's key; RFC 8725 §3.8: the key must be that issuer's."""
        unverified = parse_unverified(token)
        issuer = unverified.claims.get("iss")
        entry = None if issuer == self.issuer else admit(issuer)
        kid, alg = check_header(unverified.header, accepted_types=external_types if entry else ACCESS_TOKEN_TYPES)
        key = self._own_keys().get(kid) if entry is None else await self._caches.cache(entry).get(kid)
        if key is None:
            raise InvalidToken("unknown_kid", f"The {noun} was signed with an unknown key")
        claims = verify_signature(token, alg, key)
        return SignedToken(issuer=entry.issuer if entry else self.issuer, claims=claims, entry=entry)
