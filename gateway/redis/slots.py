"""Where Redis Cluster keeps a key, so that the keys one Lua script touches live together.

Cluster runs a script on the node of its keys and refuses one whose keys fall in different hash slots. A key's slot
is CRC16 of its hash tag (the text between its first `{` and the next `}`, when not empty), else of the whole key,
modulo 16384; keys with the same tag share a slot (Redis Cluster specification, "Hash tags").
"""

from __future__ import annotations

import itertools
from binascii import crc_hqx  # CRC16-XMODEM, the checksum Redis Cluster uses

SLOTS = 16384


def hash_tag(key: str) -> str | None:
    """The part of `key` Cluster hashes, when it is not the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else None


def key_slot(key: str) -> int:
    tag = hash_tag(key)
    return crc_hqx((key if tag is None else tag).encode(), 0) % SLOTS


def tagged_prefix(prefix: str) -> str:
    """A key prefix under which every key is in one slot: `prefix` when it already has a hash tag, else with its
    name made one (`tollbooth:` becomes `{tollbooth}:`)."""
    if hash_tag(prefix) is not None:
        return prefix
    name = prefix.rstrip(":")
    if not name:
        raise ValueError(f"key prefix {prefix!r}: a prefix needs a name to become a hash tag on Redis Cluster")
    return "{" + name + "}" + prefix[len(name) :]


def slot_tag(key: str) -> str:
    """A short hash tag (like `{4711}`) in `key`'s slot: put in front of another key, it moves that key into `key`'s
    slot without renaming `key`. Found by search, one slot in 16384 per candidate: a few milliseconds."""
    slot = key_slot(key)
    return next(f"{{{n}}}" for n in itertools.count() if crc_hqx(str(n).encode(), 0) % SLOTS == slot)
