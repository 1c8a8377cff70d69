"""Shared state without Redis: revocations in a file every process of the machine follows, the rest in memory.

Revocations survive a restart and reach every `--workers` process (and come from `tollbooth revoke`) through the
revocations file, within one poll interval. Refresh families and assertion `jti`s live in this process only: with
several workers and no Redis, a refresh token works only at the worker that issued it, and an assertion replayed
at another worker is not recognised. Configure `redis.url` for more than one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.metrics import STATE_RELOADS
from gateway.state.ephemeral import Ephemeral, MemoryEphemeral
from gateway.state.health import Health, StateUnavailable
from gateway.state.journal import RevocationJournal
from gateway.state.memory import RefreshFamilies, ReplayCache
from gateway.state.refresh_families import RefreshGrant, RefreshReused, check_token_hash
from gateway.state.revocations import RevocationList

log = logging.getLogger("tollbooth.state")


class LocalState:
    """`SharedState` for one machine. Writes work without `start()`, which `tollbooth revoke` relies on: open the
    state, revoke, `aclose()`. Only a process that reads `revocations` needs `start()`."""

    def __init__(
        self,
        revocations_file: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        retention: float = 300.0,
        poll_interval: float = 0.5,
    ):
        self.revocations = RevocationList(clock=clock, retain_after_expiry=retention)
        self._clock = clock
        self._journal = RevocationJournal(Path(revocations_file))
        self._poll_interval = poll_interval
        self._families = RefreshFamilies(
            cut_off=lambda g: self.revocations.is_cut_off(g.agent, g.subject, g.issued_at),
            retention=retention,
            clock=clock,
        )
        self._assertions = ReplayCache(retention=retention, clock=clock)
        self.ephemeral: Ephemeral = MemoryEphemeral(clock=clock)
        self._health = Health("file", f"revocations file {self._journal.path}", clock=clock)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load every revocation in the file (expired ones are skipped), then follow it."""
        # Create the file if need be: its existence tells `tollbooth revoke` it writes where a gateway reads.
        with contextlib.suppress(OSError):  # an unwritable file shows as a problem when a revocation is written
            await asyncio.to_thread(self._journal.append, [])
        loaded = await self._catch_up()
        STATE_RELOADS.labels("file", "ok" if loaded else "error").inc()
        self._task = asyncio.create_task(self._follow(), name="tollbooth-state-file")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def problem(self) -> str | None:
        return self._health.problem()

    async def revoke_jti(self, jti: str, expires_at: float) -> None:
        await self._revoke([{"jti": jti, "exp": expires_at}])

    async def revoke_agent_before(self, agent: str, before: float) -> None:
        await self._revoke([{"agent": agent, "before": before}])

    async def revoke_subject_before(self, subject: str, before: float) -> None:
        await self._revoke([{"subject": subject, "before": before}])

    async def set_block(self, record: dict[str, object]) -> None:
        await self._revoke([record])

    async def use_assertion_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        return self._assertions.first_use((client_id, jti), expires_at)

    async def store_refresh(self, token_hash: str, grant: RefreshGrant) -> None:
        self._families.store(check_token_hash(token_hash), grant)

    async def rotate_refresh(self, old_hash: str, new_hash: str, now: float) -> RefreshGrant | None:
        try:
            return self._families.rotate(check_token_hash(old_hash), check_token_hash(new_hash), now)
        except RefreshReused as reused:
            await self.revoke_family(reused.grant.family)  # the access tokens minted from it, too
            raise

    async def record_family_token(self, family: str, jti: str, expires_at: float) -> bool:
        if self._families.record(family, jti, expires_at):
            return True
        await self.revoke_jti(jti, expires_at)
        return False

    async def find_refresh(self, token_hash: str, *, unspent: bool = False) -> RefreshGrant | None:
        return self._families.find(check_token_hash(token_hash), self._clock(), unspent=unspent)

    async def revoke_family(self, family: str) -> None:
        tokens = self._families.revoke(family)
        if tokens:
            await self._revoke([{"jti": jti, "exp": exp} for jti, exp in tokens])

    async def _revoke(self, records: list[dict[str, Any]]) -> None:
        # In force here at once; the other processes learn of it from the file.
        for record in records:
            self.revocations.apply(record)
        at = round(self._clock(), 3)  # for people reading the file; readers ignore it
        try:
            await asyncio.to_thread(self._journal.append, [{**record, "at": at} for record in records])
        except OSError as exc:
            raise StateUnavailable(
                f"revocations file {self._journal.path} not writable ({exc}): the revocation holds in this process "
                "only and will not survive a restart"
            ) from exc

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)  # a polling period, not synchronisation
            await self._catch_up()

    async def _catch_up(self) -> bool:
        try:
            if self._journal.changed():
                self._apply(await asyncio.to_thread(self._journal.read_new))
        except OSError as exc:
            self._health.failed(exc)
            return False
        self._health.current()
        return True

    def _apply(self, records: Sequence[Mapping[str, Any]]) -> None:
        for record in records:
            try:
                self.revocations.apply(record)
            except ValueError as exc:
                log.warning("revocations file %s: skipping a record: %s", self._journal.path, exc)
