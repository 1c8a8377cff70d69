"""Finding the token service: from the proxy's RFC 6750 challenge to its RFC 9728 resource metadata, then the
token service's RFC 8414 metadata. Parsing and checks are pure; the fetching is an `Exchange`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from gateway.client.errors import DiscoveryError
from gateway.client.exchange import Call, Exchange, Reply
from gateway.wire import AUTHORIZATION_SERVER_PATH, PROTECTED_RESOURCE_PATH

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # noqa: S105 - the RFC 9110 §5.6.2 `token` grammar, not a secret
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*({_TOKEN}|"(?:[^"\\]|\\.)*")\s*')
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_TOKEN68 = re.compile(r"\s+([A-Za-z0-9\-._~+/]+=*)\s*(?=,|$)")
_SEPARATOR = re.compile(r"(?:\s*,)+")  # RFC 9110 §5.6.1: empty list elements are allowed and ignored

JSON = {"accept": "application/json"}


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: auth-schemes are case-insensitive (RFC 9110 §11.1)
    params: dict[str, str]  # names lower-cased (§11.2), values unquoted


def parse_challenges(header: str) -> list[Challenge]:
    """RFC 9110 §11.6.1 `WWW-Authenticate`: one or more challenges, each a scheme and auth-params (or token68).
    Unparseable trailing text ends the parse rather than guessing at it."""
    challenges: list[Challenge] = []
    position = 0
    while position < len(header):
        separator = _SEPARATOR.match(header, position)
        if separator:
            position = separator.end()
            continue
        scheme = _SCHEME.match(header, position)
        if not scheme:
            break
        position = scheme.end()
        params: dict[str, str] = {}
        token68 = _TOKEN68.match(header, position)
        if token68 and not _PARAM.match(header, position):
            position = token68.end()
        else:
            while param := _PARAM.match(header, position):
                name, value = param.group(1).lower(), param.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params.setdefault(name, value)  # §11.2: a repeated parameter is an error; keep the first
                position = param.end()
                separator = _SEPARATOR.match(header, position)
                # A name with no `=` after the comma starts the next challenge.
                if not separator or not _PARAM.match(header, separator.end()):
                    break
                position = separator.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


class _Headers(Protocol):
    def get_list(self, key: str) -> list[str]: ...


def bearer_challenge(headers: _Headers) -> dict[str, str] | None:
    """The parameters of the Bearer challenge among response headers (RFC 6750 §3), or None when there is none.
    Takes httpx2's and httpx's header objects alike."""
    for header in headers.get_list("www-authenticate"):
        for challenge in parse_challenges(header):
            if challenge.scheme == "bearer":
                return challenge.params
    return None


def normalize_url(url: str) -> str:
    """Scheme and host lower-cased, default port dropped, no trailing slash, no query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DiscoveryError(f"{url!r} is not an http(s) URL")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    netloc = host if parts.port in (None, default) else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def secure_url(url: str) -> str:
    """`url`, when discovery may use it: https, or plain http to a loopback address only. Over a network, whoever
    sits in the middle of plain http would rewrite the metadata and collect the credentials (RFC 9728 §7.1)."""
    parts = urlsplit(normalize_url(url))
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        raise DiscoveryError(f"{url} is plain http to a host that is not loopback: use https")
    return url


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> str:
    parts = urlsplit(normalize_url(url))
    return f"{parts.scheme}://{parts.netloc}"


def same_origin(first: str, second: str) -> bool:
    return origin(first) == origin(second)


def well_known(url: str, suffix: str) -> str:
    """RFC 8414 §3.1 / RFC 9728 §3.1: the well-known suffix goes between the host and the URL's path."""
    parts = urlsplit(normalize_url(url))
    return urlunsplit((parts.scheme, parts.netloc, suffix + parts.path, "", ""))


def resource_covers(resource: str, url: str) -> bool:
    """Whether `url` is the protected resource `resource` or lies under it (same origin, whole path segments):
    RFC 9728 §3.3 and §7.3 — metadata for another resource must not be used, or a proxy could
    impersonate one it does not serve."""
    try:
        resource, url = normalize_url(resource), normalize_url(url)
    except DiscoveryError:
        return False
    return url == resource or url.startswith(resource + "/")


def _document(reply: Reply, what: str) -> dict[str, object]:
    if reply.status != 200:
        raise DiscoveryError(f"{what} at {reply.url} answered {reply.status}, not 200")
    return reply.json_object()


def protected_resource(url: str) -> Exchange[dict[str, object]]:
    """The RFC 9728 metadata of the resource at `url`: from the `resource_metadata` named in the 401 challenge
    to an unauthenticated request (§5.1), else at the well-known location (§3.1)."""
    probe = yield Call("GET", secure_url(url), JSON)
    challenge = bearer_challenge(probe.headers) if probe.status == 401 else None
    location = (challenge or {}).get("resource_metadata") or well_known(url, PROTECTED_RESOURCE_PATH)
    if not same_origin(location, url):
        # The resource describes itself (RFC 9728 §3); a pointer elsewhere would let an intermediary or a stray
        # redirect choose the token service the agent's credentials go to (§7.3, §7.6).
        raise DiscoveryError(f"{url} named its metadata at {location}, on another origin; refusing it")
    metadata = _document((yield Call("GET", location, JSON)), "protected resource metadata")
    resource = metadata.get("resource")
    if not isinstance(resource, str) or not resource_covers(resource, url):
        raise DiscoveryError(
            f"the protected resource metadata at {location} is for {resource!r}, which does not cover {url}"
        )
    return metadata


@dataclass(frozen=True)
class ServerMetadata:
    issuer: str
    token_endpoint: str
    revocation_endpoint: str | None


def authorization_server(issuer: str) -> Exchange[ServerMetadata]:
    """RFC 8414 §3: fetch the issuer's metadata from the path-inserted location and check it is the issuer's."""
    location = well_known(secure_url(issuer), AUTHORIZATION_SERVER_PATH)
    metadata = _document((yield Call("GET", location, JSON)), "authorization server metadata")
    # §3.3: the issuer in the document MUST be identical to the one the URL was built from.
    if not isinstance(metadata.get("issuer"), str) or normalize_url(str(metadata["issuer"])) != normalize_url(issuer):
        raise DiscoveryError(f"the metadata at {location} names issuer {metadata.get('issuer')!r}, not {issuer}")
    token_endpoint = metadata.get("token_endpoint")
    if not isinstance(token_endpoint, str):
        raise DiscoveryError(f"the metadata at {location} has no token_endpoint")
    secure_url(token_endpoint)  # credentials are sent there
    revocation = metadata.get("revocation_endpoint")
    if isinstance(revocation, str):
        secure_url(revocation)
    return ServerMetadata(
        issuer=str(metadata["issuer"]),
        token_endpoint=token_endpoint,
        revocation_endpoint=revocation if isinstance(revocation, str) else None,
    )


@dataclass(frozen=True)
class Endpoints:
    server: ServerMetadata
    resource: str | None  # the RFC 8707 resource to ask tokens for; None when only the issuer was given


def discover(proxy_url: str | None, issuer_url: str | None) -> Exchange[Endpoints]:
    """The token service for a proxy (RFC 9728 → RFC 8414), or for a given issuer (RFC 8414)."""
    resource = None
    if proxy_url is not None:
        metadata = yield from protected_resource(proxy_url)
        resource = str(metadata["resource"])
        servers = metadata.get("authorization_servers")
        if issuer_url is None:
            if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
                raise DiscoveryError(f"the protected resource metadata of {proxy_url} names no authorization server")
            issuer_url = servers[0]
            # The agent's credentials go to this token service: without a pin, only on the proxy's own host, so
            # that whoever answers at the proxy URL cannot send them elsewhere (an OAuth mix-up, RFC 9700 §4.4).
            if urlsplit(normalize_url(issuer_url)).hostname != urlsplit(normalize_url(proxy_url)).hostname:
                raise DiscoveryError(
                    f"{proxy_url} names the token service {issuer_url}, on another host; if you trust it, "
                    f"pass issuer_url={issuer_url!r}"
                )
    if issuer_url is None:
        raise DiscoveryError("give proxy_url (discovery) or issuer_url")
    server = yield from authorization_server(issuer_url)
    return Endpoints(server, resource)
