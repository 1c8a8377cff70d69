"""Properties of the upstream request headers (stamp.upstream_request_headers), over any mix of header names.

Each incoming header carries a value of its own (`v<i>`), so every header the upstream gets can be traced to the
agent's header it came from, or to the gateway. An oracle written from the rules (RFC 9110 §7.6.1 and the lists in
stamp.py), not from the code, says which of the agent's headers may pass; the properties say that exactly those
pass, in order, and that the gateway's own headers are there once each.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.principal import Principal
from gateway.proxy import stamp
from gateway.tracing import TraceContext

Headers = list[tuple[bytes, bytes]]

PRINCIPAL = Principal(
    agent="billing-bot",
    subject="user@example.com",
    scopes=frozenset({"crm.read"}),
    jti="jti-1",
    issuer="http://127.0.0.1:8081",
    expires_at=2_000_000_000.0,
    issued_at=1_999_999_700.0,
    delegation=("billing-bot", "planner"),
)
TRACE = TraceContext(
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="b7ad6b7169203331", flags="01", tracestate=None
)
STRIP = frozenset({b"x-debug-user", b"x-tenant-override"})
INJECTED = [(b"authorization", b"Bearer upstream-key"), (b"x-api-key", b"upstream-api-key")]

# Where names come from: each family the policy treats apart, plus ordinary names that must pass.
ORDINARY = [b"accept", b"content-type", b"content-length", b"cookie", b"x-custom", b"x-tenant", b"user-agent"]
FAMILIES = [
    sorted(stamp.SPOOFABLE_REQUEST_HEADERS),
    sorted(stamp.CLIENT_ADDRESS_HEADERS),
    [prefix + b"agent" for prefix in stamp.SPOOFABLE_REQUEST_PREFIXES],
    [b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-ssl"],
    sorted(stamp.HOP_BY_HOP - {b"connection"}),
    [b"authorization", b"proxy-authorization", b"host", b"expect", b"traceparent", b"tracestate", b"x-request-id"],
    sorted(STRIP),
    [b"x-api-key"],
    ORDINARY,
]
base_names = st.one_of(*[st.sampled_from(family) for family in FAMILIES])


@st.composite
def spelled(draw: st.DrawFn, name: bytes) -> bytes:
    """`name` as some client may send it: any case per letter, '-' as '_' (as CGI servers read both)."""
    out = bytearray()
    for byte in name:
        char = bytes([byte])
        if char.isalpha():
            char = draw(st.sampled_from([char.lower(), char.upper()]))
        elif char == b"-":
            char = draw(st.sampled_from([b"-", b"_"]))
        out += char
    return bytes(out)


@st.composite
def connection_header(draw: st.DrawFn) -> bytes:
    """A Connection value: a list of names, some spelled oddly, with the whitespace RFC 9110 §5.6.1 allows."""
    options = draw(st.lists(base_names.flatmap(spelled), max_size=4))
    separator = draw(st.sampled_from([b",", b", ", b" ,\t", b",,"]))
    return separator.join([b"keep-alive", *options])


@dataclass(frozen=True)
class Case:
    incoming: Headers
    trust_forwarded: bool
    principal: Principal | None
    injected: Headers


@st.composite
def cases(draw: st.DrawFn) -> Case:
    names = draw(st.lists(base_names.flatmap(spelled), max_size=14))
    incoming = [(name, b"v%d" % i) for i, name in enumerate(names)]
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(incoming)))
        incoming.insert(at, (draw(spelled(b"connection")), draw(connection_header())))
    return Case(
        incoming,
        trust_forwarded=draw(st.booleans()),
        principal=draw(st.sampled_from([PRINCIPAL, None])),
        injected=draw(st.sampled_from([[], INJECTED[:1], INJECTED])),
    )


def stamped(case: Case) -> Headers:
    return stamp.upstream_request_headers(
        case.incoming,
        principal=case.principal,
        route_name="crm",
        injected=case.injected,
        trace=TRACE,
        request_id="req-1",
        client_ip="10.0.0.7",
        public_scheme=b"https",
        public_host=b"gw.example.com",
        upstream_host=b"127.0.0.1:9000",
        trust_forwarded=case.trust_forwarded,
        strip=STRIP,
        connection_options=stamp.connection_named(case.incoming),
    )


def canonical(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


def connection_options(incoming: Headers) -> set[bytes]:
    return {
        canonical(option.strip(b" \t"))
        for name, value in incoming
        if canonical(name) == b"connection"
        for option in value.split(b",")
    }


NEVER_FROM_AGENT = (
    stamp.HOP_BY_HOP
    | stamp.SPOOFABLE_REQUEST_HEADERS
    | {b"authorization", b"proxy-authorization", b"host", b"expect", b"traceparent", b"tracestate", b"x-request-id"}
)


def is_forwarding(name: bytes) -> bool:
    return name in stamp.CLIENT_ADDRESS_HEADERS or (
        name.startswith(b"x-forwarded-") and name not in stamp.SPOOFABLE_REQUEST_HEADERS
    )


def passes(name: bytes, case: Case, named: set[bytes]) -> bool:
    """The oracle: may the agent's header `name` reach the upstream (as it came, or merged into X-Forwarded-For)?"""
    name = canonical(name)
    if name in named or name in NEVER_FROM_AGENT or name in STRIP or name.startswith(stamp.SPOOFABLE_REQUEST_PREFIXES):
        return False
    if name in {canonical(n) for n, _ in case.injected}:
        return False
    if is_forwarding(name):
        return case.trust_forwarded
    return True


def from_agent(headers: Headers) -> list[bytes]:
    """The agent's values among `headers` (each `v<i>`, X-Forwarded-For's list split), in order."""
    values = []
    for _, value in headers:
        for item in value.split(b", "):
            if item[:1] == b"v" and item[1:].isdigit():
                values.append(item)
    return values


@given(cases())
@example(Case([(b"Authorization", b"v0"), (b"AUTHORIZATION", b"v1"), (b"proxy_authorization", b"v2")], False, None, []))
@example(Case([(b"X_Forwarded_Host", b"v0"), (b"x-real-ip", b"v1")], False, PRINCIPAL, []))
@example(Case([(b"connection", b"x-custom"), (b"X-Custom", b"v0")], False, None, []))
@example(Case([(b"connection", b"X-Forwarded-For, x-real-ip"), (b"x-forwarded-for", b"v0")], True, None, []))
@example(Case([(b"connection", b"x_custom"), (b"x_custom", b"v0")], False, None, []))
def test_exactly_the_headers_the_rules_allow_pass_in_order(case: Case) -> None:
    named = connection_options(case.incoming)
    expected = [
        value for name, value in case.incoming if canonical(name) != b"connection" and passes(name, case, named)
    ]
    out = stamped(case)
    # Forwarding headers a trusted proxy sent are grouped after the others: compare each group in order.
    forwarding = [h for h in out if is_forwarding(canonical(h[0]))]
    others = [h for h in out if not is_forwarding(canonical(h[0]))]
    expected_forwarding = [
        value for name, value in case.incoming if is_forwarding(canonical(name)) and value in expected
    ]
    assert from_agent(others) == [v for v in expected if v not in expected_forwarding]
    assert sorted(from_agent(forwarding)) == sorted(expected_forwarding)
    # Kept headers go out as they came, name spelling included.
    spelling = {value: name for name, value in case.incoming}
    assert all(spelling[value] == name for name, value in others if value in expected)


@given(cases())
def test_the_agents_token_never_passes_whatever_its_spelling(case: Case) -> None:
    tokens = {value for name, value in case.incoming if canonical(name) in (b"authorization", b"proxy-authorization")}
    out = stamped(case)
    assert not tokens & set(from_agent(out))
    assert [v for n, v in out if canonical(n) == b"authorization"] == [
        v for n, v in case.injected if n == b"authorization"
    ]
    assert not any(canonical(n) == b"proxy-authorization" for n, _ in out)


@given(cases())
def test_the_gateways_own_headers_are_there_once_with_its_values(case: Case) -> None:
    out = stamped(case)
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in out:
        by_name.setdefault(canonical(name), []).append(value)
    assert by_name[b"host"] == [b"127.0.0.1:9000"]
    assert by_name[b"x-tollbooth-route"] == [b"crm"]
    assert by_name[b"traceparent"] == [TRACE.traceparent()]
    assert by_name[b"x-request-id"] == [b"req-1"]
    assert b"tracestate" not in by_name
    identity = {b"x-tollbooth-agent", b"x-tollbooth-subject", b"x-tollbooth-token-id", b"x-tollbooth-delegation"}
    tollbooth = {name for name in by_name if name.startswith(b"x-tollbooth-")}
    if case.principal is None:
        assert tollbooth == {b"x-tollbooth-route"}
    else:
        assert tollbooth == identity | {b"x-tollbooth-route", b"x-tollbooth-scopes"}
        assert all(len(by_name[name]) == 1 for name in tollbooth)
    # Our hop is the last X-Forwarded-For entry, in the one X-Forwarded-For field.
    assert len(by_name[b"x-forwarded-for"]) == 1 and by_name[b"x-forwarded-for"][0].endswith(b"10.0.0.7")
    if not case.trust_forwarded:
        assert by_name[b"x-forwarded-for"] == [b"10.0.0.7"]
        assert by_name[b"x-forwarded-proto"] == [b"https"]
        assert by_name[b"x-forwarded-host"] == [b"gw.example.com"]
    else:
        assert by_name[b"x-forwarded-proto"] and by_name[b"x-forwarded-host"]
    for name, value in case.injected:
        assert by_name[name] == [value]


@given(cases())
def test_nothing_hop_by_hop_or_named_in_connection_passes(case: Case) -> None:
    # The gateway's own headers may be named too: they are added after the removal, and carry none of the
    # agent's values.
    out = stamped(case)
    assert not {canonical(n) for n, _ in out} & stamp.HOP_BY_HOP
    assert not {canonical(n) for n, v in out if from_agent([(n, v)])} & connection_options(case.incoming)
