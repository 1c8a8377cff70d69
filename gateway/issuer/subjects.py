"""Subject tokens for token exchange (RFC 8693 §2.1): whose authority a delegated token carries.

A subject token is a trusted identity provider's token (a user's or an org's), checked against that issuer's
JWKS and its entry's `audiences`, or one of our own tokens (a further hop), checked against our keys and the
revocation list. Our own tokens' audience is the proxy's public URL, so for them that audience is accepted beside
the issuer URL: without it no chain could grow past one hop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.config import TrustedIssuerConfig
from gateway.state import RevocationList
from gateway.tokens.access_token import (
    SUBJECT_TOKEN_TYPES,
    InvalidToken,
    SubjectToken,
    delegation_chain,
    namespaced,
    validate_claims,
    validate_subject_claims,
)
from gateway.trust import TrustedIssuers


class SubjectVerifier:
    def __init__(
        self,
        *,
        public_url: str,
        trust: TrustedIssuers,
        revocations: RevocationList,
        leeway: float,
        clock: Callable[[], float] = time.time,
    ):
        self._trust = trust
        self._public_url = public_url
        self._revocations = revocations
        self._leeway = leeway
        self._clock = clock

    def _admit(self, issuer: object) -> TrustedIssuerConfig:
        entry = self._trust.entries.get(issuer) if isinstance(issuer, str) else None
        if entry is None:
            raise InvalidToken("wrong_issuer", "The subject token's issuer is not a trusted issuer")
        return entry

    async def verify(self, token: str) -> SubjectToken:
        """The verified subject token, or InvalidToken saying what is wrong with it."""
        signed = await self._trust.verify(
            token, admit=self._admit, external_types=SUBJECT_TOKEN_TYPES, noun="subject token"
        )
        claims, issuer, entry = signed.claims, signed.issuer, signed.entry
        now = self._clock()
        if entry is None:
            audiences = [issuer, self._public_url]
            # Our own token must be a whole, unrevoked access token: the same checks as at the proxy.
            aud = claims.get("aud")
            audience = next((a for a in audiences if a == aud or (isinstance(aud, list) and a in aud)), issuer)
            principal = validate_claims(claims, issuer=issuer, audience=audience, now=now, leeway=self._leeway)
            revoked = self._revocations.is_revoked(principal)
        else:
            audiences = entry.audiences or [self._trust.issuer]
        subject = validate_subject_claims(claims, issuer=issuer, audiences=audiences, now=now, leeway=self._leeway)
        if entry is not None:
            subject = namespaced(subject, entry.subject_prefix)
            # `tollbooth revoke --subject` (or `--agent` for an actor already in its chain) covers a user's token
            # from an identity provider too, or an agent could exchange it again after the cut-off and start afresh.
            revoked = self._revocations.is_cut_off("", subject.subject, subject.issued_at) or (
                self._revocations.is_chain_revoked(delegation_chain(subject.act), (), subject.issued_at)
            )
        if revoked:
            raise InvalidToken("revoked", "The subject token has been revoked")
        return subject
