"""Authorization codes: single use, short-lived, bound to what they were issued for (OAuth 2.1 §4.1.3, RFC 9700
§4.5). A code is kept only as its SHA-256, so a memory dump shows no redeemable code. A code presented a second
time is an attack on one of the two holders (RFC 6749 §4.1.2): it is refused and what the first redemption
issued is handed back for revocation.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.issuer.authorization import AuthorizationRequest, verifier_matches
from gateway.issuer.oauth import OAuthError

CODE_TTL = 60.0  # DESIGN.md: ≤ 60 s; a client redeems its code within a second of the redirect
# Spent codes are remembered this long past expiry, so a replay is recognised as one rather than as unknown.
_SPENT_MEMORY = 600.0


@dataclass(frozen=True, slots=True)
class CodeGrant:
    request: AuthorizationRequest
    subject: str  # the person who signed in and consented
    scopes: tuple[str, ...]  # what they granted (already narrowed)
    expires_at: float


@dataclass(slots=True)
class _Entry:
    grant: CodeGrant
    spent: bool = False
    issued: list[tuple[str, str]] = field(default_factory=list)  # ("jti" | "family", id) the redemption produced


class CodeReplayed(OAuthError):
    """A spent code presented again: `issued` lists what its first redemption produced, to be revoked."""

    def __init__(self, issued: list[tuple[str, str]]) -> None:
        super().__init__("invalid_grant", "the authorization code was already used", reason="code_replayed")
        self.issued = issued


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


def _invalid(description: str, reason: str) -> OAuthError:
    return OAuthError("invalid_grant", description, reason=reason)


class AuthorizationCodes:
    def __init__(self, *, ttl: float = CODE_TTL, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def issue(self, request: AuthorizationRequest, subject: str, scopes: tuple[str, ...]) -> str:
        self._forget_expired()
        code = secrets.token_urlsafe(32)
        self._entries[_hash(code)] = _Entry(CodeGrant(request, subject, scopes, self._clock() + self._ttl))
        return code

    def redeem(self, code: str, *, client_id: str, redirect_uri: str | None, verifier: str | None) -> CodeGrant:
        """The grant behind `code`, spent now; OAuthError (invalid_grant) when anything does not match. Any
        mismatch spends the code too: a guess at the verifier gets one try."""
        entry = self._entries.get(_hash(code))
        if entry is None or entry.grant.expires_at + _SPENT_MEMORY < self._clock():
            raise _invalid("the authorization code is invalid or expired", "unknown_code")
        if entry.spent:
            raise CodeReplayed(list(entry.issued))
        entry.spent = True
        grant = entry.grant
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

    def record_issued(self, code: str, kind: str, issued: str) -> None:
        """Remember a token's jti (`kind` "jti") or a refresh family ("family") a redemption produced, for
        revocation should the code come back."""
        entry = self._entries.get(_hash(code))
        if entry is not None:
            entry.issued.append((kind, issued))

    def _forget_expired(self) -> None:
        cutoff = self._clock() - _SPENT_MEMORY
        for key in [key for key, entry in self._entries.items() if entry.grant.expires_at < cutoff]:
            del self._entries[key]
