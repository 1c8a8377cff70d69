"""The proxy's ASGI entry: runs identify → authorize → stamp → forward → audit for each request.

It only wires the steps; each step's rules live in its own module. Everything a request needs from
the config comes from one `Snapshot`, read once at the start, so a hot reload never mixes two configs
within one request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from gateway.audit.events import AuditEvent
from gateway.audit.sinks import AuditSink
from gateway.metrics import IN_FLIGHT, RATE_LIMIT_DECISIONS, REQUEST_SECONDS, REQUESTS, UPSTREAM_SECONDS, child
from gateway.principal import Principal
from gateway.proxy.authorize import PathRejected, Route, authorize, normalize_path
from gateway.proxy.errors import error_response, metadata_resource_for, protected_resource_metadata
from gateway.proxy.forward import BodyTooLarge, UpstreamError, UpstreamResponse
from gateway.proxy.identify import TokenRejected, extract_bearer
from gateway.proxy.ratelimit import client_address, limit_key, limited_description, retry_after_header
from gateway.proxy.snapshot import Snapshot
from gateway.proxy.stamp import downstream_response_headers, upstream_request_headers
from gateway.state.ratelimit import LocalRateLimiter, RateLimiter
from gateway.tracing import TraceContext, continue_or_start, request_id_from
from gateway.wire import PROTECTED_RESOURCE_PATH

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("tollbooth.proxy")


class RequestHead:
    """What the pipeline reads from the request's header section, in one pass, and any framing problem."""

    __slots__ = ("traceparent", "tracestate", "request_id", "content_length", "chunked", "host", "origin", "problem")

    def __init__(self) -> None:
        self.host: bytes | None = None
        self.origin: bytes | None = None
        self.traceparent: bytes | None = None
        self.tracestate: bytes | None = None
        self.request_id: bytes | None = None
        self.content_length: bytes | None = None
        self.chunked = False
        self.problem: str | None = None


def scan_head(headers: Iterable[tuple[bytes, bytes]], http_version: str) -> RequestHead:
    head = RequestHead()
    hosts = 0
    for name, value in headers:
        if name == b"traceparent":
            # Trace Context §3.2: two traceparent headers are invalid (b"" never parses: a new trace starts).
            head.traceparent = b"" if head.traceparent is not None else value
        elif name == b"tracestate":
            # Trace Context §3.3: several tracestate headers are one list, joined in order.
            head.tracestate = value if head.tracestate is None else head.tracestate + b"," + value
        elif name == b"x-request-id":
            # Two ids are no id: b"" is malformed, so a fresh one is made.
            head.request_id = b"" if head.request_id is not None else value
        elif name == b"content-length":
            head.content_length = value
        elif name == b"transfer-encoding":
            # RFC 9112 §6.3: a request whose final coding is not chunked cannot be framed. The server's parser
            # notices only after the app has started, so refuse here, before anything goes upstream.
            if value.strip().lower() != b"chunked" or head.chunked:
                head.problem = "unsupported Transfer-Encoding: only a single chunked coding is accepted"
            head.chunked = True
        elif name == b"host":
            hosts += 1
            # Two Hosts (allowed by HTTP/1.0 framing) are no Host: b"" is malformed.
            head.host = b"" if head.host is not None else value
        elif name == b"origin":
            head.origin = b"" if head.origin is not None else value
    if hosts != 1 and http_version == "1.1":
        # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without exactly one Host.
        head.problem = "an HTTP/1.1 request needs exactly one Host header"
    return head


class Crossing:
    """What one request accumulates on its way through, for the response and the audit event."""

    __slots__ = ("event", "trace", "request_id", "started", "status")

    def __init__(self, event: AuditEvent, trace: TraceContext, request_id: str, started: float) -> None:
        self.event = event
        self.trace = trace
        self.request_id = request_id
        self.started = started
        self.status = 0


class ProxyApp:
    """The enforcing proxy as a plain ASGI callable."""

    def __init__(
        self,
        live: Callable[[], Snapshot],
        audit: AuditSink,
        state_problem: Callable[[], str | None] = lambda: None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._live = live
        self._audit = audit
        self._state_problem = state_problem  # why the revocation view may be stale, or None
        self._limiter = limiter if limiter is not None else LocalRateLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # the HTTP layer refuses every Upgrade (gateway/proxy/protocol.py): no WebSocket scope comes
        IN_FLIGHT.inc()
        try:
            await self._handle(scope, receive, send)
        finally:
            IN_FLIGHT.dec()

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        snap = self._live()
        raw_path: bytes = scope.get("raw_path") or b""
        crossing, head = _open_crossing(
            scope["headers"], scope.get("client"), raw_path, scope.get("http_version", "1.1"), method=scope["method"]
        )
        snap.enter()
        try:
            await self._cross(snap, scope, receive, send, crossing, raw_path, head)
        finally:
            snap.exit()
            self._finish(crossing)

    async def _cross(
        self,
        snap: Snapshot,
        scope: Scope,
        receive: Receive,
        send: Send,
        crossing: Crossing,
        raw_path: bytes,
        head: RequestHead,
    ) -> None:
        event = crossing.event
        method = event.method
        if head.problem is not None:
            await self._deny(send, crossing, 400, "invalid_request", head.problem, reason="bad_request")
            return
        # DNS rebinding: a Host or Origin we do not answer for is refused before any other step, on every path.
        refused = snap.allowed_hosts.refusal(head.host, head.origin)
        if refused is not None:
            await self._deny(send, crossing, refused.status, refused.error, refused.description, reason=refused.reason)
            return
        try:
            path = normalize_path(raw_path)
        except PathRejected as exc:
            await self._deny(send, crossing, 400, "invalid_request", exc.reason, reason="path_rejected")
            return
        if path.startswith(PROTECTED_RESOURCE_PATH) and method in ("GET", "HEAD"):
            await self._metadata(snap, path, send, crossing)
            return
        # identify
        principal: Principal | None = None
        try:
            token = extract_bearer(
                scope["headers"], scope.get("query_string", b""), max_token_bytes=snap.config.proxy.max_token_bytes
            )
            if token is not None:
                principal = await snap.verifier.verify(token)
        except TokenRejected as exc:
            await self._deny(
                send,
                crossing,
                exc.status,
                exc.error,
                exc.description,
                reason=exc.reason,
                challenge=exc.error,
                snap=snap,
            )
            return
        if principal is not None:
            _record_principal(event, principal)
        # authorize
        decision = authorize(snap.routes, method, path, principal)
        route = decision.route
        if route is not None:
            event.route = route.name
            event.upstream = route.upstream
            event.required_scopes = " ".join(route.scopes)
        if not decision.allow:
            await self._deny(
                send,
                crossing,
                decision.status,
                decision.reason,
                decision.description,
                reason=decision.reason,
                challenge=_CHALLENGES.get(decision.reason),
                scope=decision.required_scopes,
                snap=snap,
            )
            return
        assert route is not None
        # Every request the route lets through counts, whatever happens to it next. Routes without a rate limit cost
        # nothing here: no key, no store.
        if route.rate_limit is not None and await self._over_rate_limit(snap, scope, send, crossing, route, principal):
            return
        if snap.config.audit.on_failure == "deny":
            # Strict mode (DESIGN.md): refuse rather than serve unaudited, or on a revocation list that may be stale.
            if not self._audit.healthy:
                await self._deny(
                    send,
                    crossing,
                    503,
                    "audit_unavailable",
                    "the audit trail cannot record this request",
                    reason="audit_unavailable",
                )
                return
            if self._state_problem() is not None:
                await self._deny(
                    send,
                    crossing,
                    503,
                    "revocations_unavailable",
                    "the gateway cannot tell whether tokens were revoked right now",
                    reason="revocations_unavailable",
                )
                return
        # Content-Length over the limit is refused before any byte goes upstream.
        limit = snap.config.proxy.max_body_bytes
        content_length = head.content_length
        if content_length is not None:
            # Digits only: Python's int() would also take "+5", " 5" and "5_0", which an upstream may read otherwise.
            declared = int(content_length) if content_length.isdigit() else -1
            if declared < 0:
                await self._deny(
                    send, crossing, 400, "invalid_request", "malformed Content-Length", reason="bad_request"
                )
                return
            if declared > limit:
                await self._body_too_large(send, crossing, limit)
                return
        # stamp
        upstream = snap.upstreams[route.upstream]
        client = scope.get("client")
        up_headers = upstream_request_headers(
            scope["headers"],
            principal=principal,
            route_name=route.name,
            injected=upstream.injected,
            trace=crossing.trace,
            request_id=crossing.request_id,
            client_ip=client[0] if client else "",
            public_scheme=snap.public_scheme,
            public_host=snap.public_host,
            upstream_host=upstream.host,
            trust_forwarded=snap.config.proxy.trust_forwarded_for,
            strip=snap.strip_headers,
        )
        query: bytes = scope.get("query_string", b"")
        target = upstream.base_path + raw_path + (b"?" + query if query else b"")
        event.decision = "allow"
        event.reason = decision.reason
        # forward
        await self._forward(
            snap,
            route.upstream,
            method,
            target,
            up_headers,
            receive,
            send,
            crossing,
            limit,
            has_body=content_length is not None or head.chunked,
        )

    async def _forward(
        self,
        snap: Snapshot,
        upstream_name: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
        crossing: Crossing,
        limit: int,
        *,
        has_body: bool,
    ) -> None:
        event = crossing.event
        body_state = _BodyState(has_body)
        body = _request_body(receive, limit, body_state) if has_body else None
        upstream_started = time.perf_counter()
        # A client that goes away cancels the upstream call: a watcher cancels this task on http.disconnect.
        # Most answers come back in a millisecond or two, so the watcher starts only for requests still running
        # after _WATCH_AFTER seconds: a timer per request is far cheaper than a task per request.
        this_task = asyncio.current_task()
        assert this_task is not None
        loop = asyncio.get_running_loop()
        watcher: list[asyncio.Task[None]] = []
        timer = loop.call_later(
            _WATCH_AFTER, lambda: watcher.append(loop.create_task(_watch_disconnect(receive, body_state, this_task)))
        )
        try:
            await self._exchange(snap, upstream_name, method, target, headers, body, send, crossing, upstream_started)
        except (asyncio.CancelledError, ClientDisconnected) as exc:
            if not body_state.client_gone:
                raise
            if isinstance(exc, asyncio.CancelledError):
                this_task.uncancel()
            # 499: nginx's convention for "client closed the request", so dashboards read it the same way.
            crossing.status = crossing.status or 499
            event.reason = "client_disconnected"
        except BodyTooLarge:
            await self._body_too_large(send, crossing, limit)
        except UpstreamError as exc:
            event.upstream_ms = (time.perf_counter() - upstream_started) * 1000
            # The agent sees only "bad gateway"; the operator needs the cause (which host, refused or which timeout).
            log.warning("request %s: %s", crossing.request_id, exc)
            await self._deny(
                send,
                crossing,
                exc.status,
                exc.reason,
                _UPSTREAM_TEXT[exc.status],
                reason=exc.reason,
                started=crossing.status != 0,
                decision="allow",
            )
        finally:
            timer.cancel()
            for task in watcher:
                task.cancel()
            event.bytes_in = body_state.total

    async def _exchange(
        self,
        snap: Snapshot,
        upstream_name: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None,
        send: Send,
        crossing: Crossing,
        upstream_started: float,
    ) -> None:
        response: UpstreamResponse = await snap.forwarder.send(upstream_name, method, target, headers, body)
        try:
            upstream_seconds = time.perf_counter() - upstream_started
            crossing.event.upstream_ms = upstream_seconds * 1000
            child(UPSTREAM_SECONDS, upstream_name).observe(upstream_seconds)
            out_headers = downstream_response_headers(
                response.headers, trace=crossing.trace, request_id=crossing.request_id
            )
            crossing.status = response.status
            await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
            crossing.event.bytes_out = 0
            async for chunk in response.iter_body():
                if chunk:
                    # Counted as it goes, so a stream cut by either side is audited with what was delivered.
                    crossing.event.bytes_out += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _over_rate_limit(
        self, snap: Snapshot, scope: Scope, send: Send, crossing: Crossing, route: Route, principal: Principal | None
    ) -> bool:
        """Count the request against its budget on `route`; when over it (or, in strict mode, when it cannot be
        counted in the shared store) answer and return True."""
        limit = route.rate_limit
        assert limit is not None
        address = (
            client_address(
                scope["headers"], crossing.event.client_ip, trust_forwarded=snap.config.proxy.trust_forwarded_for
            )
            if principal is None
            else ""
        )
        verdict = await self._limiter.check(limit_key(route.name, principal, address, snap.config.issuer.url), limit)
        store = "memory" if verdict.degraded else self._limiter.store
        if verdict.degraded and snap.config.audit.on_failure == "deny":
            # Strict mode: per-process budgets would let an agent through N replicas times its limit.
            child(RATE_LIMIT_DECISIONS, route.name, "unavailable", store).inc()
            await self._deny(
                send,
                crossing,
                503,
                "rate_limits_unavailable",
                "the gateway cannot count this request against its rate limit right now",
                reason="rate_limits_unavailable",
            )
            return True
        child(RATE_LIMIT_DECISIONS, route.name, "allowed" if verdict.allowed else "limited", store).inc()
        if verdict.allowed:
            return False
        await self._deny(
            send,
            crossing,
            429,
            "rate_limited",
            limited_description(limit, route.name, principal, verdict),
            reason="rate_limited",
            extra_headers=((b"retry-after", retry_after_header(verdict)),),
        )
        return True

    async def _body_too_large(self, send: Send, crossing: Crossing, limit: int) -> None:
        await self._deny(
            send,
            crossing,
            413,
            "request_too_large",
            f"the request body exceeds {limit} bytes",
            reason="body_too_large",
            started=crossing.status != 0,
        )

    async def _metadata(self, snap: Snapshot, path: str, send: Send, crossing: Crossing) -> None:
        """RFC 9728 protected resource metadata, root and path-inserted forms (§3.1)."""
        resource = metadata_resource_for(snap.config.proxy.public_url, path)
        crossing.event.route = "oauth-protected-resource"
        if resource is None:
            await self._deny(
                send, crossing, 404, "not_found", "no protected resource metadata at this path", reason="not_found"
            )
            return
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

    async def _deny(
        self,
        send: Send,
        crossing: Crossing,
        status: int,
        error: str,
        description: str,
        *,
        reason: str,
        challenge: str | None = None,
        scope: tuple[str, ...] = (),
        snap: Snapshot | None = None,
        started: bool = False,
        decision: str = "deny",
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        crossing.event.decision = decision
        crossing.event.reason = reason
        if started:
            # The upstream's status line already went out: all we can do is end the stream (the server closes it).
            return
        crossing.status = status
        resource_metadata = snap.resource_metadata_url if snap is not None and challenge else None
        code, headers, body = error_response(
            status=status,
            error=error,
            description=description,
            request_id=crossing.request_id,
            challenge=challenge,
            resource_metadata=resource_metadata,
            scope=scope,
            extra_headers=((b"traceparent", crossing.trace.traceparent()), *extra_headers),
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
        crossing, _ = _open_crossing((), client, path[:1024], "1.1")
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


_WATCH_AFTER = 0.05

# RFC 6750 §3.1: no error code when the request carried no token; insufficient_scope lets clients step up.
_CHALLENGES = {"missing_token": "no_token", "insufficient_scope": "insufficient_scope"}
_UPSTREAM_TEXT = {
    502: "the upstream could not be reached or answered badly",
    504: "the upstream did not answer in time",
}


def _open_crossing(
    headers: Iterable[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    raw_path: bytes,
    http_version: str,
    *,
    method: str = "",
) -> tuple[Crossing, RequestHead]:
    """Start a crossing: trace and request id from the headers, and the audit event that will record it."""
    started = time.perf_counter()
    head = scan_head(headers, http_version)
    trace = continue_or_start(head.traceparent, head.tracestate)
    request_id = request_id_from(head.request_id)
    event = AuditEvent(
        event="access",
        ts=time.time(),
        request_id=request_id,
        trace_id=trace.trace_id,
        client_ip=client[0] if client else "",
        method=method,
        # Only the bytes on the wire: a server that gives no raw_path offers an already-decoded path, which
        # would be decoded twice; an empty path is rejected by normalize_path.
        path=raw_path.decode("latin-1"),
    )
    return Crossing(event, trace, request_id, started), head


def _record_principal(event: AuditEvent, principal: Principal) -> None:
    event.agent = principal.agent
    event.subject = principal.subject
    event.delegation = ",".join(principal.delegation)
    event.granted_scopes = " ".join(sorted(principal.scopes))
    event.jti = principal.jti


class ClientDisconnected(Exception):
    """The agent hung up before its request body was complete."""


class _BodyState:
    """How far the agent's request body has been read, shared by the body stream and the disconnect watcher."""

    __slots__ = ("total", "read", "client_gone")

    def __init__(self, has_body: bool) -> None:
        self.total = 0
        self.read = asyncio.Event()
        self.client_gone = False
        if not has_body:
            self.read.set()


async def _request_body(receive: Receive, limit: int, state: _BodyState) -> AsyncIterator[bytes]:
    """The agent's body, streamed; raises BodyTooLarge past the limit (a chunked body has no length up front)."""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                state.client_gone = True
                raise ClientDisconnected("the client went away while sending the body")
            chunk = message.get("body", b"")
            if chunk:
                state.total += len(chunk)
                if state.total > limit:
                    raise BodyTooLarge(limit)
                yield chunk
            if not message.get("more_body", False):
                return
    finally:
        state.read.set()


async def _watch_disconnect(receive: Receive, state: _BodyState, task: asyncio.Task[Any]) -> None:
    """Cancel `task` when the client disconnects. Listens only once the body stream has read the whole body."""
    await state.read.wait()
    if state.client_gone:
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            state.client_gone = True
            task.cancel()
            return
