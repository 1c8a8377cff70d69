"""Shared state. For now an in-process revocation list; a Redis-backed one (DESIGN.md "Shared state") follows.

The proxy asks `is_revoked` on every request, cached token or not, so the check is three dict lookups.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from gateway.principal import Principal

_NEVER = float("-inf")


class RevocationList:
    """Revoked token ids, and "everything issued to this agent / for this subject before T" cut-offs.

    A revoked jti is kept until `retain_after_expiry` seconds past its token's `exp`: the verifier still accepts
    a token within its clock leeway after `exp`, so the entry must outlive that. Cut-offs only ever move forward
    (a later cut-off revokes everything an earlier one did) and are kept.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, retain_after_expiry: float = 300):
        self._clock = clock
        self._retain = retain_after_expiry
        self._jtis: dict[str, float] = {}  # jti -> expires_at
        self._expiry: list[tuple[float, str]] = []  # min-heap of (expires_at, jti), to forget entries in order
        self._agents: dict[str, float] = {}
        self._subjects: dict[str, float] = {}

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        self._forget_expired()
        if expires_at > self._jtis.get(jti, _NEVER):
            self._jtis[jti] = expires_at
            heapq.heappush(self._expiry, (expires_at, jti))

    def revoke_agent_before(self, agent: str, before: float) -> None:
        """Revoke every token issued to `agent` (its client_id) with `iat` earlier than `before`."""
        self._agents[agent] = max(before, self._agents.get(agent, _NEVER))

    def revoke_subject_before(self, subject: str, before: float) -> None:
        """Revoke every token whose `sub` is `subject` with `iat` earlier than `before`."""
        self._subjects[subject] = max(before, self._subjects.get(subject, _NEVER))

    def is_revoked(self, principal: Principal) -> bool:
        # `iat` is whole seconds: a token minted in the same second as, but after, a cut-off is revoked too.
        # That errs on the safe side; the agent asks for a new token a second later.
        return (
            principal.jti in self._jtis
            or principal.issued_at < self._agents.get(principal.agent, _NEVER)
            or principal.issued_at < self._subjects.get(principal.subject, _NEVER)
        )

    def _forget_expired(self) -> None:
        horizon = self._clock() - self._retain
        while self._expiry and self._expiry[0][0] < horizon:
            expires_at, jti = heapq.heappop(self._expiry)
            if self._jtis.get(jti) == expires_at:  # not re-revoked with a later expiry since
                del self._jtis[jti]
