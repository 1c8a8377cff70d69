"""The token service's form parsing and error shape (RFC 6749 §3.2, §5.2)."""

from __future__ import annotations

import pytest

from gateway.issuer.oauth import OAuthError, error_response, parse_form

FORM = "application/x-www-form-urlencoded"


def test_form_values_are_decoded() -> None:
    form = parse_form(FORM, b"grant_type=client_credentials&scope=a+b&x=%2B%25")
    assert form.get("grant_type") == "client_credentials"
    assert form.get("scope") == "a b"
    assert form.get("x") == "+%"


def test_charset_parameter_is_allowed() -> None:
    assert parse_form(FORM + "; charset=UTF-8", b"a=1").get("a") == "1"


def test_empty_values_count_as_absent() -> None:
    form = parse_form(FORM, b"scope=&a=1")
    assert form.get("scope") is None and "scope" not in form


@pytest.mark.parametrize("content_type", [None, "application/json", "multipart/form-data; boundary=x", "text/plain"])
def test_other_media_types_are_invalid_request(content_type: str | None) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_form(content_type, b"a=1")
    assert (caught.value.error, caught.value.reason) == ("invalid_request", "wrong_content_type")


def test_repeated_parameter_is_invalid_request() -> None:
    with pytest.raises(OAuthError) as caught:
        parse_form(FORM, b"grant_type=a&grant_type=b")
    assert caught.value.error == "invalid_request"
    assert "grant_type" in caught.value.description


def test_resource_and_audience_may_repeat() -> None:
    form = parse_form(FORM, b"resource=a&resource=b&audience=c&audience=d")
    assert form.all("resource") == ["a", "b"] and form.all("audience") == ["c", "d"]


@pytest.mark.parametrize("body", [b"a=%ZZ", b"a=%C3%28", "a=\u00e9".encode(), b"a=1&&&b"])
def test_bad_encoding_is_invalid_request(body: bytes) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_form(FORM, body)
    assert caught.value.error == "invalid_request"


def test_oversized_body_is_invalid_request() -> None:
    with pytest.raises(OAuthError):
        parse_form(FORM, b"a=" + b"x" * 70_000)


def test_missing_required_parameter_names_it() -> None:
    with pytest.raises(OAuthError) as caught:
        parse_form(FORM, b"a=1").require("grant_type")
    assert caught.value.description == "the grant_type parameter is missing"


def test_error_response_is_json_and_not_cached() -> None:
    response = error_response(OAuthError("invalid_client", 'bad "quote" \\ and \x01', status=401))
    assert response.status_code == 401
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    assert response.body == b'{"error":"invalid_client","error_description":"bad \'quote\' / and ?"}'
