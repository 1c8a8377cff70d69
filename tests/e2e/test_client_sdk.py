"""The agent SDK (`gateway.client.TollboothAuth`) against a real gateway: discovery from the proxy URL alone,
one token fetch under concurrency, refresh ahead of expiry, the retry after a revocation, delegation with refresh
tokens, 403 insufficient_scope, revoke on exit, and httpx 0.28 clients."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jwt
import pytest
import yaml
from support import Gateway, Upstream, start_gateway, start_upstream, wait_until
from token_support import SecretAgent, TestIdP, claims_of, refused_at_proxy, user_token

from gateway.client import InsufficientScope, TokenRequestError, TollboothAuth

SECRET = SecretAgent("sdk-secret", "s3cret:with%odd+chars")
KEYED = "sdk-keyed"
SHORT = SecretAgent("sdk-short", "short-lived-secret")
# Agents of their own, so that counting their token.issued events counts only one test's fetches.
COUNTED_ASYNC = SecretAgent("sdk-counted-async", "counted-async-secret")
COUNTED_SYNC = SecretAgent("sdk-counted-sync", "counted-sync-secret")
ROUTE = "/v1/customers/7"


@pytest.fixture(scope="module")
def agent_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A key pair made the way the docs say: `tollbooth keys agent NAME`; its printed block is the config."""
    key_file = tmp_path_factory.mktemp("agent-key") / "sdk-keyed.pem"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "agent", KEYED, "--out", str(key_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    block = yaml.safe_load(done.stdout)
    assert key_file.stat().st_mode & 0o077 == 0, "the private key must be readable by its owner only"
    assert "PRIVATE" not in done.stdout and "PRIVATE" not in done.stderr
    return key_file, block["agents"][KEYED]


@pytest.fixture(scope="module")
def gw(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory, agent_key: tuple[Path, dict[str, Any]], idp: TestIdP
) -> Iterator[Gateway]:
    _, keyed_config = agent_key
    gateway = start_gateway(
        tmp_path_factory.mktemp("sdk"),
        upstream.url,
        extra={
            "issuer": {"access_token_ttl": "5m"},
            "agents": {
                SECRET.client_id: SECRET.config(scopes=["crm.read", "crm.write"], may_act_for=["*"]),
                KEYED: {**keyed_config, "scopes": ["crm.read"]},
                COUNTED_ASYNC.client_id: COUNTED_ASYNC.config(scopes=["crm.read"]),
                COUNTED_SYNC.client_id: COUNTED_SYNC.config(scopes=["crm.read"]),
                SHORT.client_id: SHORT.config(
                    scopes=["crm.read"], max_token_ttl="4s", may_act_for=["*"], refresh_tokens=True
                ),
            },
            "trusted_issuers": [idp.trusted_issuer()],
        },
    )
    yield gateway
    gateway.stop()


def secret_auth(gw: Gateway, agent: SecretAgent = SECRET, **kwargs: Any) -> TollboothAuth:
    return TollboothAuth(agent.client_id, proxy_url=gw.proxy_url, secret=agent.secret, **kwargs)


def issued(gw: Gateway, agent: str, event: str = "token.issued") -> list[dict[str, str]]:
    return [e for e in gw.audit_events() if e.get("event") == event and e.get("agent") == agent]


def accesses(gw: Gateway, jti: str) -> list[dict[str, str]]:
    return [e for e in gw.audit_events() if e.get("event") == "access" and e.get("jti") == jti]


# --- discovery ------------------------------------------------------------------------------------------------


def test_private_key_jwt_agent_needs_only_the_proxy_url(
    gw: Gateway, upstream: Upstream, agent_key: tuple[Path, dict[str, Any]]
):
    key_file, _ = agent_key
    with httpx2.Client(auth=TollboothAuth(KEYED, proxy_url=gw.proxy_url, private_key=key_file)) as http:
        response = http.get(gw.proxy_url + ROUTE)
    assert response.status_code == 200, response.text
    seen = upstream.last()
    assert seen.header("x-tollbooth-agent") == KEYED
    assert seen.header("authorization") == "Bearer upstream-secret"  # the upstream's credential, not the agent's
    # Without `scopes` the token carries the agent's default scopes.
    assert seen.header("x-tollbooth-scopes") == "crm.read"


def test_secret_agent_discovers_the_issuer_from_the_proxy_challenge(gw: Gateway):
    auth = secret_auth(gw, scopes=["crm.read"])
    response = httpx2.get(gw.proxy_url + ROUTE, auth=auth)
    assert response.status_code == 200, response.text
    token = claims_of(auth.get_token())
    assert token["iss"] == gw.issuer_url and token["aud"] == gw.proxy_url and token["scope"] == "crm.read"


def test_issuer_url_alone_also_works(gw: Gateway):
    auth = TollboothAuth(SECRET.client_id, issuer_url=gw.issuer_url, secret=SECRET.secret, scopes=["crm.read"])
    assert httpx2.get(gw.proxy_url + ROUTE, auth=auth).status_code == 200


# --- one token, many requests ---------------------------------------------------------------------------------


def test_one_token_fetch_for_100_concurrent_async_requests(gw: Gateway):
    auth = secret_auth(gw, COUNTED_ASYNC)

    async def main() -> list[int]:
        async with httpx2.AsyncClient(auth=auth, limits=httpx2.Limits(max_connections=100)) as http:
            responses = await asyncio.gather(*(http.get(gw.proxy_url + ROUTE) for _ in range(100)))
        await auth.aclose()
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 100
    jti = claims_of(auth.get_token())["jti"]
    wait_until(lambda: len(accesses(gw, jti)) == 100, what="100 access events")
    assert len(issued(gw, COUNTED_ASYNC.client_id)) == 1


def test_one_token_fetch_for_threads_sharing_a_sync_client(gw: Gateway):
    auth = secret_auth(gw, COUNTED_SYNC)
    statuses: list[int] = []
    with httpx2.Client(auth=auth, limits=httpx2.Limits(max_connections=20)) as http:
        start = threading.Barrier(20)

        def call() -> None:
            start.wait()
            statuses.append(http.get(gw.proxy_url + ROUTE).status_code)

        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 20
    jti = claims_of(auth.get_token())["jti"]
    wait_until(lambda: len(accesses(gw, jti)) == 20, what="20 access events")
    assert len(issued(gw, COUNTED_SYNC.client_id)) == 1


# --- refresh and retry ----------------------------------------------------------------------------------------


def test_token_is_replaced_before_it_expires(gw: Gateway):
    auth = secret_auth(gw, SHORT)  # the agent's max_token_ttl is 4s
    first = auth.get_token()
    expires = claims_of(first)["exp"]
    second = wait_until(lambda: (token := auth.get_token()) != first and token, timeout=10, what="a new token")
    assert time.time() < expires, "the SDK waited for the token to expire"
    assert claims_of(second)["exp"] > expires
    assert httpx2.get(gw.proxy_url + ROUTE, auth=auth).status_code == 200


def test_revoked_token_is_replaced_and_the_request_retried_once(gw: Gateway):
    auth = secret_auth(gw, scopes=["crm.read", "crm.write"])
    with httpx2.Client(auth=auth) as http:
        assert http.get(gw.proxy_url + ROUTE).status_code == 200
        revoked = auth.get_token()
        assert SECRET.revoke(gw, revoked).status_code == 200
        wait_until(lambda: refused_at_proxy(gw, revoked), what="the proxy to refuse the revoked token")
        response = http.post(gw.proxy_url + "/upload", content=b"replayable body")
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [401]
    assert auth.get_token() != revoked


def test_streamed_body_is_not_replayed_after_a_401(gw: Gateway):
    auth = secret_auth(gw, scopes=["crm.read", "crm.write"])
    assert httpx2.get(gw.proxy_url + ROUTE, auth=auth).status_code == 200
    revoked = auth.get_token()
    SECRET.revoke(gw, revoked)
    wait_until(lambda: refused_at_proxy(gw, revoked), what="the proxy to refuse the revoked token")

    def body() -> Iterator[bytes]:
        yield b"chunk"

    response = httpx2.post(gw.proxy_url + "/upload", content=body(), auth=auth)
    # The stream was consumed by the first attempt: the 401 is the answer, and the next request gets a new token.
    assert response.status_code == 401
    assert httpx2.get(gw.proxy_url + ROUTE, auth=auth).status_code == 200


# --- errors ---------------------------------------------------------------------------------------------------


def test_insufficient_scope_raises_an_error_naming_the_missing_scope(gw: Gateway):
    auth = secret_auth(gw, scopes=["crm.read"])
    with pytest.raises(InsufficientScope) as raised:
        httpx2.post(gw.proxy_url + "/v1/customers", json={"name": "x"}, auth=auth)
    assert raised.value.missing == ("crm.write",) and raised.value.granted == ("crm.read",)
    assert "crm.write" in str(raised.value)


def test_wrong_secret_is_a_token_request_error_without_the_secret(gw: Gateway):
    auth = TollboothAuth(SECRET.client_id, proxy_url=gw.proxy_url, secret="wrong-secret-value")
    with pytest.raises(TokenRequestError) as raised:
        httpx2.get(gw.proxy_url + ROUTE, auth=auth)
    assert raised.value.error == "invalid_client" and raised.value.status == 401
    assert "wrong-secret-value" not in str(raised.value)


def test_scope_beyond_the_agent_is_invalid_scope(gw: Gateway):
    auth = secret_auth(gw, scopes=["crm.admin"])
    with pytest.raises(TokenRequestError) as raised:
        auth.get_token()
    assert raised.value.error == "invalid_scope" and "crm.admin" in raised.value.description


# --- delegation -----------------------------------------------------------------------------------------------


def test_on_behalf_of_exchanges_the_users_token(gw: Gateway, upstream: Upstream, idp: TestIdP):
    agent = secret_auth(gw)
    delegated = agent.on_behalf_of(user_token(idp, gw, "user:alice"), scopes=["crm.read"])
    response = httpx2.get(gw.proxy_url + ROUTE, auth=delegated)
    assert response.status_code == 200, response.text
    seen = upstream.last()
    assert seen.header("x-tollbooth-subject") == "user:alice"
    assert seen.header("x-tollbooth-delegation") == SECRET.client_id
    assert seen.header("x-tollbooth-scopes") == "crm.read"


def test_delegated_auth_refreshes_with_its_refresh_token(gw: Gateway, idp: TestIdP):
    delegated = secret_auth(gw, SHORT).on_behalf_of(user_token(idp, gw, "user:bob", "crm.read"))
    first = delegated.get_token()
    wait_until(lambda: delegated.get_token() != first, timeout=10, what="a refreshed token")
    gw.wait_audit(
        lambda e: e["event"] == "token.refreshed" and e.get("subject") == "user:bob", "the SDK to use its refresh token"
    )
    assert claims_of(delegated.get_token())["sub"] == "user:bob"


def test_delegated_auth_exchanges_again_when_the_refresh_family_is_revoked(gw: Gateway, idp: TestIdP):
    delegated = secret_auth(gw, SHORT).on_behalf_of(user_token(idp, gw, "user:carol", "crm.read"))
    assert httpx2.get(gw.proxy_url + ROUTE, auth=delegated).status_code == 200
    token = delegated.get_token()
    jti = claims_of(token)["jti"]
    subprocess.run(
        [sys.executable, "-m", "gateway", "revoke", "--config", str(gw.config_path), f"--jti={jti}"],
        check=True,
        capture_output=True,
        cwd=gw.dir,
        env={**os.environ, "TEST_UPSTREAM_KEY": "unused"},
    )
    wait_until(lambda: refused_at_proxy(gw, token), what="the proxy to refuse the revoked token")
    response = httpx2.get(gw.proxy_url + ROUTE, auth=delegated)
    assert response.status_code == 200, response.text
    assert claims_of(delegated.get_token())["sub"] == "user:carol"


# --- revocation -----------------------------------------------------------------------------------------------


def test_context_manager_revokes_on_exit(gw: Gateway):
    with secret_auth(gw, scopes=["crm.read"]) as auth:
        assert httpx2.get(gw.proxy_url + ROUTE, auth=auth).status_code == 200
        token = auth.get_token()
    assert SECRET.introspect(gw, token).json() == {"active": False}
    wait_until(lambda: refused_at_proxy(gw, token), what="the proxy to refuse the token")


def test_async_context_manager_revokes_the_delegated_refresh_family(gw: Gateway, idp: TestIdP):
    async def main() -> tuple[str, str]:
        async with secret_auth(gw, SHORT) as agent, agent.on_behalf_of(user_token(idp, gw, "user:dan")) as delegated:
            async with httpx2.AsyncClient(auth=delegated) as http:
                assert (await http.get(gw.proxy_url + ROUTE)).status_code == 200
            token = await delegated.aget_token()
            refresh = delegated._token.refresh_token  # noqa: SLF001 - the test checks it dies with the token
            assert refresh is not None
        return token, refresh

    token, refresh = asyncio.run(main())
    assert SHORT.introspect(gw, token).json() == {"active": False}
    assert SHORT.refresh(gw, refresh).json()["error"] == "invalid_grant"


# --- httpx 0.28 -----------------------------------------------------------------------------------------------


def test_httpx_028_clients_accept_the_auth(gw: Gateway):
    auth = secret_auth(gw, scopes=["crm.read"])
    assert httpx.__version__.startswith("0.28")
    with httpx.Client(auth=auth) as http:
        assert http.get(gw.proxy_url + ROUTE).status_code == 200

    async def main() -> int:
        async with httpx.AsyncClient(auth=auth) as http:
            return (await http.get(gw.proxy_url + ROUTE)).status_code

    assert asyncio.run(main()) == 200
    assert jwt.get_unverified_header(auth.get_token())["typ"] == "at+jwt"


# --- where the token goes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("discovered", [True, False], ids=["proxy-url", "issuer-url-only"])
def test_token_is_never_sent_to_another_host(gw: Gateway, discovered: bool):
    other, stop = start_upstream()
    try:
        location = {"proxy_url": gw.proxy_url} if discovered else {"issuer_url": gw.issuer_url}
        auth = TollboothAuth(SECRET.client_id, secret=SECRET.secret, scopes=["crm.read"], **location)
        with httpx2.Client(auth=auth) as http:
            assert http.get(gw.proxy_url + ROUTE).status_code == 200
            assert http.get(other.url + "/elsewhere").status_code == 200
        assert other.last().header("authorization") is None
    finally:
        stop()


def test_the_upstreams_own_401_is_not_taken_for_a_revoked_token(gw: Gateway, upstream: Upstream):
    auth = secret_auth(gw, COUNTED_SYNC)
    with httpx2.Client(auth=auth) as http:
        token = auth.get_token()
        before = len(upstream.seen)
        response = http.post(gw.proxy_url + "/status/401", content=b"once")
    assert response.status_code == 401 and response.history == []
    assert len(upstream.seen) == before + 1, "the request was sent twice"
    assert auth.get_token() == token


def test_the_upstreams_own_403_is_returned_not_raised(gw: Gateway):
    response = httpx2.get(gw.proxy_url + "/status/403", auth=secret_auth(gw, scopes=["crm.read"]))
    assert response.status_code == 403
    assert 'scope="upstream:admin"' in response.headers["www-authenticate"]
