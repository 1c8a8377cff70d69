"""OAuth Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document): a client whose `client_id` is an
https URL is described by the JSON document served at that URL (DESIGN.md "Interactive clients").

Fetching a URL that anyone may name is a server-side request forgery surface, so the fetch is narrow: the host is
resolved once and every address is checked (no private, link-local, multicast, reserved, unspecified or shared
address; loopback only when allowed), the connection goes to the checked address with the name carried in the Host
header and TLS SNI (a second lookup could be rebound to an internal address), no redirect is followed, and the whole
exchange has one deadline and a byte limit. Documents are cached by their Cache-Control; concurrent fetches of one
URL share one request.

The pure parts (URL form, address policy, cache lifetime, document checks) are functions; `ClientDocuments` is the
thin shell around the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

import httpx2

from gateway.outbound import tls_context

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_LIFETIME: Final = 300.0  # seconds a document is kept when its response names no max-age
MAX_LIFETIME: Final = 24 * 3600.0  # a long max-age must not pin a document the client has since changed
MAX_ENTRIES: Final = 1024
MAX_CLIENT_ID_LENGTH: Final = 2048  # the URL travels in query strings, audit events and tokens
AUTH_METHODS: Final = frozenset({"none", "private_key_jwt"})

_LOOPBACK_V4: Final = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6: Final = ipaddress.IPv6Address("::1")
_SHARED: Final = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT: inside someone's network
_NAT64: Final = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# A host name as DNS spells it (ASCII; an IDN arrives as punycode). Anything else (percent-escapes, odd characters)
# could be read differently by the resolver and by the server's virtual-host match.
_HOST_NAME: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_.])?")


@dataclass(frozen=True, slots=True)
class ClientDocument:
    client_id: str
    redirect_uris: tuple[str, ...]
    client_name: str | None
    logo_uri: str | None
    token_endpoint_auth_method: str


class ClientDocumentError(Exception):
    """Why a client_id URL gave no usable document. `reason` is for audit, `description` for people."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


# ---------------------------------------------------------------------------------------------------------------
# Pure parts


def is_document_client_id(value: str) -> bool:
    """Whether `value` has the form of a Client Identifier URL (draft §3), plain http allowed for loopback literals."""
    return _document_url(value) is not None


def _document_url(value: str) -> SplitResult | None:
    if not isinstance(value, str) or len(value) > MAX_CLIENT_ID_LENGTH:
        return None
    # ASCII without spaces, controls or backslashes: the client_id is compared as a string (draft §3), so it must
    # have one spelling, and parsers disagree about the rest (a backslash is a slash to a browser, not to urlsplit).
    if not value.isascii() or any(c <= " " or c in "\x7f\\" for c in value):
        return None
    if not value.startswith(("https://", "http://")):
        return None
    parts = urlsplit(value)
    if "#" in value or "@" in parts.netloc or parts.netloc.endswith(":"):
        return None  # draft §3: no fragment, no userinfo
    try:
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number in range)
    except ValueError:
        return None
    host = parts.hostname or ""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif not _HOST_NAME.fullmatch(host):
        return None
    if parts.path in ("", "/"):
        return None  # draft §3: a path; at the root the document would collide with the site's own content
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        return None  # draft §3: dot segments would let two spellings name one document
    if parts.scheme == "http" and not _is_loopback_literal(host):
        return None  # plain http only where no network carries it
    return parts


def _is_loopback_literal(host: str) -> bool:
    # An IP literal, never a name: "localhost" can be made to resolve anywhere (DESIGN.md: 127.0.0.0/8 and [::1]).
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address in _LOOPBACK_V4 if isinstance(address, ipaddress.IPv4Address) else address == _LOOPBACK_V6


def is_allowed_address(address: IPAddress, *, allow_loopback: bool) -> bool:
    """Whether a document may be fetched from `address`: a globally reachable unicast address, or loopback when
    allowed (draft §7 "SSRF": never a special-use address of RFC 6890)."""
    if isinstance(address, ipaddress.IPv6Address):
        # These carry an IPv4 address that the packet ends up at: judge that one (::ffff:10.0.0.1 is 10.0.0.1).
        embedded = address.ipv4_mapped or address.sixtofour or _nat64_embedded(address)
        if embedded is not None:
            return is_allowed_address(embedded, allow_loopback=allow_loopback)
        if address.teredo is not None:
            return False  # a tunnel whose far end we cannot check
        if address == _LOOPBACK_V6:
            return allow_loopback
    elif address in _LOOPBACK_V4:
        return allow_loopback
    # Each kind named, not left to is_private/is_global alone: their ranges have changed between Python releases.
    if (
        address.is_private
        or address.is_link_local  # 169.254.169.254 is the cloud metadata service
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified  # 0.0.0.0 reaches the local host on Linux
        or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
    ):
        return False
    return address.is_global


def _nat64_embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def cache_lifetime(cache_control: str | None, age: str | None = None) -> float:
    """Seconds a response may be reused (RFC 9111 §4.2), capped at MAX_LIFETIME; 0 means do not keep it."""
    directives: dict[str, str] = {}
    for item in (cache_control or "").split(","):
        name, _, value = item.strip().partition("=")
        # RFC 9111 §4.2.1: of a repeated directive the first counts.
        directives.setdefault(name.strip().lower(), value.strip().strip('"'))
    if "no-store" in directives or "no-cache" in directives:
        return 0.0  # no-cache: every use must be revalidated, which for us is a fresh fetch
    if "max-age" in directives:
        value = directives["max-age"]
        # RFC 9111 §4.2.1: an invalid max-age makes the response stale, not fresh for the default.
        lifetime = min(float(value), MAX_LIFETIME) if value.isdigit() else 0.0
    else:
        lifetime = DEFAULT_LIFETIME
    current_age = float(age) if age is not None and age.isdigit() else 0.0  # time it already spent in caches
    return max(0.0, lifetime - current_age)


def parse_document(client_id: str, body: bytes) -> ClientDocument:
    """The document in `body`, fetched from `client_id`, or ClientDocumentError saying what is wrong with it."""
    host = _host_of(client_id)

    def bad(why: str) -> ClientDocumentError:
        return ClientDocumentError("bad_document", f"the client metadata document at {host} {why}")

    try:
        data = json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        raise bad("is not JSON") from exc
    if not isinstance(data, dict):
        raise bad("is not a JSON object")
    # Draft §4: the document names itself exactly, or anyone could serve a copy of another client's document.
    if data.get("client_id") != client_id:
        raise ClientDocumentError(
            "client_id_mismatch",
            f"the client metadata document at {host} names client_id {_short(repr(data.get('client_id')))}, "
            "not the URL it was fetched from",
        )
    redirect_uris = data.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise bad("has no redirect_uris (a non-empty list of strings)")
    if not all(isinstance(uri, str) and uri for uri in redirect_uris):
        raise bad("has a redirect_uris entry that is not a non-empty string")
    # Draft §4.1: nothing can share a secret with a client that registered itself.
    for name in ("client_secret", "client_secret_expires_at"):
        if name in data:
            raise bad(f"carries {name}, which a client metadata document must not")
    method = data.get("token_endpoint_auth_method", "none")
    if method not in AUTH_METHODS:
        raise bad(f"asks for token_endpoint_auth_method {_short(repr(method))}; only none and private_key_jwt work")
    if _has_private_key(data.get("jwks")):
        raise bad("publishes private key material in jwks")
    return ClientDocument(
        client_id=client_id,
        redirect_uris=tuple(redirect_uris),
        client_name=_optional_string(data, "client_name", bad),
        logo_uri=_optional_string(data, "logo_uri", bad),
        token_endpoint_auth_method=method,
    )


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that keep different duplicates would read two different clients out of one document.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return result


def _optional_string(data: dict[str, Any], name: str, bad: Callable[[str], ClientDocumentError]) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise bad(f"has a {name} that is not a string")
    return value


def _has_private_key(jwks: object) -> bool:
    # Private members of RFC 7518 §6: "d" (EC, RSA, OKP) and "k" (a symmetric key, a shared secret by definition).
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    return isinstance(keys, list) and any(isinstance(k, dict) and ("d" in k or "k" in k) for k in keys)


def _host_of(client_id: str) -> str:
    return _short(urlsplit(client_id).hostname or client_id)


def _short(text: str, limit: int = 100) -> str:
    # Descriptions reach logs and error pages; a URL or value chosen by the client must not make them huge.
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# The network shell


@dataclass(frozen=True, slots=True)
class _Cached:
    document: ClientDocument
    expires_at: float


class ClientDocuments:
    """Fetches and caches client metadata documents for the process."""

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
        allow_loopback: bool = True,
    ) -> None:
        self.ca_file = ca_file
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._clock = clock
        self.allow_loopback = allow_loopback
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[ClientDocument]] = {}
        self._http = httpx2.AsyncClient(
            verify=tls_context(ca_file),
            follow_redirects=False,
            # Proxies from the environment would resolve the name themselves, past our address check.
            trust_env=False,
            # A kept-alive connection belongs to an IP and port, not a name: reused for another name on that
            # address it would skip that name's certificate check.
            limits=httpx2.Limits(max_keepalive_connections=0),
            timeout=timeout,
        )

    async def fetch(self, client_id: str) -> ClientDocument:
        """The document for `client_id` (cached while fresh), or ClientDocumentError."""
        if not is_document_client_id(client_id):
            raise ClientDocumentError(
                "not_a_document_url",
                f"client_id {_short(repr(client_id))} is not a client metadata document URL "
                "(https with a path, no fragment or user info; plain http only on a loopback IP)",
            )
        cached = self._cache.get(client_id)
        if cached is not None:
            if cached.expires_at > self._clock():
                self._cache.move_to_end(client_id)
                return cached.document
            del self._cache[client_id]
        task = self._inflight.get(client_id)
        if task is None:
            task = asyncio.create_task(self._load(client_id), name=f"client document {_host_of(client_id)}")
            self._inflight[client_id] = task
            task.add_done_callback(lambda done: self._finished(client_id, done))
        # shield: one caller going away (a closed browser tab) must not cancel the fetch the others wait on.
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    def _finished(self, client_id: str, task: asyncio.Task[ClientDocument]) -> None:
        if self._inflight.get(client_id) is task:
            del self._inflight[client_id]
        if not task.cancelled():
            task.exception()  # retrieved here too, so a fetch every caller abandoned logs no "never retrieved"

    async def _load(self, client_id: str) -> ClientDocument:
        host = _host_of(client_id)
        try:
            # One deadline for resolving, connecting and reading: httpx2's timeouts are per operation, and a
            # server dripping a byte at a time would otherwise hold the authorization request for minutes.
            async with asyncio.timeout(self._timeout):
                body, headers = await self._download(client_id)
        except (TimeoutError, httpx2.TimeoutException) as exc:
            raise ClientDocumentError(
                "timeout", f"the client metadata document at {host} did not arrive within {self._timeout:g} s"
            ) from exc
        document = parse_document(client_id, body)
        self._store(document, cache_lifetime(headers.get("cache-control"), headers.get("age")))
        return document

    def _store(self, document: ClientDocument, lifetime: float) -> None:
        self._cache.pop(document.client_id, None)  # a fresh answer replaces what we had, cacheable or not
        if lifetime <= 0:
            return  # draft §4.3 defers to RFC 9111: no-store and no-cache documents are fetched every time
        self._cache[document.client_id] = _Cached(document, self._clock() + lifetime)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)  # least recently used

    async def _download(self, client_id: str) -> tuple[bytes, httpx2.Headers]:
        parts = urlsplit(client_id)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await self._addresses(host, port)
        failure: Exception | None = None
        for address in addresses:  # in resolver order, as a browser would, but only among the checked ones
            try:
                return await self._get(client_id, address)
            except httpx2.ConnectError as exc:
                failure = exc
        raise ClientDocumentError(
            "fetch_failed", f"could not connect to {_short(host)} for its client metadata document ({_cause(failure)})"
        )

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to, when all of them are allowed; ClientDocumentError otherwise."""
        try:
            addresses = [ipaddress.ip_address(host)]  # a literal: nothing to resolve
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except (socket.gaierror, UnicodeError) as exc:
                raise ClientDocumentError(
                    "fetch_failed", f"the client_id host {_short(host)} does not resolve ({_cause(exc)})"
                ) from exc
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        # All, not any: a name that also resolves inward is an attack (or a mistake) whichever address we'd pick.
        blocked = [a for a in addresses if not is_allowed_address(a, allow_loopback=self.allow_loopback)]
        if blocked or not addresses:
            raise ClientDocumentError(
                "blocked_address",
                f"the client_id host {_short(host)} resolves to {_short(str(blocked[0]) if blocked else 'nothing')}, "
                "an address client metadata documents are never fetched from",
            )
        return addresses

    async def _get(self, client_id: str, address: IPAddress) -> tuple[bytes, httpx2.Headers]:
        parts = urlsplit(client_id)
        host = _short(parts.hostname or "")
        url = httpx2.URL(client_id).copy_with(host=str(address))
        extensions: dict[str, Any] = {}
        if parts.scheme == "https" and parts.hostname != str(address):
            extensions["sni_hostname"] = parts.hostname  # the certificate is checked against the name, not the IP
        try:
            async with self._http.stream(
                "GET",
                url,
                headers={"Host": parts.netloc, "Accept": "application/json"},
                extensions=extensions,
            ) as response:
                status = response.status_code
                if 300 <= status < 400:
                    # Draft §5: never followed; the target would escape the address check above.
                    raise ClientDocumentError(
                        "redirect", f"{host} answered the client metadata document request with a redirect ({status})"
                    )
                if status != 200:
                    raise ClientDocumentError(
                        "bad_status", f"{host} answered the client metadata document request with HTTP {status}"
                    )
                return await self._read(response, host), response.headers
        except (httpx2.ConnectError, httpx2.TimeoutException):
            raise  # the caller tries the next address, or reports the deadline
        except httpx2.HTTPError as exc:
            raise ClientDocumentError(
                "fetch_failed", f"fetching the client metadata document from {host} failed ({_cause(exc)})"
            ) from exc

    async def _read(self, response: httpx2.Response, host: str) -> bytes:
        too_large = ClientDocumentError(
            "too_large", f"the client metadata document at {host} is larger than {self._max_bytes} bytes"
        )
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_bytes:
            raise too_large
        body = bytearray()
        # Decoded bytes are counted, so a small gzip bomb stops at the limit too.
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._max_bytes:
                raise too_large
        return bytes(body)


def _cause(exc: BaseException | None) -> str:
    if exc is None:
        return "no address"
    return _short(str(exc) or type(exc).__name__, 160)
