"""Rate limits at the proxy: whose budget a request counts against, and what a refused agent is told."""

from __future__ import annotations

import pytest

from gateway.config import RateLimit
from gateway.principal import Principal
from gateway.proxy.admit import client_address, describe, limit_key, limited_description, retry_after_header
from gateway.proxy.head import RequestHead, scan_headers
from gateway.state.gcra import RateVerdict

DIRECT = Principal("billing-bot", "billing-bot", frozenset(), "j1", "https://issuer.test", 2e9, 1e9)
DELEGATED = Principal("billing-bot", "user:alice", frozenset(), "j2", "https://issuer.test", 2e9, 1e9, ("billing-bot",))


OURS = "https://issuer.test"


def test_the_acting_agent_is_counted_not_the_user_it_acts_for() -> None:
    assert limit_key("get-customer", DELEGATED, "10.0.0.1", OURS) == limit_key("get-customer", DIRECT, "10.0.0.2", OURS)
    assert limit_key("get-customer", DELEGATED, "10.0.0.1", OURS) == "get-customer:agent:billing-bot"


def test_each_route_has_its_own_budget() -> None:
    assert limit_key("a", DIRECT, "", OURS) != limit_key("b", DIRECT, "", OURS)


def test_without_a_token_the_client_address_is_counted() -> None:
    assert limit_key("status", None, "10.0.0.1", OURS) == "status:ip:10.0.0.1"
    # An agent whose client_id looks like an address does not share that address's budget.
    named_like_an_address = Principal("10.0.0.1", "10.0.0.1", frozenset(), "j3", OURS, 2e9, 1e9)
    assert limit_key("status", None, "10.0.0.1", OURS) != limit_key("status", named_like_an_address, "10.0.0.1", OURS)


def test_an_identity_providers_client_does_not_spend_our_agents_budget() -> None:
    # accept_at_proxy: an IdP's token whose client_id is "billing-bot" is another party than our billing-bot.
    theirs = Principal("billing-bot", "billing-bot", frozenset(), "j4", "https://idp.example", 2e9, 1e9)
    key = limit_key("get-customer", theirs, "", OURS)
    assert key != limit_key("get-customer", DIRECT, "", OURS)
    assert key.startswith("get-customer:iss:") and key.endswith(":agent:billing-bot") and "idp.example" not in key


@pytest.mark.parametrize(
    ("headers", "trust", "expected"),
    [
        ([(b"x-forwarded-for", b"1.1.1.1")], False, "10.0.0.9"),  # a client's claim is not believed
        ([(b"x-forwarded-for", b"6.6.6.6, 1.1.1.1")], True, "1.1.1.1"),  # what the load balancer saw
        ([(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"2.2.2.2 ")], True, "2.2.2.2"),
        ([], True, "10.0.0.9"),
        ([(b"x-forwarded-for", b"")], True, "10.0.0.9"),
        # Not an address: not believed, whatever a load balancer let through.
        ([(b"x-forwarded-for", b"junk-" + b"x" * 60000)], True, "10.0.0.9"),
        ([(b"x-forwarded-for", b"1.1.1.1, unknown")], True, "10.0.0.9"),
        # IPv6 counts by /64: every address in a subscriber's block is one budget.
        ([(b"x-forwarded-for", b"2001:db8:1:2:aaaa::1")], True, "2001:db8:1:2::/64"),
        ([(b"x-forwarded-for", b"2001:db8:1:2:bbbb::7")], True, "2001:db8:1:2::/64"),
        ([(b"x-forwarded-for", b"::ffff:1.2.3.4")], True, "1.2.3.4"),
        ([(b"x-forwarded-for", b"01.1.1.1")], True, "10.0.0.9"),
    ],
)
def test_client_address(headers: list[tuple[bytes, bytes]], trust: bool, expected: str) -> None:
    head = RequestHead(headers=headers)
    scan_headers(head, headers)  # the last X-Forwarded-For field is the one that counts, as the head keeps it
    assert client_address(head.forwarded_for, "10.0.0.9", trust_forwarded=trust) == expected


@pytest.mark.parametrize(("wait", "header"), [(20.0, b"20"), (19.01, b"20"), (0.2, b"1"), (0.0, b"1"), (59.999, b"60")])
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(wait: float, header: bytes) -> None:
    assert retry_after_header(RateVerdict(False, wait, 0)) == header


@pytest.mark.parametrize(
    ("limit", "text"),
    [
        (RateLimit(60, 60), "60/minute"),
        (RateLimit(10, 1), "10/second"),
        (RateLimit(5, 86400), "5/day"),
        (RateLimit(5, 90), "5/90s"),
    ],
)
def test_limits_are_described_as_written(limit: RateLimit, text: str) -> None:
    assert describe(limit) == text


def test_the_description_says_whose_budget_where_and_when_to_come_back() -> None:
    text = limited_description(RateLimit(3, 60), "get-customer", DELEGATED, RateVerdict(False, 19.2, 0))
    assert text == "agent billing-bot has used its rate limit of 3/minute on route get-customer; retry after 20 s"
    assert "client address" in limited_description(RateLimit(3, 60), "status", None, RateVerdict(False, 1, 0))
