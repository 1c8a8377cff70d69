"""Rate limits at the proxy: whose budget a request counts against, and what a refused agent is told.

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
import ipaddress
import math
from collections.abc import Iterable

from gateway.config import RateLimit
from gateway.principal import Principal
from gateway.state.gcra import RateVerdict
from gateway.state.ratelimit import address_key

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


def client_address(headers: Iterable[tuple[bytes, bytes]], peer: str, *, trust_forwarded: bool) -> str:
    """Who sent a request without a token, as a budget key: the socket peer, or behind a trusted load balancer the
    address it saw (the last X-Forwarded-For entry: the earlier ones are whatever the client claimed, RFC 7239
    §5.2). An entry that is no IP address is not believed. An IPv6 client counts by its /64, the block one
    subscriber is given: otherwise every address in it would bring a fresh budget."""
    if trust_forwarded:
        last = b""
        for name, value in headers:
            if name == b"x-forwarded-for":
                last = value  # several fields are one list (RFC 9110 §5.3): the last one ends it
        forwarded = _budget_address(last.rpartition(b",")[2].strip().decode("latin-1"))
        if forwarded is not None:
            return forwarded
    return _budget_address(peer) or peer  # a peer that is no IP (a unix socket): nothing better to count by


def _budget_address(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def limited_description(limit: RateLimit, route: str, principal: Principal | None, verdict: RateVerdict) -> str:
    """The 429's error_description: whose budget, which route, when to come back. Never any part of a token."""
    who = f"agent {principal.agent}" if principal is not None else "this client address"
    seconds = retry_after_header(verdict).decode("ascii")
    return f"{who} has used its rate limit of {describe(limit)} on route {route}; retry after {seconds} s"
