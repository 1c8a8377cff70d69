"""Redis Cluster key placement: hash tags and slots as the Cluster specification defines them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot as redis_py_key_slot

from gateway.redis.slots import hash_tag, key_slot, slot_tag, tagged_prefix


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("{user1000}.following", "user1000"),
        ("foo{}{bar}", None),  # the first { is followed by }: the whole key is hashed
        ("foo{{bar}}zap", "{bar"),
        ("foo{bar}{zap}", "bar"),
        ("tollbooth:audit", None),
        ("{tollbooth}:audit", "tollbooth"),
        ("open{only", None),
    ],
)
def test_hash_tag_follows_the_cluster_specification(key: str, tag: str | None) -> None:
    assert hash_tag(key) == tag


@pytest.mark.parametrize(("key", "slot"), [("somekey", 11058), ("foo", 12182), ("{foo}:anything", 12182)])
def test_key_slot_matches_what_cluster_keyslot_answers(key: str, slot: int) -> None:
    assert key_slot(key) == slot


@given(st.text())
def test_key_slot_agrees_with_the_redis_client(key: str) -> None:
    assert key_slot(key) == redis_py_key_slot(key.encode())


@pytest.mark.parametrize(
    ("prefix", "tagged"),
    [("tollbooth:", "{tollbooth}:"), ("app", "{app}"), ("{tb}:", "{tb}:"), ("a{x}b:", "a{x}b:"), ("x::", "{x}::")],
)
def test_tagged_prefix_puts_every_key_under_it_in_one_slot(prefix: str, tagged: str) -> None:
    assert tagged_prefix(prefix) == tagged
    assert key_slot(tagged + "revoked:jtis") == key_slot(tagged + "family:f1:tokens")


def test_a_prefix_without_a_name_cannot_become_a_tag() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        tagged_prefix(":")


@given(st.text(min_size=1))
def test_slot_tag_moves_any_key_into_the_given_keys_slot(key: str) -> None:
    assert key_slot(slot_tag(key) + "anything:else") == key_slot(key)
