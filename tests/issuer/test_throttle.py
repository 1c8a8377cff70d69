"""The failure throttle's decisions with a clock of our own: holds, refills, limits turned off, bounded memory;
and which agent a request claims to be before anything is verified."""

from __future__ import annotations

import base64

import pytest
from support import Clock

from gateway.config import AuthFailureLimits
from gateway.issuer.clients import claimed_client_id
from gateway.issuer.oauth import Form
from gateway.issuer.throttle import AuthThrottle, failure_keys, network_of
from gateway.state.ratelimit import LocalRateLimiter

pytestmark = pytest.mark.anyio
LIMITS = AuthFailureLimits(per_client="2/minute", per_address="100/minute")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def throttle(clock: Clock) -> AuthThrottle:
    return AuthThrottle(LocalRateLimiter(clock=clock), clock=clock)


async def test_held_after_the_budget_and_free_once_it_refills(throttle: AuthThrottle, clock: Clock) -> None:
    for _ in range(2):
        await throttle.failed("10.0.0.1", "bot", LIMITS)
        assert throttle.retry_after("10.0.0.1", "bot") is None
    await throttle.failed("10.0.0.1", "bot", LIMITS)
    assert throttle.retry_after("10.0.0.1", "bot") == 30  # 2/minute: one more every 30 s
    assert throttle.retry_after("10.0.0.2", "bot") is None and throttle.retry_after("10.0.0.1", "other") is None
    clock.now += 29.5
    assert throttle.retry_after("10.0.0.1", "bot") == 1  # rounded up, never 0
    clock.now += 1
    assert throttle.retry_after("10.0.0.1", "bot") is None


async def test_a_limit_set_to_null_is_off(throttle: AuthThrottle) -> None:
    off = AuthFailureLimits(per_client=None, per_address=None)
    for _ in range(50):
        await throttle.failed("10.0.0.1", "bot", off)
    assert throttle.retry_after("10.0.0.1", "bot") is None


async def test_holds_are_bounded(clock: Clock) -> None:
    throttle = AuthThrottle(LocalRateLimiter(clock=clock), clock=clock, max_held=10)
    tight = AuthFailureLimits(per_client="1/hour", per_address=None)
    for n in range(50):
        for _ in range(2):
            await throttle.failed(f"10.0.1.{n}", None, tight)
    assert len(throttle._held) == 10
    assert throttle.retry_after("10.0.1.49", None) is not None


def test_unknown_names_share_one_key_and_addresses_never_meet() -> None:
    assert failure_keys("10.0.0.1", None) == failure_keys("10.0.0.1", None)
    assert failure_keys("10.0.0.1", "bot")[1] == failure_keys("10.0.0.1", None)[1]
    assert failure_keys("10.0.0.1", "bot")[0] != failure_keys("10.0.0.11", "bot")[0]


async def test_sign_in_failures_for_one_account_count_from_every_address(clock: Clock) -> None:
    """A password guesser spreads over addresses: the people's budget is also per account, wherever the guess is
    from, at the (higher) per-address rate, so ten tries cannot lock a person out; and it is not the agents'
    budget (a flood of sign-ins never holds an agent's authentication)."""
    limiter = LocalRateLimiter(clock=clock)
    limits = AuthFailureLimits(per_client="2/minute", per_address="4/minute")
    login = AuthThrottle(limiter, clock=clock, budget="~login", everywhere=True)
    agents = AuthThrottle(limiter, clock=clock)
    for n in range(3):
        await login.failed(f"10.0.2.{n}", "alice", limits)
    assert login.retry_after("10.0.9.9", "alice") is None  # three tries from three places: not yet
    for n in range(3, 6):
        await login.failed(f"10.0.2.{n}", "alice", limits)
    assert login.retry_after("10.0.9.9", "alice") is not None
    assert login.retry_after("10.0.9.9", "bob") is None
    assert agents.retry_after("10.0.2.0", "alice") is None


def test_an_ipv6_host_is_counted_by_its_64():
    assert network_of("2001:db8:1:2:aaaa::1") == network_of("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert network_of("2001:db8:1:3::1") != network_of("2001:db8:1:2::1")
    assert network_of("::ffff:10.0.0.1") == "10.0.0.1" and network_of("10.0.0.1") == "10.0.0.1"


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("values", "authorization", "expected"),
    [
        ({}, _basic("bot:secret"), "bot"),
        ({}, _basic("stranger:secret"), None),
        ({}, "Basic !!!", None),
        ({"client_id": ["bot"]}, None, "bot"),
        ({"client_id": ["nobody"]}, None, None),
        ({"client_assertion": ["not.a.jwt"]}, None, None),
        ({}, None, None),
    ],
)
def test_the_claimed_agent_is_read_without_raising(
    values: dict[str, list[str]], authorization: str | None, expected: str | None
) -> None:
    assert claimed_client_id(Form(values), authorization, ["bot"]) == expected
