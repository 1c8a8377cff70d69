"""Approval holds: a call held until a person approves that exact call (DESIGN.md, "Next waves").

An approval names the call it is for: agent, subject and actor chain, method, path, the SHA-256 of the body (for
MCP, of the tool name and arguments), the route and rule, and the policy version in force. Its `binding` is the
hash of all of those, so an identical retry finds it and anything changed needs a new one. A decision stands for
`valid_for`; an approved one lets one call through (a ticket taken atomically, so two replicas cannot both use
it). Records live in the shared records (state.ephemeral: Redis when configured), so a call held on one replica
can be approved through another.

Records: approval:<id> (JSON), approval-for:<binding> (its id), approval-ticket:<id> (present once approved, taken
by the call that passes), and the list approvals (ids, for listing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.state.ephemeral import Ephemeral

PENDING, APPROVED, DENIED = "pending", "approved", "denied"
_INDEX_TTL = 7 * 86400.0
MAX_LISTED = 10_000  # the newest approvals the index keeps for listing (every held call of every agent adds one)


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    wait: float  # seconds the call is held open
    valid_for: float  # seconds a request (and its decision) stands


def hold_policy(rule: Any) -> HoldPolicy | None:
    """The HoldPolicy of a route or MCP tool rule config (`approval`, `approval_wait`, `approval_valid_for`)."""
    if getattr(rule, "approval", "none") != "required":
        return None
    return HoldPolicy(float(rule.approval_wait), float(rule.approval_valid_for))


@dataclass(frozen=True, slots=True)
class Call:
    """What an approval is for, exactly."""

    agent: str
    subject: str
    actors: tuple[str, ...]
    method: str
    path: str
    body_sha256: str
    route: str
    rule: str  # the MCP rule (tools[0] (delete_*)), "" for a route's own approval
    policy: str  # the version of the rules in force

    @property
    def binding(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.astuple(self)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    call: Call
    status: str
    requested_at: float
    expires_at: float
    decided_by: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "call": dataclasses.asdict(self.call)}


def _load(raw: str | None) -> Approval | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        call = Call(**{**data["call"], "actors": tuple(data["call"]["actors"])})
        return Approval(**{**data, "call": call})
    except (ValueError, TypeError, KeyError):
        return None


class Approvals:
    def __init__(self, store: Ephemeral, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def for_call(self, call: Call) -> Approval | None:
        """The live approval for exactly this call, if any."""
        approval_id = await self._store.get(f"approval-for:{call.binding}")
        return await self.get(approval_id) if approval_id else None

    async def request(self, call: Call, policy: HoldPolicy) -> Approval:
        now = self._clock()
        approval = Approval(secrets.token_urlsafe(12), call, PENDING, now, now + policy.valid_for)
        await self._put(approval)
        await self._store.put(f"approval-for:{call.binding}", approval.id, policy.valid_for)
        await self._store.append("approvals", approval.id, _INDEX_TTL, keep=MAX_LISTED)
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        approval = _load(await self._store.get(f"approval:{approval_id}"))
        return approval if approval is not None and approval.expires_at > self._clock() else None

    async def decide(self, approval_id: str, *, approve: bool, by: str, reason: str) -> Approval | None:
        """Approve or deny a pending approval; None when there is none to decide (unknown, expired, decided)."""
        approval = await self.get(approval_id)
        if approval is None or approval.status != PENDING:
            return None
        decided = dataclasses.replace(approval, status=APPROVED if approve else DENIED, decided_by=by, reason=reason)
        await self._put(decided)
        if approve:
            await self._store.put(f"approval-ticket:{approval_id}", "1", decided.expires_at - self._clock())
        return decided

    async def use(self, approval: Approval) -> bool:
        """Let one call through on an approved approval: True for the one that takes its ticket."""
        return await self._store.take(f"approval-ticket:{approval.id}") is not None

    async def pending(self) -> list[Approval]:
        found = [await self.get(approval_id) for approval_id in dict.fromkeys(await self._store.items("approvals"))]
        return [approval for approval in found if approval is not None and approval.status == PENDING]

    async def _put(self, approval: Approval) -> None:
        ttl = approval.expires_at - self._clock()
        await self._store.put(f"approval:{approval.id}", json.dumps(approval.to_json()), max(ttl, 0.001))
