"""Server-side state of a person's sign-in: the session a cookie names, the authorization requests waiting for
sign-in and consent, and the sign-ins sent to the OpenID provider. The cookie holds only a random id; what it
stands for is kept in the shared records (Redis when configured, so every replica knows it), under the id's
SHA-256, with a TTL: a stolen or forged cookie value names nothing, and a dump of the store holds no usable id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.issuer.authorization import AuthorizationRequest
from gateway.state.ephemeral import Ephemeral

PENDING_TTL = 600.0  # a person gets ten minutes from the client's redirect to the consent decision


@dataclass(frozen=True, slots=True)
class SignIn:
    subject: str
    csrf: str  # the anti-CSRF token every form of this session carries
    scopes: tuple[str, ...]  # what this person may grant, as their sign-in said (OIDC); accounts are re-read
    source: str  # "users" (login.users) or "oidc:<provider issuer>"
    expires_at: float


@dataclass(frozen=True, slots=True)
class Pending:
    request: AuthorizationRequest
    client_name: str
    csrf: str  # the sign-in form's, before there is a session
    browser: str  # SHA-256 of the browser cookie set with the request: only that browser may move it on
    expires_at: float


@dataclass(frozen=True, slots=True)
class Federation:
    """A sign-in sent to the OpenID provider: what its answer must match, and what it continues."""

    request: str  # the pending authorization request's key
    nonce: str
    verifier: str  # PKCE toward the provider
    browser: str  # as in Pending: the answer must come back to the browser that left
    expires_at: float


def _dump(record: SignIn | Pending | Federation) -> str:
    return json.dumps(dataclasses.asdict(record))


def _load(raw: str | None, build: Callable[[dict[str, Any]], Any]) -> Any:
    """The record, or None when there is none or it cannot be read (written by another version, say)."""
    if raw is None:
        return None
    try:
        return build(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        return None


def _sign_in(data: dict[str, Any]) -> SignIn:
    return SignIn(**{**data, "scopes": tuple(data["scopes"])})


def _pending(data: dict[str, Any]) -> Pending:
    request = AuthorizationRequest(**{**data["request"], "scopes": tuple(data["request"]["scopes"])})
    return Pending(**{**data, "request": request})


def _federation(data: dict[str, Any]) -> Federation:
    return Federation(**data)


def _id(kind: str, key: str) -> str:
    return f"{kind}:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


class SignIns:
    def __init__(self, store: Ephemeral, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def start(self, subject: str, scopes: tuple[str, ...], source: str, ttl: float) -> tuple[str, SignIn]:
        signed_in = SignIn(subject, secrets.token_urlsafe(24), scopes, source, self._clock() + ttl)
        cookie = secrets.token_urlsafe(32)
        await self._store.put(_id("session", cookie), _dump(signed_in), ttl)
        return cookie, signed_in

    async def session(self, cookie: str | None) -> SignIn | None:
        if not cookie:
            return None
        signed_in: SignIn | None = _load(await self._store.get(_id("session", cookie)), _sign_in)
        return signed_in if signed_in is not None and signed_in.expires_at > self._clock() else None

    async def end(self, cookie: str | None) -> None:
        if cookie:
            await self._store.delete(_id("session", cookie))

    async def hold(self, request: AuthorizationRequest, client_name: str, browser: str) -> tuple[str, Pending]:
        """Keep `request` for the browser whose binding cookie is `browser` (new_browser())."""
        pending = Pending(
            request, client_name, secrets.token_urlsafe(24), browser_hash(browser), self._clock() + PENDING_TTL
        )
        key = secrets.token_urlsafe(32)
        await self._store.put(_id("pending", key), _dump(pending), PENDING_TTL)
        return key, pending

    async def pending(self, key: str | None, browser: str | None) -> Pending | None:
        """The request `key` names, if the browser presenting it is the one it was held for. Without the binding,
        an attacker could start a request, sign in the victim's browser as themselves (login CSRF) with its
        request id and csrf, and collect what the victim then types for "their" client."""
        if not key:
            return None
        pending: Pending | None = _load(await self._store.get(_id("pending", key)), _pending)
        return pending if _held_for(pending, browser, self._clock()) else None

    async def decided(self, key: str | None, browser: str | None) -> Pending | None:
        """The pending request, removed: a consent decision is taken once, on whichever replica."""
        if await self.pending(key, browser) is None or not key:
            return None
        pending: Pending | None = _load(await self._store.take(_id("pending", key)), _pending)
        return pending

    async def federate(self, request: str, browser: str) -> tuple[str, Federation]:
        """Send the sign-in for pending request `request` to the provider; the key is the OAuth `state`."""
        federation = Federation(
            request,
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            browser_hash(browser),
            self._clock() + PENDING_TTL,
        )
        state = secrets.token_urlsafe(32)
        await self._store.put(_id("federation", state), _dump(federation), PENDING_TTL)
        return state, federation

    async def federated(self, state: str | None, browser: str | None) -> Federation | None:
        """The provider's answer's sign-in, spent: a state is good once, and only in the browser that left."""
        if not state:
            return None
        federation: Federation | None = _load(await self._store.take(_id("federation", state)), _federation)
        return federation if _held_for(federation, browser, self._clock()) else None


def _held_for(record: Pending | Federation | None, browser: str | None, now: float) -> bool:
    if record is None or browser is None or record.expires_at <= now:
        return False
    return csrf_ok(browser_hash(browser), record.browser)


def new_browser() -> str:
    return secrets.token_urlsafe(24)


def browser_hash(browser: str) -> str:
    return hashlib.sha256(browser.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_ok(sent: str | None, expected: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())
