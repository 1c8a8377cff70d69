"""Refresh-token families and the assertion replay cache in process memory (no Redis configured).

Both forget entries once they can no longer matter, so memory stays bounded by what is live. Every method is
synchronous and does not yield to the event loop, which is what makes `rotate` atomic within the process.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from gateway.state.refresh_families import RefreshGrant, RefreshReused


class ReplayCache:
    """Keys seen once, each remembered until its `expires_at` + `retention`."""

    def __init__(self, *, retention: float, clock: Callable[[], float] = time.time):
        self._retention = retention
        self._clock = clock
        self._until: dict[Hashable, float] = {}
        self._order: list[tuple[float, int, Hashable]] = []  # min-heap; the counter keeps keys out of comparisons
        self._added = 0

    def first_use(self, key: Hashable, expires_at: float) -> bool:
        """True the first time `key` is seen (and remembers it), False while it is remembered."""
        now = self._clock()
        while self._order and self._order[0][0] < now:
            _, _, old = heapq.heappop(self._order)
            del self._until[old]
        if key in self._until:
            return False
        until = max(expires_at, now) + self._retention
        self._until[key] = until
        self._added += 1
        heapq.heappush(self._order, (until, self._added, key))
        return True


@dataclass
class _Family:
    grant: RefreshGrant
    forget_at: float
    spent: dict[str, bool] = field(default_factory=dict)  # refresh token hash -> already exchanged
    access: dict[str, float] = field(default_factory=dict)  # jti of an access token minted from it -> its exp
    revoked: bool = False


class RefreshFamilies:
    """Refresh-token families by token hash. `cut_off(grant)` says whether an agent/subject "before T" revocation
    covers the family. A family is forgotten `retention` seconds after both it and its last access token expired."""

    def __init__(
        self, *, cut_off: Callable[[RefreshGrant], bool], retention: float, clock: Callable[[], float] = time.time
    ):
        self._cut_off = cut_off
        self._retention = retention
        self._clock = clock
        self._families: dict[str, _Family] = {}
        self._by_hash: dict[str, str] = {}  # token hash -> family
        self._order: list[tuple[float, str]] = []  # min-heap of (forget_at, family); stale entries are skipped

    def store(self, token_hash: str, grant: RefreshGrant) -> None:
        self._forget(self._clock())
        family = self._families.get(grant.family)
        if family is None:
            family = self._families[grant.family] = _Family(grant, grant.expires_at + self._retention)
            heapq.heappush(self._order, (family.forget_at, grant.family))
        family.spent[token_hash] = False
        self._by_hash[token_hash] = grant.family

    def find(self, token_hash: str, now: float, *, unspent: bool = False) -> RefreshGrant | None:
        family = self._live(token_hash, now)
        if family is None or (unspent and family.spent[token_hash]):
            return None
        return family.grant

    def rotate(self, old_hash: str, new_hash: str, now: float) -> RefreshGrant | None:
        """The grant behind `old_hash`, now spent and succeeded by `new_hash`; None when unknown, expired or revoked.
        A spent token marks its family revoked and raises RefreshReused (RFC 9700 §4.14.2)."""
        family = self._live(old_hash, now)
        if family is None:
            return None
        if family.spent[old_hash]:
            family.revoked = True
            raise RefreshReused(family.grant)
        family.spent[old_hash] = True
        family.spent[new_hash] = False
        self._by_hash[new_hash] = family.grant.family
        return family.grant

    def record(self, family_id: str, jti: str, expires_at: float) -> bool:
        """Remember an access token minted from the family; False when the family is revoked or cut off (then the
        caller must revoke the token itself). A family already forgotten has nothing left to revoke: True."""
        family = self._families.get(family_id)
        if family is None:
            return True
        if family.revoked or self._cut_off(family.grant):
            return False
        family.access[jti] = expires_at
        if expires_at + self._retention > family.forget_at:
            family.forget_at = expires_at + self._retention
            heapq.heappush(self._order, (family.forget_at, family_id))
        return True

    def revoke(self, family_id: str) -> list[tuple[str, float]]:
        """Revoke the family; returns the (jti, exp) of its access tokens that may still be accepted somewhere."""
        family = self._families.get(family_id)
        if family is None:
            return []
        family.revoked = True
        horizon = self._clock() - self._retention
        return [(jti, exp) for jti, exp in family.access.items() if exp >= horizon]

    def _live(self, token_hash: str, now: float) -> _Family | None:
        family = self._families.get(self._by_hash.get(token_hash, ""))
        if family is None or family.revoked or now >= family.grant.expires_at or self._cut_off(family.grant):
            return None
        return family

    def _forget(self, now: float) -> None:
        while self._order and self._order[0][0] < now:
            forget_at, family_id = heapq.heappop(self._order)
            family = self._families.get(family_id)
            if family is not None and family.forget_at == forget_at:  # not extended by a later access token
                del self._families[family_id]
                for token_hash in family.spent:
                    self._by_hash.pop(token_hash, None)
