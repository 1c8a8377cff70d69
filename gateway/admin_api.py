"""The admin API on the admin listener, under /api/: the kill switch (blocks) for now.

Every call needs `Authorization: Bearer <admin token>`, checked against `admin.token_hash` (argon2id, from
`tollbooth hash-secret`); without it the API answers 404 and nothing else changes (metrics and probes stay open).
Every call is audited with `by` = `admin.token_label`, refused ones too.

    GET    /api/blocks                       the blocks in force
    POST   /api/blocks  {"agent": ID, "reason": TEXT}  or  {"subject": ID, "reason": TEXT}
    DELETE /api/blocks/agent/{id}  |  /api/blocks/subject/{id}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit.events import request_event
from gateway.audit.sinks import AuditSink
from gateway.bodies import read_limited
from gateway.config import Config
from gateway.state import SharedState, StateUnavailable
from gateway.state.approvals import Approvals
from gateway.state.revocations import BLOCK_KINDS, block_record

MAX_BODY = 4096
MAX_REASON = 500
MAX_ID = 256


class AdminApi:
    def __init__(
        self, config: Callable[[], Config], state: SharedState, audit: AuditSink, approvals: Approvals
    ) -> None:
        self._config = config
        self._state = state
        self._audit = audit
        self._approvals = approvals
        self._checks = asyncio.Semaphore(2)  # argon2 costs tens of ms of CPU a check: a flood waits, bounded
        self._known: tuple[str, bytes] | None = None  # (hash, SHA-256 of the token it verified)
        self.routes = [
            Route("/api/blocks", self.blocks, methods=["GET", "POST"]),
            Route("/api/blocks/{kind}/{party:path}", self.unblock, methods=["DELETE"]),
            Route("/api/approvals", self.approvals, methods=["GET"]),
            Route("/api/approvals/{id}", self.approval, methods=["GET"]),
            Route("/api/approvals/{id}/{decision}", self.decide, methods=["POST"]),
        ]

    async def _caller(self, request: Request) -> str | Response:
        """The token's label, or the refusal to answer."""
        admin = self._config().admin
        if admin.token_hash is None:
            return _error(404, "not_found", "the admin API is off: set admin.token_hash (tollbooth hash-secret)")
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if self._checks.locked():
            return _error(503, "temporarily_unavailable", "too many admin token checks at once; retry shortly")
        if not (scheme.lower() == "bearer" and token and await self._matches(admin.token_hash, token)):
            self._emit(request, "admin.denied", 401, by="?", reason="bad_admin_token")
            response = _error(401, "invalid_token", "send Authorization: Bearer <admin token>")
            response.headers["www-authenticate"] = 'Bearer realm="tollbooth-admin"'
            return response
        return admin.token_label

    async def _matches(self, token_hash: str, token: str) -> bool:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if self._known is not None and self._known[0] == token_hash and hmac.compare_digest(self._known[1], digest):
            return True
        async with self._checks:
            try:
                await asyncio.to_thread(PasswordHasher().verify, token_hash, token)
            except Argon2Error:
                return False
        self._known = (token_hash, digest)
        return True

    async def blocks(self, request: Request) -> Response:
        caller = await self._caller(request)
        if isinstance(caller, Response):
            return caller
        if request.method == "GET":
            self._emit(request, "admin.read", 200, by=caller)
            return JSONResponse({"blocks": self._state.revocations.blocks()})
        body = await _json_body(request)
        kinds = [kind for kind in BLOCK_KINDS if isinstance(body, dict) and kind in body]
        if not isinstance(body, dict) or len(kinds) != 1:
            return _error(400, "invalid_request", 'send {"agent": ID, "reason": TEXT} or {"subject": ID, ...}')
        party, reason = body[kinds[0]], body.get("reason", "")
        if not _identifier(party) or not isinstance(reason, str) or len(reason) > MAX_REASON:
            return _error(400, "invalid_request", f"the id is 1-{MAX_ID} printable characters, the reason text")
        return await self._set(request, kinds[0], party, on=True, reason=reason, by=caller)

    async def unblock(self, request: Request) -> Response:
        caller = await self._caller(request)
        if isinstance(caller, Response):
            return caller
        kind, party = request.path_params["kind"], request.path_params["party"]
        if kind not in BLOCK_KINDS or not _identifier(party):
            return _error(404, "not_found", "DELETE /api/blocks/agent/{id} or /api/blocks/subject/{id}")
        return await self._set(request, kind, party, on=False, reason="", by=caller)

    async def approvals(self, request: Request) -> Response:
        caller = await self._caller(request)
        if isinstance(caller, Response):
            return caller
        try:
            pending = await self._approvals.pending()
        except StateUnavailable as exc:
            return _error(503, "temporarily_unavailable", str(exc))
        self._emit(request, "admin.read", 200, by=caller)
        return JSONResponse({"approvals": [approval.to_json() for approval in pending]})

    async def approval(self, request: Request) -> Response:
        caller = await self._caller(request)
        if isinstance(caller, Response):
            return caller
        found = await self._approvals.get(request.path_params["id"])
        self._emit(request, "admin.read", 200 if found else 404, by=caller, approval=request.path_params["id"][:64])
        if found is None:
            return _error(404, "not_found", "no such approval (or it expired)")
        return JSONResponse(found.to_json())

    async def decide(self, request: Request) -> Response:
        caller = await self._caller(request)
        if isinstance(caller, Response):
            return caller
        decision = request.path_params["decision"]
        if decision not in ("approve", "deny"):
            return _error(404, "not_found", "POST /api/approvals/{id}/approve or /deny")
        body = await _json_body(request) if request.headers.get("content-length") not in (None, "0") else {}
        reason = body.get("reason", "") if isinstance(body, dict) else None
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            return _error(400, "invalid_request", 'send {"reason": TEXT} or nothing')
        try:
            decided = await self._approvals.decide(
                request.path_params["id"], approve=decision == "approve", by=caller, reason=reason
            )
        except StateUnavailable as exc:
            return _error(503, "temporarily_unavailable", str(exc))
        if decided is None:
            return _error(409, "not_pending", "no pending approval by that id: unknown, expired or decided already")
        call = decided.call
        self._emit(
            request,
            "approval.granted" if decision == "approve" else "approval.denied",
            200,
            by=caller,
            reason=reason,
            approval=decided.id,
            agent=call.agent,
            subject=call.subject,
            route=call.route,
        )
        return JSONResponse(decided.to_json())

    async def _set(self, request: Request, kind: str, party: str, *, on: bool, reason: str, by: str) -> Response:
        record = block_record(kind, party, on=on, reason=reason, by=by, since=time.time())
        try:
            await self._state.set_block(record)
        except StateUnavailable as exc:
            return _error(503, "temporarily_unavailable", f"the block could not be recorded: {exc}")
        event = "agent.blocked" if on else "agent.unblocked"
        named = {"agent": party} if kind == "agent" else {"subject": party}
        self._emit(request, event, 201 if on else 200, by=by, reason=reason, **named)
        return JSONResponse(record, status_code=201 if on else 200)

    def _emit(self, request: Request, kind: str, status: int, **fields: Any) -> None:
        self._audit.emit(request_event(kind, request, status, decision="allow" if status < 400 else "deny", **fields))


def _identifier(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID and value.isprintable()


async def _json_body(request: Request) -> object:
    body = await read_limited(request, MAX_BODY)
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)
