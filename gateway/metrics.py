"""Every Prometheus instrument Tollbooth exposes, in one place (served on the admin listener)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Buckets sized for a gateway: most answers take well under 10 ms; upstreams may take seconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "tollbooth_requests_total",
    "Requests answered by the proxy, by route, decision and status.",
    ["route", "decision", "status"],
)
REQUEST_SECONDS = Histogram(
    "tollbooth_request_duration_seconds",
    "Total time from request received to response finished, by route.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "tollbooth_upstream_duration_seconds",
    "Time from sending upstream to the upstream's response headers, by upstream.",
    ["upstream"],
    buckets=_LATENCY_BUCKETS,
)
# multiprocess_mode tells `--workers N` how to combine the workers' values (ignored with one process).
IN_FLIGHT = Gauge("tollbooth_requests_in_flight", "Requests the proxy is handling now.", multiprocess_mode="livesum")
TOKEN_VERIFICATIONS = Counter(
    "tollbooth_token_verifications_total",
    "Bearer tokens checked at the proxy, by outcome (cached, verified, rejected).",
    ["outcome"],
)
JWKS_FETCHES = Counter(
    "tollbooth_jwks_fetches_total",
    "JWKS fetches from trusted issuers, by issuer and outcome (ok, error).",
    ["issuer", "outcome"],
)
CONFIG_RELOADS = Counter(
    "tollbooth_config_reloads_total",
    "Config reload attempts, by outcome (applied, rejected).",
    ["outcome"],
)
CONFIG_LAST_RELOAD = Gauge(
    "tollbooth_config_last_reload_timestamp_seconds",
    "When the config in force was applied (Unix time).",
    multiprocess_mode="max",
)
AUDIT_EVENTS = Counter(
    "tollbooth_audit_events_total",
    "Audit events by sink and outcome (written, spooled, replayed, failed).",
    ["sink", "outcome"],
)
AUDIT_QUEUE_DEPTH = Gauge(
    "tollbooth_audit_queue_depth", "Audit events waiting to be written.", multiprocess_mode="livesum"
)


BLOCKS_ACTIVE = Gauge(
    "tollbooth_blocks_active",
    "Agents and subjects blocked now (the kill switch), as this process sees them.",
    ["kind"],
    multiprocess_mode="max",
)


@lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: the hot path asks for the same few children millions of times,
    and prometheus_client validates and locks on every `labels` call."""
    return metric.labels(*labels)


# Shared state (gateway.state). `backend` is "redis" or "file" (no Redis configured: the revocations file).
STATE_UP = Gauge(
    "tollbooth_state_up",
    "1 while this process's revocation view is kept current by its shared-state backend; 0 while it serves on its "
    "last known revocations.",
    ["backend"],
    multiprocess_mode="liveall",
)
STATE_LAST_SYNC = Gauge(
    "tollbooth_state_last_sync_timestamp_seconds",
    "When this process last knew its revocation view to be current (Unix time); the oldest live worker's value.",
    ["backend"],
    multiprocess_mode="livemin",
)
STATE_RELOADS = Counter(
    "tollbooth_state_reloads_total",
    "Full reads of the revocation set from the shared-state backend, by backend and outcome (ok, error).",
    ["backend", "outcome"],
)

# The token service (gateway.issuer). `event` is the audit event kind, `outcome` "ok" or the refusal's reason.
TOKEN_REQUESTS = Counter(
    "tollbooth_token_requests_total",
    "Token service answers by audit event kind (token.issued, token.refreshed, token.revoked, token.denied) and "
    "outcome (ok, or the reason for a refusal).",
    ["event", "outcome"],
)
AUDIT_SPOOL_BYTES = Gauge(
    "tollbooth_audit_spool_bytes",
    "Bytes of audit events in the local spool waiting for Redis.",
    multiprocess_mode="livesum",
)
AUDIT_SPOOL_OLDEST_AGE = Gauge(
    "tollbooth_audit_spool_oldest_event_age_seconds",
    "Age of the oldest audit event not yet replayed from the spool to Redis (0 when the spool is empty).",
    multiprocess_mode="livemax",
)

# Rate limits (gateway.state.ratelimit). Routes and outcomes are bounded by the config; agents are not labels.
RATE_LIMIT_DECISIONS = Counter(
    "tollbooth_rate_limit_decisions_total",
    "Requests counted against a route's rate limit, by route, outcome (allowed, limited, unavailable: refused with "
    "503 in strict mode while Redis is unreachable) and store (redis; memory: this process only, which with "
    "redis.url set means Redis was unreachable).",
    ["route", "outcome", "store"],
)

# MCP routes (gateway.proxy.inspect). Labels stay bounded by the config: the rule is its pattern as written
# (`search_*`, or "none" when no rule matched), never the name a caller sent; unknown methods count as "other".
MCP_DECISIONS = Counter(
    "tollbooth_mcp_decisions_total",
    "MCP messages decided on MCP routes, by route, JSON-RPC method, the rule that decided (its pattern), decision "
    "and reason.",
    ["route", "method", "rule", "decision", "reason"],
)
