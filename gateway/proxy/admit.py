"""Admission, the step after authorization: may this permitted request pass now? Its rate limit, strict audit
mode (DESIGN.md: refuse rather than serve unaudited or on a stale revocation list) and its declared length.

Rate limits: whose budget a request counts against, and what a refused agent is told.

A route's `rate_limit: N/window` gives every agent its own budget on that route (the algorithm: gateway.state.gcra;
where budgets are counted: gateway.state.ratelimit). Over it, the agent gets 429 with `Retry-After` (RFC 6585 §4,
RFC 9110 §10.2.3). The IETF RateLimit-Policy/RateLimit fields are not sent: the draft's syntax has changed with
most revisions, and a client reading another revision would misread them.

Who is counted: the acting agent (`client_id`; for a delegated token the agent, not the user it acts for). A public
route requested without a token counts per client address: the socket peer, or with `proxy.trust_forwarded_for`
the last `X-Forwarded-For` entry, the address your load balancer saw.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from gateway.config import RateLimit
from gateway.metrics import RATE_LIMIT_DECISIONS, child
from gateway.principal import Principal
from gateway.proxy.answers import Refusal
from gateway.proxy.authorize import Route
from gateway.proxy.head import RequestHead
from gateway.proxy.snapshot import Snapshot
from gateway.state.gcra import RateVerdict
from gateway.state.ratelimit import RateLimiter, address_key, budget_address

_WINDOW_NAMES = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


def retry_after_header(verdict: RateVerdict) -> bytes:
    """`Retry-After` in whole seconds (RFC 9110 §10.2.3 takes no fractions): rounded up, so a client that waits
    exactly this long is let through; at least 1."""
    return str(max(1, math.ceil(verdict.retry_after))).encode("ascii")


def describe(limit: RateLimit) -> str:
    """`60/minute`, as written in the config (`60/60s` for a window without a name)."""
    name = _WINDOW_NAMES.get(limit.window_seconds)
    return f"{limit.limit}/{name}" if name else f"{limit.limit}/{limit.window_seconds}s"


def limit_key(route: str, principal: Principal | None, client_address: str, own_issuer: str) -> str:
    """The budget a request counts against. Route names hold no ':' (config), so the parts cannot run together.
    A trusted identity provider's client ids are its own namespace: its `billing-bot` is not ours, and must not
    spend our agent's budget (the issuer is hashed to keep the key short and free of ':')."""
    if principal is None:
        return address_key(route, client_address)
    if principal.issuer == own_issuer:
        return f"{route}:agent:{principal.agent}"
    issuer = hashlib.sha256(principal.issuer.encode()).hexdigest()[:16]
    return f"{route}:iss:{issuer}:agent:{principal.agent}"


def client_address(forwarded_for: bytes, peer: str, *, trust_forwarded: bool) -> str:
    """Who sent a request without a token, as a budget key: the socket peer, or behind a trusted load balancer the
    address it saw (the last X-Forwarded-For entry: the earlier ones are whatever the client claimed, RFC 7239
    §5.2). An entry that is no IP address is not believed. An IPv6 client counts by its /64, the block one
    subscriber is given: otherwise every address in it would bring a fresh budget."""
    if trust_forwarded:
        # `forwarded_for` is the last X-Forwarded-For field: several fields are one list (RFC 9110 §5.3).
        forwarded = budget_address(forwarded_for.rpartition(b",")[2].strip().decode("latin-1"))
        if forwarded is not None:
            return forwarded
    return budget_address(peer) or peer  # a peer that is no IP (a unix socket): nothing better to count by


def limited_description(limit: RateLimit, route: str, principal: Principal | None, verdict: RateVerdict) -> str:
    """The 429's error_description: whose budget, which route, when to come back. Never any part of a token."""
    who = f"agent {principal.agent}" if principal is not None else "this client address"
    seconds = retry_after_header(verdict).decode("ascii")
    return f"{who} has used its rate limit of {describe(limit)} on route {route}; retry after {seconds} s"


class Admission:
    """The checks between authorization and forwarding; raises Refusal, returns the body limit otherwise."""

    def __init__(
        self,
        limiter: RateLimiter,
        audit_healthy: Callable[[], bool],
        state_problem: Callable[[], str | None],
    ) -> None:
        self._limiter = limiter
        self._audit_healthy = audit_healthy
        self._state_problem = state_problem  # why the revocation view may be stale, or None

    async def admit(self, snap: Snapshot, head: RequestHead, route: Route, principal: Principal | None) -> None:
        # Every request the route lets through counts, whatever happens to it next. Routes without a rate limit
        # cost nothing here: no key, no store.
        if route.rate_limit is not None:
            await self._count(snap, head, route, route.rate_limit, principal)
        if snap.config.audit.on_failure == "deny":
            if not self._audit_healthy():
                raise Refusal(
                    503,
                    "audit_unavailable",
                    "the audit trail cannot record this request",
                    reason="audit_unavailable",
                )
            if self._state_problem() is not None:
                raise Refusal(
                    503,
                    "revocations_unavailable",
                    "the gateway cannot tell whether tokens were revoked right now",
                    reason="revocations_unavailable",
                )
        # Content-Length over the limit is refused before any byte goes upstream.
        declared_length(head, snap.config.proxy.max_body_bytes)

    async def _count(
        self, snap: Snapshot, head: RequestHead, route: Route, limit: RateLimit, principal: Principal | None
    ) -> None:
        """Count the request against its budget on `route`: Refusal when over it, or, in strict mode, when it
        cannot be counted in the shared store."""
        trust_forwarded = snap.config.proxy.trust_forwarded_for
        address = (
            ""
            if principal is not None
            else client_address(head.forwarded_for, head.peer, trust_forwarded=trust_forwarded)
        )
        verdict = await self._limiter.check(limit_key(route.name, principal, address, snap.config.issuer.url), limit)
        store = "memory" if verdict.degraded else self._limiter.store
        if verdict.degraded and snap.config.audit.on_failure == "deny":
            # Strict mode: per-process budgets would let an agent through N replicas times its limit.
            child(RATE_LIMIT_DECISIONS, route.name, "unavailable", store).inc()
            raise Refusal(
                503,
                "rate_limits_unavailable",
                "the gateway cannot count this request against its rate limit right now",
                reason="rate_limits_unavailable",
            )
        child(RATE_LIMIT_DECISIONS, route.name, "allowed" if verdict.allowed else "limited", store).inc()
        if not verdict.allowed:
            raise Refusal(
                429,
                "rate_limited",
                limited_description(limit, route.name, principal, verdict),
                reason="rate_limited",
                headers=((b"retry-after", retry_after_header(verdict)),),
            )


def declared_length(head: RequestHead, limit: int) -> None:
    """Refuse a malformed Content-Length, or one over `limit`, before any byte goes upstream."""
    if head.content_length is None:
        return
    # Digits only: Python's int() would also take "+5", " 5" and "5_0", which an upstream may read otherwise.
    declared = int(head.content_length) if head.content_length.isdigit() else -1
    if declared < 0:
        raise Refusal(400, "invalid_request", "malformed Content-Length", reason="bad_request")
    if declared > limit:
        raise body_too_large(limit)


def body_too_large(limit: int) -> Refusal:
    return Refusal(413, "request_too_large", f"the request body exceeds {limit} bytes", reason="body_too_large")
