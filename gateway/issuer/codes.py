"""Authorization codes: single use, short-lived, bound to what they were issued for (OAuth 2.1 §4.1.3, RFC 9700
§4.5), kept in the shared records so any replica redeems them, and only as their SHA-256, so a dump of the store
shows no redeemable code. A code presented a second time is an attack on one of the two holders (RFC 6749
§4.1.2): it is refused and what the first redemption issued is revoked.

Records: code:<hash> (the grant; taken atomically, so one redemption wins), spent:<hash> (it was redeemed),
replayed:<hash> (it came back), issued:<hash> (a list: what the redemption minted). A replay sets `replayed` and
then reads `issued`; a redemption appends to `issued` and then reads `replayed`: whichever way two replicas
interleave, every token of a replayed code is revoked by one of them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.issuer.authorization import AuthorizationRequest, verifier_matches
from gateway.issuer.oauth import OAuthError
from gateway.state.ephemeral import Ephemeral

CODE_TTL = 60.0  # DESIGN.md: ≤ 60 s; a client redeems its code within a second of the redirect
# Spent codes are remembered this long, so a replay is recognised as one rather than as unknown.
_SPENT_MEMORY = 600.0
_GRACE = 60.0  # an expired code is kept this long to say "expired" rather than "unknown"


@dataclass(frozen=True, slots=True)
class CodeGrant:
    request: AuthorizationRequest
    subject: str  # the person who signed in and consented
    scopes: tuple[str, ...]  # what they granted (already narrowed)
    expires_at: float
    source: str  # how the person signed in (SignIn.source), carried into the refresh family


class CodeReplayed(OAuthError):
    """A spent code presented again: `issued` lists what its first redemption produced, to be revoked."""

    def __init__(self, issued: list[tuple[str, str]]) -> None:
        super().__init__("invalid_grant", "the authorization code was already used", reason="code_replayed")
        self.issued = issued


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


def _invalid(description: str, reason: str) -> OAuthError:
    return OAuthError("invalid_grant", description, reason=reason)


def _grant(raw: str) -> CodeGrant:
    data: dict[str, Any] = json.loads(raw)
    request = AuthorizationRequest(**{**data["request"], "scopes": tuple(data["request"]["scopes"])})
    return CodeGrant(request, data["subject"], tuple(data["scopes"]), data["expires_at"], data["source"])


class AuthorizationCodes:
    def __init__(self, store: Ephemeral, *, ttl: float = CODE_TTL, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock

    async def issue(self, request: AuthorizationRequest, subject: str, scopes: tuple[str, ...], source: str) -> str:
        code = secrets.token_urlsafe(32)
        grant = CodeGrant(request, subject, scopes, self._clock() + self._ttl, source)
        await self._store.put(f"code:{_hash(code)}", json.dumps(asdict(grant)), self._ttl + _GRACE)
        return code

    async def redeem(self, code: str, *, client_id: str, redirect_uri: str | None, verifier: str | None) -> CodeGrant:
        """The grant behind `code`, spent now; OAuthError (invalid_grant) when anything does not match. Any
        mismatch spends the code too: a guess at the verifier gets one try."""
        name = _hash(code)
        raw = await self._store.take_marking(f"code:{name}", f"spent:{name}", _SPENT_MEMORY)
        if raw is None:
            if await self._store.get(f"spent:{name}") is not None:
                await self._store.put(f"replayed:{name}", "1", _SPENT_MEMORY)
                issued = [tuple(item.split(" ", 1)) for item in await self._store.items(f"issued:{name}")]
                raise CodeReplayed([(kind, value) for kind, value in issued])
            raise _invalid("the authorization code is invalid or expired", "unknown_code")
        grant = _grant(raw)
        if grant.expires_at < self._clock():
            raise _invalid("the authorization code is invalid or expired", "code_expired")
        if client_id != grant.request.client_id:
            raise _invalid("the authorization code was issued to another client", "other_client")
        # OAuth 2.1 §4.1.3: redirect_uri is required here when the authorization request carried one; we always
        # bind the one used, so a client must repeat it exactly.
        if redirect_uri != grant.request.redirect_uri:
            raise _invalid("redirect_uri does not match the authorization request", "redirect_uri_mismatch")
        if not verifier_matches(verifier, grant.request.code_challenge):
            raise _invalid("the code_verifier does not match the code_challenge", "pkce_mismatch")
        return grant

    async def record_issued(self, code: str, kind: str, issued: str) -> bool:
        """Remember a token's jti (`kind` "jti") or a refresh family ("family") a redemption produced, for
        revocation should the code come back. False: it already came back, so revoke this one now."""
        name = _hash(code)
        await self._store.append(f"issued:{name}", f"{kind} {issued}", _SPENT_MEMORY)
        return await self._store.get(f"replayed:{name}") is None
