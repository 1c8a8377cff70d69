"""The hold step: a call that passed every other check, on a route or MCP tool rule with `approval: required`, is
held until a person approves that exact call (gateway.state.approvals), or refused.

Approved within `approval_wait`: it goes on, its audit event naming the approval and the approver. Denied: 403
`approval_denied` with the reason. Not decided in time: 403 `approval_pending` with Retry-After and the approval
id in X-Tollbooth-Approval; once a person approves, the identical retry (same body, principal, rule and policy,
within `approval_valid_for`) passes, once. A new request is announced to `approvals.notify_url`, signed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable

import httpx2

from gateway.audit.events import AuditEvent
from gateway.config import ApprovalsConfig
from gateway.proxy.answers import Refusal
from gateway.state import StateUnavailable
from gateway.state.approvals import APPROVED, DENIED, Approval, Approvals, Call, HoldPolicy

log = logging.getLogger("tollbooth.proxy")

POLL_SECONDS = 0.1  # how often a held call looks for its decision in the shared records
RETRY_AFTER = 5


def body_digest(content_type: bytes | None, body: bytes) -> str:
    """A request body's identity for an approval, with its Content-Type: the same bytes read as a form or as JSON
    are two calls."""
    return hashlib.sha256(json.dumps([(content_type or b"").decode("latin-1"), body.hex()]).encode()).hexdigest()


def mcp_call_digest(name: str, arguments: object) -> str:
    """An MCP call's identity for an approval: its tool and arguments, not the JSON-RPC id that changes per retry."""
    return hashlib.sha256(json.dumps([name, arguments], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Holds:
    def __init__(self, approvals: Approvals, emit: Callable[[AuditEvent], bool]) -> None:
        self.approvals = approvals
        self._emit = emit
        self._background: set[asyncio.Task[None]] = set()  # notices and block denials, held until done
        self._http: httpx2.AsyncClient | None = None

    async def hold(
        self, call: Call, policy: HoldPolicy, settings: ApprovalsConfig, rpc: tuple[int, object] | None
    ) -> Approval:
        """The approved Approval the call goes on with, or Refusal."""
        approval = await self.approvals.for_call(call)
        if approval is not None and approval.status == APPROVED:
            if await self.approvals.use(approval):
                return approval  # approved after an earlier try's wait ran out: this identical retry passes
            approval = None  # its one call went through already: this one needs a decision of its own
        if approval is None:
            approval = await self.approvals.request(call, policy)
            self._audit("approval.requested", approval)
            self._notify(approval, settings)
        deadline = time.monotonic() + policy.wait
        while approval.status == "pending":
            if time.monotonic() >= deadline:
                self._audit("approval.expired", approval)
                raise Refusal(
                    403,
                    "approval_pending",
                    f"this call waits for a person's approval ({approval.id}); retry the same call after it",
                    reason="approval_pending",
                    headers=((b"retry-after", b"%d" % RETRY_AFTER), (b"x-tollbooth-approval", approval.id.encode())),
                    rpc=rpc,
                )
            await asyncio.sleep(POLL_SECONDS)  # a poll period: the decision may be taken on another replica
            found = await self.approvals.get(approval.id)
            approval = found if found is not None else approval
        if approval.status == DENIED:
            raise Refusal(
                403,
                "approval_denied",
                f"a person denied this call ({approval.id})" + (f": {approval.reason}" if approval.reason else ""),
                reason="approval_denied",
                headers=((b"x-tollbooth-approval", approval.id.encode()),),
                rpc=rpc,
            )
        if approval.status == APPROVED and not await self.approvals.use(approval):
            raise Refusal(403, "approval_pending", "this approval was used already", reason="approval_used", rpc=rpc)
        return approval

    def on_block(self, kind: str, party: str) -> None:
        """A block came into force: its party's pending approvals are denied (every replica does it; the first
        decision wins, the others find nothing pending)."""
        task = asyncio.get_running_loop().create_task(self._deny_blocked(kind, party))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deny_blocked(self, kind: str, party: str) -> None:
        try:
            for approval in await self.approvals.pending():
                call = approval.call
                named = call.subject == party if kind == "subject" else party in (call.agent, *call.actors)
                if named and await self.approvals.decide(approval.id, approve=False, by="block", reason="blocked"):
                    self._audit("approval.denied", approval)
        except StateUnavailable as exc:
            log.warning("pending approvals of blocked %s %s not denied: %s", kind, party, exc)

    def _audit(self, kind: str, approval: Approval) -> None:
        call = approval.call
        self._emit(
            AuditEvent(
                event=kind,
                ts=time.time(),
                agent=call.agent,
                subject=call.subject,
                delegation=",".join(call.actors),
                method=call.method,
                path=call.path,
                route=call.route,
                approval=approval.id,
                decision="deny",
                reason=call.rule,
            )
        )

    def _notify(self, approval: Approval, settings: ApprovalsConfig) -> None:
        if not settings.notify_url or not settings.notify_secret:
            return
        task = asyncio.get_running_loop().create_task(self._post(settings.notify_url, settings.notify_secret, approval))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post(self, url: str, secret: str, approval: Approval) -> None:
        body = json.dumps({"type": "approval.requested", **approval.to_json()}).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=5.0, follow_redirects=False)
        try:
            answer = await self._http.post(
                url,
                content=body,
                headers={"content-type": "application/json", "x-tollbooth-signature": f"sha256={signature}"},
            )
            if answer.status_code >= 300:
                log.warning("approval notice for %s: %s answered %d", approval.id, url, answer.status_code)
        except httpx2.HTTPError as exc:
            log.warning("approval notice for %s to %s failed: %s", approval.id, url, exc)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
