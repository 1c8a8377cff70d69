"""Agents as OAuth clients: who is asking, proven by a secret (RFC 6749 §2.3.1) or a signed assertion (RFC 7523).

`ClientRegistry.authenticate` returns the authenticated `Client` or raises `invalid_client` (401). Exactly one
method per request: a Basic header, `client_secret` in the body, or `client_assertion`; two at once is
`invalid_request` (RFC 6749 §2.3). Secrets are argon2id hashes compared by the argon2 library in constant time,
off the event loop (a verification takes tens of milliseconds of CPU by design).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.config import AgentConfig
from gateway.issuer.oauth import Form, OAuthError, invalid_request
from gateway.state import SharedState
from gateway.tokens.access_token import (
    FORBIDDEN_HEADERS,
    InvalidToken,
    parse_unverified,
    verify_signature,
)
from gateway.tokens.jwk import VERIFY_ALGORITHMS, SigningKey
from gateway.tokens.jwks import parse_jwks
from gateway.wire import ASSERTION_TYPE

# RFC 7523 §3 item 4 lets the server refuse assertions that expire "unreasonably far in the future"; the jti
# replay cache must hold every jti until its exp, so this also bounds that cache. One hour: Authlib's
# PrivateKeyJWT signs assertions valid for 3600 s by default, and Okta allows the same.
MAX_ASSERTION_LIFETIME = 3600.0
MAX_JTI_CHARS = 256
# An assertion is not an access token (RFC 9068 §4 makes the proxy refuse at+jwt the other way round); the
# rfc7523bis update names `client-authentication+jwt`, older clients send `JWT` or no typ at all.
_ASSERTION_TYPES = frozenset({None, "jwt", "application/jwt", "client-authentication+jwt"})
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


@dataclass(frozen=True, slots=True)
class Client:
    id: str
    config: AgentConfig
    method: str  # one of AUTH_METHODS


def invalid_client(description: str, reason: str, *, basic: bool = False) -> OAuthError:
    # RFC 6749 §5.2: 401, with a challenge for the scheme the client tried when it used the Authorization header.
    headers = {"www-authenticate": 'Basic realm="tollbooth", charset="UTF-8"'} if basic else {}
    return OAuthError("invalid_client", description, status=401, reason=reason, headers=headers)


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@functools.cache
def _decoy_hash() -> str:
    # Verified against when the client_id is unknown, so "no such agent" takes as long as "wrong secret".
    return _hasher().hash("tollbooth decoy secret")


def _secret_matches(secret_hash: str | None, secret: str) -> bool:
    try:
        matched = _hasher().verify(secret_hash or _decoy_hash(), secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return matched and secret_hash is not None


class SecretChecker:
    """Checks agent secrets against their argon2id hashes: off the event loop, bounded, and once per secret.

    argon2id costs about a third of a second of CPU and 64 MiB by design (it protects the stored hash, not the
    endpoint), so a flood of wrong secrets must not queue without bound: the checks run on a small pool of their
    own (not the default executor, which the audit sink and the revocation journal need), and past `max_waiting`
    checks in line the endpoint answers 503 at once rather than after a minute. Successes are remembered as an
    HMAC under a per-process random key, keyed by the stored hash: an agent pays once, a changed `secret_hash`
    forgets the old secret, a wrong guess always pays full price, and a memory dump reveals no secret.
    """

    def __init__(self, *, workers: int = 2, max_waiting: int = 16, max_entries: int = 10_000) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tollbooth-argon2")
        self._max_in_flight = workers + max_waiting
        self._in_flight = 0
        self._key = secrets.token_bytes(32)
        self._digests: dict[str, bytes] = {}  # secret_hash -> HMAC(secret)
        self._max_entries = max_entries

    async def matches(self, secret_hash: str | None, secret: str) -> bool:
        """Whether `secret` matches `secret_hash` (None: an unknown client, checked against a decoy all the same,
        so "no such agent" takes as long as "wrong secret")."""
        digest = hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        known = self._digests.get(secret_hash) if secret_hash is not None else None
        if known is not None and hmac.compare_digest(known, digest):
            return True
        if self._in_flight >= self._max_in_flight:
            raise OAuthError(
                "temporarily_unavailable",
                "too many client authentications in progress; retry shortly",
                status=503,
                reason="secret_checks_busy",
                headers={"retry-after": "1"},
            )
        self._in_flight += 1
        try:
            matched = await asyncio.get_running_loop().run_in_executor(
                self._executor, _secret_matches, secret_hash, secret
            )
        finally:
            self._in_flight -= 1
        if matched and secret_hash is not None:
            if len(self._digests) >= self._max_entries:
                self._digests.pop(next(iter(self._digests)))
            self._digests[secret_hash] = digest
        return matched

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def basic_credentials(authorization: str) -> list[tuple[str, str]]:
    """The (client_id, secret) readings of a Basic header, the RFC's form-decoded one first.

    RFC 6749 §2.3.1 form-encodes id and secret before base64 (the mcp SDK does); Authlib and many others send
    them raw. A secret with `%`, `+` or `:` must work either way, so both readings are tried.
    """
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client(
            "use the Basic scheme for client credentials in the Authorization header", "wrong_scheme", basic=True
        )
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_client(
            "the Basic credentials are not valid base64 of UTF-8 text", "malformed", basic=True
        ) from None
    raw_id, colon, raw_secret = decoded.partition(":")
    if not colon or not raw_id:
        raise invalid_client("the Basic credentials must be client_id:client_secret", "malformed", basic=True)
    readings = [(unquote_plus(raw_id), unquote_plus(raw_secret)), (raw_id, raw_secret)]
    return list(dict.fromkeys(readings))


def claimed_client_id(form: Form, authorization: str | None, agents: Iterable[str]) -> str | None:
    """The configured agent a request claims to be, read without verifying anything (it counts failures before
    the costly check); None when it names no agent of ours, however it is malformed."""
    names = set(agents)
    candidates: list[str] = []
    if authorization is not None:
        try:
            candidates += [client_id for client_id, _ in basic_credentials(authorization)]
        except OAuthError:
            pass
    candidates.append(form.get("client_id") or "")
    assertion = form.get("client_assertion")
    if assertion:
        try:
            issuer = parse_unverified(assertion).claims.get("iss")
        except InvalidToken:
            issuer = None
        candidates.append(issuer if isinstance(issuer, str) else "")
    return next((candidate for candidate in candidates if candidate in names), None)


def _audiences(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return []


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise invalid_client(f"the client_assertion's {name} is not a NumericDate", "bad_assertion")
    return float(value)


class ClientRegistry:
    """The agents of one config, with their public keys parsed once."""

    def __init__(
        self,
        agents: dict[str, AgentConfig],
        *,
        issuer: str,
        token_endpoint: str,
        state: SharedState,
        leeway: float,
        secret_checker: SecretChecker,
        clock: Callable[[], float] = time.time,
    ):
        self._agents = agents
        self._secrets = secret_checker
        self._issuer = issuer
        self._token_endpoint = token_endpoint
        self._state = state
        self._leeway = leeway
        self._clock = clock
        self._keys: dict[str, dict[str, SigningKey]] = {
            name: parse_jwks(json.dumps(agent.jwks).encode(), VERIFY_ALGORITHMS)
            for name, agent in agents.items()
            if agent.jwks is not None
        }

    async def authenticate(self, form: Form, authorization: str | None, endpoint_url: str) -> Client:
        """The client behind this request. `endpoint_url` is where it was sent (a valid assertion audience)."""
        methods = [
            name
            for name, used in (
                ("client_secret_basic", authorization is not None),
                ("client_secret_post", "client_secret" in form),
                ("private_key_jwt", "client_assertion" in form or "client_assertion_type" in form),
            )
            if used
        ]
        if len(methods) > 1:
            raise invalid_request(f"use one client authentication method, not {' and '.join(methods)}", "two_methods")
        if not methods:
            raise invalid_client(
                "client authentication is required (client_secret_basic, client_secret_post or private_key_jwt)",
                "no_client_auth",
            )
        if methods[0] == "client_secret_basic":
            assert authorization is not None
            readings = basic_credentials(authorization)
            named = form.get("client_id")
            if named is not None and all(named != client_id for client_id, _ in readings):
                raise invalid_request("client_id in the body differs from the Basic credentials", "client_id_mismatch")
            return await self._by_secret(readings, "client_secret_basic")
        if methods[0] == "client_secret_post":
            return await self._by_secret(
                [(form.require("client_id"), form.require("client_secret"))], "client_secret_post"
            )
        return await self._by_assertion(form, endpoint_url)

    async def _by_secret(self, readings: list[tuple[str, str]], method: str) -> Client:
        basic = method == "client_secret_basic"
        for client_id, secret in readings:
            agent = self._agents.get(client_id)
            if await self._secrets.matches(agent.secret_hash if agent is not None else None, secret):
                assert agent is not None  # matches() is never true without a stored hash
                return Client(client_id, agent, method)
        raise invalid_client("unknown client or wrong secret", "bad_secret", basic=basic)

    async def _by_assertion(self, form: Form, endpoint_url: str) -> Client:
        if form.require("client_assertion_type") != ASSERTION_TYPE:
            raise invalid_client(f"client_assertion_type must be {ASSERTION_TYPE}", "bad_assertion_type")
        assertion = form.require("client_assertion")
        try:
            unverified = parse_unverified(assertion)
        except InvalidToken:
            raise invalid_client("the client_assertion is not a well-formed signed JWT", "bad_assertion") from None
        header, claims = unverified.header, unverified.claims
        client_id = claims.get("iss")
        # RFC 7523 §3: iss and sub are both the client_id.
        if not isinstance(client_id, str) or claims.get("sub") != client_id:
            raise invalid_client("the client_assertion's iss and sub must both be the client_id", "bad_assertion")
        named = form.get("client_id")
        if named is not None and named != client_id:
            raise invalid_client("client_id differs from the client_assertion's iss", "client_id_mismatch")
        agent = self._agents.get(client_id)
        keys = self._keys.get(client_id)
        if agent is None or keys is None:
            raise invalid_client("unknown client, or one without registered public keys", "unknown_client")
        key = self._assertion_key(header, keys)
        try:
            verified = verify_signature(assertion, key.algorithm, key)
        except InvalidToken:
            raise invalid_client("the client_assertion's signature does not verify", "bad_signature") from None
        expires_at = self._check_assertion_claims(verified, endpoint_url)
        jti = verified.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise invalid_client("the client_assertion needs a jti (at most 256 characters)", "bad_assertion")
        # RFC 7523 §3 item 7: a jti is accepted once; the cache is shared by every replica (Redis).
        if not await self._state.use_assertion_jti(client_id, jti, expires_at + self._leeway):
            raise invalid_client("this client_assertion was used before (jti replay)", "assertion_replay")
        return Client(client_id, agent, "private_key_jwt")

    def _assertion_key(self, header: dict[str, Any], keys: dict[str, SigningKey]) -> SigningKey:
        typ = header.get("typ")
        if not (typ is None or isinstance(typ, str)) or (typ.lower() if typ else None) not in _ASSERTION_TYPES:
            raise invalid_client("the client_assertion's typ is not a client assertion's", "bad_assertion")
        if any(name in header for name in FORBIDDEN_HEADERS):
            raise invalid_client("the client_assertion names its own key (jku, x5u, jwk, x5c or crit)", "bad_assertion")
        alg = header.get("alg")
        kid = header.get("kid")
        if kid is not None:
            key = keys.get(kid) if isinstance(kid, str) else None
        else:
            # No kid: only unambiguous when the agent registered one key for this algorithm.
            candidates = [k for k in keys.values() if k.algorithm == alg]
            key = candidates[0] if len(candidates) == 1 else None
        if key is None:
            raise invalid_client("the client_assertion's kid names none of the agent's registered keys", "unknown_kid")
        if alg != key.algorithm:
            # RFC 8725 §3.1: the registered key decides the algorithm (never `none`, never HMAC).
            raise invalid_client("the client_assertion's alg does not match the agent's key", "bad_alg")
        return key

    def _check_assertion_claims(self, claims: dict[str, Any], endpoint_url: str) -> float:
        now = self._clock()
        expires_at = _number(claims, "exp")
        if expires_at is None:
            raise invalid_client("the client_assertion has no exp", "bad_assertion")
        if now - self._leeway >= expires_at:
            raise invalid_client("the client_assertion has expired", "assertion_expired")
        if expires_at - now > MAX_ASSERTION_LIFETIME + self._leeway:
            raise invalid_client(
                f"the client_assertion expires too far ahead (at most {MAX_ASSERTION_LIFETIME:g}s)", "bad_assertion"
            )
        not_before = _number(claims, "nbf")
        issued_at = _number(claims, "iat")
        if (not_before is not None and not_before > now + self._leeway) or (
            issued_at is not None and issued_at > now + self._leeway
        ):
            raise invalid_client("the client_assertion is not valid yet", "bad_assertion")
        # RFC 7523 §3 item 3 and rfc7523bis: the issuer identifier (preferred) or the endpoint's URL.
        accepted = {self._issuer, self._issuer.rstrip("/"), self._token_endpoint, endpoint_url}
        if not set(_audiences(claims.get("aud"))) & accepted:
            raise invalid_client(
                "the client_assertion's aud must be the issuer or the token endpoint", "wrong_audience"
            )
        return expires_at
