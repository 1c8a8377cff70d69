"""The rate-limit algorithm: GCRA, a pure function of the stored state and the time.

A route's `rate_limit: N/window` gives every agent its own budget on that route: N requests at once, refilled at
N per window. GCRA (the generic cell rate algorithm, ITU-T I.371) is a token bucket kept as one number, the
"theoretical arrival time" (TAT) at which the bucket would be full again. Chosen over the alternatives because:
- a fixed window counter lets an agent send N at the end of one window and N more at the start of the next, 2N
  within a moment; GCRA never allows more than N at once, and never more than N + d/interval in any span d;
- a sliding log is exact too but keeps one entry per request (O(N) memory per agent); GCRA keeps one number;
- the wait is exact: a refused request learns when the next one will pass, which is its `Retry-After`;
- in Redis it is one key per (route, agent) read and written by one Lua script (gateway.state.ratelimit): atomic
  across replicas, one round trip, safe for Redis Cluster (a single key), and the key expires once the bucket is
  full again, so idle agents cost nothing.

Times are whole microseconds. The interval (window/N) is rounded up to one, so the sustained rate never exceeds the
configured one; the burst is counted in intervals ("at most N - 1 intervals ahead"), not compared with the window, so
exactly N requests fit at one instant however the interval rounds. Lua's doubles hold these integers exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import RateLimit

MICROSECONDS = 1_000_000


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """The answer for one request. `retry_after` (seconds) is 0 when allowed; `remaining` is how many more
    requests would pass right now. `degraded`: counted in this process only, the shared store being unreachable."""

    allowed: bool
    retry_after: float
    remaining: int
    degraded: bool = False


def interval_us(limit: RateLimit) -> int:
    """The refill interval: one request per window/N, in whole microseconds rounded up."""
    return -(-limit.window_seconds * MICROSECONDS // limit.limit)


def gcra(tat: int | None, now: int, limit: RateLimit) -> tuple[RateVerdict, int | None]:
    """The verdict for a request at `now` against the stored `tat` (None: no request seen lately), and the TAT to
    store (None: leave it as it is). All times in microseconds."""
    interval = interval_us(limit)
    burst = limit.limit * interval  # how far ahead of now a full budget's worth of requests pushes the TAT
    # Clamped to a full burst ahead: a TAT stored under a longer window (before a reload) must not outlast the new one.
    ahead = 0 if tat is None else min(max(tat - now, 0), burst)
    wait = ahead - (burst - interval)
    if wait > 0:
        return RateVerdict(False, wait / MICROSECONDS, 0), None
    return RateVerdict(True, 0.0, (burst - ahead - interval) // interval), now + ahead + interval
