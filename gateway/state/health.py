"""Whether a process's revocation view is current, told once per outage: /readyz, a metric and a log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.metrics import STATE_LAST_SYNC, STATE_UP

log = logging.getLogger("tollbooth.state")


class StateUnavailable(Exception):
    """The shared-state backend could not take a write; nothing was changed there. The issuer answers 503
    `temporarily_unavailable` and the caller may retry."""


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Health:
    """Tracks one backend's outages. `current()` after every proof that the view is up to date (a successful read,
    a live subscription); `failed(exc)` when the view can no longer be kept current."""

    def __init__(self, backend: str, what: str, *, clock: Callable[[], float] = time.time):
        self._what = what
        self._clock = clock
        self._up = STATE_UP.labels(backend)
        self._last_sync = STATE_LAST_SYNC.labels(backend)
        self.down_since: float | None = None
        self.current_at: float | None = None  # the last moment the view was known to be complete
        self._reason = ""

    def current(self) -> None:
        now = self._clock()
        if self.down_since is not None:
            log.info(
                "shared state: %s reachable again after %.1f s; revocation view current",
                self._what,
                now - self.down_since,
            )
            self.down_since = None
        self.current_at = now
        self._up.set(1)
        self._last_sync.set(now)

    def failed(self, exc: BaseException) -> None:
        if self.down_since is not None:
            return  # one log line per outage, not one per retry
        self.down_since = self._clock()
        self._reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._up.set(0)
        as_of = "none loaded yet" if self.current_at is None else f"as of {_utc(self.current_at)}"
        log.error(
            "shared state: %s unreachable (%s); serving on the last known revocations (%s) until it returns",
            self._what,
            self._reason,
            as_of,
        )

    def problem(self) -> str | None:
        if self.down_since is None:
            return None
        as_of = "no revocations loaded yet" if self.current_at is None else f"revocations as of {_utc(self.current_at)}"
        return f"{self._what} unreachable since {_utc(self.down_since)} ({self._reason}); {as_of}"
