"""Signing people in through the organisation's OpenID Connect provider (`login.oidc`): the authorization code
flow with PKCE and a nonce (OpenID Connect Core §3.1), the ID token's signature checked through the process's
JWKS caches and its claims by §3.1.3.7 (iss, aud, azp, exp, iat, nonce). The checks are pure functions; the
OpenIdProvider shell fetches the discovery document and redeems the code.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx2

from gateway.config import LoginOidcConfig, TrustedIssuerConfig
from gateway.outbound import tls_context
from gateway.tokens.access_token import InvalidToken, check_header, parse_unverified, verify_signature
from gateway.tokens.jwk import VERIFY_ALGORITHMS
from gateway.trust import JwksCaches

log = logging.getLogger("tollbooth.issuer")

DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_TTL = 3600.0
DISCOVERY_RETRY = 60.0
MAX_RESPONSE_BYTES = 64 * 1024
# An ID token's typ, when it has one, is "JWT" (RFC 7519 §5.1); an access token (at+jwt) is not an ID token.
ID_TOKEN_TYPES: frozenset[str | None] = frozenset({None, "jwt"})
# The subject becomes the token's `sub` and an identity header: visible ASCII only, and bounded.
_SUBJECT = re.compile(r"^[\x21-\x7e]{1,255}$")
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 §3.3 scope-token


class FederationError(Exception):
    """Why the provider's answer signs nobody in: `reason` for the audit, `description` for the page."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks: TrustedIssuerConfig  # its JWKS, as the JWKS caches know an issuer


def provider_metadata(data: object, issuer: str) -> ProviderMetadata:
    """The parts of a discovery document (OpenID Connect Discovery §3) the flow uses; §4.3: its `issuer` is exactly
    the configured one, or the document is someone else's."""
    if not isinstance(data, dict):
        raise FederationError("oidc_unavailable", "the provider's discovery document is not a JSON object")
    if data.get("issuer") != issuer:
        raise FederationError("oidc_unavailable", "the provider's discovery document names another issuer")
    endpoints: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = data.get(name)
        parts = urlsplit(value) if isinstance(value, str) else None
        loopback = parts is not None and parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts is None or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)) or parts.fragment:
            raise FederationError("oidc_unavailable", f"the provider's {name} is not an https URL")
        endpoints[name] = str(value)
    offered = data.get("id_token_signing_alg_values_supported")
    # OIDC Discovery §3: RS256 is the default every provider supports; HMAC and `none` are never accepted here.
    algorithms = [a for a in (offered if isinstance(offered, list) else ["RS256"]) if a in VERIFY_ALGORITHMS]
    if not algorithms:
        raise FederationError("oidc_unavailable", "the provider signs ID tokens with no algorithm accepted here")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        jwks=TrustedIssuerConfig.model_validate(
            {"issuer": issuer, "jwks_uri": endpoints["jwks_uri"], "algorithms": algorithms}
        ),
    )


def authorization_url(
    metadata: ProviderMetadata,
    settings: LoginOidcConfig,
    *,
    redirect_uri: str,
    state: str,
    nonce: str,
    challenge: str,
) -> str:
    """Where the person's browser goes to sign in at the provider (OIDC Core §3.1.2.1, RFC 7636 §4.3)."""
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(settings.provider_scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        quote_via=quote,
    )
    separator = "&" if urlsplit(metadata.authorization_endpoint).query else "?"
    return f"{metadata.authorization_endpoint}{separator}{query}"


def check_id_token_claims(
    claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str, now: float, leeway: float
) -> None:
    """OIDC Core §3.1.3.7, steps 2-11 that do not need the signature: FederationError when one fails."""

    def bad(why: str) -> FederationError:
        return FederationError("id_token_invalid", f"the provider's ID token {why}")

    if claims.get("iss") != issuer:
        raise bad("was issued by another issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences:
        raise bad("is for another client")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise bad("was requested by another party (azp)")
    for name in ("exp", "iat"):
        if not isinstance(claims.get(name), int | float) or isinstance(claims.get(name), bool):
            raise bad(f"has no numeric {name}")
    if claims["exp"] <= now - leeway:
        raise bad("has expired")
    if claims["iat"] > now + leeway:
        raise bad("was issued in the future")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        # §3.1.3.7 step 11: the nonce ties the ID token to this browser's sign-in, against replayed tokens.
        raise bad("does not carry this sign-in's nonce")


def person_of(claims: dict[str, Any], settings: LoginOidcConfig, taken: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """The subject (prefixed) and the scopes the person may grant, from verified claims. `taken`: the names of
    accounts and agents, which a provider's person must never become."""
    if settings.subject_claim == "email" and claims.get("email_verified") is not True:
        # An address the provider has not verified is one the person typed: anyone's.
        raise FederationError("oidc_subject", "the provider has not verified this email address (email_verified)")
    value = claims.get(settings.subject_claim)
    if not isinstance(value, str) or not _SUBJECT.match(settings.subject_prefix + value):
        raise FederationError(
            "oidc_subject", f"the provider's {settings.subject_claim} claim is not a usable subject (visible ASCII)"
        )
    subject = settings.subject_prefix + value
    if subject in taken or subject.lower() in {name.lower() for name in taken}:
        # One name, two identities: the provider's "alice" (or "Alice") must not sign in as the account alice or
        # act under an agent's name.
        raise FederationError("oidc_subject", "the provider's subject names an account or agent of this service")
    if not settings.scopes_claim:
        return subject, tuple(settings.default_scopes)
    listed = claims.get(settings.scopes_claim)
    items = listed.split() if isinstance(listed, str) else listed if isinstance(listed, list) else []
    return subject, tuple(dict.fromkeys(s for s in items if isinstance(s, str) and _SCOPE.match(s)))


class OpenIdProvider:
    """The provider of one `login.oidc` config: its discovery document (cached) and the code redemption."""

    def __init__(
        self,
        settings: LoginOidcConfig,
        jwks: JwksCaches,
        *,
        ca_file: str | None = None,
        leeway: float = 60.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._jwks = jwks
        self._leeway = leeway
        self._timeout = timeout
        self._clock = clock
        self._http = httpx2.AsyncClient(verify=tls_context(ca_file), follow_redirects=False, timeout=timeout)
        self._metadata: tuple[ProviderMetadata, float] | None = None
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        return self.settings.label or f"Sign in with {urlsplit(self.settings.issuer).hostname}"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def metadata(self) -> ProviderMetadata:
        """The discovery document, refetched hourly; the last good one stays while the provider is down."""
        async with self._lock:  # concurrent sign-ins share one fetch
            cached = self._metadata
            if cached is not None and cached[1] > self._clock():
                return cached[0]
            try:
                url = self.settings.issuer.rstrip("/") + DISCOVERY_PATH
                fresh = provider_metadata(await self._json("GET", url), self.settings.issuer)
            except FederationError:
                if cached is None:
                    raise
                log.warning("OpenID provider %s: discovery failed; using the last good document", self.settings.issuer)
                # Tried again in a minute, not by every sign-in meanwhile (each would wait out the timeout).
                self._metadata = (cached[0], self._clock() + DISCOVERY_RETRY)
                return cached[0]
            self._metadata = (fresh, self._clock() + DISCOVERY_TTL)
            return fresh

    async def redeem(self, code: str, *, verifier: str, redirect_uri: str, nonce: str) -> dict[str, Any]:
        """The verified ID token claims for `code` (OIDC Core §3.1.3)."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: tuple[str, str] | None = None
        if self.settings.client_secret:
            # RFC 6749 §2.3.1: id and secret are form-encoded before they go into Basic.
            auth = (quote(self.settings.client_id, safe=""), quote(self.settings.client_secret, safe=""))
        else:
            form["client_id"] = self.settings.client_id
        answer = await self._json("POST", metadata.token_endpoint, data=form, auth=auth)
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise FederationError("oidc_token", "the provider's token response has no ID token")
        claims = await self._verified(id_token, metadata)
        check_id_token_claims(
            claims,
            issuer=metadata.issuer,
            client_id=self.settings.client_id,
            nonce=nonce,
            now=self._clock(),
            leeway=self._leeway,
        )
        return claims

    async def _verified(self, id_token: str, metadata: ProviderMetadata) -> dict[str, Any]:
        try:
            unverified = parse_unverified(id_token)
            kid, alg = check_header(unverified.header, accepted_types=ID_TOKEN_TYPES)
            if alg not in metadata.jwks.algorithms:
                raise InvalidToken("bad_alg", "not an algorithm the provider announced")
            key = await self._jwks.cache(metadata.jwks).get(kid)
            if key is None:
                raise InvalidToken("unknown_kid", "signed with a key the provider does not publish")
            return verify_signature(id_token, alg, key)
        except InvalidToken as exc:
            raise FederationError("id_token_invalid", f"the provider's ID token is not valid ({exc.reason})") from None

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):  # one deadline, not one per read
                async with self._http.stream(method, url, headers={"accept": "application/json"}, **kwargs) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise FederationError("oidc_unavailable", "the provider's answer is too large")
                    status = response.status_code
        except (httpx2.HTTPError, TimeoutError) as exc:
            log.warning("OpenID provider %s unreachable: %s", self.settings.issuer, str(exc) or type(exc).__name__)
            raise FederationError("oidc_unavailable", "the sign-in provider cannot be reached") from None
        if status != 200:
            reason = "oidc_token" if method == "POST" else "oidc_unavailable"
            log.warning("OpenID provider %s answered %s %s with HTTP %d", self.settings.issuer, method, url, status)
            raise FederationError(reason, f"the sign-in provider refused the request (HTTP {status})")
        try:
            return json.loads(body)
        except ValueError:
            raise FederationError("oidc_unavailable", "the provider's answer is not JSON") from None
