"""Host and Origin against DNS rebinding (gateway/hosts.py): the authority grammar, the default names, the check.

The unit tests pin each rule; the properties at the end say what no spelling may get past: whatever bytes a Host or
Origin carries, an accepted one is, up to case and one trailing dot, one of the allowed names on an allowed port.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import example, find, given, settings
from hypothesis import strategies as st

from gateway.hosts import (
    LOOPBACK_NAMES,
    MALFORMED_HOST,
    MALFORMED_ORIGIN,
    NULL_ORIGIN,
    AllowedHosts,
    allowed_hosts,
    parse_authority,
)

# --- parse_authority ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (b"gw.example.com", ("gw.example.com", None)),
        (b"gw.example.com:8443", ("gw.example.com", 8443)),
        (b"GW.Example.COM", ("gw.example.com", None)),
        (b"gw.example.com.", ("gw.example.com", None)),
        (b"gw.example.com.:443", ("gw.example.com", 443)),
        (b"localhost", ("localhost", None)),
        (b"127.0.0.1:8080", ("127.0.0.1", 8080)),
        (b"[::1]", ("[::1]", None)),
        (b"[::1]:8080", ("[::1]", 8080)),
        (b"[0:0:0:0:0:0:0:1]:8080", ("[::1]", 8080)),
        (b"[FD00::7]", ("[fd00::7]", None)),
        (b"xn--bcher-kva.example", ("xn--bcher-kva.example", None)),
        (b"under_score.example", ("under_score.example", None)),
        (b"h:1", ("h", 1)),
        (b"h:65535", ("h", 65535)),
        (b"h:0080", ("h", 80)),  # RFC 3986 port = *DIGIT: the same port, so the same answer
    ],
)
def test_an_authority_parses_to_one_spelling(value: bytes, parsed: tuple[str, int | None]) -> None:
    assert parse_authority(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b":8080", id="port-only"),
        pytest.param(b"tollbooth.test@evil.example", id="userinfo"),
        pytest.param(b"user:pw@tollbooth.test", id="userinfo-password"),
        pytest.param(b"evil.example#tollbooth.test", id="fragment"),
        pytest.param(b"evil.example/tollbooth.test", id="path"),
        pytest.param(b"evil.example?tollbooth.test", id="query"),
        pytest.param(b"evil.example\\tollbooth.test", id="backslash"),
        pytest.param(b"tollbooth%2etest", id="percent-escape"),
        pytest.param(b"%74ollbooth.test", id="percent-letter"),
        pytest.param(b"tollbooth.test evil.example", id="space-list"),
        pytest.param(b"tollbooth.test,evil.example", id="comma-list"),
        pytest.param(b"tollbooth.test\tx", id="tab"),
        pytest.param(b" tollbooth.test", id="leading-space"),
        pytest.param(b"tollbooth.test\x00", id="nul"),
        pytest.param(b"tollbooth.test\r\nx: y", id="crlf"),
        pytest.param(b"tollbooth..test", id="empty-label"),
        pytest.param(b".tollbooth.test", id="leading-dot"),
        pytest.param(b"tollbooth.test..", id="two-trailing-dots"),
        pytest.param(b".", id="root-only"),
        pytest.param("b\u00fccher.example".encode(), id="utf8-u-label"),
        pytest.param("tollbooth.tes\u212a".encode(), id="kelvin-sign"),
        pytest.param(b"tollbooth.test:", id="empty-port"),
        pytest.param(b"tollbooth.test:0", id="port-zero"),
        pytest.param(b"tollbooth.test:65536", id="port-65536"),
        pytest.param(b"tollbooth.test:99999", id="port-99999"),
        pytest.param(b"tollbooth.test:080800", id="port-six-digits"),
        pytest.param(b"tollbooth.test:+80", id="port-sign"),
        pytest.param(b"tollbooth.test:0x50", id="port-hex"),
        pytest.param(b"tollbooth.test: 80", id="port-space"),
        pytest.param(b"tollbooth.test :80", id="space-before-colon"),
        pytest.param(b"tollbooth.test:80:80", id="two-ports"),
        pytest.param("tollbooth.test:\u0668\u0660".encode(), id="arabic-digits"),
        pytest.param(b"::1", id="ipv6-unbracketed"),
        pytest.param(b"[::1", id="ipv6-unclosed"),
        pytest.param(b"[::1]x", id="ipv6-trailing-junk"),
        pytest.param(b"[::1]:", id="ipv6-empty-port"),
        pytest.param(b"[]", id="ipv6-empty"),
        pytest.param(b"[127.0.0.1]", id="ipv4-in-brackets"),
        pytest.param(b"[fe80::1%25eth0]", id="ipv6-zone-id"),
        pytest.param(b"[fe80::1%eth0]", id="ipv6-raw-zone-id"),
        pytest.param(b"[v1.tollbooth]", id="ipvfuture"),
        pytest.param(b"[::1]@evil.example", id="ipv6-userinfo"),
        pytest.param(b"a" * 300, id="too-long"),
    ],
)
def test_what_is_not_one_authority_is_refused(value: bytes) -> None:
    assert parse_authority(value) is None


# --- allowed_hosts: the defaults --------------------------------------------------------------------------------


def test_the_public_urls_authority_is_allowed_with_its_explicit_port() -> None:
    hosts = allowed_hosts("https://gw.example.com:8443", "0.0.0.0:8080", [])
    assert hosts.authorities == {("gw.example.com", 8443)}
    assert hosts.names == frozenset()
    assert hosts.default_port == 443


@pytest.mark.parametrize(("url", "port"), [("https://gw.example.com", 443), ("http://gw.example.com", 80)])
def test_a_public_url_without_a_port_means_its_schemes(url: str, port: int) -> None:
    assert allowed_hosts(url, "0.0.0.0:8080", []).authorities == {("gw.example.com", port)}


def test_the_public_url_host_is_case_folded_without_its_trailing_dot() -> None:
    assert allowed_hosts("https://GW.Example.com.", "0.0.0.0:8080", []).authorities == {("gw.example.com", 443)}


def test_an_idna_public_url_is_compared_in_its_a_label_form() -> None:
    hosts = allowed_hosts("https://B\u00fccher.example", "0.0.0.0:8080", [])
    assert hosts.authorities == {("xn--bcher-kva.example", 443)}
    assert hosts.refusal(b"xn--bcher-kva.example", b"https://xn--bcher-kva.example") is None
    # A browser never sends the U-label: it is no authority at all.
    assert hosts.refusal("b\u00fccher.example".encode(), None) == MALFORMED_HOST


def test_an_ipv6_public_url_is_kept_in_brackets() -> None:
    hosts = allowed_hosts("http://[fd00:0::7]:8080", "[fd00::7]:8080", [])
    assert hosts.authorities == {("[fd00::7]", 8080)}


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.0.0.2:8080", "localhost:8080", "[::1]:8080"])
def test_listening_on_loopback_adds_the_loopback_names_on_both_ports(listen: str) -> None:
    hosts = allowed_hosts("https://gw.example.com", listen, [])
    expected = {("gw.example.com", 443)} | {(name, port) for name in LOOPBACK_NAMES for port in (8080, 443)}
    assert hosts.authorities == expected


def test_a_loopback_public_url_adds_the_loopback_names_even_on_a_wildcard_listen() -> None:
    hosts = allowed_hosts("http://localhost:9000", "0.0.0.0:8080", [])
    assert hosts.authorities == {(name, port) for name in LOOPBACK_NAMES for port in (8080, 9000)}


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "10.0.0.7:8080", "gw.internal:8080"])
def test_listening_elsewhere_adds_no_loopback_name(listen: str) -> None:
    hosts = allowed_hosts("https://gw.example.com", listen, [])
    assert hosts.authorities == {("gw.example.com", 443)}
    assert hosts.refusal(b"localhost:8080", None) is not None
    assert hosts.refusal(b"127.0.0.1:8080", None) is not None


def test_extra_entries_are_names_on_any_port_or_authorities_on_one() -> None:
    extra = ["GW.internal", "[fd00::7]:8443", "inspector.local:6274", "10.0.0.7"]
    hosts = allowed_hosts("https://gw.example.com", "0.0.0.0:8080", extra)
    assert hosts.names == {"gw.internal", "10.0.0.7"}
    assert hosts.authorities == {("gw.example.com", 443), ("[fd00::7]", 8443), ("inspector.local", 6274)}


@pytest.mark.parametrize("entry", ["a@b", "gw.example.com:0", "gw.example.com/x", "*.example.com"])
def test_an_extra_entry_that_is_no_authority_is_an_error(entry: str) -> None:
    with pytest.raises(ValueError, match="proxy.allowed_hosts"):
        allowed_hosts("https://gw.example.com", "0.0.0.0:8080", [entry])


# --- the check --------------------------------------------------------------------------------------------------

# public_url https://gw.example.com, listening on loopback port 8080, one extra name and one extra authority.
HOSTS = allowed_hosts("https://gw.example.com", "127.0.0.1:8080", ["gw.internal", "inspector.local:6274"])


@pytest.mark.parametrize(
    "host",
    [
        b"gw.example.com",
        b"gw.example.com:443",
        b"GW.EXAMPLE.COM",
        b"gw.example.com.",
        b"gw.example.com.:443",
        b"gw.internal",
        b"gw.internal:1",
        b"gw.internal:65535",
        b"inspector.local:6274",
        b"localhost:8080",
        b"127.0.0.1:8080",
        b"[::1]:8080",
        b"[0::1]:8080",
        b"LOCALHOST:443",
    ],
)
def test_our_hosts_pass(host: bytes) -> None:
    assert HOSTS.refusal(host, None) is None


@pytest.mark.parametrize(
    ("host", "named"),
    [
        (b"evil.example", "evil.example:443"),
        (b"tollbooth.gw.example.com", "tollbooth.gw.example.com:443"),
        (b"gw.example.com.evil.example", "gw.example.com.evil.example:443"),
        (b"gw.example.com:8443", "gw.example.com:8443"),
        (b"gw.example.com:80", "gw.example.com:80"),
        (b"inspector.local", "inspector.local:443"),  # its entry names port 6274 only
        (b"inspector.local:6275", "inspector.local:6275"),
        (b"localhost:80", "localhost:80"),
        (b"localhost:9999", "localhost:9999"),
        (b"127.0.0.2:8080", "127.0.0.2:8080"),  # loopback too, but not one of the three names
        (b"127.1:8080", "127.1:8080"),  # another spelling of 127.0.0.1, which no browser sends
        (b"[::ffff:127.0.0.1]:8080", "[::ffff:7f00:1]:8080"),
        (b"0.0.0.0:8080", "0.0.0.0:8080"),
    ],
)
def test_a_host_we_do_not_answer_for_is_421_invalid_host(host: bytes, named: str) -> None:
    refused = HOSTS.refusal(host, None)
    assert refused is not None
    assert (refused.status, refused.error, refused.reason) == (421, "invalid_host", "foreign_host")
    assert named in refused.description


@pytest.mark.parametrize(
    "host",
    [b"", b"gw.example.com@evil.example", b"evil.example#gw.example.com", b"gw.example.com:0", b"gw.example.com:99999"],
)
def test_a_malformed_host_is_400(host: bytes) -> None:
    refused = HOSTS.refusal(host, None)
    assert refused == MALFORMED_HOST
    assert (refused.status, refused.error, refused.reason) == (400, "invalid_request", "malformed_host")


def test_no_host_is_not_this_checks_business() -> None:
    # HTTP/1.1 without exactly one Host is refused earlier (RFC 9112 §3.2); HTTP/1.0 may omit it, and no browser
    # does, so there is no name to rebind.
    assert HOSTS.refusal(None, None) is None


@pytest.mark.parametrize(
    "origin",
    [
        b"https://gw.example.com",
        b"https://gw.example.com:443",
        b"HTTPS://GW.example.com",
        b"https://gw.example.com.",
        b"http://gw.internal:8080",
        b"https://gw.internal",
        b"http://inspector.local:6274",
        b"http://localhost:8080",
        b"http://[::1]:8080",
    ],
)
def test_our_origins_pass(origin: bytes) -> None:
    assert HOSTS.refusal(b"gw.example.com", origin) is None


def test_origin_is_checked_without_a_host_too() -> None:
    assert HOSTS.refusal(None, b"https://evil.example") is not None
    assert HOSTS.refusal(None, b"https://gw.example.com") is None


@pytest.mark.parametrize(
    "origin",
    [
        b"https://evil.example",
        b"http://evil.example:8080",
        # Scheme mismatch: a page served over plain http on our name is not our https origin.
        b"http://gw.example.com",
        b"https://gw.example.com:8443",
        b"http://inspector.local",
        b"https://inspector.local",  # port 443, not 6274
        b"http://localhost:9999",
        b"http://127.0.0.1",
    ],
)
def test_a_foreign_origin_is_403_invalid_origin(origin: bytes) -> None:
    refused = HOSTS.refusal(b"gw.example.com", origin)
    assert refused is not None
    assert (refused.status, refused.error, refused.reason) == (403, "invalid_origin", "foreign_origin")


@pytest.mark.parametrize("host", [b"gw.example.com", None])
def test_origin_null_is_403(host: bytes | None) -> None:
    refused = HOSTS.refusal(host, b"null")
    assert refused == NULL_ORIGIN
    assert (refused.status, refused.error, refused.reason) == (403, "invalid_origin", "null_origin")


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"Null", id="null-capitalised"),
        pytest.param(b"null ", id="null-space"),
        pytest.param(b"gw.example.com", id="no-scheme"),
        pytest.param(b"https:gw.example.com", id="no-slashes"),
        pytest.param(b"https:/gw.example.com", id="one-slash"),
        pytest.param(b"https://", id="no-host"),
        pytest.param(b"https://gw.example.com/", id="trailing-slash"),
        pytest.param(b"https://gw.example.com/path", id="path"),
        pytest.param(b"https://gw.example.com?x", id="query"),
        pytest.param(b"https://gw.example.com#x", id="fragment"),
        pytest.param(b"https://evil.example@gw.example.com", id="userinfo"),
        pytest.param(b"https://gw.example.com@evil.example", id="userinfo-reversed"),
        pytest.param(b"https://gw.example.com https://evil.example", id="list"),
        pytest.param(b"https://gw.example.com:0", id="port-zero"),
        pytest.param(b"https://gw.example.com:99999", id="port-out-of-range"),
        pytest.param(b"https://gw.example.com://x", id="second-scheme"),
        pytest.param(b"file://gw.example.com", id="file-scheme"),
        pytest.param(b"ws://gw.example.com", id="ws-scheme"),
        pytest.param(b"chrome-extension://gw.example.com", id="extension-scheme"),
        pytest.param(b"https ://gw.example.com", id="space-in-scheme"),
        pytest.param(b"https://gw%2eexample.com", id="percent-escape"),
        pytest.param("https://gw.example.co\u1d0d".encode(), id="unicode"),
    ],
)
def test_a_malformed_origin_is_403(origin: bytes) -> None:
    refused = HOSTS.refusal(b"gw.example.com", origin)
    assert refused == MALFORMED_ORIGIN
    assert (refused.status, refused.error, refused.reason) == (403, "invalid_origin", "malformed_origin")


def test_the_host_is_judged_before_the_origin() -> None:
    refused = HOSTS.refusal(b"evil.example", b"null")
    assert refused is not None and refused.status == 421


def test_a_host_without_a_port_means_the_public_urls_default_port() -> None:
    plain = AllowedHosts(frozenset({("gw.example.com", 80)}), frozenset(), default_port=80)
    assert plain.refusal(b"gw.example.com", None) is None
    tls = AllowedHosts(frozenset({("gw.example.com", 80)}), frozenset(), default_port=443)
    assert tls.refusal(b"gw.example.com", None) is not None


# --- properties: no spelling gets past --------------------------------------------------------------------------

# public_url http://tollbooth.test:8080 on a wildcard listen (no loopback names), plus one name on any port.
PROPERTY_HOSTS = allowed_hosts("http://tollbooth.test:8080", "0.0.0.0:8080", ["gw.internal"])
ALLOWED_PORTS = {"tollbooth.test": {8080}, "gw.internal": None}  # None: any port


def _oracle_host(value: bytes, default_port: int = 80) -> bool:
    """Independent of parse_authority: is `value`, up to ASCII case and one trailing dot, an allowed name and port?"""
    found = re.fullmatch(rb"(tollbooth\.test|gw\.internal)\.?(?::([0-9]{1,5}))?", value, re.IGNORECASE)
    if found is None:
        return False
    ports = ALLOWED_PORTS[found.group(1).lower().decode()]
    port = int(found.group(2)) if found.group(2) is not None else default_port
    return 0 < port < 65536 and (ports is None or port in ports)


def _oracle_origin(value: bytes) -> bool:
    found = re.fullmatch(rb"(https?)://(.*)", value, re.IGNORECASE | re.DOTALL)
    if found is None:
        return False
    return _oracle_host(found.group(2), default_port=443 if found.group(1).lower() == b"https" else 80)


# Authorities built from the allowed names and the pieces of every trick: other names, userinfo, fragments,
# escapes, ports good and bad, brackets, spaces, controls, case changes and non-ASCII look-alikes.
PIECES = [
    b"tollbooth.test", b"TollBooth.TEST", b"gw.internal", b"evil.example", b"tollbooth", b"test", b".", b"..",
    b":", b":8080", b":80", b":0", b":99999", b":08080", b":65536", b"@", b"#", b"/", b"\\", b"?", b"%", b"%2e",
    b"%40", b"[", b"]", b"::1", b" ", b"\t", b",", b"\x00", b"\r\n", "\u212a".encode(), "\uff0e".encode(), b"_",
    b"-", b"8080",
]  # fmt: skip
authorities = st.one_of(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map(b"".join),
    st.binary(max_size=30),
)
SCHEMES = [b"http://", b"https://", b"HTTP://", b"ws://", b"null", b"", b"http:/", b"https:///"]
origins = st.one_of(
    st.tuples(st.sampled_from(SCHEMES), authorities).map(b"".join),
    st.just(b"null"),
    st.binary(max_size=30),
)


@given(st.binary(max_size=300))
def test_parse_authority_raises_nothing_and_returns_one_canonical_spelling(value: bytes) -> None:
    parsed = parse_authority(value)
    if parsed is None:
        return
    host, port = parsed
    assert host == host.lower() and not host.endswith(".") and host.isascii() and host
    assert port is None or 0 < port < 65536
    spelled = host.encode() if port is None else b"%s:%d" % (host.encode(), port)
    assert parse_authority(spelled) == parsed


@given(authorities)
@example(b"tollbooth.test.:8080")
@example(b"TOLLBOOTH.TEST:08080")
def test_an_authority_parses_the_same_in_any_case_and_with_a_trailing_dot(value: bytes) -> None:
    parsed = parse_authority(value)
    assert parse_authority(value.upper()) == parsed
    assert parse_authority(value.lower()) == parsed
    name, colon, port = value.partition(b":")
    if parsed is not None and not value.startswith(b"[") and not name.endswith(b"."):
        assert parse_authority(name + b"." + colon + port) == parsed


@given(authorities)
@example(b"tollbooth.test@evil.example")
@example(b"evil.example#tollbooth.test")
@example(b"tollbooth.test.evil.example:8080")
@example(b"tollbooth.test:8080@evil.example")
def test_an_accepted_host_is_an_allowed_name_on_an_allowed_port(value: bytes) -> None:
    assert (PROPERTY_HOSTS.refusal(value, None) is None) == _oracle_host(value)


@given(origins)
@example(b"http://tollbooth.test:8080/")
@example(b"http://tollbooth.test:8080@evil.example")
@example(b"https://tollbooth.test:8080")
def test_an_accepted_origin_is_an_http_origin_on_an_allowed_name_and_port(value: bytes) -> None:
    assert (PROPERTY_HOSTS.refusal(b"tollbooth.test:8080", value) is None) == _oracle_origin(value)


@given(authorities, origins)
def test_a_refusal_is_one_of_the_three_kinds(host: bytes, origin: bytes) -> None:
    refused = PROPERTY_HOSTS.refusal(host, origin)
    if refused is not None:
        kinds = {(400, "invalid_request"), (421, "invalid_host"), (403, "invalid_origin")}
        assert (refused.status, refused.error) in kinds


@pytest.mark.parametrize("oracle", [_oracle_host, lambda value: not _oracle_host(value)], ids=["accepted", "refused"])
def test_the_generator_reaches_both_answers(oracle: Callable[[bytes], bool]) -> None:
    # Keeps the properties above from passing vacuously: the strategy must produce allowed spellings too.
    find(authorities, oracle, settings=settings(max_examples=5000, database=None))
