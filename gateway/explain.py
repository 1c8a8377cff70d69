"""`tollbooth explain`: the proxy's decision for one request, without sending anything upstream."""

from __future__ import annotations

import time
from typing import Any

from gateway.config import Config
from gateway.issuer.keys import KeyStore
from gateway.principal import Principal
from gateway.proxy.authorize import PathRejected, RouteTable, authorize, normalize_path
from gateway.proxy.identify import TokenRejected, Verifier
from gateway.state import RevocationList


def _result(
    allow: bool,
    status: int,
    reason: str,
    description: str,
    route: str | None = None,
    required: tuple[str, ...] = (),
    principal: Principal | None = None,
) -> dict[str, Any]:
    return {
        "allow": allow,
        "status": status,
        "reason": reason,
        "description": description,
        "route": route,
        "upstream": None,
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
    agent: str,
    subject: str | None,
    delegation: list[str],
) -> dict[str, Any]:
    """Decide as the proxy would: with a real token (verified like at the proxy) or with claimed scopes."""
    try:
        normalized = normalize_path(path.encode())
    except PathRejected as exc:
        return _result(False, 400, "path_rejected", exc.reason)
    principal: Principal | None = None
    if token:
        keys = KeyStore.load(config.issuer.keys_dir, config.issuer.algorithm, generate_if_empty=False)
        verifier = Verifier(
            issuer=config.issuer.url,
            audience=config.proxy.public_url,
            keys=keys.verification_keys,
            trusted_issuers=config.trusted_issuers,
            revocations=RevocationList(),
            leeway=config.proxy.clock_leeway,
            max_token_bytes=config.proxy.max_token_bytes,
        )
        try:
            principal = await verifier.verify(token)
        except TokenRejected as exc:
            return _result(False, exc.status, exc.reason, exc.description)
        finally:
            await verifier.aclose()
    elif scopes or delegation or subject:
        now = time.time()
        principal = Principal(
            agent=agent,
            subject=subject or agent,
            scopes=frozenset(s for chunk in scopes for s in chunk.split()),
            jti="explain",
            issuer=config.issuer.url,
            expires_at=now + 60,
            issued_at=now,
            delegation=tuple(delegation),
        )
    decision = authorize(RouteTable.from_config(config), method.upper(), normalized, principal)
    route = decision.route
    out = _result(
        decision.allow,
        decision.status,
        decision.reason,
        decision.description,
        route.name if route else None,
        decision.required_scopes,
        principal,
    )
    out["upstream"] = route.upstream if route else None
    return out
