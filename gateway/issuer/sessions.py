"""Server-side state of a person's sign-in: the session a cookie names, and the authorization requests waiting
for sign-in and consent. The cookie holds only a random id; what it stands for stays here, bounded in count
and lifetime, so a stolen or forged cookie value names nothing and a flood of requests cannot grow memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.issuer.authorization import AuthorizationRequest

T = TypeVar("T")
PENDING_TTL = 600.0  # a person gets ten minutes from the client's redirect to the consent decision
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class SignIn:
    subject: str
    csrf: str  # the anti-CSRF token every form of this session carries
    scopes: tuple[str, ...]  # what this person may grant, as their sign-in said (OIDC); accounts are re-read
    source: str  # "users" (login.users) or "oidc"
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


class _Expiring(Generic[T]):
    """Random-id → value with a deadline each, the oldest dropped past `limit`."""

    def __init__(self, clock: Callable[[], float], limit: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._limit = limit
        self._items: OrderedDict[str, tuple[T, float]] = OrderedDict()

    def put(self, value: T, expires_at: float) -> str:
        key = secrets.token_urlsafe(32)
        self._items[key] = (value, expires_at)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)
        return key

    def get(self, key: str | None) -> T | None:
        found = self._items.get(key or "")
        if found is None:
            return None
        if found[1] <= self._clock():
            del self._items[key or ""]
            return None
        return found[0]

    def pop(self, key: str | None) -> T | None:
        value = self.get(key)
        self._items.pop(key or "", None)
        return value


class SignIns:
    def __init__(self, *, session_ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._session_ttl = session_ttl
        self._sessions: _Expiring[SignIn] = _Expiring(clock)
        self._pending: _Expiring[Pending] = _Expiring(clock)
        self._federations: _Expiring[Federation] = _Expiring(clock)

    def start(self, subject: str, scopes: tuple[str, ...], source: str) -> tuple[str, SignIn]:
        signed_in = SignIn(subject, secrets.token_urlsafe(24), scopes, source, self._clock() + self._session_ttl)
        return self._sessions.put(signed_in, signed_in.expires_at), signed_in

    def session(self, cookie: str | None) -> SignIn | None:
        return self._sessions.get(cookie)

    def end(self, cookie: str | None) -> None:
        self._sessions.pop(cookie)

    def hold(self, request: AuthorizationRequest, client_name: str, browser: str) -> tuple[str, Pending]:
        """Keep `request` for the browser whose binding cookie is `browser` (new_browser())."""
        pending = Pending(
            request, client_name, secrets.token_urlsafe(24), browser_hash(browser), self._clock() + PENDING_TTL
        )
        return self._pending.put(pending, pending.expires_at), pending

    def pending(self, key: str | None, browser: str | None) -> Pending | None:
        """The request `key` names, if the browser presenting it is the one it was held for. Without the binding,
        an attacker could start a request, sign in the victim's browser as themselves (login CSRF) with its
        request id and csrf, and collect what the victim then types for "their" client."""
        pending = self._pending.get(key)
        if pending is None or browser is None or not csrf_ok(browser_hash(browser), pending.browser):
            return None
        return pending

    def decided(self, key: str | None, browser: str | None) -> Pending | None:
        """The pending request, removed: a consent decision is taken once."""
        pending = self.pending(key, browser)
        if pending is not None:
            self._pending.pop(key)
        return pending

    def federate(self, request: str, browser: str) -> tuple[str, Federation]:
        """Send the sign-in for pending request `request` to the provider; the key is the OAuth `state`."""
        federation = Federation(
            request,
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            browser_hash(browser),
            self._clock() + PENDING_TTL,
        )
        return self._federations.put(federation, federation.expires_at), federation

    def federated(self, state: str | None, browser: str | None) -> Federation | None:
        """The provider's answer's sign-in, spent: a state is good once, and only in the browser that left."""
        federation = self._federations.pop(state)
        if federation is None or browser is None or not csrf_ok(browser_hash(browser), federation.browser):
            return None
        return federation


def new_browser() -> str:
    return secrets.token_urlsafe(24)


def browser_hash(browser: str) -> str:
    return hashlib.sha256(browser.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_ok(sent: str | None, expected: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())
