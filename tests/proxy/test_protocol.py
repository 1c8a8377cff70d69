"""The HTTP layer's pure decisions: which request heads llhttp accepted are still refused, and with what."""

from __future__ import annotations

import json

import pytest

from gateway.proxy.protocol import authority_as_host, framing_problem, parse_failure


@pytest.mark.parametrize(
    ("method", "version", "te", "upgrade", "expected"),
    [
        (b"GET", "1.1", None, False, None),
        (b"POST", "1.1", b"chunked", False, None),
        (b"POST", "1.1", b"Chunked ", False, None),
        (b"POST", "1.0", b"chunked", False, (400, "malformed_request")),
        (b"POST", "1.1", b"gzip, chunked", False, (400, "malformed_request")),
        (b"POST", "1.1", b",chunked", False, (400, "malformed_request")),
        (b"POST", "1.1", b"\0", False, (400, "malformed_request")),  # two Transfer-Encoding fields
        (b"GET", "2.0", None, False, (505, "http_version_not_supported")),
        (b"GET", "0.9", None, False, (505, "http_version_not_supported")),
        (b"GET", "1.1", None, True, (403, "upgrade_not_supported")),
        (b"GET", "1.0", None, True, (403, "upgrade_not_supported")),
        (b"CONNECT", "1.1", None, False, (400, "connect_not_supported")),
    ],
)
def test_framing_problem(method: bytes, version: str, te: bytes | None, upgrade: bool, expected) -> None:
    problem = framing_problem(method, version, te, upgrade)
    assert (None if problem is None else (problem.status, problem.reason)) == expected


def test_a_version_llhttp_cannot_parse_is_505_and_anything_else_400_naming_the_parser() -> None:
    assert parse_failure("Invalid HTTP version").status == 505
    assert parse_failure("Pause on PRI/Upgrade").status == 505
    other = parse_failure("Invalid header value char")
    assert (other.status, other.reason) == (400, "malformed_request")
    assert other.description == "malformed request: Invalid header value char"


def test_a_refusal_is_json_and_closes_the_connection() -> None:
    raw = parse_failure("Invalid header value char").response()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close" in head and b"content-length: %d" % len(body) in head
    assert json.loads(body)["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("target", "host", "expected"),
    [
        (b"http://evil.example/a?b", [b"gw.test"], [b"evil.example"]),
        (b"https://EVIL.example:8443", [b"gw.test"], [b"EVIL.example:8443"]),
        (b"http://user@evil.example/", [b"gw.test"], [b"user@evil.example"]),  # malformed: refused by hosts.py
        (b"http://evil.example#x", [b"gw.test"], [b"evil.example"]),
        (b"http://evil.example/", [], []),  # no Host: left for the proxy's own refusal
        (b"http://evil.example/", [b"a", b"b"], [b"a", b"b"]),
        (b"*", [b"gw.test"], [b"gw.test"]),
        (b"evil.example:443", [b"gw.test"], [b"gw.test"]),
    ],
)
def test_an_absolute_form_authority_replaces_host(target: bytes, host: list[bytes], expected: list[bytes]) -> None:
    headers = [(b"accept", b"*/*")] + [(b"host", value) for value in host]
    authority_as_host(target, headers)
    assert [value for name, value in headers if name == b"host"] == expected
    assert headers[0] == (b"accept", b"*/*")
