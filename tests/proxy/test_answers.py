"""The gateway's own answers: RFC 6750 challenges, JSON error bodies, RFC 9728 resource metadata."""

from __future__ import annotations

import json

import pytest

from gateway.proxy.answers import (
    error_response,
    metadata_resource_for,
    protected_resource_metadata,
    resource_metadata_url,
)

METADATA = "https://gw.example.com/.well-known/oauth-protected-resource"


def challenge_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    found = [value for name, value in headers if name == b"www-authenticate"]
    assert len(found) <= 1
    return found[0] if found else None


# ---- WWW-Authenticate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenge", "status", "expected"),
    [
        pytest.param(
            "no_token",
            401,
            b'Bearer scope="crm.read crm.write", resource_metadata="' + METADATA.encode() + b'"',
            id="no-token-has-no-error",
        ),
        pytest.param(
            "invalid_token",
            401,
            b'Bearer error="invalid_token", error_description="the token expired", scope="crm.read crm.write", '
            b'resource_metadata="' + METADATA.encode() + b'"',
            id="invalid-token",
        ),
        pytest.param(
            "invalid_request",
            400,
            b'Bearer error="invalid_request", error_description="the token expired", scope="crm.read crm.write", '
            b'resource_metadata="' + METADATA.encode() + b'"',
            id="invalid-request",
        ),
        pytest.param(
            "insufficient_scope",
            403,
            b'Bearer error="insufficient_scope", error_description="the token expired", scope="crm.read crm.write", '
            b'resource_metadata="' + METADATA.encode() + b'"',
            id="insufficient-scope",
        ),
    ],
)
def test_each_challenge_form_is_exact(challenge: str, status: int, expected: bytes) -> None:
    code, headers, _ = error_response(
        status=status,
        error=challenge,
        description="the token expired",
        request_id="req-1",
        challenge=challenge,
        resource_metadata=METADATA,
        scope=("crm.read", "crm.write"),
    )
    assert code == status
    assert challenge_of(headers) == expected


@pytest.mark.parametrize(
    ("challenge", "expected"),
    [
        ("no_token", b"Bearer"),
        ("invalid_token", b'Bearer error="invalid_token", error_description="expired"'),
    ],
)
def test_challenge_without_scope_or_metadata_omits_them(challenge: str, expected: bytes) -> None:
    _, headers, _ = error_response(
        status=401, error="invalid_token", description="expired", request_id="r", challenge=challenge
    )
    assert challenge_of(headers) == expected


def test_no_challenge_means_no_www_authenticate() -> None:
    _, headers, _ = error_response(status=403, error="no_matching_route", description="no rule", request_id="r")
    assert challenge_of(headers) is None


def test_unknown_challenge_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown challenge 'invalid_grant'"):
        error_response(status=401, error="x", description="x", request_id="r", challenge="invalid_grant")


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        pytest.param("plain text, with: punctuation!", "plain text, with: punctuation!", id="allowed-kept"),
        pytest.param('kid "abc" unknown', "kid 'abc' unknown", id="double-quote"),
        pytest.param("a\\b", "a/b", id="backslash"),
        pytest.param('x"\r\nSet-Cookie: a=1', "x'??Set-Cookie: a=1", id="crlf-injection"),
        pytest.param("tab\there", "tab?here", id="tab"),
        pytest.param("caf\u00e9 \u2603", "caf? ?", id="non-ascii"),
        pytest.param("lone \ud800", "lone ?", id="lone-surrogate"),
        pytest.param("\x7f", "?", id="del"),
    ],
)
def test_error_description_is_restricted_to_rfc6750_characters(description: str, expected: str) -> None:
    _, headers, body = error_response(
        status=401, error="invalid_token", description=description, request_id="r", challenge="invalid_token"
    )
    assert challenge_of(headers) == f'Bearer error="invalid_token", error_description="{expected}"'.encode()
    # The JSON body carries the description as given: JSON escaping already makes it safe.
    assert json.loads(body)["error_description"] == description


def test_scope_and_resource_metadata_cannot_break_the_quoted_string() -> None:
    _, headers, _ = error_response(
        status=403,
        error="insufficient_scope",
        description="d",
        request_id="r",
        challenge="insufficient_scope",
        resource_metadata='https://gw.example.com/"x',
        scope=('crm"read', "crm write"),
    )
    assert challenge_of(headers) == (
        b'Bearer error="insufficient_scope", error_description="d", scope="crm\'read crm?write", '
        b'resource_metadata="https://gw.example.com/\'x"'
    )


# ---- body and headers ---------------------------------------------------------------------------------------


def test_body_is_json_with_error_description_and_request_id() -> None:
    code, headers, body = error_response(
        status=403, error="no_matching_route", description="no rule matches GET /x", request_id="req-9"
    )
    assert code == 403
    assert json.loads(body) == {
        "error": "no_matching_route",
        "error_description": "no rule matches GET /x",
        "request_id": "req-9",
    }
    assert headers == [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", b"req-9"),
    ]


def test_extra_headers_come_last() -> None:
    _, headers, _ = error_response(
        status=429,
        error="rate_limited",
        description="slow down",
        request_id="r",
        challenge="invalid_token",
        extra_headers=[(b"retry-after", b"30")],
    )
    assert [name for name, _ in headers][-2:] == [b"www-authenticate", b"retry-after"]


def test_body_with_lone_surrogate_is_still_json() -> None:
    _, _, body = error_response(status=401, error="invalid_token", description="kid \ud800", request_id="r")
    assert json.loads(body)["error_description"] == "kid \ud800"


# ---- RFC 9728 -----------------------------------------------------------------------------------------------


def test_protected_resource_metadata_document() -> None:
    assert protected_resource_metadata(
        resource="https://gw.example.com",
        authorization_servers=("https://auth.example.com",),
        scopes_supported=("crm.read", "crm.write"),
    ) == {
        "resource": "https://gw.example.com",
        "authorization_servers": ["https://auth.example.com"],
        "scopes_supported": ["crm.read", "crm.write"],
        "bearer_methods_supported": ["header"],
    }


def test_protected_resource_metadata_with_resource_name() -> None:
    document = protected_resource_metadata(
        resource="r", authorization_servers=[], scopes_supported=[], resource_name="CRM API"
    )
    assert document["resource_name"] == "CRM API"


@pytest.mark.parametrize(
    ("public_url", "request_path", "resource"),
    [
        # root public URL
        ("https://gw.example.com", "/.well-known/oauth-protected-resource", "https://gw.example.com"),
        ("https://gw.example.com", "/.well-known/oauth-protected-resource/mcp", "https://gw.example.com/mcp"),
        ("https://gw.example.com", "/.well-known/oauth-protected-resource/v1/mcp", "https://gw.example.com/v1/mcp"),
        ("https://gw.example.com", "/.well-known/oauth-protected-resource/mcp/", "https://gw.example.com/mcp/"),
        ("https://gw.example.com/", "/.well-known/oauth-protected-resource", "https://gw.example.com/"),
        ("http://127.0.0.1:8080", "/.well-known/oauth-protected-resource/mcp", "http://127.0.0.1:8080/mcp"),
        ("https://gw.example.com", "/.well-known/oauth-protected-resource/", None),
        ("https://gw.example.com", "/.well-known/oauth-protected-resourcemcp", None),
        ("https://gw.example.com", "/.well-known/oauth-authorization-server", None),
        ("https://gw.example.com", "/mcp", None),
        # public URL with a path: the well-known part goes between host and path (RFC 9728 §3.1)
        ("https://gw.example.com/api", "/.well-known/oauth-protected-resource/api", "https://gw.example.com/api"),
        ("https://gw.example.com/api/", "/.well-known/oauth-protected-resource/api/", "https://gw.example.com/api/"),
        (
            "https://gw.example.com/api/",
            "/.well-known/oauth-protected-resource/api/mcp",
            "https://gw.example.com/api/mcp",
        ),
        (
            "https://gw.example.com/api",
            "/.well-known/oauth-protected-resource/api/mcp",
            "https://gw.example.com/api/mcp",
        ),
        ("https://gw.example.com/api", "/.well-known/oauth-protected-resource", None),
        ("https://gw.example.com/api", "/.well-known/oauth-protected-resource/mcp", None),
        ("https://gw.example.com/api", "/.well-known/oauth-protected-resource/apix", None),
        ("https://gw.example.com/api", "/api/.well-known/oauth-protected-resource", None),
    ],
)
def test_metadata_resource_for_root_and_path_forms(public_url: str, request_path: str, resource: str | None) -> None:
    assert metadata_resource_for(public_url, request_path) == resource


@pytest.mark.parametrize(
    ("public_url", "url"),
    [
        ("https://gw.example.com", "https://gw.example.com/.well-known/oauth-protected-resource"),
        ("https://gw.example.com/", "https://gw.example.com/.well-known/oauth-protected-resource"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/.well-known/oauth-protected-resource"),
        ("https://gw.example.com/api", "https://gw.example.com/.well-known/oauth-protected-resource/api"),
        ("https://gw.example.com/api/", "https://gw.example.com/.well-known/oauth-protected-resource/api/"),
    ],
)
def test_resource_metadata_url_is_the_root_form(public_url: str, url: str) -> None:
    assert resource_metadata_url(public_url) == url


@pytest.mark.parametrize(
    "public_url",
    ["https://gw.example.com", "https://gw.example.com/", "https://gw.example.com/api", "https://gw.example.com/api/"],
)
def test_advertised_metadata_url_maps_back_to_the_public_url(public_url: str) -> None:
    path = resource_metadata_url(public_url).split("://", 1)[1].partition("/")[2]
    assert metadata_resource_for(public_url, "/" + path) == public_url
