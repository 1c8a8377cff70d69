"""`tollbooth explain`: the proxy's decision for one request, without sending anything upstream."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Config
from gateway.issuer.keystore import KeyStore
from gateway.mcp.message import McpMessage
from gateway.mcp.rules import decide
from gateway.principal import Principal
from gateway.proxy.answers import Refusal
from gateway.proxy.authorize import PathRejected, Route, RouteTable, authorize, normalize_path
from gateway.proxy.snapshot import verifier_for
from gateway.state import RevocationList
from gateway.wire import PROTECTED_RESOURCE_PATH

# The proxy answers this prefix itself for GET and HEAD (RFC 9728 metadata, see proxy/app.py): no route applies.


def request_path(target: str) -> str:
    """The path part of what the user typed: `/a/b?x=1` → `/a/b`; `https://gw.example/a/b` → `/a/b`.

    The proxy matches the path only (the query string travels separately in a request), so explain does too.
    Nothing is decoded or cleaned here: the path goes to normalize_path exactly as it would arrive.
    """
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        rest = target[len(parts.scheme) + 3 + len(parts.netloc) :]
        target = rest or "/"
    return target.partition("?")[0]


def _result(
    allow: bool,
    status: int,
    reason: str,
    description: str,
    *,
    error: str | None = None,
    route: str | None = None,
    upstream: str | None = None,
    required: tuple[str, ...] = (),
    principal: Principal | None = None,
) -> dict[str, Any]:
    return {
        "allow": allow,
        "status": status,
        # What the agent would see in the JSON error body and the challenge; None when the request is forwarded.
        "error": None if allow else (error or reason),
        "reason": reason,
        "description": description,
        "route": route,
        "upstream": upstream,
        "required_scopes": list(required),
        "principal": None
        if principal is None
        else {
            "agent": principal.agent,
            "subject": principal.subject,
            "delegation": list(principal.delegation),
            "scopes": sorted(principal.scopes),
            "jti": principal.jti,
        },
    }


async def explain(
    config: Config,
    *,
    method: str,
    path: str,
    token: str | None,
    scopes: list[str],
    agent: str | None,
    subject: str | None,
    delegation: list[str],
    mcp: tuple[str, str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Decide as the proxy would: with a real token (verified like at the proxy) or with claimed scopes.

    Without a token, a caller is assumed when any of scopes, agent, subject or delegation is given; with none of
    them the request is explained as one that carries no token. Revocations are not consulted (they live in the
    running gateway). Raises KeyStoreError when a token is given but the signing keys cannot be read.
    """
    method = method.upper()
    path = request_path(path)
    notes: list[str] = []
    try:
        normalized = normalize_path(path.encode())
    except PathRejected as exc:
        return _with(_result(False, 400, "path_rejected", exc.reason, error="invalid_request"), method, path, notes)
    if normalized.startswith(PROTECTED_RESOURCE_PATH) and method in ("GET", "HEAD"):
        description = "the proxy answers this itself (RFC 9728 protected resource metadata); no route or upstream"
        return _with(_result(True, 200, "protected_resource_metadata", description), method, path, notes)
    principal: Principal | None = None
    if token:
        keys = KeyStore.load(
            config.issuer.keys_dir,
            config.issuer.algorithm,
            generate_if_empty=False,
            token_lifetime=KeyStore.token_lifetime(config),
        )
        verifier = verifier_for(config, keys=keys.verification_keys, revocations=RevocationList())
        try:
            principal = await verifier.verify(token)
        except Refusal as exc:
            return _with(_result(False, exc.status, exc.reason, exc.description, error=exc.error), method, path, notes)
        finally:
            await verifier.aclose()
    elif scopes or delegation or subject or agent:
        agent = agent or "explain"
        if subject and subject != agent and not delegation:
            delegation = [agent]  # as `tollbooth token` mints it: a delegated token names the agent in act.sub
        now = time.time()
        held = frozenset(s for chunk in scopes for s in chunk.split())
        principal = Principal(
            agent=agent,
            subject=subject or agent,
            scopes=held,
            jti="explain",
            issuer=config.issuer.url,
            expires_at=now + 60,
            issued_at=now,
            delegation=tuple(delegation),
        )
        configured = config.agents.get(agent)
        if configured is not None and not held <= set(configured.scopes):
            outside = " ".join(sorted(held - set(configured.scopes)))
            notes.append(f"agent {agent!r} can never be issued {outside} (agents.{agent}.scopes)")
    decision = authorize(RouteTable.from_config(config), method, normalized, principal)
    route = decision.route
    if decision.reason == "missing_token":
        notes.append("explained as a request without a token; give --token, or --scope/--agent to assume a caller")
    if mcp is not None and decision.allow and route is not None and principal is not None:
        if route.mcp is None:
            notes.append(f"route '{route.name}' has no mcp: block: any MCP message passes with the route's scopes")
        else:
            return _with(_mcp_result(route, principal, mcp), method, path, notes)
    out = _result(
        decision.allow,
        decision.status,
        decision.reason,
        decision.description,
        route=route.name if route else None,
        upstream=route.upstream if route else None,
        required=decision.required_scopes,
        principal=principal,
    )
    return _with(out, method, path, notes)


def _mcp_result(route: Route, principal: Principal, call: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """The verdict of the route's `mcp:` rules on one tools/call, resources/read or prompts/get."""
    method, name, arguments = call
    assert route.mcp is not None
    field = "uri" if method == "resources/read" else "name"
    message = McpMessage("request", method, "explain", name, arguments if method == "tools/call" else None)
    verdict = decide(route.mcp, route.scopes, message, principal)
    status = 200 if verdict.allow else 403
    error = "insufficient_scope" if verdict.reason == "insufficient_scope" else "access_denied"
    out = _result(
        verdict.allow,
        status,
        verdict.reason,
        verdict.description,
        error=error,
        route=route.name,
        upstream=route.upstream,
        required=verdict.scopes or (*route.scopes, *(verdict.rule.scopes if verdict.rule else ())),
        principal=principal,
    )
    out["mcp"] = {"method": method, field: name, "rule": verdict.rule.label if verdict.rule else None}
    return out


def _with(result: dict[str, Any], method: str, path: str, notes: list[str]) -> dict[str, Any]:
    return {"method": method, "path": path, **result, "notes": notes}
