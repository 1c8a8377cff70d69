"""Client secrets: Basic credential readings and the bounded, remembering argon2id checker."""

from __future__ import annotations

import asyncio
import base64

import pytest
from argon2 import PasswordHasher

from gateway.issuer.clients import SecretChecker, basic_credentials
from gateway.issuer.oauth import OAuthError

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # the format hash-secret writes, quickly


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_credentials_are_read_form_decoded_first_then_raw() -> None:
    assert basic_credentials(basic("bot:a%2Bb+c")) == [("bot", "a+b c"), ("bot", "a%2Bb+c")]


def test_basic_credentials_split_at_the_first_colon() -> None:
    assert basic_credentials(basic("bot:x:y")) == [("bot", "x:y")]


@pytest.mark.parametrize("header", ["Bearer abc", basic("no-colon"), basic(":secret"), "Basic !!!"])
def test_bad_basic_credentials_are_invalid_client_with_a_challenge(header: str) -> None:
    with pytest.raises(OAuthError) as caught:
        basic_credentials(header)
    assert caught.value.error == "invalid_client" and caught.value.status == 401
    assert caught.value.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.anyio
async def test_secret_checker_matches_only_the_right_secret() -> None:
    checker = SecretChecker()
    stored = CHEAP.hash("right")
    try:
        assert await checker.matches(stored, "right")
        assert await checker.matches(stored, "right")  # remembered
        assert not await checker.matches(stored, "wrong")
        assert not await checker.matches(None, "right")  # an unknown client never matches
    finally:
        checker.close()


@pytest.mark.anyio
async def test_secret_checker_refuses_at_once_when_too_many_checks_wait() -> None:
    checker = SecretChecker(workers=1, max_waiting=0)
    stored = CHEAP.hash("right")
    try:
        first = asyncio.ensure_future(checker.matches(stored, "wrong"))
        await asyncio.sleep(0)  # let it take the only slot
        with pytest.raises(OAuthError) as caught:
            await checker.matches(stored, "also wrong")
        assert (caught.value.status, caught.value.error) == (503, "temporarily_unavailable")
        assert caught.value.headers["retry-after"] == "1"
        assert not await first
    finally:
        checker.close()


@pytest.mark.anyio
async def test_a_remembered_secret_needs_no_slot() -> None:
    checker = SecretChecker(workers=1, max_waiting=0)
    stored = CHEAP.hash("right")
    try:
        assert await checker.matches(stored, "right")
        busy = asyncio.ensure_future(checker.matches(stored, "wrong"))
        await asyncio.sleep(0)
        assert await checker.matches(stored, "right")
        assert not await busy
    finally:
        checker.close()
