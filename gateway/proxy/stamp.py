"""Header policy for both directions: strip what must not cross the gateway, add what the gateway vouches for.

Headers are ASGI-style lists of (name, value) byte pairs, the form the server hands us and the upstream client
takes, so nothing is decoded on the way. Names are compared lower-cased (RFC 9110 §5.1: case-insensitive) and
passed on as they came. Everything here runs on every request: set lookups and C-level bytes methods only.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from gateway.principal import Principal
from gateway.proxy.head import connection_options as parse_connection_options
from gateway.tracing import TraceContext

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: Connection itself, the fields it lists as "known to require removal", and Trailer
# (RFC 9110 §6.6.2), which describes this hop's framing only.
HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)

# Incoming request headers never copied upstream. Those the gateway writes itself (trace, request id) are in
# here too, so the ones it adds are the only ones the upstream sees.
_REQUEST_DROP = HOP_BY_HOP | {
    # The agent's token is never forwarded (the MCP authorization spec forbids token passthrough: a token
    # for the gateway's audience must not reach another service); the upstream gets its own, from config.
    b"authorization",
    b"proxy-authorization",
    b"traceparent",
    b"tracestate",
    b"x-request-id",
    # The gateway does not relay 100-continue (RFC 9110 §10.1.1): the upstream must not wait for it.
    b"expect",
}

# Headers that web frameworks, CDNs and load balancers let override what the request *is*: its method, its
# URL, its host or scheme, or who sent it. Each is honoured by some stack behind a proxy that is trusted to set
# it, so from an agent each would make the upstream act on a request the authorizer never saw, or believe an
# identity or address the gateway never vouched for. Always dropped; `proxy.strip_headers` adds names.
# docs/configuration.md lists them for users: keep the two in step (tests/test_docs.py checks).
SPOOFABLE_REQUEST_HEADERS = frozenset(
    {
        # Method override (Rails, Laravel, Symfony, Express method-override, ASP.NET, Google APIs): an allowed
        # POST would become a DELETE upstream.
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        # URL rewrites honoured by IIS/ARR, Symfony, Zend/Laminas, nginx setups and Azure App Service: a path the
        # authorizer never matched.
        b"x-original-url",
        b"x-original-uri",
        b"x-rewrite-url",
        b"x-original-path",
        b"x-envoy-original-path",
        b"x-waws-unencoded-url",
        b"x-override-url",
        b"x-http-destinationurl",
        b"x-proxy-url",
        # Host and scheme overrides (Symfony, Django/Flask middlewares, Rack, Tomcat RemoteIpValve, IIS ARR): the
        # links, redirects and tenant an upstream derives from the host. X-Forwarded-* is rewritten below.
        b"x-host",
        b"x-http-host-override",
        b"x-original-host",
        b"x-forwarded-server",
        b"front-end-https",
        b"x-url-scheme",
        b"x-scheme",
        b"x-arr-ssl",
        b"cf-visitor",  # Cloudflare's {"scheme": "https"}, read by Rails/Django middlewares as the scheme
        # Identity asserted by an authenticating proxy in front of the upstream (Apache/nginx REMOTE_USER,
        # oauth2-proxy, Google IAP, Azure App Service Easy Auth, AWS ALB OIDC, Pomerium): only the gateway's
        # X-Tollbooth-* speak for the caller.
        b"remote-user",
        b"x-remote-user",
        b"x-remote-group",
        b"x-webauth-user",
        b"x-forwarded-user",
        b"x-forwarded-email",
        b"x-forwarded-groups",
        b"x-forwarded-preferred-username",
        b"x-forwarded-access-token",
        # A client certificate verified by a TLS terminator (nginx, HAProxy, IIS ARR, Traefik): mTLS identity.
        b"ssl-client-cert",
        b"ssl-client-verify",
        b"x-ssl-client-cert",
        b"x-ssl-client-verify",
        b"x-ssl-client-dn",
        b"x-ssl-client-s-dn",
        b"x-client-cert",
        b"x-client-verify",
        b"x-arr-clientcert",
        # Pentesters' classic 403 bypass: some allow-lists read it as the caller's address.
        b"x-custom-ip-authorization",
    }
)
# Families spelled by prefix: Envoy trusts x-envoy-* control headers from callers it deems internal; the
# authenticating proxies above each use a prefix of their own.
SPOOFABLE_REQUEST_PREFIXES = (
    b"x-tollbooth-",
    b"x-envoy-",
    b"x-amzn-oidc-",
    b"x-goog-iap-",
    b"x-goog-authenticated-user-",
    b"x-ms-client-principal",
    b"x-ms-token-",
    b"x-auth-request-",
    b"x-pomerium-",
    b"x-amzn-mtls-",
    b"x-appengine-",
)

# Headers describing the client's view of the connection: read, then rewritten by the gateway (with Host).
# Every X-Forwarded-* counts (-Port, -Prefix, -Ssl, ...), and so do the client-address headers that upstreams
# log, rate-limit or allow-list by (Cloudflare, Akamai, Fastly, F5, WebLogic, Azure, App Engine, Envoy, Rack,
# Spring, Tomcat): from an untrusted caller, each would let it choose what the upstream believes. Kept, as a
# trusted proxy's, only with proxy.trust_forwarded_for.
_FORWARDED_PREFIX = b"x-forwarded-"
CLIENT_ADDRESS_HEADERS = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"client-ip",
        b"cf-connecting-ip",
        b"cf-connecting-ipv6",
        b"cf-pseudo-ipv4",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-proxyuser-ip",
        b"wl-proxy-client-ip",
        b"proxy-client-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-azure-clientip",
        b"x-azure-socketip",
        b"x-original-forwarded-for",
        b"fly-client-ip",
        b"do-connecting-ip",
        b"x-vercel-forwarded-for",
        b"x-nf-client-connection-ip",
        b"cf-ipcountry",
    }
)
_FORWARDED = CLIENT_ADDRESS_HEADERS
_REQUEST_OWNED = _REQUEST_DROP | _FORWARDED | SPOOFABLE_REQUEST_HEADERS | {b"host"}

# Dropped from upstream responses besides hop-by-hop: the gateway sets its own (DESIGN.md: echoed to the agent).
# The upstream's Date goes too: the server adds its own to every response, and two Date fields are invalid.
_RESPONSE_DROP = HOP_BY_HOP | {b"x-request-id", b"traceparent", b"date"}

# identity_header_value: visible ASCII (RFC 9110 §5.5 VCHAR) passes, except '%' (the escape itself), ',' (list
# separator, RFC 9110 §5.6.1) and '"' '\' (quoted-string delimiters, RFC 9110 §5.6.4, which list parsers honour).
_IDENTITY_UNSAFE = b'%,"\\'
_IDENTITY_SAFE = bytes(b for b in range(0x21, 0x7F) if b not in _IDENTITY_UNSAFE)
_PERCENT_ENCODED = tuple(bytes([b]) if b in _IDENTITY_SAFE else b"%%%02X" % b for b in range(256))


def identity_header_value(value: str) -> bytes:
    """Encode an identity (agent, subject, actor, scope, jti, route) as a header value that means one thing.

    The UTF-8 bytes of `value` are percent-encoded RFC 3986 style (§2.1, uppercase hex) except visible ASCII,
    which passes as is. Also encoded, though visible: '%' so decoding is unambiguous, ',' so a subject cannot
    add an actor to X-Tollbooth-Delegation, and '"' and '\\' so quoted-string-aware list parsers split where we
    did. Space, CR, LF and other controls are encoded, so an IdP-chosen `sub` can never end the field or
    inject a header. Upstreams decode with any percent-decoder (`urllib.parse.unquote`).
    """
    # surrogatepass: a JSON "\ud800" escape in a token decodes to a lone surrogate; encode it rather than fail.
    raw = value.encode("utf-8", "surrogatepass")
    if not raw.translate(None, _IDENTITY_SAFE):  # common case: nothing to escape
        return raw
    return b"".join([_PERCENT_ENCODED[b] for b in raw])


def connection_named(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Names listed in any Connection header (names compared in any case), as head.connection_options reads them."""
    return parse_connection_options(value for name, value in headers if name.lower() == b"connection")


def _identity_headers(principal: Principal) -> tuple[tuple[bytes, bytes], ...]:
    headers = [
        (b"x-tollbooth-agent", identity_header_value(principal.agent)),
        (b"x-tollbooth-subject", identity_header_value(principal.subject)),
    ]
    # Absent rather than empty when there is nothing to list: incoming X-Tollbooth-* never pass, so absence
    # is as authoritative as an empty value, and some frameworks drop empty headers anyway.
    if principal.delegation:
        headers.append((b"x-tollbooth-delegation", b",".join([identity_header_value(a) for a in principal.delegation])))
    if principal.scopes:
        headers.append((b"x-tollbooth-scopes", b" ".join(sorted([identity_header_value(s) for s in principal.scopes]))))
    headers.append((b"x-tollbooth-token-id", identity_header_value(principal.jti)))
    return tuple(headers)


@lru_cache(maxsize=1024)
def _route_header(route_name: str) -> tuple[bytes, bytes]:
    return b"x-tollbooth-route", identity_header_value(route_name)


def upstream_request_headers(
    incoming: list[tuple[bytes, bytes]],
    *,
    connection_options: frozenset[bytes],
    principal: Principal | None,
    route_name: str,
    injected: list[tuple[bytes, bytes]],
    trace: TraceContext,
    request_id: str,
    client_ip: str,
    public_scheme: bytes,
    public_host: bytes,
    upstream_host: bytes,
    trust_forwarded: bool = False,
    strip: frozenset[bytes] = frozenset(),
) -> list[tuple[bytes, bytes]]:
    """The request headers sent upstream: the agent's, minus what must not pass, plus the gateway's own.

    `connection_options` are the names the request's Connection fields list (RequestHead.connection_options).

    Removed: Authorization and Proxy-Authorization (the agent's token never leaves the gateway), hop-by-hop
    headers and those named in Connection (RFC 9110 §7.6.1), Host, every X-Tollbooth-*, method-override
    headers, Expect, the caller's traceparent/tracestate/X-Request-Id, any header an injected credential
    replaces, the method, URL, host and identity overrides of SPOOFABLE_REQUEST_HEADERS and
    SPOOFABLE_REQUEST_PREFIXES, and the operator's `strip` names (proxy.strip_headers, lower-case). Cookies
    pass: the upstream may rely on them, and they are the caller's, not ours.

    Added after the stripping, from the gateway's own values, so naming them in Connection has no effect:
    Host (`upstream_host`), the injected credentials, identity (only with a principal: a public route without
    a token gets X-Tollbooth-Route alone), traceparent, tracestate, X-Request-Id and the forwarding headers.

    Forwarding: without `trust_forwarded` the caller's X-Forwarded-*, Forwarded and client-address headers
    (X-Real-IP, True-Client-IP, X-Client-IP) are dropped and ours describe the hop we saw: X-Forwarded-For =
    `client_ip`; X-Forwarded-Proto and X-Forwarded-Host = the scheme and authority of proxy.public_url, never
    the caller's Host, so an agent cannot steer the links an upstream builds (host-header poisoning). With
    it, the caller is a trusted proxy: our hop is appended to its X-Forwarded-For, and its other forwarding
    headers are kept (ours fill in only when it sent none).

    Names are matched case-insensitively (RFC 9110 §5.1); kept headers go out as they came.
    """
    # Names are judged with '_' read as '-' below, so the options naming them are too: `Connection: x_a` drops x_a.
    named = frozenset(option.replace(b"_", b"-") for option in connection_options)
    replaced = {name.lower() for name, _ in injected}
    kept: Headers = [(b"host", upstream_host)]
    forwarded: Headers = []
    for header in incoming:
        # ASGI servers lower-case names, but a name in another case must not slip past the policy.
        name = header[0].lower()
        if b"_" in name:
            # CGI, WSGI and PHP servers read X_Tollbooth_Agent as X-Tollbooth-Agent: judge it as they will.
            name = name.replace(b"_", b"-")
        if name in _REQUEST_OWNED or name.startswith(_FORWARDED_PREFIX):
            # A trusted proxy's forwarding headers that its Connection names are its hop's only (RFC 9110 §7.6.1).
            if name not in named and (
                name in _FORWARDED or (name.startswith(_FORWARDED_PREFIX) and name not in SPOOFABLE_REQUEST_HEADERS)
            ):
                forwarded.append((name, header[1]))
        elif not (name in named or name in replaced or name in strip or name.startswith(SPOOFABLE_REQUEST_PREFIXES)):
            kept.append(header)

    kept += injected
    if principal is not None:
        kept += _identity_headers(principal)
    kept.append(_route_header(route_name))
    kept.append((b"traceparent", trace.traceparent()))
    if trace.tracestate is not None:
        kept.append((b"tracestate", trace.tracestate))
    kept.append((b"x-request-id", request_id.encode("ascii")))
    ours_for = client_ip.encode("ascii")
    if trust_forwarded:
        kept += _trusted_forwarding_headers(forwarded, ours_for=ours_for, scheme=public_scheme, host=public_host)
    else:
        kept.append((b"x-forwarded-for", ours_for))
        kept.append((b"x-forwarded-proto", public_scheme))
        kept.append((b"x-forwarded-host", public_host))
    return kept


def _trusted_forwarding_headers(forwarded: Headers, *, ours_for: bytes, scheme: bytes, host: bytes) -> Headers:
    # Several X-Forwarded-For fields are one list (RFC 9110 §5.3); our hop goes last.
    chain = [value for name, value in forwarded if name == b"x-forwarded-for"]
    headers = [(b"x-forwarded-for", b", ".join([*chain, ours_for]))]
    headers += [header for header in forwarded if header[0] != b"x-forwarded-for"]
    sent = {name for name, _ in headers}
    if b"x-forwarded-proto" not in sent:
        headers.append((b"x-forwarded-proto", scheme))
    if b"x-forwarded-host" not in sent:
        headers.append((b"x-forwarded-host", host))
    return headers


def downstream_response_headers(
    upstream: Iterable[tuple[bytes, bytes]], *, trace: TraceContext, request_id: str
) -> list[tuple[bytes, bytes]]:
    """The response headers sent to the agent: the upstream's, minus hop-by-hop, plus our trace and request id.

    Hop-by-hop and Connection-named headers go (RFC 9110 §7.6.1, the same parser as requests); the upstream's
    X-Request-Id and traceparent are replaced by ours, so the agent can quote the id in our audit log. Order and
    repetition of everything else are kept: several Set-Cookie fields must stay separate (RFC 6265 §3).
    """
    headers = upstream if isinstance(upstream, list) else list(upstream)
    named = connection_named(headers)
    # Upstream clients (httpx, aiohttp) keep the upstream's spelling of names: compare lower-cased.
    kept = [header for header in headers if not ((name := header[0].lower()) in _RESPONSE_DROP or name in named)]
    kept.append((b"x-request-id", request_id.encode("ascii")))
    kept.append((b"traceparent", trace.traceparent()))
    return kept
