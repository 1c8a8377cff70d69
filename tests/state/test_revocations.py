"""The pure parts of shared state: the revocation view's cut-offs and record format, and refresh grants."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.principal import Principal
from gateway.state import RefreshGrant, RevocationList, refresh_token_hash
from gateway.state.refresh_families import check_token_hash
from gateway.state.revocations import block_record

NOW = 1_750_000_000.0


class FakeClock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def principal(**overrides: Any) -> Principal:
    fields: dict[str, Any] = {
        "agent": "billing-bot",
        "subject": "user:alice",
        "scopes": frozenset(),
        "jti": "j1",
        "issuer": "https://issuer.test",
        "expires_at": NOW + 300,
        "issued_at": NOW,
    }
    return Principal(**(fields | overrides))


@pytest.mark.parametrize(
    ("agent", "subject", "issued_at", "cut_off"),
    [
        ("billing-bot", "user:alice", NOW - 1, True),  # agent cut-off
        ("billing-bot", "user:bob", NOW - 1, True),  # the agent's, whoever the subject
        ("billing-bot", "user:alice", NOW, False),  # at the cut-off: issued after it
        ("other-bot", "user:carol", NOW + 9, True),  # subject cut-off, whichever agent
        ("other-bot", "user:carol", NOW + 10, False),
        ("other-bot", "user:alice", NOW - 1, False),  # neither the agent nor the subject was cut off
    ],
)
def test_is_cut_off_by_agent_or_subject(agent: str, subject: str, issued_at: float, cut_off: bool) -> None:
    revocations = RevocationList(clock=FakeClock())
    revocations.revoke_agent_before("billing-bot", NOW)
    revocations.revoke_subject_before("user:carol", NOW + 10)
    assert revocations.is_cut_off(agent, subject, issued_at) is cut_off
    assert revocations.is_revoked(principal(agent=agent, subject=subject, issued_at=issued_at)) is cut_off


@pytest.mark.parametrize(
    ("record", "revoked", "spared"),
    [
        ({"jti": "j1", "exp": NOW + 60}, principal(jti="j1"), principal(jti="j2")),
        ({"jti": "j1", "exp": str(NOW + 60)}, principal(jti="j1"), principal(jti="j2")),  # a Redis score
        ({"agent": "billing-bot", "before": NOW + 1, "at": 0}, principal(), principal(agent="other-bot")),
        ({"subject": "user:alice", "before": str(NOW + 1)}, principal(), principal(subject="user:bob")),
    ],
)
def test_records_apply_as_revocations(record: dict[str, Any], revoked: Principal, spared: Principal) -> None:
    revocations = RevocationList(clock=FakeClock())
    revocations.apply(record)
    assert revocations.is_revoked(revoked)
    assert not revocations.is_revoked(spared)


@pytest.mark.parametrize(
    "record",
    [{}, {"jti": "j1"}, {"jti": "", "exp": NOW}, {"jti": 7, "exp": NOW}, {"agent": "a", "before": "soon"}, "jti", 5],
)
def test_malformed_records_are_value_errors(record: Any) -> None:
    with pytest.raises(ValueError):
        RevocationList().apply(record)


def test_a_jti_already_past_retention_is_not_held() -> None:
    revocations = RevocationList(clock=FakeClock(), retain_after_expiry=300)
    revocations.revoke_jti("old", NOW - 301)
    revocations.revoke_jti("recent", NOW - 299)
    assert not revocations.is_revoked(principal(jti="old"))
    assert revocations.is_revoked(principal(jti="recent"))


def test_refresh_grant_survives_json() -> None:
    grant = RefreshGrant(
        "f1", "billing-bot", "user:alice", ("crm.read", "crm.write"), {"sub": "billing-bot"}, NOW, NOW + 86400
    )
    assert RefreshGrant.from_json(grant.to_json()) == grant


def test_refresh_tokens_are_stored_by_hash_only() -> None:
    digest = refresh_token_hash("opaque-token")
    assert check_token_hash(digest) == digest and len(digest) == 64
    with pytest.raises(ValueError, match="refresh_token_hash"):
        check_token_hash("opaque-token")


def test_blocks_apply_in_any_order_to_the_same_view():
    records = [
        block_record("agent", "bot", on=True, reason="loop", by="cli", since=10.0),
        block_record("agent", "bot", on=False, reason="", by="cli", since=20.0),
        block_record("subject", "alice", on=True, reason="left", by="ops", since=15.0),
    ]
    for order in (records, list(reversed(records)), [records[1], records[0], records[2], records[0]]):
        view = RevocationList()
        for record in order:
            view.apply(record)
        assert view.blocked("bot", "carol") is None
        assert view.blocked("other", "alice") == "subject alice is blocked: left"
        assert view.blocked("other", "carol", ("bot",)) is None


def test_a_block_covers_the_agent_as_an_actor_and_calls_its_listeners():
    view = RevocationList()
    seen: list[tuple[str, str]] = []
    view.on_block.append(lambda kind, party: seen.append((kind, party)))
    view.apply(block_record("agent", "bot", on=True, reason="", by="cli", since=1.0))
    assert view.blocked("assistant", "alice", ("bot",)) == "agent bot is blocked" and seen == [("agent", "bot")]
    with pytest.raises(ValueError):
        view.apply({"block": "team", "id": "x", "on": True, "since": 1})
