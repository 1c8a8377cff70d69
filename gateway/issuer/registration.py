"""RFC 7591 dynamic client registration, for people's MCP clients too old for Client ID Metadata Documents
(`interactive.dynamic_registration`). Anyone may register, so a registration grants nothing by itself: it only
names redirect URIs, which every authorization request is then held to, and the person still signs in and
consents. Registrations live in the shared records (every replica knows them) for REGISTRATION_TTL, which the
response announces as `client_secret_expires_at`; a secret is kept only as its SHA-256 (it is 256 random bits,
so a slow hash adds nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.issuer.authorization import check_redirect_uri, redirect_host_allowed
from gateway.issuer.client_documents import ClientDocument
from gateway.state.ephemeral import Ephemeral

REGISTER_PATH = "/oauth/register"
REGISTRATION_TTL = 90 * 86400.0  # then the client registers again (RFC 7591 §3.2.1 client_secret_expires_at)
MAX_REDIRECT_URIS = 10
METHODS = ("none", "client_secret_basic", "client_secret_post")
_CLIENT_PREFIX = "dcr_"


class RegistrationError(Exception):
    """RFC 7591 §3.2.2: `invalid_redirect_uri` or `invalid_client_metadata`, answered 400."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class Registered:
    document: ClientDocument  # what authorization requests are checked against, as for a metadata document
    secret_hash: str | None  # SHA-256 hex of the client secret; None for a public client
    issued_at: int


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise RegistrationError("invalid_client_metadata", f"{name} must be a list of non-empty strings")
    return value


def read_registration(
    body: Any, redirect_hosts: Sequence[str], *, localhost: bool = False
) -> tuple[tuple[str, ...], str | None, str]:
    """The redirect URIs, client_name and auth method of a registration request, or RegistrationError."""
    if not isinstance(body, dict):
        raise RegistrationError("invalid_client_metadata", "the registration request must be a JSON object")
    uris = _strings(body.get("redirect_uris"), "redirect_uris")
    if not uris or len(uris) > MAX_REDIRECT_URIS:
        raise RegistrationError("invalid_redirect_uri", f"register 1 to {MAX_REDIRECT_URIS} redirect_uris")
    for uri in uris:
        why = check_redirect_uri(uri, localhost=localhost)
        if why is not None or len(uri) > 2048:
            raise RegistrationError("invalid_redirect_uri", f"the redirect URI {uri[:100]!r} {why or 'is too long'}")
        if not redirect_host_allowed(uri, redirect_hosts, localhost=localhost):
            raise RegistrationError("invalid_redirect_uri", f"the redirect URI {uri[:100]!r} names a host not allowed")
    # RFC 7591 §2: the default is client_secret_basic (DESIGN.md: and then it gets a secret).
    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in METHODS:
        raise RegistrationError("invalid_client_metadata", f"token_endpoint_auth_method must be one of {METHODS}")
    for name, allowed in (("grant_types", {"authorization_code", "refresh_token"}), ("response_types", {"code"})):
        if name in body and not set(_strings(body[name], name)) <= allowed:
            raise RegistrationError("invalid_client_metadata", f"{name} may only be {sorted(allowed)}")
    client_name = body.get("client_name")
    if client_name is not None and (not isinstance(client_name, str) or not 0 < len(client_name) <= 100):
        raise RegistrationError("invalid_client_metadata", "client_name must be a string of 1-100 characters")
    return tuple(uris), client_name, str(method)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Registrations:
    def __init__(self, store: Ephemeral, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def register(self, uris: tuple[str, ...], name: str | None, method: str) -> tuple[Registered, str | None]:
        """A new client and its secret (None for a public one)."""
        client_id = _CLIENT_PREFIX + secrets.token_urlsafe(16)
        secret = None if method == "none" else secrets.token_urlsafe(32)
        document = ClientDocument(client_id, uris, name, None, method)
        registered = Registered(document, _digest(secret) if secret else None, int(self._clock()))
        await self._store.put(f"client:{client_id}", json.dumps(dataclasses.asdict(registered)), REGISTRATION_TTL)
        return registered, secret

    async def get(self, client_id: str | None) -> Registered | None:
        if not client_id or not client_id.startswith(_CLIENT_PREFIX):
            return None  # not one of ours: no lookup for every document URL or agent name
        raw = await self._store.get(f"client:{client_id}")
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            document = ClientDocument(**{**data["document"], "redirect_uris": tuple(data["document"]["redirect_uris"])})
            registered = Registered(document, data["secret_hash"], data["issued_at"])
        except (ValueError, TypeError, KeyError):
            return None
        return registered if registered.issued_at + REGISTRATION_TTL > self._clock() else None


def secret_matches(registered: Registered, secret: str | None) -> bool:
    if registered.secret_hash is None or secret is None:
        return False
    return hmac.compare_digest(_digest(secret), registered.secret_hash)


def registration_response(registered: Registered, secret: str | None) -> dict[str, Any]:
    """RFC 7591 §3.2.1: the client's id (and secret), and the metadata as registered."""
    document = registered.document
    body: dict[str, Any] = {
        "client_id": document.client_id,
        "client_id_issued_at": registered.issued_at,
        "redirect_uris": list(document.redirect_uris),
        "token_endpoint_auth_method": document.token_endpoint_auth_method,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }
    if document.client_name:
        body["client_name"] = document.client_name
    if secret is not None:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = registered.issued_at + int(REGISTRATION_TTL)
    return body
