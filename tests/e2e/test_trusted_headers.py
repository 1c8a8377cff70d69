"""Headers that upstream frameworks trust, sent by an agent: none reaches the upstream, whatever its spelling.

Each name is one that some CDN, load balancer, web framework or authenticating proxy honours as set by a trusted
hop (gateway/proxy/stamp.py lists them with who trusts them). An agent that could pass one through would choose
the client address, the host, the URL, the method or the signed-in user the upstream believes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from raw_http import bearer, request, send_raw
from support import Gateway, Upstream, start_gateway

from gateway.proxy import stamp

SPOOF = b"203.0.113.66-spoofed"

BUILT_IN = sorted(n.decode() for n in stamp.SPOOFABLE_REQUEST_HEADERS | stamp.CLIENT_ADDRESS_HEADERS)
BY_PREFIX = sorted(p.decode() + "test" for p in stamp.SPOOFABLE_REQUEST_PREFIXES)
OPERATOR = ["x-tenant-override", "x-debug-user"]


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    extra = {"proxy": {"strip_headers": ["X-Tenant-Override", "x_debug_user"], "allowed_hosts": ["tollbooth.test"]}}
    gateway = start_gateway(tmp_path_factory.mktemp("trusted-headers"), upstream.url, extra=extra)
    yield gateway
    gateway.stop()


def _spellings(name: str) -> list[bytes]:
    title = "-".join(part.capitalize() for part in name.split("-"))
    return [name.encode(), name.upper().encode(), title.encode(), title.replace("-", "_").encode()]


def _sent_through(gw: Gateway, upstream: Upstream, lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    response = send_raw(gw.proxy_url, request(b"/v1/customers/42", bearer(gw.mint()), *lines))
    assert response is not None and response.status == 200
    return upstream.last().headers


@pytest.mark.parametrize("name", BUILT_IN + BY_PREFIX + OPERATOR)
def test_a_header_upstreams_trust_never_reaches_them_from_an_agent(gw: Gateway, upstream: Upstream, name: str):
    lines = [spelling + b": " + SPOOF for spelling in _spellings(name)]
    headers = _sent_through(gw, upstream, lines)
    leaked = [(k, v) for k, v in headers if SPOOF in v or k.replace(b"_", b"-") == name.encode()]
    # The gateway's own X-Forwarded-For/-Proto/-Host may be there, with its own values (checked below), never ours.
    assert all(k in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host") for k, _ in leaked), leaked
    assert not any(SPOOF in v for _, v in headers)


def test_the_gateway_writes_the_only_address_host_and_scheme_the_upstream_sees(gw: Gateway, upstream: Upstream):
    _sent_through(gw, upstream, [name.encode() + b": " + SPOOF for name in BUILT_IN])
    seen = upstream.last()
    assert seen.headers_named("x-forwarded-for") == ["127.0.0.1"]
    assert seen.headers_named("x-forwarded-proto") == ["http"]
    assert seen.headers_named("x-forwarded-host") == [gw.proxy_url.removeprefix("http://")]
    assert seen.headers_named("host") == [upstream.url.removeprefix("http://")]


def test_ordinary_headers_still_pass(gw: Gateway, upstream: Upstream):
    seen = _sent_through(gw, upstream, [b"X-Client-Version: 1.2", b"Accept-Language: de", b"X-Tenant: acme"])
    names = {k for k, _ in seen}
    assert {b"x-client-version", b"accept-language", b"x-tenant"} <= names


def test_a_strip_headers_entry_that_is_no_header_name_stops_the_start(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
):
    # A typo must not pass as a header that is "stripped" while the real one still reaches the upstream.
    with pytest.raises(AssertionError, match="strip_headers"):
        start_gateway(tmp_path_factory.mktemp("bad-strip"), upstream.url, extra={"proxy": {"strip_headers": ["X Bad"]}})
