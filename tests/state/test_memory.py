"""Refresh families and the replay cache in process memory: rotation, reuse, expiry, cut-offs, bounded memory."""

from __future__ import annotations

import pytest

from gateway.state import RefreshGrant, RefreshReused, refresh_token_hash
from gateway.state.memory import RefreshFamilies, ReplayCache

NOW = 1_750_000_000.0
H0, H1, H2 = (refresh_token_hash(f"t{i}") for i in range(3))


class FakeClock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def grant(family: str = "f1", issued_at: float = NOW, expires_at: float = NOW + 3600) -> RefreshGrant:
    return RefreshGrant(family, "billing-bot", "user:alice", ("crm.read",), None, issued_at, expires_at)


def families(clock: FakeClock, cut_off_before: float = float("-inf")) -> RefreshFamilies:
    return RefreshFamilies(cut_off=lambda g: g.issued_at < cut_off_before, retention=300, clock=clock)


def test_rotation_spends_the_old_token_and_keeps_the_grant() -> None:
    store = families(FakeClock())
    store.store(H0, grant())
    assert store.rotate(H0, H1, NOW + 1) == grant()
    assert store.rotate(H1, H2, NOW + 2) == grant()
    assert store.find(H0, NOW + 2) == grant()  # spent, still found (for revocation)
    assert store.find(H0, NOW + 2, unspent=True) is None  # but no longer active (introspection)
    assert store.find(H2, NOW + 2, unspent=True) == grant()


def test_a_spent_token_presented_again_ends_the_family() -> None:
    store = families(FakeClock())
    store.store(H0, grant())
    store.rotate(H0, H1, NOW + 1)
    store.record("f1", "at-1", NOW + 300)
    with pytest.raises(RefreshReused) as reused:
        store.rotate(H0, H2, NOW + 2)
    assert reused.value.grant == grant()
    assert store.rotate(H1, H2, NOW + 3) is None  # the legitimate holder's token is dead too
    assert store.find(H1, NOW + 3) is None
    assert store.revoke("f1") == [("at-1", NOW + 300)]


@pytest.mark.parametrize(
    ("now", "cut_off_before", "known"),
    [
        (NOW + 3599, float("-inf"), True),
        (NOW + 3600, float("-inf"), False),  # expires_at is the end: rotation never extends it
        (NOW + 1, NOW, True),  # started at the cut-off, not before it
        (NOW + 1, NOW + 0.5, False),  # started before the cut-off
    ],
)
def test_expired_or_cut_off_families_are_unknown(now: float, cut_off_before: float, known: bool) -> None:
    store = families(FakeClock(), cut_off_before=cut_off_before)
    store.store(H0, grant())
    assert (store.find(H0, now) is not None) is known
    assert (store.rotate(H0, H1, now) is not None) is known


def test_a_token_minted_from_a_revoked_family_is_refused() -> None:
    store = families(FakeClock())
    store.store(H0, grant())
    assert store.record("f1", "at-1", NOW + 300)
    assert store.revoke("f1") == [("at-1", NOW + 300)]
    assert not store.record("f1", "at-2", NOW + 300)


def test_families_are_forgotten_after_they_and_their_tokens_expire() -> None:
    clock = FakeClock()
    store = families(clock)
    store.store(H0, grant(expires_at=NOW + 10))
    store.record("f1", "at-1", NOW + 100)  # outlives the family: keeps it revocable
    clock.now = NOW + 100 + 299
    store.store(H1, grant("f2"))
    assert store.revoke("f1") == [("at-1", NOW + 100)]
    clock.now = NOW + 100 + 301
    store.store(H2, grant("f3"))
    assert store.revoke("f1") == []
    assert H0 not in store._by_hash  # memory stays bounded


def test_replay_cache_remembers_until_expiry_plus_retention() -> None:
    clock = FakeClock()
    cache = ReplayCache(retention=60, clock=clock)
    assert cache.first_use(("bot", "j1"), NOW + 30)
    assert not cache.first_use(("bot", "j1"), NOW + 30)
    assert cache.first_use(("other-bot", "j1"), NOW + 30)
    clock.now = NOW + 90
    assert not cache.first_use(("bot", "j1"), NOW + 30)
    clock.now = NOW + 91
    assert cache.first_use(("bot", "j1"), NOW + 30)
    assert len(cache._until) == 1  # the others were forgotten
