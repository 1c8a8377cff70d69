"""Property: a path the proxy accepts reaches, at any reasonable upstream, the route it was authorized for.

The proxy matches `normalize_path(R)` but forwards the raw path R unchanged. So for every accepted R, each
upstream reading of R below must equal the path we matched, and must match the same route.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote, unquote

import pytest
from hypothesis import example, find, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.proxy.authorize import PathRejected, Route, RouteTable, normalize_path

TABLE = RouteTable.from_config(
    Config.model_validate(
        {
            "upstreams": {"api": {"url": "http://127.0.0.1:9000"}},
            "routes": [
                {"name": "admin", "path": "/admin/{rest:path}", "scopes": ["admin"]},
                {"name": "public", "path": "/public/{rest:path}", "public": True},
                {"name": "customer-read", "path": "/v1/customers/{id}", "methods": ["GET"], "scopes": ["crm.read"]},
                {"name": "customer-write", "path": "/v1/customers/{id}", "methods": ["POST"], "scopes": ["crm.write"]},
                {"name": "customers", "path": "/v1/customers", "scopes": ["crm.read"]},
                {"name": "a-b", "path": "/a/b", "scopes": ["ab"]},
                {"name": "any-b", "path": "/{x}/b", "scopes": ["b"]},
                {"name": "root", "path": "/", "public": True},
            ],
        }
    )
)

# Raw paths are segments joined by '/'. Half the segments are route words, so paths often reach routes; the
# rest mix dots raw and encoded, separators raw and encoded, escapes of '%', path parameters, unicode raw and as
# UTF-8 escapes (including look-alikes that NFKC maps to ASCII), overlong UTF-8, NUL and stray '%'.
WORDS = ["admin", "public", "v1", "customers", "a", "b", "42"]
PIECES = [
    *WORDS, "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "%5C", "%25", "2e", "2f", "%3b", "%3B",
    ";", "/", "//", "\\", "%00", "%", "%41", "%20", "é", "%C3%A9", "%c3%a9", "€", "%E2%82%AC", "．", "%EF%BC%8E",
    "ａ", "%C0%AE", "%C3",
]  # fmt: skip

segments = st.one_of(st.sampled_from(WORDS), st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join))
raw_paths = st.lists(segments, max_size=6).map(lambda parts: ("/" + "/".join(parts)).encode())


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, step by step as the RFC writes it."""
    given_input, output = path, []
    while given_input:
        if given_input.startswith("../"):
            given_input = given_input[3:]
        elif given_input.startswith("./"):
            given_input = given_input[2:]
        elif given_input.startswith("/./"):
            given_input = "/" + given_input[3:]
        elif given_input == "/.":
            given_input = "/"
        elif given_input.startswith("/../") or given_input == "/..":
            given_input = "/" + given_input[4:]
            if output:
                output.pop()
        elif given_input in (".", ".."):
            given_input = ""
        else:
            end = given_input.find("/", 1)
            end = len(given_input) if end == -1 else end
            output.append(given_input[:end])
            given_input = given_input[end:]
    return "".join(output)


def merge_slashes(path: str) -> str:
    return re.sub("/+", "/", path)


def rfc3986(raw: str) -> str:
    """Decode once, remove dot segments, merge slashes (nginx's `merge_slashes on`)."""
    return merge_slashes(remove_dot_segments(unquote(raw, errors="strict")))


def dots_before_decoding(raw: str) -> str:
    """An upstream that resolves dot segments on the raw path and decodes afterwards."""
    return unquote(merge_slashes(remove_dot_segments(raw)), errors="strict")


def backslash_is_a_separator(raw: str) -> str:
    """Windows/IIS-style: '\\' (raw or decoded) separates segments too."""
    return rfc3986(unquote(raw, errors="strict").replace("\\", "/"))


def servlet(raw: str) -> str:
    """Servlet containers drop `;parameters` from each segment before routing."""
    return rfc3986(re.sub(";[^/]*", "", raw))


def decodes_twice(raw: str) -> str:
    """An upstream (or a framework behind it) that decodes once more after us."""
    return rfc3986(unquote(unquote(raw, errors="strict"), errors="strict"))


UPSTREAMS: list[Callable[[str], str]] = [
    rfc3986,
    dots_before_decoding,
    backslash_is_a_separator,
    servlet,
    decodes_twice,
]


def check_upstreams_agree(raw: bytes) -> Route | None:
    try:
        path = normalize_path(raw)
    except PathRejected:
        return None
    text = raw.decode("utf-8")  # accepted paths are valid UTF-8, raw or escaped
    for method in ("GET", "POST"):
        matched = TABLE.match(method, path)
        for upstream in UPSTREAMS:
            seen = upstream(text)
            assert seen == path, f"{upstream.__name__} reads {raw!r} as {seen!r}, we matched {path!r}"
            assert TABLE.match(method, seen) == matched
    return TABLE.match("GET", path)


@given(raw_paths)
@example(b"/public/%2e%2e/admin/x")
@example(b"/public/..%2fadmin/x")
@example(b"/public/.%2e/admin/x")
@example(b"/public/%C0%AE%C0%AE/admin/x")
@example(b"/public/%252e%252e/admin/x")
@example(b"/public/..\\admin/x")
@example(b"/public/x;/../../admin/x")
@example(b"/public//../admin/x")
@example(b"/%EF%BC%8E%EF%BC%8E/admin/x")
@example(b"/admin/caf%C3%A9")
def test_accepted_path_reaches_the_same_route_at_every_upstream(raw: bytes) -> None:
    check_upstreams_agree(raw)


@given(st.one_of(raw_paths, st.binary(max_size=40), st.binary(max_size=40).map(lambda b: b"/" + b)))
def test_normalize_path_raises_nothing_but_path_rejected(raw: bytes) -> None:
    try:
        assert isinstance(normalize_path(raw), str)
    except PathRejected as rejected:
        assert rejected.reason


@given(raw_paths)
def test_accepted_path_re_encoded_normalizes_to_itself(raw: bytes) -> None:
    try:
        path = normalize_path(raw)
    except PathRejected:
        return
    assert normalize_path(quote(path, safe="/").encode()) == path


@pytest.mark.parametrize("name", ["admin", "public", "any-b", "root"])
def test_the_generator_reaches_accepted_paths_behind_each_route(name: str) -> None:
    # Keeps the main property from passing vacuously: its strategy must produce accepted paths for every route.
    def reaches(raw: bytes) -> bool:
        matched = check_upstreams_agree(raw)
        return matched is not None and matched.name == name

    find(raw_paths, reaches, settings=settings(max_examples=5000, database=None))
