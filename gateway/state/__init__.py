"""Shared state (DESIGN.md "Shared state"): revocations, refresh-token families and assertion `jti`s.

`open_state` gives `RedisState` when `redis.url` is set, so every replica agrees, and `LocalState` otherwise
(revocations in a file every process of the machine follows; the rest in process memory). Either way the proxy
reads `state.revocations`, a local view that answers `is_revoked` without I/O and is kept current in the
background: through Redis pub/sub within well under a second, or by polling the file every half second.

    state = open_state(config.redis.url, revocations_file=".tollbooth/revocations.jsonl")
    await state.start()        # processes that read `state.revocations`; writes work without it
    ...
    await state.aclose()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gateway.state.ephemeral import Ephemeral
from gateway.state.health import StateUnavailable
from gateway.state.local import LocalState
from gateway.state.redis_state import RedisState, redis_client
from gateway.state.refresh_families import RefreshGrant, RefreshReused, refresh_token_hash
from gateway.state.revocations import RevocationList

__all__ = [
    "LocalState",
    "RedisState",
    "RefreshGrant",
    "RefreshReused",
    "RevocationList",
    "SharedState",
    "StateUnavailable",
    "open_state",
    "redis_client",
    "refresh_token_hash",
]


class SharedState(Protocol):
    """What the proxy and the token service share. Every write raises StateUnavailable when the backend cannot
    take it; refresh tokens are named by `refresh_token_hash(token)`, never stored as they are."""

    revocations: RevocationList
    ephemeral: Ephemeral  # people's sign-ins, pending requests, codes, registrations

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def problem(self) -> str | None:
        """None while the revocation view is current; else why not, for /readyz."""
        ...

    async def revoke_jti(self, jti: str, expires_at: float) -> None:
        """Revoke one access token until its `exp` (+ retention): here at once, everywhere within a second."""
        ...

    async def revoke_agent_before(self, agent: str, before: float) -> None:
        """Revoke everything issued to `agent` (client_id) before `before`: tokens and refresh families."""
        ...

    async def set_block(self, record: dict[str, object]) -> None:
        """Put a block record (gateway.state.revocations) in force here at once and everywhere within a second;
        it persists (Redis, or the revocations file) until a later record for the same party replaces it."""
        ...

    async def revoke_subject_before(self, subject: str, before: float) -> None:
        """Revoke everything issued for `subject` (sub) before `before`: tokens and refresh families."""
        ...

    async def use_assertion_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """True the first time this client's assertion `jti` is seen, False on a replay (RFC 7523 §3 item 7)."""
        ...

    async def store_refresh(self, token_hash: str, grant: RefreshGrant) -> None:
        """The first refresh token of a new family."""
        ...

    async def rotate_refresh(self, old_hash: str, new_hash: str, now: float) -> RefreshGrant | None:
        """Exchange `old_hash` for `new_hash` atomically (RFC 9700 §4.14.2 rotation): the grant, or None when the
        token is unknown, its family expired or revoked. RefreshReused when `old_hash` was already exchanged: the
        family and its access tokens have been revoked. Of two concurrent calls with one token, exactly one wins."""
        ...

    async def record_family_token(self, family: str, jti: str, expires_at: float) -> bool:
        """Remember an access token minted from `family` so revoking the family revokes it (RFC 7009 §2.1). False
        when the family was revoked meanwhile: the token has been revoked at once; do not hand it out."""
        ...

    async def find_refresh(self, token_hash: str, *, unspent: bool = False) -> RefreshGrant | None:
        """The grant of a refresh token, spent or not (`unspent`: only a token not yet exchanged, one that would
        refresh now); None when unknown or its family expired or was revoked."""
        ...

    async def revoke_family(self, family: str) -> None:
        """End the family: none of its refresh tokens work any more, and its recorded access tokens are revoked."""
        ...


def open_state(
    redis_url: str,
    *,
    revocations_file: str | Path,
    clock: Callable[[], float] = time.time,
    prefix: str = "tollbooth:",
    retention: float = 300.0,
) -> SharedState:
    """`RedisState` when `redis_url` is set, else `LocalState` on `revocations_file`. `retention`: how long past a
    token's `exp` its revocation (or an assertion's `jti`) is kept; at least the verifiers' clock leeway."""
    if redis_url:
        return RedisState(redis_url, clock=clock, prefix=prefix, retention=retention)
    return LocalState(revocations_file, clock=clock, retention=retention)
