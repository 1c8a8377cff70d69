"""gateway.wire: each protocol constant spelled once, and the one quoted-string rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import wire

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
SPELLED_ONCE = [
    wire.PROTECTED_RESOURCE_PATH,
    wire.AUTHORIZATION_SERVER_PATH,
    wire.JWKS_PATH,
    wire.TOKEN_EXCHANGE,
    wire.ACCESS_TOKEN_TYPE,
    wire.JWT_TOKEN_TYPE,
    wire.ASSERTION_TYPE,
    r"[\x21\x23-\x5B\x5D-\x7E]",
]


@pytest.mark.parametrize("literal", SPELLED_ONCE)
def test_constant_is_spelled_only_in_wire(literal: str) -> None:
    elsewhere = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "wire.py" and f'"{literal}"' in path.read_text().replace('r"', '"')
    ]
    assert elsewhere == []


@pytest.mark.parametrize(
    ("text", "spaces", "expected"),
    [
        ("The access token has expired", True, "The access token has expired"),
        ('say "hi"', True, "say 'hi'"),
        ("a\\b", True, "a/b"),
        ("line\r\nbreak", True, "line??break"),
        ("naïve", True, "na?ve"),
        ("read write", False, "read?write"),
        ("https://gw.example/.well-known/x", False, "https://gw.example/.well-known/x"),
    ],
)
def test_quotable_keeps_a_quoted_string_whole(text: str, spaces: bool, expected: str) -> None:
    assert wire.quotable(text, spaces=spaces) == expected


@pytest.mark.parametrize(
    ("scope", "valid"),
    [("read", True), ("mcp:tools", True), ('a"b', False), ("a\\b", False), ("a b", False), ("", False)],
)
def test_scope_token_grammar(scope: str, valid: bool) -> None:
    assert bool(wire.SCOPE_TOKEN.match(scope)) is valid
