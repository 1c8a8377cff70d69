"""GCRA, the rate-limit algorithm: a pure function of the stored TAT and the time (injected, in microseconds)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import RateLimit
from gateway.state.gcra import MICROSECONDS, RateVerdict, gcra, interval_us

T0 = 1_750_000_000 * MICROSECONDS
PER_MINUTE_3 = RateLimit(3, 60)


def run(limit: RateLimit, offsets: list[float]) -> list[RateVerdict]:
    """The verdicts for requests at T0 + each offset (seconds), the TAT carried from one to the next."""
    tat: int | None = None
    verdicts = []
    for offset in offsets:
        verdict, new_tat = gcra(tat, T0 + round(offset * MICROSECONDS), limit)
        tat = tat if new_tat is None else new_tat
        verdicts.append(verdict)
    return verdicts


def test_the_whole_budget_passes_at_once_then_the_next_waits_one_interval() -> None:
    assert run(PER_MINUTE_3, [0, 0, 0, 0]) == [
        RateVerdict(True, 0.0, 2),
        RateVerdict(True, 0.0, 1),
        RateVerdict(True, 0.0, 0),
        RateVerdict(False, 20.0, 0),
    ]


@pytest.mark.parametrize(
    ("offsets", "last"),
    [
        ([0, 0, 0, 5], RateVerdict(False, 15.0, 0)),  # the wait is exact, not a window's end
        ([0, 0, 0, 20], RateVerdict(True, 0.0, 0)),  # one interval later, one request fits
        ([0, 0, 0, 40], RateVerdict(True, 0.0, 1)),
        ([0, 0, 0, 600], RateVerdict(True, 0.0, 2)),  # refilled, and never above the budget
        ([0, 0, 0, 0, 0, 19.5], RateVerdict(False, 0.5, 0)),  # refused requests do not push the wait further
    ],
)
def test_the_budget_refills_one_request_per_interval(offsets: list[float], last: RateVerdict) -> None:
    assert run(PER_MINUTE_3, offsets)[-1] == last


@pytest.mark.parametrize("n", [7, 11, 13, 1000, 86400])
def test_n_requests_at_one_instant_all_fit_whatever_the_rounding(n: int) -> None:
    # 60/7 s is no exact binary fraction: summed in floating point the 7th could be refused.
    verdicts = run(RateLimit(n, 60), [0] * (n + 1))
    assert all(v.allowed for v in verdicts[:n]) and not verdicts[n].allowed


def test_a_refused_request_changes_nothing() -> None:
    verdict, new_tat = gcra(T0 + 60 * MICROSECONDS, T0, PER_MINUTE_3)
    assert (verdict.allowed, new_tat) == (False, None)


def test_a_tat_from_a_longer_window_is_cut_to_the_new_one() -> None:
    # 1/day spent, then the route is reloaded as 10/second: the agent waits under a second, not a day.
    _, tat = gcra(None, T0, RateLimit(1, 86400))
    verdict, _ = gcra(tat, T0, RateLimit(10, 1))
    assert not verdict.allowed and verdict.retry_after == pytest.approx(0.1)


def test_interval_is_whole_microseconds_rounded_up() -> None:
    assert interval_us(RateLimit(3, 60)) == 20 * MICROSECONDS
    assert interval_us(RateLimit(7, 60)) == 8_571_429  # rounded up: never faster than configured
    assert interval_us(RateLimit(10_000_000, 1)) == 1


limits = st.builds(RateLimit, st.integers(1, 20), st.sampled_from([1, 60, 3600]))
gaps = st.lists(st.integers(0, 5 * MICROSECONDS), min_size=1, max_size=60)


@given(limits, gaps)
def test_no_span_admits_more_than_the_budget_plus_its_refill(limit: RateLimit, steps: list[int]) -> None:
    tat, admitted = None, []
    now = T0
    for step in steps:
        now += step
        verdict, new_tat = gcra(tat, now, limit)
        if verdict.allowed:
            tat = new_tat
            admitted.append(now)
    interval = interval_us(limit)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            # No burst-at-the-edge doubling: any span d holds at most N + d / interval requests.
            assert j - i + 1 <= limit.limit + (admitted[j] - start) // interval


@given(limits, st.integers(0, 10))
def test_waiting_exactly_retry_after_is_enough(limit: RateLimit, extra: int) -> None:
    tat = None
    for _ in range(limit.limit + extra):
        verdict, new_tat = gcra(tat, T0, limit)
        tat = tat if new_tat is None else new_tat
    verdict, _ = gcra(tat, T0, limit)
    assert not verdict.allowed
    wait = round(verdict.retry_after * MICROSECONDS)
    assert gcra(tat, T0 + wait, limit)[0].allowed
    assert not gcra(tat, T0 + wait - 1, limit)[0].allowed
