"""TollboothAuth against scripted servers, for what the real gateway will not do on demand: a token service that
hangs or fails, and a hostile proxy steering discovery. The real gateway's tests are tests/e2e/test_client_sdk.py."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest
from fake_servers import Answer, FakeServer, Seen
from support import wait_until

from gateway.client import DiscoveryError, TokenRequestError, TollboothAuth
from gateway.client.credentials import ClientSecret
from gateway.client.exchange import Call
from gateway.client.token_requests import TokenExchange
from gateway.wire import ACCESS_TOKEN_TYPE

SECRET = "the-real-client-secret"


class TokenService:
    """A proxy and token service on one origin; `/token` answers from `script`, in order, then the last entry."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.script: list[Answer | None] = []  # None: wait for `release`, then issue "late"
        self.server = FakeServer(
            {
                "/api": self._api,
                "/.well-known/oauth-protected-resource": lambda _: Answer(
                    body={"resource": self.url, "authorization_servers": [self.url]}
                ),
                "/.well-known/oauth-authorization-server": lambda _: Answer(
                    body={
                        "issuer": self.url,
                        "token_endpoint": self.url + "/token",
                        "revocation_endpoint": self.url + "/revoke",
                    }
                ),
                "/token": self._token,
                "/revoke": lambda _: self.revoke_answer,
            }
        )
        self.url = self.server.url
        self.revoke_answer = Answer(200, b"")

    def _api(self, seen: Seen) -> Answer:
        if "authorization" not in seen.headers:
            metadata = f"{self.url}/.well-known/oauth-protected-resource"
            return Answer(
                401, {"error": "unauthorized"}, {"www-authenticate": f'Bearer resource_metadata="{metadata}"'}
            )
        return Answer(200, {"authorization": seen.headers["authorization"]})

    def _token(self, seen: Seen) -> Answer:
        calls = len(self.server.requests_to("/token"))
        answer = self.script[min(calls, len(self.script)) - 1]
        if answer is None:
            self.release.wait(20)
            return issued("late")
        return answer


def issued(name: str, expires_in: float = 300) -> Answer:
    return Answer(body={"access_token": name, "token_type": "Bearer", "expires_in": expires_in})


@pytest.fixture
def service() -> Iterator[TokenService]:
    fake = TokenService()
    yield fake
    fake.release.set()
    fake.server.stop()


def auth_for(service: TokenService, **kwargs: object) -> TollboothAuth:
    return TollboothAuth("bot", proxy_url=service.url, secret=SECRET, timeout=5, **kwargs)


def sent_token(service: TokenService, auth: TollboothAuth) -> str:
    return httpx2.get(service.url + "/api", auth=auth).json()["authorization"].removeprefix("Bearer ")


def test_an_early_refresh_never_holds_up_a_request(service: TokenService):
    service.script = [issued("first", expires_in=6), None]  # the refresh hangs until released
    auth = auth_for(service)
    assert sent_token(service, auth) == "first"
    wait_until(lambda: sent_token(service, auth) and len(service.server.requests_to("/token")) == 2, what="a refresh")
    started = time.perf_counter()
    assert sent_token(service, auth) == "first"  # the current token is still good: it is used meanwhile
    assert time.perf_counter() - started < 1.0
    service.release.set()
    wait_until(lambda: sent_token(service, auth) == "late", what="the refreshed token")


def test_a_failed_early_refresh_keeps_the_current_token(service: TokenService):
    service.script = [issued("first", expires_in=6), Answer(503, {"error": "temporarily_unavailable"})]
    auth = auth_for(service)
    assert sent_token(service, auth) == "first"
    wait_until(lambda: sent_token(service, auth) and len(service.server.requests_to("/token")) >= 2, what="a refresh")
    assert sent_token(service, auth) == "first"


def test_threads_and_tasks_of_several_event_loops_share_one_fetch(service: TokenService):
    service.script = [None]
    auth = auth_for(service)
    results: list[str] = []

    def in_a_thread() -> None:
        results.append(auth.get_token())

    def in_an_event_loop() -> None:
        results.append(asyncio.run(auth.aget_token()))

    workers = [threading.Thread(target=target) for target in (in_a_thread, in_an_event_loop, in_an_event_loop)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(service.server.requests_to("/token")) == 1, what="the one token request")
    service.release.set()
    for worker in workers:
        worker.join(10)
    assert results == ["late"] * 3 and len(service.server.requests_to("/token")) == 1


def test_the_auth_outlives_the_event_loop_it_first_ran_on(service: TokenService):
    service.script = [issued("first", expires_in=300)]
    auth = auth_for(service)

    async def call() -> int:
        async with httpx2.AsyncClient(auth=auth) as http:
            return (await http.get(service.url + "/api")).status_code

    assert asyncio.run(call()) == 200
    assert asyncio.run(auth.arevoke()) is None  # a second loop reaches the token service too
    assert asyncio.run(call()) == 200


def test_a_failed_revoke_on_exit_does_not_hide_the_blocks_own_error(service: TokenService):
    service.script = [issued("first")]
    service.revoke_answer = Answer(500, {"error": "server_error"})
    with pytest.raises(ValueError, match="the agent's own failure"), auth_for(service) as auth:
        auth.get_token()
        raise ValueError("the agent's own failure")
    with pytest.raises(TokenRequestError), auth_for(service) as auth:
        auth.get_token()


# --- a hostile proxy ---------------------------------------------------------------------------------------------


def test_metadata_on_another_origin_is_refused_before_any_credential_is_sent():
    attacker = FakeServer({"/token": lambda _: issued("stolen")})
    attacker.routes["/.well-known/oauth-protected-resource"] = lambda _: Answer(
        body={"resource": proxy.url, "authorization_servers": [attacker.url]}
    )
    proxy = FakeServer(
        {
            "/": lambda _: Answer(
                401,
                {},
                {"www-authenticate": f'Bearer resource_metadata="{attacker.url}/.well-known/oauth-protected-resource"'},
            )
        }
    )
    try:
        auth = TollboothAuth("bot", proxy_url=proxy.url + "/", secret=SECRET)
        with pytest.raises(DiscoveryError, match="on another origin"):
            auth.get_token()
        assert attacker.seen == []
    finally:
        attacker.stop()
        proxy.stop()


def test_a_token_service_on_another_host_needs_to_be_named(service: TokenService):
    # The proxy (127.0.0.1) names a token service on another host name (localhost): only a pinned issuer_url is used.
    other_host = service.url.replace("127.0.0.1", "localhost")
    service.server.routes["/.well-known/oauth-protected-resource"] = lambda _: Answer(
        body={"resource": service.url, "authorization_servers": [other_host]}
    )
    service.server.routes["/.well-known/oauth-authorization-server"] = lambda _: Answer(
        body={"issuer": other_host, "token_endpoint": other_host + "/token"}
    )
    service.script = [issued("first")]
    with pytest.raises(DiscoveryError, match=f"pass issuer_url='{other_host}'"):
        auth_for(service).get_token()
    assert service.server.requests_to("/token") == []
    assert auth_for(service, issuer_url=other_host).get_token() == "first"
    basic = service.server.requests_to("/token")[0].headers["authorization"]
    assert base64.b64decode(basic.removeprefix("Basic ")).decode().endswith(SECRET)


def test_secrets_stay_out_of_reprs():
    assert SECRET not in repr(ClientSecret("bot", SECRET))
    assert "user-token" not in repr(TokenExchange("user-token", ACCESS_TOKEN_TYPE, ()))
    call = Call("POST", "http://x/token", {"authorization": "Basic " + SECRET}, {"client_secret": SECRET})
    assert SECRET not in repr(call) and json.dumps(str(call)).count(SECRET) == 0
