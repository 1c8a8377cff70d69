"""What the SDK asks for and keeps: the refresh schedule, token responses (RFC 6749 §5.1) and grant forms."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.client.errors import ProtocolError
from gateway.client.token_requests import ClientCredentials, TokenExchange, refresh_form, schedule, token_from
from gateway.wire import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE

URL = "http://127.0.0.1:8081/oauth/token"


@given(expires_in=st.floats(min_value=0.01, max_value=86400), jitter=st.floats(min_value=0, max_value=0.999))
def test_refresh_comes_before_the_token_stops_being_sent_which_comes_before_expiry(expires_in: float, jitter: float):
    expires_at, refresh_at, stop_at = schedule(1000.0, expires_in, jitter)
    assert 1000.0 <= refresh_at <= stop_at < expires_at <= 1000.0 + expires_in


@pytest.mark.parametrize(("expires_in", "earliest", "latest"), [(300, 30 - 0.2, 60), (3600, 60, 120), (86400, 60, 120)])
def test_refresh_window_is_a_share_of_the_lifetime_capped_at_two_minutes(
    expires_in: float, earliest: float, latest: float
):
    ahead = [expires_in + 1000.0 - schedule(1000.0, expires_in, jitter)[1] for jitter in (0.0, 0.5, 0.999)]
    assert all(earliest <= a - 1 <= latest for a in ahead), ahead  # a second is kept for whole-second `exp`
    assert len(set(ahead)) == 3, "jitter must move the refresh point"


def test_short_tokens_still_leave_time_to_refresh():
    expires_at, refresh_at, stop_at = schedule(0.0, 4, 0.999)
    assert stop_at - refresh_at > 0.25 and expires_at - stop_at > 0.25


def body(**fields: Any) -> dict[str, Any]:
    return {"access_token": "ACCESS-VALUE", "token_type": "Bearer", "expires_in": 300, **fields}


def test_token_response_is_kept_with_its_scopes_and_refresh_token():
    token = token_from(body(scope="a b", refresh_token="REFRESH-VALUE"), ("a",), 0.0, 0.0, URL)
    assert (token.access_token, token.scopes, token.refresh_token) == ("ACCESS-VALUE", ("a", "b"), "REFRESH-VALUE")
    assert token.usable(0.0) and not token.due(0.0) and token.due(token.refresh_at)
    assert "VALUE" not in repr(token)


def test_omitted_scope_means_what_was_asked_for():
    assert token_from(body(), ("crm.read",), 0.0, 0.0, URL).scopes == ("crm.read",)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"access_token": None}, "without an access_token"),
        ({"token_type": "DPoP"}, "'DPoP' token"),
        ({"expires_in": None}, "no usable expires_in"),
        ({"expires_in": "soon"}, "no usable expires_in"),
        ({"expires_in": True}, "no usable expires_in"),
        ({"expires_in": 0}, "no usable expires_in"),
        ({"expires_in": float("nan")}, "no usable expires_in"),
        ({"expires_in": float("inf")}, "no usable expires_in"),
    ],
)
def test_malformed_token_responses_are_protocol_errors(fields: dict[str, Any], message: str):
    with pytest.raises(ProtocolError, match=message):
        token_from({k: v for k, v in body(**fields).items() if v is not None}, (), 0.0, 0.0, URL)


def test_numeric_string_expires_in_is_tolerated():
    assert token_from(body(expires_in="300"), (), 0.0, 0.0, URL).expires_at == 299.0


@pytest.mark.parametrize("expires_in", [0.5, 1, 2])
def test_a_token_is_never_thought_to_live_longer_than_the_server_said(expires_in: float):
    expires_at, _, stop_at = schedule(0.0, expires_in, 0.0)
    assert stop_at < expires_at <= expires_in


def test_token_type_is_case_insensitive():
    assert token_from(body(token_type="bearer"), (), 0.0, 0.0, URL).access_token == "ACCESS-VALUE"


def test_grant_forms():
    assert ClientCredentials(("a", "b")).form("http://proxy") == {
        "grant_type": "client_credentials",
        "scope": "a b",
        "resource": "http://proxy",
    }
    assert ClientCredentials(()).form(None) == {"grant_type": "client_credentials"}
    assert TokenExchange("st", ACCESS_TOKEN_TYPE, ()).form("http://proxy") == {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": "st",
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "resource": "http://proxy",
    }
    token = token_from(body(refresh_token="rt"), (), 0.0, 0.0, URL)
    assert refresh_form(token, ("a",)) == {"grant_type": "refresh_token", "refresh_token": "rt", "scope": "a"}
