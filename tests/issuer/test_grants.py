"""The pure decisions of the token endpoint: scopes, lifetimes, audiences, delegation chains."""

from __future__ import annotations

import pytest

from gateway.issuer.grants import choose_scopes, may_act_for, nest_act, parse_scope, resource_audience, token_ttl
from gateway.issuer.oauth import OAuthError

PUBLIC = "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("a", ["a"]), ("a b", ["a", "b"]), ("a  b a", ["a", "b"]), ("crm.read", ["crm.read"])],
)
def test_scope_parameter_is_space_delimited_and_deduplicated(value: str | None, expected: list[str] | None) -> None:
    assert parse_scope(value) == expected


@pytest.mark.parametrize("value", ['a"b', "a\\b", "caf\u00e9", " ", "a\tb"])
def test_malformed_scope_is_invalid_scope(value: str) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_scope(value)
    assert caught.value.error == "invalid_scope"


def test_no_scope_asked_gives_the_defaults_within_every_limit() -> None:
    limits = [({"a", "b", "c"}, "agent"), ({"a", "c"}, "the subject token")]
    assert choose_scopes(None, ["a", "b", "c"], limits) == ["a", "c"]


def test_requested_scope_outside_a_limit_is_refused_by_name() -> None:
    with pytest.raises(OAuthError) as caught:
        choose_scopes(["a", "z"], ["a"], [({"a"}, "agent bot")])
    assert caught.value.error == "invalid_scope"
    assert "z" in caught.value.description and "agent bot" in caught.value.description


def test_subject_token_limit_names_the_subject_token() -> None:
    with pytest.raises(OAuthError) as caught:
        choose_scopes(["a", "b"], [], [({"a", "b"}, "agent"), ({"a"}, "the subject token")])
    assert "the subject token does not allow b" == caught.value.description


def test_ttl_is_the_smallest_cap() -> None:
    assert token_ttl(300, None, 60, None) == 60
    assert token_ttl(300, 600) == 300


def test_ttl_below_a_second_is_an_expired_grant() -> None:
    with pytest.raises(OAuthError) as caught:
        token_ttl(300, 0.5)
    assert caught.value.error == "invalid_grant"


@pytest.mark.parametrize(
    "resource",
    [PUBLIC, PUBLIC + "/", PUBLIC + "/mcp", PUBLIC + "/mcp/x?y=1", "HTTP://127.0.0.1:8080/mcp"],
)
def test_resource_at_or_under_the_proxy_maps_to_the_public_url(resource: str) -> None:
    assert resource_audience([resource], PUBLIC) == PUBLIC


def test_no_resource_is_the_public_url() -> None:
    assert resource_audience([], PUBLIC) == PUBLIC


@pytest.mark.parametrize(
    "resource",
    [
        "http://127.0.0.1:8081",
        "http://127.0.0.1:80801/mcp",
        "http://127.0.0.1:8080.evil.example/mcp",
        "https://127.0.0.1:8080/mcp",
        "http://127.0.0.1:8080/mcp#frag",
        "http://127.0.0.1:8080/a/../b",
        "http://user@evil.example",
        "mcp",
        "urn:example:resource",
        "http://[::1",
    ],
)
def test_resource_elsewhere_is_invalid_target(resource: str) -> None:
    with pytest.raises(OAuthError) as caught:
        resource_audience([resource], PUBLIC)
    assert caught.value.error == "invalid_target"


def test_every_resource_must_be_ours() -> None:
    with pytest.raises(OAuthError):
        resource_audience([PUBLIC + "/mcp", "https://other.example"], PUBLIC)


def test_resource_under_a_public_url_with_a_path_stays_under_that_path() -> None:
    public = "https://api.example.com/crm"
    assert resource_audience(["https://api.example.com:443/crm/mcp"], public) == public
    with pytest.raises(OAuthError):
        resource_audience(["https://api.example.com/crmx"], public)


def test_act_nests_the_newest_actor_outermost() -> None:
    assert nest_act("b", None) == {"sub": "b"}
    assert nest_act("c", {"sub": "b", "act": {"sub": "a"}}) == {"sub": "c", "act": {"sub": "b", "act": {"sub": "a"}}}


@pytest.mark.parametrize(
    ("patterns", "subject", "allowed"),
    [
        (["*"], "alice", True),
        (["alice"], "alice", True),
        (["alice"], "bob", False),
        ([], "alice", False),
        (["user:*"], "user:alice", True),
        (["user:*"], "org:acme", False),
        (["user:a*"], "user:bob", False),
        (["user:alice"], "user:alice2", False),
    ],
)
def test_may_act_for(patterns: list[str], subject: str, allowed: bool) -> None:
    assert may_act_for(patterns, subject) is allowed
