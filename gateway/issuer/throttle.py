"""Failed authentication, throttled (`issuer.auth_failure_limits`). Agents: per client address naming one agent,
and per client address whatever it names. People signing in (a budget of their own): the same two, and one more
per account from every address at the per-address rate, since a password guesser spreads over many addresses
(a higher bar than one address's, so locking a person out takes a flood, not ten tries).

Only failures are counted, in the rate limiter every replica shares (Redis when configured). A key whose failure
budget is spent is held here until the limiter says it refills: requests on it are answered 429 before any secret
is checked, so a guessing client costs neither CPU nor a Redis round trip, and nothing is counted for an agent
that authenticates. A client_id that names no agent is counted as `?`: a caller inventing names cannot make new
budgets, and an agent's budget is spent only by failures that name it, from that address.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.config import AuthFailureLimits, RateLimit
from gateway.state.ratelimit import RateLimiter, address_key, budget_address

# Keys look like a public route's per-address budget (so the in-memory limiter keeps them apart from agents' and
# evicts them first), under a name no route can have: route names begin with a letter or digit.
_BUDGET = "~token"
LOGIN_BUDGET = "~login"
UNKNOWN_CLIENT = "?"


def failure_keys(
    address: str, client_id: str | None, budget: str = _BUDGET, everywhere: bool = False
) -> tuple[str, ...]:
    """The budgets a failure from `address` naming `client_id` spends: per client at that address, per address,
    and with `everywhere` per client from every address."""
    per_address = address_key(budget, network_of(address))
    name = client_id or UNKNOWN_CLIENT
    keys = (f"{per_address}:client:{name}", per_address)
    return (*keys, f"{address_key(budget, '*')}:client:{name}") if everywhere else keys


def network_of(address: str) -> str:
    """The unit an address budget counts (an IPv6 /64), or the text itself when it is no IP."""
    return budget_address(address) or address


class AuthThrottle:
    def __init__(
        self,
        limiter: RateLimiter,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_held: int = 100_000,
        budget: str = _BUDGET,
        everywhere: bool = False,
    ) -> None:
        self._limiter = limiter
        self._clock = clock
        self._max_held = max_held
        self._budget = budget
        self._everywhere = everywhere
        self._held: OrderedDict[str, float] = OrderedDict()  # key → when it may try again (self._clock)

    def retry_after(self, address: str, client_id: str | None) -> int | None:
        """Whole seconds to wait before trying again, when one of the request's budgets is spent; else None."""
        now = self._clock()
        waits = [self._held[key] - now for key in self._keys(address, client_id) if key in self._held]
        live = [wait for wait in waits if wait > 0]
        return max(1, math.ceil(max(live))) if live else None

    async def failed(self, address: str, client_id: str | None, limits: AuthFailureLimits) -> None:
        """Count one failed authentication; hold the budgets it spent."""
        keys = self._keys(address, client_id)
        budgets = (limits.per_client, limits.per_address, limits.per_address)[: len(keys)]
        for key, limit in zip(keys, budgets, strict=True):
            if limit is not None:
                await self._count(key, limit)

    def _keys(self, address: str, client_id: str | None) -> tuple[str, ...]:
        return failure_keys(address, client_id, self._budget, self._everywhere)

    async def _count(self, key: str, limit: RateLimit) -> None:
        verdict = await self._limiter.check(key, limit)
        if verdict.allowed:
            return
        now = self._clock()
        self._held[key] = now + verdict.retry_after
        self._held.move_to_end(key)
        # Bounded memory under a flood of addresses: forget what no longer holds, then the oldest.
        while self._held:
            oldest, until = next(iter(self._held.items()))
            if until > now and len(self._held) <= self._max_held:
                break
            del self._held[oldest]
