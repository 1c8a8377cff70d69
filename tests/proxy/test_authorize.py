"""The authorize step: path normalization, route matching, decisions, and `tollbooth check` route warnings."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import HTTP_METHODS, Config, RateLimit
from gateway.principal import Principal
from gateway.proxy.authorize import (
    Decision,
    PathRejected,
    Route,
    RouteTable,
    authorize,
    normalize_path,
    route_warnings,
)


def make_config(*routes: dict[str, Any], upstreams: tuple[str, ...] = ("crm",)) -> Config:
    return Config.model_validate(
        {"upstreams": {name: {"url": "http://127.0.0.1:9000"} for name in upstreams}, "routes": list(routes)}
    )


def make_table(*routes: dict[str, Any]) -> RouteTable:
    return RouteTable.from_config(make_config(*routes))


def route(name: str, path: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "path": path, **fields}


def principal(*scopes: str, delegation: tuple[str, ...] = ()) -> Principal:
    return Principal(
        agent="billing-bot",
        subject="user-1" if delegation else "billing-bot",
        scopes=frozenset(scopes),
        jti="jti-1",
        issuer="http://127.0.0.1:8081",
        expires_at=2_000_000_000.0,
        issued_at=1_999_999_700.0,
        delegation=delegation,
    )


def matched_name(table: RouteTable, method: str, path: str) -> str | None:
    found = table.match(method, path)
    return found.name if found is not None else None


# ---------------------------------------------------------------- normalize_path: accepted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", "/"),
        (b"/v1/customers", "/v1/customers"),
        (b"/v1/customers/", "/v1/customers/"),
        (b"/V1/Customers/ABC", "/V1/Customers/ABC"),
        (b"/v1/customers/caf%C3%A9", "/v1/customers/café"),
        (b"/v1/customers/caf%c3%a9", "/v1/customers/café"),
        (b"/v1/customers/caf%C3%a9", "/v1/customers/café"),
        (b"/v1/customers/caf\xc3\xa9", "/v1/customers/café"),
        (b"/price/%E2%82%AC", "/price/€"),
        (b"/a%20b", "/a b"),
        (b"/%41%62c", "/Abc"),
        (b"/file.tar.gz/.well-known/v1.", "/file.tar.gz/.well-known/v1."),
        (b"/a/.../..b/b..", "/a/.../..b/b.."),
        (b"/a/%2e%2e%2e", "/a/..."),
        (b"/a%2Eb", "/a.b"),
        (b"/100%25", "/100%"),
        (b"/a%25zz", "/a%zz"),
        (b"/a:b@c!$&'()*+,=~-_", "/a:b@c!$&'()*+,=~-_"),
    ],
)
def test_path_is_decoded_once_and_otherwise_kept(raw: bytes, expected: str) -> None:
    assert normalize_path(raw) == expected


def test_trailing_slash_is_kept() -> None:
    assert normalize_path(b"/a/") != normalize_path(b"/a")


def test_case_is_kept() -> None:
    assert normalize_path(b"/Admin/X") == "/Admin/X"


# ---------------------------------------------------------------- normalize_path: rejected


REJECTED: dict[str, list[bytes]] = {
    "must start with '/'": [b"", b"a/b", b"*", b"%2Fa", b"http://example.com/a"],
    "encoded slash (%2F)": [b"/a%2Fb", b"/a%2fb", b"/%2F", b"/admin%2f..%2fsecret"],
    "backslash": [b"/a\\b", b"/a/\\..", b"/\\admin"],
    "encoded backslash (%5C)": [b"/a%5Cb", b"/a%5cb", b"/a/%5c.."],
    "control character": [b"/a\x00b", b"/a\x1fb", b"/a\x7f", b"/a\r\nX-Injected: 1", b"/a\tb", b"/a%C2%85"],
    "encoded control character (%00)": [b"/a%00b", b"/a%00"],
    "encoded control character (%0A)": [b"/a%0Ab", b"/a%0a"],
    "encoded control character (%1F)": [b"/a%1F", b"/a%1f"],
    "encoded control character (%7F)": [b"/a%7F", b"/a%7f"],
    "unencoded space": [b"/a b"],
    "dot segment": [
        b"/.",
        b"/..",
        b"/./a",
        b"/a/./b",
        b"/a/../b",
        b"/a/..",
        b"/a/.",
        b"/%2e%2e/",
        b"/%2E%2E/",
        b"/%2e%2E/admin",
        b"/a/%2e/b",
        b"/a/.%2e/b",
        b"/a/%2e./b",
        b"/a/%2E",
        b"/public/%2e%2e/admin",
    ],
    "';' path parameter": [b"/a;x=1", b"/a;", b"/admin;/x", b"/a/b;jsessionid=1"],
    "encoded ';' (%3B)": [b"/a%3Bb", b"/a%3bb"],
    "double percent-encoding": [b"/a%252fb", b"/a%252F", b"/%252e%252e/admin", b"/%25%32%66", b"/a%2541"],
    "malformed percent-escape": [b"/a%", b"/a%4", b"/a%zz", b"/a%g0", b"/a%%41", b"/a%u002e", b"/%2"],
    "empty segment ('//')": [b"//", b"//a", b"/a//b", b"/a//", b"/a///b"],
    "'#' in path": [b"/a#b"],
    "'?' in path": [b"/a?b"],
    "encoded '#' (%23)": [b"/a%23b"],
    "encoded '?' (%3F)": [b"/a%3Fb", b"/a%3fb"],
    "not valid UTF-8": [b"/%C0%AE", b"/%C0%AE%C0%AE/admin", b"/%C3", b"/%FF", b"/%ED%A0%80", b"/\xff", b"/caf\xe9"],
    "Unicode NFKC": [
        b"/%EF%BC%8E%EF%BC%8E/admin",  # fullwidth full stops: NFKC reads them as ".."
        b"/%EF%BD%81dmin",  # fullwidth "a": NFKC reads "/admin"
        b"/e%CC%81",  # "e" + combining acute: NFKC composes it to "é"
        b"/\xef\xbc\x8f",  # fullwidth solidus, raw
    ],
}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(raw, reason) for reason, raws in REJECTED.items() for raw in raws],
)
def test_ambiguous_path_is_rejected_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PathRejected) as rejected:
        normalize_path(raw)
    assert reason in rejected.value.reason


def test_encoded_slash_is_rejected() -> None:
    with pytest.raises(PathRejected, match=r"encoded slash \(%2F\)"):
        normalize_path(b"/v1/customers%2F42")


def test_overlong_utf8_dot_is_rejected() -> None:
    with pytest.raises(PathRejected, match="UTF-8"):
        normalize_path(b"/public/%C0%AE%C0%AE/admin")


def test_rejection_carries_reason_as_message() -> None:
    with pytest.raises(PathRejected) as rejected:
        normalize_path(b"/a//b")
    assert str(rejected.value) == rejected.value.reason


# ---------------------------------------------------------------- RouteTable: specificity and order


@pytest.mark.parametrize(
    ("routes", "path", "winner"),
    [
        ([route("param", "/v1/{id}"), route("literal", "/v1/me")], "/v1/me", "literal"),
        ([route("rest", "/v1/{p:path}"), route("param", "/v1/{id}")], "/v1/42", "param"),
        ([route("rest", "/v1/{p:path}"), route("literal", "/v1/me")], "/v1/me", "literal"),
        ([route("rest", "/v1/{p:path}"), route("deep", "/v1/{a}/{b}")], "/v1/x/y", "deep"),
        # Segment by segment from the left: the first difference decides.
        ([route("param-first", "/{a}/b"), route("literal-first", "/a/{p:path}")], "/a/b", "literal-first"),
        ([route("param-first", "/{a}/b/c"), route("literal-first", "/a/{b}/{c}")], "/a/b/c", "literal-first"),
        ([route("late-literal", "/v1/{id}/x"), route("early-literal", "/v1/me/{x}")], "/v1/me/x", "early-literal"),
    ],
)
def test_most_specific_route_wins(routes: list[dict[str, Any]], path: str, winner: str) -> None:
    assert matched_name(make_table(*routes), "GET", path) == winner


def test_equally_specific_routes_go_to_the_first_in_file() -> None:
    table = make_table(route("first", "/v1/{id}"), route("second", "/v1/{key}"))
    assert matched_name(table, "GET", "/v1/42") == "first"


def test_identical_literal_routes_go_to_the_first_in_file() -> None:
    table = make_table(route("first", "/status"), route("second", "/status"))
    assert matched_name(table, "GET", "/status") == "first"


def test_a_more_specific_route_that_fails_deeper_falls_back_to_a_less_specific_one() -> None:
    table = make_table(route("literal", "/a/b/c"), route("param", "/a/{x}/d"))
    assert matched_name(table, "GET", "/a/b/d") == "param"
    assert matched_name(table, "GET", "/a/b/c") == "literal"


def test_unmatched_path_gives_none() -> None:
    table = make_table(route("one", "/v1/{id}"))
    assert table.match("GET", "/v2/42") is None


# ---------------------------------------------------------------- RouteTable: methods


def test_read_and_write_routes_on_one_path_are_chosen_by_method() -> None:
    table = make_table(
        route("read", "/v1/customers/{id}", methods=["GET"], scopes=["crm.read"]),
        route("write", "/v1/customers/{id}", methods=["POST", "PUT"], scopes=["crm.write"]),
    )
    assert matched_name(table, "GET", "/v1/customers/1") == "read"
    assert matched_name(table, "PUT", "/v1/customers/1") == "write"
    assert matched_name(table, "DELETE", "/v1/customers/1") is None


def test_a_specific_route_without_the_method_lets_a_general_one_match() -> None:
    table = make_table(route("general", "/v1/x/{id}", methods=["GET"]), route("special", "/v1/x/me", methods=["POST"]))
    assert matched_name(table, "GET", "/v1/x/me") == "general"
    assert matched_name(table, "POST", "/v1/x/me") == "special"


def test_head_is_not_implied_by_get() -> None:
    table = make_table(route("read", "/v1/x", methods=["GET"]))
    assert table.match("HEAD", "/v1/x") is None


@pytest.mark.parametrize("method", HTTP_METHODS)
def test_route_without_methods_matches_every_allowed_method(method: str) -> None:
    assert matched_name(make_table(route("any", "/v1/{x}")), method, "/v1/a") == "any"


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "get", "Get", ""])
def test_other_methods_never_match_even_with_methods_unset(method: str) -> None:
    table = make_table(route("any", "/v1/{x}"), route("literal", "/v1"))
    assert table.match(method, "/v1/a") is None
    assert table.match(method, "/v1") is None


# ---------------------------------------------------------------- RouteTable: path shapes


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/a", "/a", True),
        ("/a", "/a/", False),
        ("/a/", "/a/", True),
        ("/a/", "/a", False),
        ("/v1/customers", "/v1/Customers", False),
        ("/v1/Customers", "/v1/Customers", True),
        ("/a/{x}", "/a/b", True),
        ("/a/{x}", "/a/", False),
        ("/a/{x}", "/a", False),
        ("/a/{x}", "/a/b/c", False),
        ("/a/{x}", "/a/b/", False),
        ("/a/{x}/", "/a/b/", True),
        ("/{x}", "/", False),
        ("/", "/", True),
        ("/files/{p:path}", "/files/a", True),
        ("/files/{p:path}", "/files/a/b/c", True),
        ("/files/{p:path}", "/files/a/", True),
        ("/files/{p:path}", "/files/", False),
        ("/files/{p:path}", "/files", False),
        ("/files/{p:path}", "/filesx/a", False),
        ("/{p:path}", "/", False),
        ("/{p:path}", "/anything/at/all", True),
        ("/caf\u00e9/{id}", "/caf\u00e9/1", True),
    ],
)
def test_path_pattern_matching(pattern: str, path: str, matches: bool) -> None:
    assert (make_table(route("r", pattern)).match("GET", path) is not None) is matches


# ---------------------------------------------------------------- RouteTable: compiled routes


def test_routes_keep_file_order_and_config_fields() -> None:
    config = make_config(
        route("b", "/b", upstream="billing", methods=["get", "post"], scopes=["x", "y"], delegation="required"),
        route("a", "/a", upstream="crm", rate_limit="60/minute"),
        route("s", "/status", upstream="crm", public=True),
        upstreams=("crm", "billing"),
    )
    table = RouteTable.from_config(config)
    assert [r.name for r in table.routes] == ["b", "a", "s"]
    assert table.routes[0] == Route(
        name="b",
        upstream="billing",
        methods=frozenset({"GET", "POST"}),
        scopes=("x", "y"),
        delegation="required",
        public=False,
        rate_limit=None,
        pattern="/b",
    )
    assert table.routes[1].methods is None
    assert table.routes[1].rate_limit == RateLimit(60, 60)
    assert table.routes[2].public is True


def test_route_without_upstream_uses_the_only_upstream() -> None:
    assert make_table(route("a", "/a")).routes[0].upstream == "crm"


def test_scopes_supported_is_the_sorted_union_of_route_scopes() -> None:
    table = make_table(
        route("a", "/a", scopes=["crm.write", "crm.read"]),
        route("b", "/b", scopes=["crm.read", "admin"]),
        route("s", "/s", public=True),
    )
    assert table.scopes_supported() == ["admin", "crm.read", "crm.write"]


# ---------------------------------------------------------------- authorize


TABLE = make_table(
    route("status", "/status", methods=["GET", "HEAD"], public=True),
    route("list-customers", "/v1/customers", methods=["GET"], scopes=["crm.read"]),
    route("update-customer", "/v1/customers/{id}", methods=["PUT"], scopes=["crm.read", "crm.write"]),
    route("act-for-user", "/v1/me/{x:path}", scopes=["crm.read"], delegation="required"),
    route("agent-only", "/v1/agent/{x:path}", scopes=["crm.read"], delegation="forbidden"),
)
DIRECT = principal("crm.read", "crm.write")
DELEGATED = principal("crm.read", "crm.write", delegation=("billing-bot",))


@pytest.mark.parametrize(
    ("method", "path", "who", "allow", "status", "reason", "route_name", "required"),
    [
        ("GET", "/status", None, True, 200, "public", "status", ()),
        ("GET", "/status", DIRECT, True, 200, "public", "status", ()),
        ("GET", "/v1/customers", None, False, 401, "missing_token", "list-customers", ("crm.read",)),
        ("GET", "/nowhere", None, False, 401, "missing_token", None, ()),
        ("POST", "/status", None, False, 401, "missing_token", None, ()),
        ("GET", "/nowhere", DIRECT, False, 403, "no_matching_route", None, ()),
        ("DELETE", "/v1/customers", DIRECT, False, 403, "no_matching_route", None, ()),
        ("GET", "/v1/customers", DIRECT, True, 200, "allowed", "list-customers", ("crm.read",)),
        ("PUT", "/v1/customers/7", principal("crm.read"), False, 403, "insufficient_scope", "update-customer",
         ("crm.read", "crm.write")),
        ("PUT", "/v1/customers/7", principal(), False, 403, "insufficient_scope", "update-customer",
         ("crm.read", "crm.write")),
        ("PUT", "/v1/customers/7", DIRECT, True, 200, "allowed", "update-customer", ("crm.read", "crm.write")),
        ("GET", "/v1/me/profile", DIRECT, False, 403, "delegation_required", "act-for-user", ("crm.read",)),
        ("GET", "/v1/me/profile", DELEGATED, True, 200, "allowed", "act-for-user", ("crm.read",)),
        ("GET", "/v1/agent/jobs", DELEGATED, False, 403, "delegation_forbidden", "agent-only", ("crm.read",)),
        ("GET", "/v1/agent/jobs", DIRECT, True, 200, "allowed", "agent-only", ("crm.read",)),
        ("GET", "/v1/customers", DELEGATED, True, 200, "allowed", "list-customers", ("crm.read",)),
    ],
)  # fmt: skip
def test_decision(
    method: str,
    path: str,
    who: Principal | None,
    allow: bool,
    status: int,
    reason: str,
    route_name: str | None,
    required: tuple[str, ...],
) -> None:
    decision = authorize(TABLE, method, path, who)
    assert (decision.allow, decision.status, decision.reason) == (allow, status, reason)
    assert (decision.route.name if decision.route else None) == route_name
    assert decision.required_scopes == required


def test_scopes_are_all_of_and_the_description_names_the_missing_ones() -> None:
    decision = authorize(TABLE, "PUT", "/v1/customers/7", principal("crm.read", "crm.admin"))
    assert decision.reason == "insufficient_scope"
    assert "update-customer" in decision.description
    assert decision.description.endswith("missing crm.write")


def test_extra_scopes_do_not_hurt() -> None:
    assert authorize(TABLE, "GET", "/v1/customers", principal("crm.read", "other")).allow


def test_missing_scope_is_reported_before_delegation() -> None:
    assert authorize(TABLE, "GET", "/v1/me/x", principal("other")).reason == "insufficient_scope"


def test_anonymous_caller_cannot_tell_whether_a_route_exists() -> None:
    exists = authorize(TABLE, "GET", "/v1/customers", None)
    missing = authorize(TABLE, "GET", "/nowhere", None)
    assert (exists.status, exists.reason, exists.description) == (missing.status, missing.reason, missing.description)


def test_route_with_no_scopes_allows_any_token() -> None:
    table = make_table(route("open", "/open"))
    assert authorize(table, "GET", "/open", principal()).reason == "allowed"


def all_decisions() -> list[Decision]:
    cases = [
        ("GET", "/status", None),
        ("GET", "/v1/customers", None),
        ("GET", "/nowhere", DIRECT),
        ("PUT", "/v1/customers/7", principal("crm.read")),
        ("GET", "/v1/me/x", DIRECT),
        ("GET", "/v1/agent/x", DELEGATED),
        ("GET", "/v1/customers", DIRECT),
    ]
    return [authorize(TABLE, method, path, who) for method, path, who in cases]


def test_every_reason_is_covered_and_descriptions_fit_an_rfc6750_error_description() -> None:
    decisions = all_decisions()
    assert {d.reason for d in decisions} == {
        "allowed",
        "public",
        "missing_token",
        "no_matching_route",
        "insufficient_scope",
        "delegation_required",
        "delegation_forbidden",
    }
    for decision in decisions:
        # RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no '"' or '\').
        assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in decision.description), decision.description


# ---------------------------------------------------------------- route_warnings


def test_duplicate_route_is_reported() -> None:
    config = make_config(
        route("a", "/v1/x/{id}", methods=["GET"]),
        route("b", "/v1/y"),
        route("c", "/v1/x/{key}", methods=["GET"]),
    )
    assert route_warnings(config) == [
        'route "c" (routes[2]) duplicates route "a" (routes[0]): same path pattern and methods'
    ]


def test_route_without_methods_duplicates_one_listing_all_methods() -> None:
    config = make_config(route("a", "/x"), route("b", "/x", methods=list(HTTP_METHODS)))
    assert route_warnings(config) == [
        'route "b" (routes[1]) duplicates route "a" (routes[0]): same path pattern and methods'
    ]


def test_shadowed_route_is_reported() -> None:
    config = make_config(route("a", "/v1/x/{id}", methods=["GET", "POST"]), route("b", "/v1/x/{id}", methods=["GET"]))
    assert route_warnings(config) == [
        'route "b" (routes[1]) is shadowed by route "a" (routes[0]): both match GET /v1/x/{id}'
    ]


def test_route_shadowed_by_several_routes_names_each() -> None:
    config = make_config(
        route("reads", "/files/{p:path}", methods=["GET", "HEAD"]),
        route("writes", "/files/{path:path}", methods=["PUT"]),
        route("all", "/files/{p:path}", methods=["GET", "PUT"]),
    )
    assert route_warnings(config) == [
        'route "all" (routes[2]) is shadowed by route "reads" (routes[0]): both match GET /files/{p:path}; '
        'and by route "writes" (routes[1]): both match PUT /files/{p:path}'
    ]


def test_partly_shadowed_route_says_which_methods_still_reach_it() -> None:
    config = make_config(route("read", "/v1/x", methods=["GET"]), route("rw", "/v1/x", methods=["GET", "POST"]))
    assert route_warnings(config) == [
        'route "rw" (routes[1]) is partly shadowed by route "read" (routes[0]): both match GET /v1/x; '
        "it only ever gets POST"
    ]


@pytest.mark.parametrize(
    "routes",
    [
        [route("read", "/v1/x/{id}", methods=["GET"]), route("write", "/v1/x/{id}", methods=["POST"])],
        [route("param", "/v1/x/{id}"), route("literal", "/v1/x/me")],
        [route("literal", "/v1/x/me"), route("param", "/v1/x/{id}")],
        [route("param", "/v1/x/{id}"), route("rest", "/v1/x/{p:path}")],
        [route("slash", "/v1/x/"), route("no-slash", "/v1/x")],
    ],
)
def test_routes_that_can_each_match_something_are_not_reported(routes: list[dict[str, Any]]) -> None:
    assert route_warnings(make_config(*routes)) == []


def test_route_the_proxy_can_never_match_is_reported() -> None:
    assert route_warnings(make_config(route("a", "/v1//x"))) == [
        "route \"a\" (routes[0]) can never match: the proxy rejects paths like /v1//x (empty segment ('//') in path)"
    ]
