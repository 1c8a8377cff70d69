"""Every answer the proxy makes itself: the Refusal its steps raise, RFC 6750 challenges, JSON error bodies, and
RFC 9728 resource metadata."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.wire import PROTECTED_RESOURCE_PATH, quotable


class Refusal(Exception):
    """A request the proxy answers itself instead of forwarding: raised by the step that knows, answered once.

    `error` and `description` go to the agent (never a token or a secret in them); `reason` goes to the audit
    event and metrics; `challenge` adds WWW-Authenticate (RFC 6750 §3); `headers` go last (Retry-After). An
    upstream failure is refused with `decision="allow"`: the gateway let the request through, the upstream failed.
    """

    __slots__ = ("status", "error", "description", "reason", "challenge", "scope", "headers", "decision", "rpc")

    status: int
    error: str
    description: str
    reason: str
    challenge: str | None
    scope: tuple[str, ...]
    headers: tuple[tuple[bytes, bytes], ...]
    decision: str
    rpc: tuple[int, Any] | None

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        reason: str,
        challenge: str | None = None,
        scope: tuple[str, ...] = (),
        headers: tuple[tuple[bytes, bytes], ...] = (),
        decision: str = "deny",
        rpc: tuple[int, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {error} ({reason}): {description}")
        for name, value in (
            ("status", status),
            ("error", error),
            ("description", description),
            ("reason", reason),
            ("challenge", challenge),
            ("scope", scope),
            ("headers", headers),
            ("decision", decision),
            ("rpc", rpc),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        # Frozen: what a step decided is what is answered and audited. Python's own dunders (__traceback__,
        # __cause__) stay writable, so raising, chaining and context managers work as with any exception.
        if name in Refusal.__slots__:
            raise AttributeError(f"a Refusal is frozen: cannot set {name}")
        super().__setattr__(name, value)


# The challenges a caller may ask for. "no_token" is RFC 6750 §3.1's request without authentication: no error
# code or error information, only where to learn how to get a token.
_CHALLENGES = frozenset({"no_token", "invalid_token", "invalid_request", "insufficient_scope"})

_BODY_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


def _bearer_challenge(
    challenge: str, *, description: str, resource_metadata: str | None, scope: Sequence[str]
) -> bytes:
    """The WWW-Authenticate value for `challenge`; auth-params in one fixed order (they are unordered, RFC 9110
    §11.2): error, error_description, scope, resource_metadata (RFC 9728 §5.1)."""
    if challenge not in _CHALLENGES:
        raise ValueError(f"unknown challenge {challenge!r}: expected one of {sorted(_CHALLENGES)}")
    params: list[str] = []
    if challenge != "no_token":
        params.append(f'error="{challenge}"')
        params.append(f'error_description="{quotable(description)}"')
    if scope:
        params.append(f'scope="{" ".join([quotable(s, spaces=False) for s in scope])}"')
    if resource_metadata:
        params.append(f'resource_metadata="{quotable(resource_metadata, spaces=False)}"')
    # A bare "Bearer" is a complete challenge (RFC 9110 §11.2: auth-params are optional).
    return ("Bearer " + ", ".join(params) if params else "Bearer").encode("ascii")


def error_response(
    *,
    status: int,
    error: str,
    description: str,
    request_id: str,
    challenge: str | None = None,
    resource_metadata: str | None = None,
    scope: Sequence[str] = (),
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    rpc: tuple[int, Any] | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A gateway error as (status, headers, body), ready for an ASGI response.

    Body: `{"error", "error_description", "request_id"}` as JSON, never cached (`Cache-Control: no-store`), with
    X-Request-Id so the agent can quote it. With `challenge`, a `WWW-Authenticate: Bearer …` header: "no_token"
    carries only scope and resource_metadata (RFC 6750 §3.1), the others `error="<challenge>"` and a sanitised
    `error_description` too (RFC 6750 §3). `extra_headers` (Retry-After, traceparent, …) go last.
    Callers must never put a token, or any part of one, in `description`: it is shown to the agent.
    With `rpc` (code, JSON-RPC id), for an MCP route: a JSON-RPC error response instead, `error.data` carrying the
    OAuth error and the request id (MCP clients show a gateway's error only in that shape).
    """
    document: dict[str, Any] = {"error": error, "error_description": description, "request_id": request_id}
    if rpc is not None:
        data = {"error": error, "request_id": request_id}
        document = {"jsonrpc": "2.0", "id": rpc[1], "error": {"code": rpc[0], "message": description, "data": data}}
    try:
        body = orjson.dumps(document)
    except orjson.JSONEncodeError:
        # A lone surrogate (a JSON "\ud800" escape in a token's kid, say) is not UTF-8; the stdlib escapes it.
        body = json.dumps(document).encode("ascii")
    headers = [
        *_BODY_HEADERS,
        (b"content-length", str(len(body)).encode("ascii")),
        (b"x-request-id", request_id.encode("ascii")),
    ]
    if challenge is not None:
        value = _bearer_challenge(challenge, description=description, resource_metadata=resource_metadata, scope=scope)
        headers.append((b"www-authenticate", value))
    headers += extra_headers
    return status, headers, body


def protected_resource_metadata(
    *,
    resource: str,
    authorization_servers: Sequence[str],
    scopes_supported: Sequence[str],
    resource_name: str | None = None,
) -> dict[str, str | list[str]]:
    """The RFC 9728 §2 metadata document; `resource` must be what `metadata_resource_for` derived (§3.3)."""
    metadata: dict[str, str | list[str]] = {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "scopes_supported": list(scopes_supported),
        # Tokens only in the Authorization header: the proxy refuses query and form tokens (RFC 6750 §2).
        "bearer_methods_supported": ["header"],
    }
    if resource_name:
        metadata["resource_name"] = resource_name
    return metadata


def _split_public_url(public_url: str) -> tuple[str, str]:
    """(scheme://authority, path) of the public URL. RFC 9728 §3.1 removes a terminating slash that follows the
    host ("https://gw/" → ""), not one ending a longer path ("/api/" stays)."""
    parts = urlsplit(public_url)
    return f"{parts.scheme}://{parts.netloc}", "" if parts.path == "/" else parts.path


def metadata_resource_for(public_url: str, request_path: str) -> str | None:
    """The resource identifier whose metadata `request_path` asks for, or None when it is not ours.

    RFC 9728 §3.1 builds the metadata URL by inserting the well-known path between the host and the path of the
    resource identifier, so the request path is PROTECTED_RESOURCE_PATH followed by the resource's own path:
    `/.well-known/oauth-protected-resource` → `public_url` (root form); `…/mcp` → `public_url + "/mcp"` (path
    form). With a public URL that has a path, `https://gw.example.com/api`, the root form is
    `/.well-known/oauth-protected-resource/api` and `/.well-known/oauth-protected-resource/api/mcp` names
    `https://gw.example.com/api/mcp`; resources outside the public URL (`…/other`) are not ours: None.
    """
    if not request_path.startswith(PROTECTED_RESOURCE_PATH):
        return None
    resource_path = request_path[len(PROTECTED_RESOURCE_PATH) :]
    origin, public_path = _split_public_url(public_url)
    if resource_path == public_path:
        # §3.3: resource MUST be the identifier the client derived the URL from, i.e. the public URL itself.
        return public_url
    under = public_path.rstrip("/") + "/"
    if resource_path.startswith(under) and len(resource_path) > len(under):
        return origin + resource_path
    return None


def resource_metadata_url(public_url: str) -> str:
    """The metadata URL advertised in `resource_metadata="…"`: the root form for the public URL (RFC 9728 §3.1)."""
    origin, public_path = _split_public_url(public_url)
    return origin + PROTECTED_RESOURCE_PATH + public_path
