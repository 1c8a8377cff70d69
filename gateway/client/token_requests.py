"""What the SDK asks the token service for, and what it keeps of the answer. Pure: forms in, `Token` out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jwt

from gateway.client.credentials import Credential
from gateway.client.discovery import JSON, Endpoints
from gateway.client.errors import ProtocolError, TokenRequestError
from gateway.client.exchange import Call, Exchange, Reply
from gateway.wire import TOKEN_EXCHANGE

# Refresh ahead of expiry by up to a fifth of the lifetime (at most two minutes), less a random part of that, so a
# fleet of agents started together does not refresh together.
REFRESH_SHARE = 0.2
MAX_REFRESH_AHEAD = 120.0
MIN_REFRESH_AHEAD = 2.0  # short-lived tokens: room for one token request before expiry


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)  # never in a log line or a traceback's locals
    scopes: tuple[str, ...]
    refresh_token: str | None = field(repr=False)
    expires_at: float
    refresh_at: float  # from here on, one caller fetches a new token while the others keep using this one
    stop_at: float  # from here on the token is too close to expiry to send
    audience: str | None = None  # where the token may be sent, when discovery did not say (issuer_url only)

    def usable(self, now: float) -> bool:
        return now < self.stop_at

    def due(self, now: float) -> bool:
        return now >= self.refresh_at


def schedule(now: float, expires_in: float, jitter: float) -> tuple[float, float, float]:
    """(expires_at, refresh_at, stop_at) for a token valid `expires_in` seconds; `jitter` in [0, 1)."""
    # `exp` is whole seconds (RFC 7519 §2 NumericDate), so the server's clock may have started up to a second
    # before ours did: count up to a second less, and never more than the server said.
    lifetime = expires_in - min(1.0, expires_in / 2)
    ahead = min(max(lifetime * REFRESH_SHARE, min(MIN_REFRESH_AHEAD, lifetime / 2)), MAX_REFRESH_AHEAD)
    refresh_ahead = ahead * (1 - jitter / 2)
    # Never send a token that would expire in flight: stop using it half the smallest refresh margin early.
    return now + lifetime, now + lifetime - refresh_ahead, now + lifetime - ahead / 4


def token_from(body: dict[str, Any], requested: tuple[str, ...], now: float, jitter: float, url: str) -> Token:
    """RFC 6749 §5.1: a successful token response → Token; ProtocolError when it is not one."""
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProtocolError(f"{url} answered 200 without an access_token")
    if str(body.get("token_type", "")).lower() != "bearer":
        raise ProtocolError(f"{url} issued a {body.get('token_type')!r} token; this SDK presents Bearer tokens")
    expires_in = _seconds(body.get("expires_in"))
    if expires_in is None:
        raise ProtocolError(f"{url} gave no usable expires_in; the SDK needs it to refresh in time")
    # §5.1: scope may be omitted when it is what was asked for.
    scope = body.get("scope")
    scopes = tuple(scope.split()) if isinstance(scope, str) else requested
    refresh_token = body.get("refresh_token")
    expires_at, refresh_at, stop_at = schedule(now, float(expires_in), jitter)
    return Token(
        access_token=access_token,
        scopes=scopes,
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=expires_at,
        refresh_at=refresh_at,
        stop_at=stop_at,
        audience=_audience(access_token),
    )


def _seconds(value: Any) -> float | None:
    """RFC 6749 §5.1 `expires_in`: a positive, finite number of seconds (a numeric string is tolerated)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _audience(access_token: str) -> str | None:
    """The `aud` of a JWT access token (RFC 9068 §2.2), unverified: it only narrows where the SDK sends the token."""
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) == 1:
        audience = audience[0]
    return audience if isinstance(audience, str) else None


@dataclass(frozen=True)
class ClientCredentials:
    """RFC 6749 §4.4: a token for the agent itself."""

    scopes: tuple[str, ...]

    def form(self, resource: str | None) -> dict[str, str]:
        return _with_target({"grant_type": "client_credentials"}, self.scopes, resource)


@dataclass(frozen=True)
class TokenExchange:
    """RFC 8693 §2.1: a token for the agent acting on behalf of the subject token's holder."""

    subject_token: str = field(repr=False)
    subject_token_type: str
    scopes: tuple[str, ...]

    def form(self, resource: str | None) -> dict[str, str]:
        fields = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": self.subject_token,
            "subject_token_type": self.subject_token_type,
        }
        return _with_target(fields, self.scopes, resource)


def refresh_form(token: Token, scopes: tuple[str, ...]) -> dict[str, str]:
    """RFC 6749 §6; the scope asked for again so that the grant cannot widen by omission."""
    assert token.refresh_token is not None
    return _with_target({"grant_type": "refresh_token", "refresh_token": token.refresh_token}, scopes, None)


def _with_target(fields: dict[str, str], scopes: tuple[str, ...], resource: str | None) -> dict[str, str]:
    if scopes:
        fields["scope"] = " ".join(scopes)
    if resource:
        fields["resource"] = resource  # RFC 8707 §2: the token is for this proxy and no other
    return fields


def _refusal(reply: Reply) -> TokenRequestError:
    """The RFC 6749 §5.2 error in a refusal; a body that is not one (a load balancer's 502) is named by status."""
    try:
        body = reply.json_object()
    except ProtocolError:
        body = {}
    error, description = body.get("error"), body.get("error_description")
    return TokenRequestError(
        error if isinstance(error, str) else f"http_{reply.status}",
        description if isinstance(description, str) else "",
        reply.status,
        reply.url,
    )


def token_request(endpoints: Endpoints, credential: Credential, form: dict[str, str]) -> Exchange[dict[str, Any]]:
    """POST a grant to the token endpoint; the JSON body of a 200, else TokenRequestError (RFC 6749 §5.2)."""
    headers, fields = credential.authenticate(endpoints.server.issuer)
    url = endpoints.server.token_endpoint
    reply = yield Call("POST", url, {**JSON, **headers}, {**form, **fields})
    if reply.status != 200:
        raise _refusal(reply)
    return reply.json_object()


def revocation(endpoints: Endpoints, credential: Credential, token: Token) -> Exchange[None]:
    """RFC 7009 §2.1: revoke the refresh token (its whole family) first, then the access token."""
    url = endpoints.server.revocation_endpoint
    if url is None:
        raise ProtocolError(f"{endpoints.server.issuer} publishes no revocation_endpoint")
    pairs = [(token.refresh_token, "refresh_token")] if token.refresh_token else []
    for value, hint in [*pairs, (token.access_token, "access_token")]:
        headers, fields = credential.authenticate(endpoints.server.issuer)
        reply = yield Call("POST", url, {**JSON, **headers}, {"token": value, "token_type_hint": hint, **fields})
        if reply.status != 200:  # §2.2: 200 even for a token that was already invalid
            raise _refusal(reply)
