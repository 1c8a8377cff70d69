"""The in-process revocation view the proxy reads on every request, and the record format that feeds it.

A revocation record is a small JSON object, the same in the revocations file (one per line) and in Redis pub/sub
messages (a JSON array of them):

    {"jti": "<token id>", "exp": <the token's exp>}
    {"agent": "<client_id>", "before": <Unix time>}
    {"subject": "<sub>", "before": <Unix time>}
    {"block": "agent" | "subject", "id": "<client_id or sub>", "on": true | false, "since": <Unix time>,
     "reason": "<why>", "by": "<who>"}

A block (the kill switch) is the one thing that can be undone: for each agent or subject the record with the
latest `since` wins, so applying block records twice or in any order still gives the same view.
Numbers may arrive as strings (Redis hands sorted-set scores to Lua as strings). Other fields are ignored.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.metrics import BLOCKS_ACTIVE
from gateway.principal import Principal

_NEVER = float("-inf")


class RevocationList:
    """Revoked token ids, and "everything issued to this agent / for this subject before T" cut-offs.

    The proxy asks `is_revoked` on every request, cached token or not, so the check is three dict lookups.
    A revoked jti is kept until `retain_after_expiry` seconds past its token's `exp`: the verifier still accepts
    a token within its clock leeway after `exp`, so the entry must outlive that. Cut-offs only ever move forward
    (a later cut-off revokes everything an earlier one did) and are kept. Nothing is ever un-revoked, so applying
    the same records twice, or in any order, gives the same view: a full reload can merge instead of replace.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, retain_after_expiry: float = 300):
        self._clock = clock
        self._retain = retain_after_expiry
        self._jtis: dict[str, float] = {}  # jti -> expires_at
        self._expiry: list[tuple[float, str]] = []  # min-heap of (expires_at, jti), to forget entries in order
        self._agents: dict[str, float] = {}
        self._subjects: dict[str, float] = {}
        self._blocks: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, id) -> its latest block record
        self._blocked: dict[str, dict[str, str]] = {"agent": {}, "subject": {}}  # kind -> id -> reason, while on
        # Called with (kind, id) when a block comes into force here: the proxy ends that party's open streams.
        self.on_block: list[Callable[[str, str], None]] = []

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        horizon = self._clock() - self._retain
        self._forget_before(horizon)
        # A token past expiry + retention is refused by the verifier anyway: skip it rather than hold it.
        if expires_at >= horizon and expires_at > self._jtis.get(jti, _NEVER):
            self._jtis[jti] = expires_at
            heapq.heappush(self._expiry, (expires_at, jti))

    def revoke_agent_before(self, agent: str, before: float) -> None:
        """Revoke every token issued to `agent` (its client_id) with `iat` earlier than `before`."""
        self._agents[agent] = max(before, self._agents.get(agent, _NEVER))

    def revoke_subject_before(self, subject: str, before: float) -> None:
        """Revoke every token whose `sub` is `subject` with `iat` earlier than `before`."""
        self._subjects[subject] = max(before, self._subjects.get(subject, _NEVER))

    def apply(self, record: Mapping[str, Any]) -> None:
        """Apply one revocation record (see the module docstring); ValueError when it is not one."""
        try:
            if "jti" in record:
                self.revoke_jti(_text(record["jti"]), float(record["exp"]))
            elif "agent" in record:
                self.revoke_agent_before(_text(record["agent"]), float(record["before"]))
            elif "subject" in record:
                self.revoke_subject_before(_text(record["subject"]), float(record["before"]))
            elif "block" in record:
                self.set_block(record)
            else:
                raise ValueError("neither jti, agent, subject nor block")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed revocation record: {exc!r}") from None

    def set_block(self, record: Mapping[str, Any]) -> None:
        """Apply a block record (module docstring): the latest `since` for its agent or subject wins."""
        kind, party = _text(record["block"]), _text(record["id"])
        if kind not in self._blocked:
            raise ValueError(f"a block names an agent or a subject, not {kind!r}")
        since = float(record["since"])
        current = self._blocks.get((kind, party))
        if current is not None and float(current["since"]) >= since:
            return
        on = record.get("on") is True
        self._blocks[(kind, party)] = {**record, "since": since, "on": on}
        if on:
            self._blocked[kind][party] = str(record.get("reason") or "")
            for listener in self.on_block:
                listener(kind, party)
        else:
            self._blocked[kind].pop(party, None)
        BLOCKS_ACTIVE.labels(kind).set(len(self._blocked[kind]))

    def blocked(self, agent: str, subject: str, actors: Iterable[str] = ()) -> str | None:
        """Why a request by `agent` for `subject` (through `actors`) is blocked, or None: the hot path's check."""
        agents, subjects = self._blocked["agent"], self._blocked["subject"]
        if not agents and not subjects:
            return None
        for party in (agent, *actors):
            if party in agents:
                return _why("agent", party, agents[party])
        return _why("subject", subject, subjects[subject]) if subject in subjects else None

    def blocks(self) -> list[dict[str, Any]]:
        """The blocks in force, as their records."""
        return [record for record in self._blocks.values() if record["on"]]

    def is_cut_off(self, agent: str, subject: str, issued_at: float) -> bool:
        """Whether something issued at `issued_at` to `agent` for `subject` falls under a "before T" cut-off."""
        # `iat` is whole seconds: a token minted in the same second as, but after, a cut-off is revoked too.
        # That errs on the safe side; the agent asks for a new token a second later.
        return issued_at < self._agents.get(agent, _NEVER) or issued_at < self._subjects.get(subject, _NEVER)

    def is_chain_revoked(self, actors: Iterable[str], ancestors: Iterable[str], issued_at: float) -> bool:
        """Whether a delegated token falls with what it came from: a revoked token it was exchanged from, or a
        cut-off for any agent in its `act` chain (the outermost actor is also its client_id)."""
        agents = self._agents
        return any(jti in self._jtis for jti in ancestors) or any(
            issued_at < agents.get(actor, _NEVER) for actor in actors
        )

    def is_revoked(self, principal: Principal) -> bool:
        return (
            principal.jti in self._jtis
            or self.is_cut_off(principal.agent, principal.subject, principal.issued_at)
            # Direct tokens have neither: one truthiness test on the hot path.
            or bool(principal.delegation or principal.ancestors)
            and self.is_chain_revoked(principal.delegation, principal.ancestors, principal.issued_at)
        )

    def _forget_before(self, horizon: float) -> None:
        while self._expiry and self._expiry[0][0] < horizon:
            expires_at, jti = heapq.heappop(self._expiry)
            if self._jtis.get(jti) == expires_at:  # not re-revoked with a later expiry since
                del self._jtis[jti]


BLOCK_KINDS = ("agent", "subject")


def block_record(kind: str, party: str, *, on: bool, reason: str, by: str, since: float) -> dict[str, Any]:
    """A block (on) or unblock (off) record for `party`, an agent's client_id or a subject."""
    if kind not in BLOCK_KINDS:
        raise ValueError(f"a block names an agent or a subject, not {kind!r}")
    return {"block": kind, "id": party, "on": on, "since": since, "reason": reason, "by": by}


def _why(kind: str, party: str, reason: str) -> str:
    return f"{kind} {party} is blocked" + (f": {reason}" if reason else "")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value
