"""Refresh-token families: what a refresh token stands for, and how a presented token is named in storage."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

_TOKEN_HASH = re.compile(r"^[0-9a-f]{64}$")


def refresh_token_hash(token: str) -> str:
    """The storage name of an opaque refresh token: SHA-256, hex. Raw refresh tokens are never stored, so a copy
    of the store (a backup, a replica) cannot be replayed at the token endpoint."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_hash(token_hash: str) -> str:
    """`token_hash` when it looks like `refresh_token_hash`'s output; ValueError when a raw token was passed."""
    if not _TOKEN_HASH.match(token_hash):
        raise ValueError("refresh tokens are stored by refresh_token_hash(token), not as they are")
    return token_hash


@dataclass(frozen=True)
class RefreshGrant:
    """One refresh-token family: the grant every token of the family re-mints.

    A family starts with one grant (client_credentials or token exchange) and lives until `expires_at`, however
    often it is rotated (RFC 9700 §4.14.2: rotation must not extend the grant). `issued_at` is when the family
    started, so "revoke everything issued to this agent / for this subject before T" ends families started
    before T. `act` is the RFC 8693 §4.1 `act` claim to put in re-minted access tokens, as JSON.
    """

    family: str
    agent: str
    subject: str
    scopes: tuple[str, ...]
    act: dict[str, Any] | None
    issued_at: float
    expires_at: float
    ancestors: tuple[str, ...] = ()  # the jtis of the tokens the grant was exchanged from (see Principal)
    may_act: dict[str, Any] | None = None  # the subject token's RFC 8693 §4.4 claim, kept by every refresh
    # A person's grant: how they signed in ("users", or "oidc:<provider issuer>"), re-checked at every refresh.
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "family": self.family,
                "agent": self.agent,
                "subject": self.subject,
                "scopes": list(self.scopes),
                "act": self.act,
                "issued_at": self.issued_at,
                "expires_at": self.expires_at,
                "ancestors": list(self.ancestors),
                "may_act": self.may_act,
                "source": self.source,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> RefreshGrant:
        data = json.loads(text)
        return cls(
            family=data["family"],
            agent=data["agent"],
            subject=data["subject"],
            scopes=tuple(data["scopes"]),
            act=data["act"],
            issued_at=float(data["issued_at"]),
            expires_at=float(data["expires_at"]),
            ancestors=tuple(data.get("ancestors", ())),
            may_act=data.get("may_act"),
            source=str(data.get("source", "")),
        )


class RefreshReused(Exception):
    """A refresh token that was already exchanged came back. RFC 9700 §4.14.2: one of the two holders is an
    attacker and the server cannot tell which, so the whole family (and the access tokens minted from it) has
    just been revoked. The issuer answers invalid_grant."""

    def __init__(self, grant: RefreshGrant):
        super().__init__(f"refresh token of family {grant.family} (agent {grant.agent}) reused; family revoked")
        self.grant = grant
