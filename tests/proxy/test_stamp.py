"""Header policy: what the upstream and the agent may see, and what the gateway vouches for."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.principal import Principal
from gateway.proxy.stamp import (
    HOP_BY_HOP,
    connection_named,
    downstream_response_headers,
    identity_header_value,
    upstream_request_headers,
)
from gateway.tracing import TraceContext, request_id_from

Headers = list[tuple[bytes, bytes]]

AGENT_TOKEN = b"Bearer eyJhbGciOiJFUzI1NiJ9.agent.token"
UPSTREAM_CREDENTIAL = (b"authorization", b"Bearer upstream-api-key")
TRACE = TraceContext(
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="b7ad6b7169203331", flags="01", tracestate=b"congo=t61"
)
OUR_TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
PRINCIPAL = Principal(
    agent="billing-bot",
    subject="user@example.com",
    scopes=frozenset({"crm.write", "crm.read"}),
    jti="jti-1",
    issuer="http://127.0.0.1:8081",
    expires_at=2_000_000_000.0,
    issued_at=1_999_999_700.0,
    delegation=("billing-bot", "planner"),
)
BASE: Headers = [
    (b"host", b"gw.example.com"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"content-length", b"42"),
    (b"authorization", AGENT_TOKEN),
]


def stamp(
    incoming: Headers,
    *,
    principal: Principal | None = PRINCIPAL,
    injected: Headers | None = None,
    trace: TraceContext = TRACE,
    trust_forwarded: bool = False,
) -> Headers:
    return upstream_request_headers(
        incoming,
        principal=principal,
        route_name="list-customers",
        injected=[UPSTREAM_CREDENTIAL] if injected is None else injected,
        trace=trace,
        request_id="req-1",
        client_ip="10.0.0.7",
        public_scheme=b"https",
        public_host=b"gw.example.com",
        upstream_host=b"127.0.0.1:9000",
        trust_forwarded=trust_forwarded,
        connection_options=connection_named(incoming),
    )


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def names(headers: Headers) -> set[bytes]:
    return {key.lower() for key, _ in headers}


# ---- upstream: what never passes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param([(b"authorization", AGENT_TOKEN)], id="lower-case"),
        pytest.param([(b"Authorization", AGENT_TOKEN)], id="title-case"),
        pytest.param([(b"AUTHORIZATION", AGENT_TOKEN)], id="upper-case"),
        pytest.param([(b"authorization", AGENT_TOKEN), (b"authorization", AGENT_TOKEN + b"2")], id="duplicates"),
        pytest.param([(b"proxy-authorization", AGENT_TOKEN)], id="proxy-authorization"),
        pytest.param([(b"Proxy-Authorization", AGENT_TOKEN)], id="proxy-authorization-odd-case"),
    ],
)
@pytest.mark.parametrize("injected", [[], [UPSTREAM_CREDENTIAL]], ids=["no-injected", "injected-authorization"])
def test_agent_authorization_is_never_forwarded(incoming: Headers, injected: Headers) -> None:
    out = stamp(incoming, injected=injected)
    assert not any(AGENT_TOKEN in value for _, value in out)
    assert values(out, b"authorization") == [value for _, value in injected]
    assert b"proxy-authorization" not in names(out)


@pytest.mark.parametrize(
    "name",
    [b"x-tollbooth-agent", b"X-Tollbooth-Subject", b"X-TOLLBOOTH-ROUTE", b"x-tollbooth-scopes", b"x-tollbooth-new"],
)
@pytest.mark.parametrize("principal", [PRINCIPAL, None], ids=["token", "public-route"])
def test_spoofed_tollbooth_headers_are_dropped_in_any_case(name: bytes, principal: Principal | None) -> None:
    out = stamp([*BASE, (name, b"spoofed")], principal=principal)
    assert b"spoofed" not in [value for _, value in out]
    assert values(out, b"x-tollbooth-route") == [b"list-customers"]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_request_headers_are_removed(name: bytes) -> None:
    out = stamp([*BASE, (name, b"hop")])
    assert name not in names(out)


@pytest.mark.parametrize("name", [b"x-http-method-override", b"X-HTTP-Method", b"x-method-override"])
def test_method_override_headers_are_dropped(name: bytes) -> None:
    assert values(stamp([*BASE, (name, b"DELETE")]), name.lower()) == []


def test_expect_is_not_relayed() -> None:
    assert values(stamp([*BASE, (b"expect", b"100-continue")]), b"expect") == []


@pytest.mark.parametrize(
    "connection",
    [
        [(b"connection", b"x-foo, X-Bar")],
        [(b"connection", b" x-foo ,\tx-bar , ")],
        [(b"connection", b"x-foo"), (b"Connection", b"x-bar")],
        [(b"CONNECTION", b"X-FOO,x-bar")],
    ],
    ids=["mixed-case", "whitespace-and-empty-options", "two-connection-headers", "upper-case-header"],
)
def test_connection_named_headers_are_removed(connection: Headers) -> None:
    incoming = [*BASE, (b"x-foo", b"1"), (b"X-Bar", b"2"), (b"x-baz", b"3"), *connection]
    out = stamp(incoming)
    assert names(out) & {b"x-foo", b"x-bar", b"connection"} == set()
    assert values(out, b"x-baz") == [b"3"]


def test_connection_header_cannot_remove_injected_credential_identity_or_trace() -> None:
    injected = [(b"x-api-key", b"upstream-secret")]
    named = (
        b"x-api-key, authorization, x-tollbooth-agent, x-tollbooth-subject, x-tollbooth-delegation, "
        b"x-tollbooth-scopes, x-tollbooth-token-id, x-tollbooth-route, traceparent, tracestate, x-request-id, "
        b"x-forwarded-for, x-forwarded-proto, x-forwarded-host, host"
    )
    out = stamp([*BASE, (b"connection", named)], injected=injected)
    assert values(out, b"x-api-key") == [b"upstream-secret"]
    assert values(out, b"x-tollbooth-agent") == [b"billing-bot"]
    assert values(out, b"x-tollbooth-subject") == [b"user@example.com"]
    assert values(out, b"x-tollbooth-delegation") == [b"billing-bot,planner"]
    assert values(out, b"x-tollbooth-scopes") == [b"crm.read crm.write"]
    assert values(out, b"x-tollbooth-token-id") == [b"jti-1"]
    assert values(out, b"x-tollbooth-route") == [b"list-customers"]
    assert values(out, b"traceparent") == [OUR_TRACEPARENT]
    assert values(out, b"tracestate") == [b"congo=t61"]
    assert values(out, b"x-request-id") == [b"req-1"]
    assert values(out, b"x-forwarded-for") == [b"10.0.0.7"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"gw.example.com"]
    assert values(out, b"host") == [b"127.0.0.1:9000"]


@pytest.mark.parametrize("incoming_name", [b"x-api-key", b"X-Api-Key"])
def test_injected_credential_replaces_incoming_header_of_same_name(incoming_name: bytes) -> None:
    out = stamp([*BASE, (incoming_name, b"agent-chosen")], injected=[(b"x-api-key", b"upstream-secret")])
    assert values(out, b"x-api-key") == [b"upstream-secret"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"traceparent", b"00-11111111111111111111111111111111-2222222222222222-01"),
        (b"tracestate", b"evil=1"),
        (b"x-request-id", b"agent-chosen-id"),
    ],
)
def test_incoming_trace_and_request_id_are_replaced_by_ours(name: bytes, value: bytes) -> None:
    out = stamp([*BASE, (name, value)])
    assert value not in values(out, name)
    assert len(values(out, name)) == 1


# ---- upstream: what passes and what the gateway adds ------------------------------------------------------


def test_ordinary_headers_content_headers_and_cookies_pass_in_order() -> None:
    incoming = [*BASE, (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"user-agent", b"agent/1.0")]
    out = stamp(incoming)
    assert [h for h in out if h[0] in {b"accept", b"content-type", b"content-length", b"cookie", b"user-agent"}] == [
        (b"accept", b"application/json"),
        (b"content-type", b"application/json"),
        (b"content-length", b"42"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"user-agent", b"agent/1.0"),
    ]


def test_host_is_replaced_by_the_upstream_host() -> None:
    out = stamp(BASE)
    assert out[0] == (b"host", b"127.0.0.1:9000")
    assert values(out, b"host") == [b"127.0.0.1:9000"]


def test_identity_headers_describe_the_principal() -> None:
    out = stamp(BASE)
    assert [h for h in out if h[0].startswith(b"x-tollbooth-")] == [
        (b"x-tollbooth-agent", b"billing-bot"),
        (b"x-tollbooth-subject", b"user@example.com"),
        (b"x-tollbooth-delegation", b"billing-bot,planner"),
        (b"x-tollbooth-scopes", b"crm.read crm.write"),
        (b"x-tollbooth-token-id", b"jti-1"),
        (b"x-tollbooth-route", b"list-customers"),
    ]


def test_direct_token_without_scopes_has_no_delegation_or_scopes_header() -> None:
    direct = Principal(
        agent="bot", subject="bot", scopes=frozenset(), jti="j", issuer="i", expires_at=0.0, issued_at=0.0
    )
    out = stamp(BASE, principal=direct)
    assert names(out) & {b"x-tollbooth-delegation", b"x-tollbooth-scopes"} == set()
    assert values(out, b"x-tollbooth-subject") == [b"bot"]


def test_public_route_without_token_gets_only_the_route_header() -> None:
    out = stamp(BASE, principal=None)
    assert [h for h in out if h[0].startswith(b"x-tollbooth-")] == [(b"x-tollbooth-route", b"list-customers")]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("subject", "alice\r\nX-Tollbooth-Agent: admin", b"alice%0D%0AX-Tollbooth-Agent:%20admin"),
        ("subject", "doe, jane", b"doe%2C%20jane"),
        ("subject", "jos\u00e9@example.com", b"jos%C3%A9@example.com"),
        ("subject", "\u7528\u6237", b"%E7%94%A8%E6%88%B7"),
        ("subject", 'say "hi"', b"say%20%22hi%22"),
        ("subject", "100%", b"100%25"),
        ("agent", "bot\x00", b"bot%00"),
        ("jti", "a\\b", b"a%5Cb"),
    ],
)
def test_identity_values_are_encoded(field: str, value: str, expected: bytes) -> None:
    principal = Principal(
        **{"agent": "bot", "subject": "bot", "jti": "j", field: value},
        scopes=frozenset({"s"}),
        issuer="i",
        expires_at=0.0,
        issued_at=0.0,
    )
    header = {"subject": b"x-tollbooth-subject", "agent": b"x-tollbooth-agent", "jti": b"x-tollbooth-token-id"}[field]
    assert values(stamp(BASE, principal=principal), header) == [expected]


def test_actor_with_comma_cannot_split_the_delegation_list() -> None:
    principal = Principal(
        agent="bot",
        subject="user",
        scopes=frozenset(),
        jti="j",
        issuer="i",
        expires_at=0.0,
        issued_at=0.0,
        delegation=("evil,admin", "bot"),
    )
    [delegation] = values(stamp(BASE, principal=principal), b"x-tollbooth-delegation")
    assert delegation.split(b",") == [b"evil%2Cadmin", b"bot"]


@given(st.text())
def test_identity_header_value_is_header_safe_and_reversible(value: str) -> None:
    encoded = identity_header_value(value)
    assert re.fullmatch(rb"[\x21-\x7e]*", encoded)
    assert not set(encoded) & set(b',"\\')
    assert unquote_to_bytes(encoded) == value.encode("utf-8", "surrogatepass")


def test_identity_header_value_encodes_lone_surrogates_instead_of_failing() -> None:
    assert identity_header_value("a\ud800") == b"a%ED%A0%80"


# ---- forwarding headers -----------------------------------------------------------------------------------

PRIOR_FORWARDING: Headers = [
    (b"x-forwarded-for", b"203.0.113.9, 198.51.100.2"),
    (b"X-Forwarded-For", b"192.0.2.1"),
    (b"x-forwarded-proto", b"http"),
    (b"x-forwarded-host", b"evil.example"),
    (b"forwarded", b"for=203.0.113.9;proto=http"),
]


def test_untrusted_forwarding_headers_are_replaced_by_our_hop() -> None:
    out = stamp([*BASE, *PRIOR_FORWARDING])
    forwarding_names = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
    assert [h for h in out if h[0] in forwarding_names] == [
        (b"x-forwarded-for", b"10.0.0.7"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"gw.example.com"),
    ]


def test_trusted_forwarding_headers_are_kept_and_our_hop_appended() -> None:
    out = stamp([*BASE, *PRIOR_FORWARDING], trust_forwarded=True)
    assert values(out, b"x-forwarded-for") == [b"203.0.113.9, 198.51.100.2, 192.0.2.1, 10.0.0.7"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"evil.example"]
    assert values(out, b"forwarded") == [b"for=203.0.113.9;proto=http"]


def test_trusted_forwarding_headers_named_in_connection_are_removed() -> None:
    # RFC 9110 §7.6.1: the trusted proxy says they describe its own hop; ours replace them.
    connection = (b"connection", b"X-Forwarded-For, x-forwarded-host, X-Real-IP")
    out = stamp([*BASE, *PRIOR_FORWARDING, (b"x-real-ip", b"203.0.113.9"), connection], trust_forwarded=True)
    assert values(out, b"x-forwarded-for") == [b"10.0.0.7"]
    assert values(out, b"x-forwarded-host") == [b"gw.example.com"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-real-ip") == []


def test_trusted_forwarding_without_prior_headers_adds_ours() -> None:
    out = stamp(BASE, trust_forwarded=True)
    assert values(out, b"x-forwarded-for") == [b"10.0.0.7"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"gw.example.com"]


@pytest.mark.parametrize(
    "hosts",
    [
        [],
        [(b"host", b"evil.example")],
        [(b"host", b"a.example, b.example")],
        [(b"host", b"a.example"), (b"host", b"b.example")],
    ],
    ids=["absent", "other-host", "comma", "two-hosts"],
)
def test_forwarded_host_is_the_public_host_whatever_the_caller_sends(hosts: Headers) -> None:
    # Host-header poisoning: an upstream building links from X-Forwarded-Host must get the public name.
    out = stamp([(b"accept", b"*/*"), *hosts])
    assert values(out, b"x-forwarded-host") == [b"gw.example.com"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"host") == [b"127.0.0.1:9000"]


@pytest.mark.parametrize("name", [b"X_Tollbooth_Agent", b"x_forwarded_for", b"X_HTTP_Method_Override", b"x_request_id"])
def test_underscore_spellings_of_gateway_headers_are_judged_as_dashes(name: bytes) -> None:
    # CGI/WSGI/PHP servers read X_Tollbooth_Agent as X-Tollbooth-Agent.
    assert (name, b"spoof") not in stamp([*BASE, (name, b"spoof")])


def test_other_underscore_headers_pass() -> None:
    assert (b"x_custom_header", b"1") in stamp([*BASE, (b"x_custom_header", b"1")])


@pytest.mark.parametrize(
    "name",
    [
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-ssl",
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-uri",
    ],
)
def test_client_address_forwarding_and_path_override_headers_are_dropped(name: bytes) -> None:
    out = stamp([*BASE, (name, b"spoof")])
    assert values(out, name) == []


def test_trusted_proxy_keeps_client_address_headers() -> None:
    out = stamp([*BASE, (b"x-real-ip", b"203.0.113.9")], trust_forwarded=True)
    assert values(out, b"x-real-ip") == [b"203.0.113.9"]


# ---- request ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"req-1", b"0f8fad5b-d9cb-469f-a165-70867728950e", b"svc:123.abc_DEF", b"a", b"x" * 128],
)
def test_well_formed_request_id_is_kept(value: bytes) -> None:
    assert request_id_from(value) == value.decode()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="absent"),
        pytest.param(b"", id="empty"),
        pytest.param(b"x" * 129, id="too-long"),
        pytest.param(b"abc\r\nx-tollbooth-agent: admin", id="crlf"),
        pytest.param("r\u00e9q".encode(), id="unicode"),
        pytest.param(b"has space", id="space"),
        pytest.param(b'"quoted"', id="quote"),
        pytest.param(b"a,b", id="comma"),
        pytest.param(b"a/b", id="slash"),
    ],
)
def test_malformed_request_id_is_replaced_by_a_uuid4(value: bytes | None) -> None:
    generated = request_id_from(value)
    assert re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", generated)


def test_generated_request_ids_differ() -> None:
    assert request_id_from(None) != request_id_from(None)


# ---- downstream ---------------------------------------------------------------------------------------------


def test_hop_by_hop_response_headers_are_removed() -> None:
    upstream = [(name, b"hop") for name in sorted(HOP_BY_HOP)] + [(b"content-type", b"text/plain")]
    assert names(downstream_response_headers(upstream, trace=TRACE, request_id="req-1")) == {
        b"content-type",
        b"x-request-id",
        b"traceparent",
    }


def test_connection_named_response_headers_are_removed_in_any_case() -> None:
    upstream = [(b"Connection", b"X-Internal, keep-alive"), (b"X-Internal", b"secret"), (b"Keep-Alive", b"5")]
    out = downstream_response_headers(upstream, trace=TRACE, request_id="req-1")
    assert names(out) == {b"x-request-id", b"traceparent"}


def test_response_carries_our_request_id_and_traceparent() -> None:
    upstream = [(b"X-Request-Id", b"upstream-id"), (b"traceparent", b"00-upstream"), (b"tracestate", b"u=1")]
    out = downstream_response_headers(upstream, trace=TRACE, request_id="req-1")
    assert values(out, b"x-request-id") == [b"req-1"]
    assert values(out, b"traceparent") == [OUR_TRACEPARENT]
    assert values(out, b"tracestate") == [b"u=1"]


def test_response_keeps_every_set_cookie_in_order() -> None:
    upstream = iter(
        [
            (b"set-cookie", b"a=1; Path=/"),
            (b"content-type", b"application/json"),
            (b"Set-Cookie", b"b=2; HttpOnly"),
            (b"set-cookie", b"c=3, with comma; Expires=Wed, 21 Oct 2026 07:28:00 GMT"),
        ]
    )
    out = downstream_response_headers(upstream, trace=TRACE, request_id="req-1")
    assert [value for name, value in out if name.lower() == b"set-cookie"] == [
        b"a=1; Path=/",
        b"b=2; HttpOnly",
        b"c=3, with comma; Expires=Wed, 21 Oct 2026 07:28:00 GMT",
    ]
