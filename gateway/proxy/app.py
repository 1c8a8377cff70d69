"""The proxy's ASGI entry: the table of contents of a crossing.

identify → authorize → admit → inspect (MCP routes only) → stamp → forward, then audit. Each step's rules live
in its own module and any step may raise a Refusal, which is answered and audited in one place. Everything a
request needs from the config comes from one `Snapshot`, read once at the start, so a hot reload never mixes two
configs within one request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway.audit.sinks import AuditSink
from gateway.mcp.message import McpMessage
from gateway.mcp.rules import DENIED
from gateway.metrics import IN_FLIGHT, REQUEST_SECONDS, REQUESTS, child
from gateway.principal import Principal
from gateway.proxy.admit import Admission
from gateway.proxy.answers import Refusal, error_response, metadata_resource_for, protected_resource_metadata
from gateway.proxy.authorize import Route, authorize, permitted
from gateway.proxy.crossing import Crossing, open_crossing, record_principal
from gateway.proxy.head import RequestHead, checked_path, read_head
from gateway.proxy.hold import Holds, body_digest, mcp_call_digest
from gateway.proxy.identify import identify
from gateway.proxy.inspect import inspect_mcp, read_body
from gateway.proxy.relay import relay
from gateway.proxy.snapshot import Snapshot
from gateway.proxy.stamp import upstream_request_headers
from gateway.state.approvals import Approvals, Call
from gateway.state.ephemeral import MemoryEphemeral
from gateway.state.ratelimit import LocalRateLimiter, RateLimiter
from gateway.state.revocations import RevocationList
from gateway.wire import PROTECTED_RESOURCE_PATH

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("tollbooth.proxy")


class ProxyApp:
    """The enforcing proxy as a plain ASGI callable."""

    def __init__(
        self,
        live: Callable[[], Snapshot],
        audit: AuditSink,
        state_problem: Callable[[], str | None] = lambda: None,
        limiter: RateLimiter | None = None,
        revocations: RevocationList | None = None,
        holds: Holds | None = None,
    ) -> None:
        # Approval holds, in the shared records (serve.py passes Redis's when configured): this process's otherwise.
        self._holds = holds if holds is not None else Holds(Approvals(MemoryEphemeral()), audit.emit)
        self._live = live
        self._audit = audit
        # The crossings now relaying, by task: a block ends those of the blocked party (open streams included).
        self._open: dict[asyncio.Task[Any], Principal] = {}
        self._ended: set[asyncio.Task[Any]] = set()
        if revocations is not None:
            revocations.on_block.append(self._end_crossings)
        limiter = limiter if limiter is not None else LocalRateLimiter()
        self._admission = Admission(limiter, lambda: audit.healthy, state_problem)
        self._loop: asyncio.AbstractEventLoop | None = None  # found on the first request (see Crossing.task)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # the HTTP layer refuses every Upgrade (gateway/proxy/protocol.py): no WebSocket scope comes
        IN_FLIGHT.inc()
        snap = self._live()
        head = read_head(scope)
        crossing = open_crossing(head)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        crossing.loop, crossing.task = loop, asyncio.current_task(loop)
        snap.enter()
        try:
            await self._cross(snap, head, crossing, receive, send)
        except Refusal as refusal:
            await self._refuse(snap, crossing, refusal, send)
        except asyncio.CancelledError:
            task = crossing.task
            if task is None or task not in self._ended:
                raise
            # Ended by a block: refused if nothing was answered yet, else the stream is cut (the server closes it).
            self._ended.discard(task)
            task.uncancel()
            blocked = Refusal(403, "access_denied", "the caller was blocked while this request ran", reason="blocked")
            await self._refuse(snap, crossing, blocked, send)
        finally:
            if crossing.task is not None:
                self._open.pop(crossing.task, None)
            snap.exit()
            self._finish(crossing)
            IN_FLIGHT.dec()

    def _end_crossings(self, kind: str, party: str) -> None:
        """A block came into force: end every crossing of that agent (also as an actor) or subject now."""
        for task, principal in list(self._open.items()):
            named = (
                principal.subject == party if kind == "subject" else party in (principal.agent, *principal.delegation)
            )
            if named and task not in self._ended:
                self._ended.add(task)
                task.cancel()

    async def _cross(self, snap: Snapshot, head: RequestHead, crossing: Crossing, receive: Receive, send: Send) -> None:
        """One crossing, step by step; any step may raise Refusal."""
        event = crossing.event
        path = checked_path(head, snap.allowed_hosts)
        if path.startswith(PROTECTED_RESOURCE_PATH) and head.method in ("GET", "HEAD"):
            await self._metadata(snap, path, send, crossing)
            return
        principal = await identify(head, snap.verifier, max_token_bytes=snap.config.proxy.max_token_bytes)
        if principal is not None:
            record_principal(event, principal)
            if crossing.task is not None:
                self._open[crossing.task] = principal
        decision = authorize(snap.routes, head.method, path, principal)
        if decision.route is not None:
            event.route = decision.route.name
            event.upstream = decision.route.upstream
            event.required_scopes = " ".join(decision.route.scopes)
        route = permitted(decision)
        await self._admission.admit(snap, head, route, principal)
        read, lists, message, rule = None, None, None, None
        if route.mcp is not None:
            assert principal is not None  # an MCP route is never public (RouteConfig refuses it)
            read, lists, message, rule = await inspect_mcp(
                head, route, principal, receive, event, max_body_bytes=snap.config.proxy.max_body_bytes
            )
        # An MCP tool rule's own `approval` first, then the route's.
        holding = rule if rule is not None and rule.approval is not None else None
        policy = holding.approval if holding is not None else route.approval
        if policy is not None:
            if route.mcp is None and head.has_body:
                read = await read_body(head, receive, snap.config.proxy.max_body_bytes)
            call = _held_call(snap, head, path, route, principal, read, message, holding.label if holding else "")
            rpc = (DENIED, message.id) if message is not None else None
            approval = await self._holds.hold(call, policy, snap.config.approvals, rpc)
            event.approval, event.by = approval.id, approval.decided_by
        upstream = snap.upstreams[route.upstream]
        headers = upstream_request_headers(
            head.headers,
            connection_options=head.connection_options,
            principal=principal,
            route_name=route.name,
            injected=upstream.injected,
            trace=crossing.trace,
            request_id=crossing.request_id,
            client_ip=head.peer,
            public_scheme=snap.public_scheme,
            public_host=snap.public_host,
            upstream_host=upstream.host,
            trust_forwarded=snap.config.proxy.trust_forwarded_for,
            strip=snap.strip_headers,
        )
        target = upstream.base_path + head.raw_path + (b"?" + head.query if head.query else b"")
        event.decision = "allow"
        event.reason = decision.reason
        await relay(
            snap.forwarder,
            route.upstream,
            head.method,
            target,
            headers,
            has_body=head.has_body,
            limit=snap.config.proxy.max_body_bytes,
            receive=receive,
            send=send,
            crossing=crossing,
            read=read,
            lists=lists,
        )

    async def _metadata(self, snap: Snapshot, path: str, send: Send, crossing: Crossing) -> None:
        """RFC 9728 protected resource metadata, root and path-inserted forms (§3.1)."""
        resource = metadata_resource_for(snap.config.proxy.public_url, path)
        crossing.event.route = "oauth-protected-resource"
        if resource is None:
            raise Refusal(404, "not_found", "no protected resource metadata at this path", reason="not_found")
        document = protected_resource_metadata(
            resource=resource,
            authorization_servers=[snap.config.issuer.url],
            scopes_supported=snap.routes.scopes_supported(),
        )
        body = orjson.dumps(document)
        crossing.status = 200
        crossing.event.decision = "allow"
        crossing.event.reason = "public"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"public, max-age=300"),
                    (b"x-request-id", crossing.request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, snap: Snapshot, crossing: Crossing, refusal: Refusal, send: Send) -> None:
        """The one place a refusal is answered and written into the crossing's audit event."""
        crossing.event.decision = refusal.decision
        crossing.event.reason = refusal.reason
        if crossing.status != 0:
            # The upstream's status line already went out: all we can do is end the stream (the server closes it).
            return
        crossing.status = refusal.status
        code, headers, body = error_response(
            status=refusal.status,
            error=refusal.error,
            description=refusal.description,
            request_id=crossing.request_id,
            challenge=refusal.challenge,
            resource_metadata=snap.resource_metadata_url if refusal.challenge else None,
            scope=refusal.scope,
            extra_headers=((b"traceparent", crossing.trace.traceparent()), *refusal.headers),
            rpc=refusal.rpc,
        )
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def record_refusal(
        self,
        client: tuple[str, int] | None,
        raw_target: bytes,
        status: int,
        reason: str,
    ) -> None:
        """Audit a request refused before the pipeline ran (by the HTTP layer: 400, 403, 431, 505)."""
        # The path only, as for every other event: the HTTP layer hands over the whole target, and a query string
        # may carry a token (`?access_token=`) or other secrets that must never reach the audit trail.
        path = raw_target.split(b"?", 1)[0].split(b"#", 1)[0]
        crossing = open_crossing(RequestHead(raw_path=path[:1024], peer=client[0] if client else ""))
        crossing.event.decision = "deny"
        crossing.event.reason = reason
        crossing.status = status
        self._finish(crossing)

    def _finish(self, crossing: Crossing) -> None:
        event = crossing.event
        elapsed = time.perf_counter() - crossing.started
        event.status = crossing.status or 500
        event.duration_ms = elapsed * 1000
        if not event.decision:
            event.decision = "deny"
        route = event.route or "-"
        child(REQUESTS, route, event.decision, str(event.status)).inc()
        child(REQUEST_SECONDS, route).observe(elapsed)
        if not self._audit.emit(event):
            log.error("audit event for request %s could not be queued", crossing.request_id)


def _held_call(
    snap: Snapshot,
    head: RequestHead,
    path: str,
    route: Route,
    principal: Principal | None,
    read: bytes | None,
    message: McpMessage | None,
    rule: str,
) -> Call:
    """Exactly the call an approval is for (gateway.state.approvals.Call): what the upstream would act on."""
    assert principal is not None  # `approval` needs a caller: RouteConfig refuses it on public routes
    if message is not None:
        digest = mcp_call_digest(message.name or "", message.arguments)
    else:
        content_type = b",".join(value for name, value in head.headers if name == b"content-type")
        digest = body_digest(content_type, read or b"")
    # The query is part of the call: approving ?amount=10 must not let ?amount=10000 through.
    target = path + ("?" + head.query.decode("latin-1") if head.query else "")
    return Call(
        principal.agent,
        principal.subject,
        principal.delegation,
        head.method,
        target,
        digest,
        route.name,
        rule,
        snap.policy_version,
    )
