"""Discovery's pure parts: the RFC 9110 challenge parser, well-known URLs (RFC 8414 §3.1, RFC 9728 §3.1) and the
resource check (RFC 9728 §3.3)."""

from __future__ import annotations

import time

import httpx2
import pytest

from gateway.client.discovery import (
    Challenge,
    bearer_challenge,
    parse_challenges,
    resource_covers,
    secure_url,
    well_known,
)
from gateway.client.errors import DiscoveryError


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer", [Challenge("bearer", {})]),
        ('Bearer realm="api"', [Challenge("bearer", {"realm": "api"})]),
        (
            'Bearer error="invalid_token", error_description="expired", resource_metadata="http://p/.well-known/x"',
            [
                Challenge(
                    "bearer",
                    {
                        "error": "invalid_token",
                        "error_description": "expired",
                        "resource_metadata": "http://p/.well-known/x",
                    },
                )
            ],
        ),
        # Scheme and parameter names are case-insensitive (RFC 9110 §11.1, §11.2); values are not.
        ('BEARER Error="Invalid_Token"', [Challenge("bearer", {"error": "Invalid_Token"})]),
        # A comma inside a quoted string is not a separator; an escaped quote is unescaped.
        (
            'Bearer error_description="a, b \\"c\\"", scope="x y"',
            [Challenge("bearer", {"error_description": 'a, b "c"', "scope": "x y"})],
        ),
        # Several challenges in one header, one with a token68.
        (
            'Basic realm="r", Bearer scope="s"',
            [Challenge("basic", {"realm": "r"}), Challenge("bearer", {"scope": "s"})],
        ),
        ("Negotiate YIIabc==, Bearer", [Challenge("negotiate", {}), Challenge("bearer", {})]),
        # Empty list elements are ignored (RFC 9110 §5.6.1).
        ('Bearer a="1", , b="2",', [Challenge("bearer", {"a": "1", "b": "2"})]),
        # Unquoted token values and bad whitespace around `=` (BWS).
        ("Bearer error = invalid_token", [Challenge("bearer", {"error": "invalid_token"})]),
        # A repeated parameter keeps the first value (§11.2 makes repetition an error).
        ('Bearer scope="a", scope="b"', [Challenge("bearer", {"scope": "a"})]),
        # Junk ends the parse instead of being guessed at.
        ('Bearer scope="a" "junk"', [Challenge("bearer", {"scope": "a"})]),
        ("", []),
    ],
)
def test_challenges_parse_per_rfc9110(header: str, expected: list[Challenge]):
    assert parse_challenges(header) == expected


def test_bearer_challenge_is_found_among_several_headers():
    headers = httpx2.Headers(
        [("www-authenticate", 'Basic realm="x"'), ("www-authenticate", 'Bearer error="invalid_token"')]
    )
    assert bearer_challenge(headers) == {"error": "invalid_token"}
    assert bearer_challenge(httpx2.Headers({"www-authenticate": 'Basic realm="x"'})) is None


@pytest.mark.parametrize(
    "header",
    [
        'Bearer x="' + "\\" * 20000,
        "Bearer " + "a=b, " * 5000 + '"',
        "Bearer " + " " * 20000 + "x",
        "Bearer " + "a" * 20000 + "=" * 20000,
    ],
)
def test_challenge_parser_stays_linear_on_hostile_headers(header: str):
    started = time.perf_counter()
    parse_challenges(header)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("url", "suffix", "expected"),
    [
        (
            "http://127.0.0.1:8081",
            "/.well-known/oauth-authorization-server",
            "http://127.0.0.1:8081/.well-known/oauth-authorization-server",
        ),
        (
            "https://as.example/tenant1/",
            "/.well-known/oauth-authorization-server",
            "https://as.example/.well-known/oauth-authorization-server/tenant1",
        ),
        (
            "HTTPS://Proxy.Example:443/mcp",
            "/.well-known/oauth-protected-resource",
            "https://proxy.example/.well-known/oauth-protected-resource/mcp",
        ),
    ],
)
def test_well_known_suffix_goes_between_host_and_path(url: str, suffix: str, expected: str):
    assert well_known(url, suffix) == expected


@pytest.mark.parametrize(
    ("resource", "url", "covered"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", True),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/mcp", True),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/v1/x", True),
        ("https://api.example:443/v1", "https://API.example/v1/customers", True),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v10", False),  # whole segments only
        ("http://127.0.0.1:8080", "http://127.0.0.1:8081", False),
        ("http://127.0.0.1:8080", "https://127.0.0.1:8080", False),
        ("http://evil.example", "http://127.0.0.1:8080", False),
        ("http://127.0.0.1:8080", "ftp://127.0.0.1:8080/x", False),
    ],
)
def test_resource_covers_only_its_own_origin_and_paths(resource: str, url: str, covered: bool):
    assert resource_covers(resource, url) is covered


@pytest.mark.parametrize("url", ["ftp://x/", "not a url", "http:///path"])
def test_non_http_urls_are_refused(url: str):
    with pytest.raises(DiscoveryError):
        well_known(url, "/.well-known/oauth-protected-resource")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example", True),
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:8080", True),
        ("http://localhost:8080", True),
        ("http://api.example", False),  # plain http over a network: anyone in the middle rewrites the metadata
        ("http://10.0.0.5:8080", False),
    ],
)
def test_discovery_uses_plain_http_only_on_loopback(url: str, allowed: bool):
    if allowed:
        assert secure_url(url) == url
    else:
        with pytest.raises(DiscoveryError, match="use https"):
            secure_url(url)
