"""Subject tokens for token exchange (RFC 8693 §2.1): whose authority a delegated token carries.

A subject token is a trusted identity provider's token (a user's or an org's), checked against that issuer's
JWKS and its entry's `audiences`, or one of our own tokens (a further hop), checked against our keys and the
revocation list. Our own tokens' audience is the proxy's public URL, so for them that audience is accepted beside
the issuer URL: without it no chain could grow past one hop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx2

from gateway.config import TrustedIssuerConfig
from gateway.issuer.keys import SigningKey
from gateway.issuer.tokens import (
    ACCESS_TOKEN_TYPES,
    SUBJECT_TOKEN_TYPES,
    InvalidToken,
    SubjectToken,
    check_header,
    delegation_chain,
    namespaced,
    parse_unverified,
    validate_claims,
    validate_subject_claims,
    verify_signature,
)
from gateway.proxy.jwks import JwksCache
from gateway.state import RevocationList


class SubjectVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        public_url: str,
        keys: Callable[[], dict[str, SigningKey]],
        trusted_issuers: Sequence[TrustedIssuerConfig],
        revocations: RevocationList,
        http: httpx2.AsyncClient,
        leeway: float,
        clock: Callable[[], float] = time.time,
    ):
        self._issuer = issuer
        self._public_url = public_url
        self._keys = keys
        self._revocations = revocations
        self._leeway = leeway
        self._clock = clock
        self._trusted = {t.issuer: t for t in trusted_issuers if t.issuer != issuer}
        self._jwks = {name: JwksCache(entry, http) for name, entry in self._trusted.items()}

    async def verify(self, token: str) -> SubjectToken:
        """The verified subject token, or InvalidToken saying what is wrong with it."""
        unverified = parse_unverified(token)
        issuer = unverified.claims.get("iss")
        ours = issuer == self._issuer
        if not ours and not (isinstance(issuer, str) and issuer in self._trusted):
            raise InvalidToken("wrong_issuer", "The subject token's issuer is not a trusted issuer")
        kid, alg = check_header(unverified.header, accepted_types=ACCESS_TOKEN_TYPES if ours else SUBJECT_TOKEN_TYPES)
        key = self._keys().get(kid) if ours else await self._jwks[issuer].get(kid)
        if key is None:
            raise InvalidToken("unknown_kid", "The subject token was signed with an unknown key")
        claims = verify_signature(token, alg, key)
        now = self._clock()
        if ours:
            audiences = [self._issuer, self._public_url]
            # Our own token must be a whole, unrevoked access token: the same checks as at the proxy.
            aud = claims.get("aud")
            audience = next((a for a in audiences if a == aud or (isinstance(aud, list) and a in aud)), self._issuer)
            principal = validate_claims(claims, issuer=self._issuer, audience=audience, now=now, leeway=self._leeway)
            revoked = self._revocations.is_revoked(principal)
        else:
            audiences = self._trusted[issuer].audiences or [self._issuer]
        subject = validate_subject_claims(claims, issuer=issuer, audiences=audiences, now=now, leeway=self._leeway)
        if not ours:
            subject = namespaced(subject, self._trusted[issuer].subject_prefix)
            # `tollbooth revoke --subject` (or `--agent` for an actor already in its chain) covers a user's token
            # from an identity provider too, or an agent could exchange it again after the cut-off and start afresh.
            revoked = self._revocations.is_cut_off("", subject.subject, subject.issued_at) or (
                self._revocations.is_chain_revoked(delegation_chain(subject.act), (), subject.issued_at)
            )
        if revoked:
            raise InvalidToken("revoked", "The subject token has been revoked")
        return subject
