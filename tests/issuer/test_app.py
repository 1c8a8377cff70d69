"""IssuerApp without sockets: httpx2's ASGI transport in front of the app, in-memory audit, local state.

The e2e and interop tests (tests/e2e/) cover the same endpoints over real sockets with third-party clients; these
pin the app's own wiring: each endpoint's answer, its audit event, and a config swap seen on the next request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from gateway.config import Config, load_config
from gateway.issuer.app import IssuerApp
from gateway.issuer.keystore import KeyStore
from gateway.state import LocalState
from gateway.wire import AUTHORIZATION_SERVER_PATH, INTROSPECT_PATH, JWKS_PATH, REVOKE_PATH, TOKEN_PATH
from tests.list_sink import ListSink
from tests.token_support import SecretAgent, hash_secret

pytestmark = pytest.mark.anyio

ISSUER = "http://127.0.0.1:8081"
PUBLIC = "http://127.0.0.1:8080"
AGENT = SecretAgent("billing-bot", "s3cret-billing")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config_text(agents: dict[str, str]) -> str:
    lines = [
        "version: 1",
        f"proxy: {{public_url: {PUBLIC}}}",
        f"issuer: {{url: {ISSUER}, keys_dir: keys}}",
        "upstreams: {crm: {url: 'http://127.0.0.1:9'}}",
        "agents:",
    ]
    for client_id, secret in agents.items():
        lines.append(f"  {client_id}: {{secret_hash: '{hash_secret(secret)}', scopes: [crm.read, crm.write]}}")
    return "\n".join(lines) + "\n"


class Issuer:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = self.load({AGENT.client_id: AGENT.secret})
        self.keys = KeyStore.load(tmp / "keys", "ES256")
        self.state = LocalState(tmp / "revocations.jsonl")
        self.audit = ListSink()
        self.app = IssuerApp(lambda: self.config, lambda: self.keys, self.state, self.audit)

    def load(self, agents: dict[str, str]) -> Config:
        (self.tmp / "tollbooth.yaml").write_text(config_text(agents))
        return load_config(self.tmp / "tollbooth.yaml", env={}).config


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[tuple[Issuer, httpx2.AsyncClient]]:
    server = Issuer(tmp_path)
    await server.state.start()
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server.app), base_url=ISSUER) as client:
        yield server, client
    await server.app.aclose()
    await server.state.aclose()


async def token(client: httpx2.AsyncClient, agent: SecretAgent = AGENT, **params: Any) -> httpx2.Response:
    form = {"grant_type": "client_credentials", **params}
    return await client.post(TOKEN_PATH, data=form, headers=agent.basic())


async def test_client_credentials_gives_a_token_the_jwks_verifies(issuer: tuple[Issuer, httpx2.AsyncClient]) -> None:
    server, client = issuer
    response = await token(client, scope="crm.read")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert (body["token_type"], body["scope"]) == ("Bearer", "crm.read")
    keys = (await client.get(JWKS_PATH)).json()["keys"]
    header = jwt.get_unverified_header(body["access_token"])
    [jwk] = [key for key in keys if key["kid"] == header["kid"]]
    claims = jwt.decode(
        body["access_token"], jwt.PyJWK(jwk).key, algorithms=[header["alg"]], audience=PUBLIC, issuer=ISSUER
    )
    assert (claims["client_id"], claims["scope"]) == ("billing-bot", "crm.read")
    [event] = server.audit.named("token.issued")
    assert (event.agent, event.jti, event.decision) == ("billing-bot", claims["jti"], "allow")
    assert body["access_token"] not in repr(server.audit.events)


async def test_a_wrong_secret_is_invalid_client_with_a_basic_challenge(
    issuer: tuple[Issuer, httpx2.AsyncClient],
) -> None:
    server, client = issuer
    response = await token(client, SecretAgent("billing-bot", "wrong"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert server.audit.events and server.audit.events[-1].decision == "deny"
    assert "wrong" not in repr(server.audit.events)


async def test_a_scope_beyond_the_agents_is_invalid_scope(issuer: tuple[Issuer, httpx2.AsyncClient]) -> None:
    _, client = issuer
    response = await token(client, scope="crm.admin")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


async def test_an_unknown_grant_type_is_unsupported(issuer: tuple[Issuer, httpx2.AsyncClient]) -> None:
    _, client = issuer
    response = await token(client, grant_type="password")
    assert (response.status_code, response.json()["error"]) == (400, "unsupported_grant_type")


async def test_a_revoked_token_introspects_inactive(issuer: tuple[Issuer, httpx2.AsyncClient]) -> None:
    server, client = issuer
    access = (await token(client)).json()["access_token"]
    active = await client.post(INTROSPECT_PATH, data={"token": access}, headers=AGENT.basic())
    assert active.json()["active"] is True
    revoked = await client.post(REVOKE_PATH, data={"token": access}, headers=AGENT.basic())
    assert revoked.status_code == 200
    inactive = await client.post(INTROSPECT_PATH, data={"token": access}, headers=AGENT.basic())
    assert inactive.json() == {"active": False}
    assert server.audit.named("token.revoked")


async def test_metadata_names_the_endpoints(issuer: tuple[Issuer, httpx2.AsyncClient]) -> None:
    _, client = issuer
    document = (await client.get(AUTHORIZATION_SERVER_PATH)).json()
    assert document["issuer"] == ISSUER
    assert document["token_endpoint"] == ISSUER + TOKEN_PATH
    assert document["jwks_uri"] == ISSUER + JWKS_PATH


async def test_a_swapped_config_is_used_by_the_next_request(issuer: tuple[Issuer, httpx2.AsyncClient]) -> None:
    server, client = issuer
    newcomer = SecretAgent("report-bot", "s3cret-report")
    assert (await token(client, newcomer)).status_code == 401
    server.config = server.load({newcomer.client_id: newcomer.secret})
    assert (await token(client, newcomer)).status_code == 200
    # The agent the new config dropped is gone at once, not at the next restart.
    assert (await token(client)).status_code == 401
