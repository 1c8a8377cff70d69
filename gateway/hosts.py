"""Host and Origin against DNS rebinding: the authority grammar, and the set of names the proxy answers for.

A page on evil.example whose name is made to resolve to 127.0.0.1 (or to any address the victim's browser can
reach) is, to the browser, same-origin with the gateway: it can send requests and read the answers. What gives it
away is the name: the browser sends `Host: evil.example` and, on cross-origin and non-GET requests,
`Origin: http://evil.example`. So the proxy answers only for names it was told are its own, before anything else
(the MCP transport spec: servers MUST validate Origin, and answer 403 when it is invalid).

A leaf: the config validates `proxy.allowed_hosts` entries with `parse_authority`, and the snapshot compiles the
set once; the per-request check is two set lookups.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

# A reg-name or IPv4 address as DNS spells it, lower-cased: dot-separated labels of letters, digits, '-' and '_',
# one optional trailing dot (the root). Stricter than RFC 3986 §3.2.2's reg-name on purpose: percent-escapes,
# sub-delims and non-ASCII are what no browser sends in Host (it sends IDNA A-labels), and each is a way to spell
# one name two ways.
_NAME = re.compile(rb"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
# Longest DNS name (253) plus a trailing dot, or a bracketed IPv6 literal with ':65535'.
_MAX_AUTHORITY = 260


def parse_authority(value: bytes) -> tuple[str, int | None] | None:
    """`uri-host [":" port]` (RFC 9110 §7.2) → (host, port or None), or None when it is not one.

    The host comes back in one spelling per name: lower-cased (RFC 9110 §4.2.3: the host is case-insensitive),
    without its trailing dot ("gw.example.com." is the same DNS name), and an IPv6 literal in brackets in its
    compressed form ("[0:0::1]" → "[::1]"). Refused: userinfo ("a@b"), a path, query or fragment, lists and
    spaces, an unbracketed IPv6 address, zone ids, an empty host, and an empty, zero or out-of-range port.
    """
    if not value or len(value) > _MAX_AUTHORITY:
        return None
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0 or b"%" in value:  # RFC 6874 zone ids name an interface of the client, never ours
            return None
        try:
            address = ipaddress.IPv6Address(value[1:end].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
        host, rest = f"[{address.compressed}]", value[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(b":"):
            return None
        port_text = rest[1:]
    else:
        name, colon, port_text = value.partition(b":")
        name = name.lower()
        if not _NAME.fullmatch(name) or b":" in port_text:
            return None
        host = name.removesuffix(b".").decode("ascii")
        if not colon:
            return host, None
    # RFC 3986 §3.2.3 allows an empty port ("gw:"), meaning the default; no browser sends one, so it is refused
    # rather than given a meaning here that an upstream might not share.
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class HostRefused:
    """Why a request's Host or Origin is not ours: the answer's status and error code, and the audit reason."""

    status: int
    error: str
    description: str
    reason: str


MALFORMED_HOST = HostRefused(400, "invalid_request", "malformed Host header", "malformed_host")
# "null" is the origin of sandboxed iframes, file: pages, data: URLs and some redirects (RFC 6454 §7.3): an
# attacker can always produce it, and no page of ours has it.
NULL_ORIGIN = HostRefused(
    403, "invalid_origin", "requests from an opaque origin (Origin: null) are refused", "null_origin"
)
MALFORMED_ORIGIN = HostRefused(403, "invalid_origin", "malformed Origin header", "malformed_origin")


def _foreign_host(host: str, port: int) -> HostRefused:
    # RFC 9110 §15.5.20: 421, "not able to produce a response for the combination of scheme and authority".
    return HostRefused(
        421, "invalid_host", f"this gateway does not answer for {host}:{port} (proxy.allowed_hosts)", "foreign_host"
    )


def _foreign_origin(origin: str) -> HostRefused:
    return HostRefused(
        403, "invalid_origin", f"requests from {origin} are refused (proxy.allowed_hosts)", "foreign_origin"
    )


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """The names the proxy answers for. `authorities`: (host, port) pairs; `names`: hosts on any port.

    `default_port` is the port a Host without one means: the public URL's scheme's, since a browser leaves out
    the default port of the scheme it used, and a TLS-terminating load balancer passes that Host on unchanged.
    """

    authorities: frozenset[tuple[str, int]]
    names: frozenset[str]
    default_port: int

    def allows(self, host: str, port: int) -> bool:
        return host in self.names or (host, port) in self.authorities

    def refusal(self, host: bytes | None, origin: bytes | None) -> HostRefused | None:
        """None when `host` (the Host header; None when absent) and `origin` (None when absent) are ours."""
        if host is not None:
            parsed = parse_authority(host)
            if parsed is None:
                return MALFORMED_HOST
            name, port = parsed
            port = self.default_port if port is None else port
            if not self.allows(name, port):
                return _foreign_host(name, port)
        if origin is not None:
            return self._origin_refusal(origin)
        return None

    def _origin_refusal(self, origin: bytes) -> HostRefused | None:
        # RFC 6454 §7.1: "null" or scheme "://" host [":" port], one origin (a browser never sends a list).
        if origin == b"null":
            return NULL_ORIGIN
        raw_scheme, sep, authority = origin.partition(b"://")
        scheme = raw_scheme.decode("latin-1").lower()
        default = DEFAULT_PORTS.get(scheme) if sep else None
        parsed = parse_authority(authority) if default is not None else None
        if parsed is None or default is None:
            return MALFORMED_ORIGIN
        name, port = parsed
        port = default if port is None else port
        if not self.allows(name, port):
            return _foreign_origin(f"{scheme}://{name}:{port}")
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(public_url: str, listen: str, extra: Iterable[str]) -> AllowedHosts:
    """Compile `proxy.allowed_hosts` with the public URL's own authority (its port explicit or its scheme's).

    When the proxy listens on loopback, or its public URL is a loopback address, the three loopback spellings
    (`localhost`, `127.0.0.1`, `[::1]`) are added on the listen port and the public URL's port: only the
    machine itself can reach them, and no page elsewhere can make its own name one of them. `extra` entries are
    `name` (any port) or `name:port` (that port only), already checked by `parse_authority` in the config.
    """
    public = urlsplit(public_url)
    public_parsed = parse_authority(public.netloc.encode("idna"))
    if public_parsed is None:
        raise ValueError(f"proxy.public_url {public_url!r}: its host is not a DNS name or IP address")
    default_port = DEFAULT_PORTS[public.scheme]
    public_host, public_port = public_parsed[0], public_parsed[1] or default_port
    authorities = {(public_host, public_port)}
    listen_host, _, listen_port = listen.rpartition(":")
    if _is_loopback(listen_host) or _is_loopback(public_host):
        authorities.update((name, port) for name in LOOPBACK_NAMES for port in {int(listen_port), public_port})
    names: set[str] = set()
    for entry in extra:
        parsed = parse_authority(entry.encode("ascii"))
        if parsed is None:
            raise ValueError(f"proxy.allowed_hosts: {entry!r} is not a host or host:port")
        if parsed[1] is None:
            names.add(parsed[0])
        else:
            authorities.add((parsed[0], parsed[1]))
    return AllowedHosts(frozenset(authorities), frozenset(names), default_port)
