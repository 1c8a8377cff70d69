"""The authorization request (OAuth 2.1 §4.1, RFC 9700) read the strict way: what a person's client asks for at
GET /oauth/authorize, checked before anyone signs in (DESIGN.md, "Interactive clients").

Two kinds of refusal, in the order the RFCs require. Until the client and its redirect URI are known good, an
error is shown on a page (`PageError`): redirecting to an unchecked URI would make this server an open redirector
(RFC 9700 §4.11). After that, errors go back to the client's redirect URI with its `state` (`RedirectError`).
Pure functions only: the client's registered redirect URIs come in, nothing is fetched here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from gateway.issuer.grants import resource_audience
from gateway.issuer.oauth import OAuthError
from gateway.wire import SCOPE_TOKEN

# RFC 7636 §4.1: 43-128 characters of the unreserved set; S256 challenges are 43 (base64url of SHA-256).
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_S256_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")
# A `state` travels back in a URL and into audit records: printable ASCII, bounded.
_STATE = re.compile(r"^[\x20-\x7e]{1,512}$")
MAX_PARAMETER = 2048
# RFC 3986 leaves these out of a URI; `;` and `,` are legal in paths but a host never has them, and the consent
# page's CSP names the redirect origin, so they are refused before a host could carry them.
_UNSAFE_URI = re.compile(r"[^\x21-\x7e]|[\"<>\\^`{|}]|^[^?]*//[^/?]*[;,]")


class PageError(Exception):
    """Shown to the person on an error page: the redirect URI cannot be trusted (yet)."""

    def __init__(self, error: str, description: str, reason: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason


class RedirectError(Exception):
    """Sent back to the client's (checked) redirect URI as `error`, `error_description` and `state`."""

    def __init__(self, error: str, description: str, reason: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A checked request: everything a code issued for it is bound to."""

    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    scopes: tuple[str, ...]  # as requested, in order, deduplicated (the grant narrows them later)
    resource: str  # the token's audience


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8 and ::1 as IP literals only: not `localhost` (DNS decides what it means), not 0.0.0.0."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_redirect_host(host: str, localhost: bool = False) -> bool:
    """A redirect host that is this machine: a loopback IP literal, and the name `localhost` when the config allows
    it (`interactive.localhost_redirects`, for clients that use it despite RFC 8252 §8.3)."""
    return is_loopback_host(host) or (localhost and host.lower() == "localhost")


def redirect_matches(requested: str, registered: Iterable[str], *, localhost: bool = False) -> bool:
    """Exact string match (OAuth 2.1 §2.3.1), except that a loopback redirect may use any port (RFC 8252 §7.3):
    native apps open an ephemeral port for each sign-in."""
    if requested in registered:
        return True
    asked = urlsplit(requested)
    if asked.scheme != "http" or not loopback_redirect_host(asked.hostname or "", localhost):
        return False
    for candidate in registered:
        known = urlsplit(candidate)
        if (
            known.scheme == "http"
            and known.hostname == asked.hostname
            and (known.path, known.query) == (asked.path, asked.query)
            and not asked.fragment
            and not asked.username
            and not asked.password
        ):
            return True
    return False


def redirect_host_allowed(redirect_uri: str, allowed_hosts: Sequence[str], *, localhost: bool = False) -> bool:
    """`interactive.redirect_hosts`: `*`, an exact host, or `*.example.com`; loopback is always allowed."""
    host = (urlsplit(redirect_uri).hostname or "").lower()
    if loopback_redirect_host(host, localhost):
        return True
    for pattern in allowed_hosts:
        pattern = pattern.lower()
        if pattern == "*" or pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def check_redirect_uri(uri: str, *, localhost: bool = False) -> str | None:
    """Why a redirect URI can never be used, or None: https anywhere, plain http only to loopback (RFC 8252
    §8.3), a private-use scheme with a dot (RFC 8252 §7.1, `com.example.app:/cb`); never a fragment."""
    if _UNSAFE_URI.search(uri):
        return "contains characters a URL cannot (spaces, controls, quotes, ;, non-ASCII)"
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "is not a URL"
    if parts.fragment or "#" in uri:
        return "has a fragment"
    if "@" in parts.netloc:
        # https://app.example.com@evil.example/ shows one host to a person and sends the code to another.
        return "has user info before its host"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http":
        if loopback_redirect_host(parts.hostname or "", localhost):
            return None
        return "is plain http to a host that is not loopback"
    if "." in parts.scheme and parts.scheme not in ("javascript", "data", "file"):
        return None
    return "uses a scheme that cannot carry a code safely"


def display_name(name: str | None, fallback: str, limit: int = 60) -> str:
    """A client's self-chosen name as the consent page shows it: printable, one line, bounded, so a name cannot
    push the real host off the page or pose as page text; `fallback` (its host) when nothing is left."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in (name or "")).split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned or fallback


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = [value for value in params.get(name, []) if value != ""]
    if len(values) > 1:
        raise ValueError(f"the {name} parameter is given more than once")
    if values and len(values[0]) > MAX_PARAMETER:
        raise ValueError(f"the {name} parameter is longer than {MAX_PARAMETER} characters")
    return values[0] if values else None


def client_and_redirect(
    params: dict[str, list[str]], registered: Iterable[str] | None, *, localhost: bool = False
) -> tuple[str, str]:
    """Step one: the client and a redirect URI it registered, or PageError. `registered` None: unknown client."""
    try:
        client_id = _one(params, "client_id")
        redirect_uri = _one(params, "redirect_uri")
    except ValueError as exc:
        raise PageError("invalid_request", str(exc), "duplicate_parameter") from None
    if client_id is None:
        raise PageError("invalid_request", "the request names no client_id", "missing_client_id")
    if registered is None:
        raise PageError("invalid_client", "this client is not known to the token service", "unknown_client")
    registered = list(registered)
    if redirect_uri is None:
        # OAuth 2.1 §4.1.1: optional only when the client registered exactly one.
        if len(registered) != 1:
            raise PageError("invalid_request", "the request names no redirect_uri", "missing_redirect_uri")
        redirect_uri = registered[0]
    if check_redirect_uri(redirect_uri, localhost=localhost) is not None or not redirect_matches(
        redirect_uri, registered, localhost=localhost
    ):
        raise PageError(
            "invalid_request", "the redirect_uri is not one this client registered", "redirect_uri_mismatch"
        )
    return client_id, redirect_uri


def authorization_request(
    params: dict[str, list[str]], client_id: str, redirect_uri: str, public_url: str
) -> AuthorizationRequest:
    """Step two, with the redirect URI trusted: the rest of the request, or RedirectError."""
    try:
        state = _one(params, "state")
        response_type = _one(params, "response_type")
        challenge = _one(params, "code_challenge")
        method = _one(params, "code_challenge_method")
        scope = _one(params, "scope")
    except ValueError as exc:
        raise RedirectError("invalid_request", str(exc), "duplicate_parameter") from None
    if state is not None and not _STATE.match(state):
        raise RedirectError("invalid_request", "state must be printable ASCII", "bad_state")
    if response_type != "code":
        raise RedirectError("unsupported_response_type", "only response_type=code is supported", "bad_response_type")
    if challenge is None:
        raise RedirectError("invalid_request", "PKCE is required: send code_challenge (S256)", "pkce_missing")
    if method != "S256":
        # OAuth 2.1 §4.1.1: `plain` gives no protection against a code intercepted on the device.
        raise RedirectError("invalid_request", "code_challenge_method must be S256", "pkce_method")
    if not _S256_CHALLENGE.match(challenge):
        raise RedirectError("invalid_request", "code_challenge is not a base64url SHA-256", "pkce_challenge")
    scopes = tuple(dict.fromkeys((scope or "").split()))
    if any(not SCOPE_TOKEN.match(s) for s in scopes):
        raise RedirectError("invalid_scope", "a requested scope is not a valid scope token", "invalid_scope")
    try:
        resource = resource_audience([r for r in params.get("resource", []) if r] or [public_url], public_url)
    except OAuthError as exc:
        raise RedirectError(exc.error, exc.description, exc.reason) from None
    return AuthorizationRequest(client_id, redirect_uri, state, challenge, scopes, resource)


def redirect_with(redirect_uri: str, values: dict[str, str | None]) -> str:
    """The redirect URI with `values` added to its query (RFC 6749 §4.1.2: keeping the query it already has)."""
    parts = urlsplit(redirect_uri)
    added = urlencode({name: value for name, value in values.items() if value is not None})
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def verifier_matches(verifier: str | None, challenge: str) -> bool:
    """RFC 7636 §4.6, in constant time; a verifier outside the RFC's alphabet or length never matches."""
    if verifier is None or not _VERIFIER.match(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)
