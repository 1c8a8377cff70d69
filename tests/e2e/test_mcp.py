"""MCP end to end with the official `mcp` SDK (2.x): an SDK-built MCP server (streamable HTTP) is the upstream, and
MCP clients reach it through the proxy given only the proxy's MCP URL and their own credentials.

Each client in CLIENTS runs one session (initialize, list tools, call two tools, close) and the tests read its
transcript: the tools worked, the upstream saw the agent's identity and never its token, discovery went from the
proxy's 401 challenge (RFC 6750 §3, RFC 9728 §5.1) through the RFC 9728 and RFC 8414 documents to the token
endpoint, and the session's Mcp-Session-Id, SSE answers, GET stream and DELETE crossed the proxy. Another client
joins by adding one factory to CLIENTS.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import jwt
import pytest
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.session import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthMetadata, OAuthToken, ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_support import (
    KEYED_AGENT,
    KEYED_KEY,
    MCP_PATH,
    MCP_SCOPE,
    SECRET_AGENT,
    UPSTREAM_CREDENTIAL,
    McpUpstream,
    start_mcp_gateway,
    start_mcp_upstream,
)
from support import Gateway, Seen

from gateway.client import TollboothAuth

PRM_PATH = "/.well-known/oauth-protected-resource"
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"


@dataclass(frozen=True)
class AgentClient:
    """An HTTP client carrying one agent's auth, and the agent the upstream should then see."""

    agent: str
    http: httpx2.AsyncClient
    # "challenge": the client learns of Tollbooth from the 401 on its first MCP request, through this client.
    # "ahead": the Tollbooth SDK discovers from the proxy URL on its own connection before the first request.
    discovery: str = "challenge"


# (gateway, the MCP server's URL at the proxy) -> a client that authenticates by itself from that URL alone.
ClientFactory = Callable[[Gateway, str], AgentClient]


class MemoryStorage:
    """The SDK's TokenStorage protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@contextmanager
def issuer_left_out() -> Iterator[None]:
    # "Given only the proxy URL": the SDK finds the issuer by discovery, and warns that leaving out `issuer`
    # (naming the authorization server up front) is deprecated. The named-issuer cases below check that path.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        yield


def sdk_private_key_jwt(*, name_issuer: bool) -> ClientFactory:
    def factory(gw: Gateway, server_url: str) -> AgentClient:
        signer = SignedJWTParameters(
            issuer=KEYED_AGENT,
            subject=KEYED_AGENT,
            signing_key=KEYED_KEY.private_pem().decode(),
            signing_algorithm="ES256",
        )
        with issuer_left_out():
            auth = PrivateKeyJWTOAuthProvider(
                server_url,
                MemoryStorage(),
                KEYED_AGENT,
                signer.create_assertion_provider(),
                issuer=gw.issuer_url if name_issuer else None,
            )
        return AgentClient(KEYED_AGENT, create_mcp_http_client(auth=auth))

    return factory


def sdk_client_secret(method: str, *, name_issuer: bool = False) -> ClientFactory:
    def factory(gw: Gateway, server_url: str) -> AgentClient:
        with issuer_left_out():
            auth = ClientCredentialsOAuthProvider(
                server_url,
                MemoryStorage(),
                SECRET_AGENT.client_id,
                SECRET_AGENT.secret,
                token_endpoint_auth_method=method,  # type: ignore[arg-type]
                issuer=gw.issuer_url if name_issuer else None,
            )
        return AgentClient(SECRET_AGENT.client_id, create_mcp_http_client(auth=auth))

    return factory


def tollbooth_sdk(gw: Gateway, server_url: str) -> AgentClient:
    """(b) an MCP client whose httpx2 client carries this project's SDK, given only the MCP URL at the proxy."""
    auth = TollboothAuth(
        KEYED_AGENT, proxy_url=server_url, private_key=KEYED_KEY.private_pem(), key_id=KEYED_KEY.kid, scopes=[MCP_SCOPE]
    )
    return AgentClient(KEYED_AGENT, create_mcp_http_client(auth=auth), discovery="ahead")


CLIENTS: dict[str, ClientFactory] = {
    "tollbooth-sdk": tollbooth_sdk,
    "sdk-private-key-jwt": sdk_private_key_jwt(name_issuer=False),
    "sdk-client-secret-basic": sdk_client_secret("client_secret_basic"),
    "sdk-client-secret-post": sdk_client_secret("client_secret_post"),
    "sdk-private-key-jwt-named-issuer": sdk_private_key_jwt(name_issuer=True),
    "sdk-client-secret-basic-named-issuer": sdk_client_secret("client_secret_basic", name_issuer=True),
}


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange the client made (its auth flow's discovery and token requests included)."""

    method: str
    url: str
    status: int
    request_headers: dict[str, str]
    response_headers: dict[str, str]


@dataclass(frozen=True)
class Transcript:
    agent: str
    discovery: str
    tools: list[str]
    added: dict[str, Any] | None
    whoami: dict[str, Any]
    exchanges: list[Exchange]
    upstream: list[Seen]  # what reached the MCP server during this session


async def run_session(gw: Gateway, upstream: McpUpstream, factory: ClientFactory) -> Transcript:
    server_url = gw.proxy_url + MCP_PATH
    client = factory(gw, server_url)
    exchanges: list[Exchange] = []

    async def record(response: httpx2.Response) -> None:
        request = response.request
        exchanges.append(
            Exchange(
                request.method, str(request.url), response.status_code, dict(request.headers), dict(response.headers)
            )
        )

    hooks = client.http.event_hooks
    client.http.event_hooks = {**hooks, "response": [*hooks.get("response", []), record]}
    first = len(upstream.seen)
    async with (
        client.http,
        streamable_http_client(server_url, http_client=client.http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
        added = await session.call_tool("add", {"a": 2, "b": 3})
        whoami = await session.call_tool("whoami", {})

        # The client opens the server's GET stream in the background once it has a session id.
        def stream_opened(seen: list[Seen]) -> bool:
            return any(request.method == "GET" for request in seen[first:])

        await asyncio.to_thread(upstream.wait_for, stream_opened, "the GET stream")
    assert whoami.structured_content is not None, whoami
    return Transcript(
        agent=client.agent,
        discovery=client.discovery,
        tools=[tool.name for tool in listed.tools],
        added=added.structured_content,
        whoami=whoami.structured_content,
        exchanges=exchanges,
        upstream=list(upstream.seen[first:]),
    )


@pytest.fixture(scope="module")
def mcp_upstream() -> Iterator[McpUpstream]:
    upstream, stop = start_mcp_upstream()
    yield upstream
    stop()


@pytest.fixture(scope="module")
def mcp_gateway(mcp_upstream: McpUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_mcp_gateway(tmp_path_factory.mktemp("mcp-gateway"), mcp_upstream)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module", params=list(CLIENTS))
def transcript(request: pytest.FixtureRequest, mcp_gateway: Gateway, mcp_upstream: McpUpstream) -> Transcript:
    return asyncio.run(run_session(mcp_gateway, mcp_upstream, CLIENTS[request.param]))


def bearer_tokens_sent(transcript: Transcript, gw: Gateway) -> set[str]:
    return {
        header.removeprefix("Bearer ")
        for exchange in transcript.exchanges
        if exchange.url.startswith(gw.proxy_url) and (header := exchange.request_headers.get("authorization", ""))
    }


# --- the session, per client ------------------------------------------------------------------------------------


def test_tools_are_listed_and_called_through_the_proxy(transcript: Transcript):
    assert {"whoami", "add"} <= set(transcript.tools)
    assert transcript.added == {"result": 5}


def test_upstream_sees_the_agents_identity(transcript: Transcript):
    assert transcript.whoami["identity"] == {
        "x-tollbooth-agent": transcript.agent,
        "x-tollbooth-subject": transcript.agent,
        "x-tollbooth-scopes": MCP_SCOPE,
        "x-tollbooth-route": "mcp",
    }


def test_agent_token_never_reaches_the_upstream(transcript: Transcript, mcp_gateway: Gateway):
    tokens = bearer_tokens_sent(transcript, mcp_gateway)
    assert tokens, "the client never presented a token to the proxy"
    # The upstream gets its own credential from the gateway's config instead (MCP: no token passthrough).
    assert transcript.whoami["authorization"] == UPSTREAM_CREDENTIAL
    assert transcript.upstream
    for seen in transcript.upstream:
        assert seen.headers_named("authorization") == [UPSTREAM_CREDENTIAL], seen
        assert not [value for _, value in seen.headers for token in tokens if token.encode() in value], seen


def test_client_discovers_tollbooth_from_the_proxys_challenge(transcript: Transcript, mcp_gateway: Gateway):
    gw = mcp_gateway
    if transcript.discovery == "ahead":
        # Discovery and the token request went over the SDK's own connection: the MCP client's first request
        # already carries a token of the discovered issuer, for this proxy.
        first = transcript.exchanges[0]
        assert (first.method, first.url, first.status) == ("POST", gw.proxy_url + MCP_PATH, 200)
        claims = jwt.decode(
            first.request_headers["authorization"].removeprefix("Bearer "), options={"verify_signature": False}
        )
        assert (claims["iss"], claims["aud"], claims["scope"]) == (gw.issuer_url, gw.proxy_url, MCP_SCOPE)
        return
    challenge = transcript.exchanges[0]
    assert (challenge.method, challenge.url, challenge.status) == ("POST", gw.proxy_url + MCP_PATH, 401)
    www_authenticate = challenge.response_headers["www-authenticate"]
    assert f'resource_metadata="{gw.proxy_url}{PRM_PATH}"' in www_authenticate
    assert f'scope="{MCP_SCOPE}"' in www_authenticate
    # Everything else it asked for was named by what it had discovered, in order: no guessed endpoints.
    discovered = [(e.method, e.url, e.status) for e in transcript.exchanges if e.url != gw.proxy_url + MCP_PATH]
    assert discovered == [
        ("GET", gw.proxy_url + PRM_PATH, 200),
        ("GET", gw.issuer_url + AS_METADATA_PATH, 200),
        ("POST", gw.issuer_url + "/oauth/token", 200),
    ]


def test_streamable_http_session_crosses_the_proxy(transcript: Transcript):
    session_id = transcript.whoami["session_id"]
    assert session_id
    posts = [seen for seen in transcript.upstream if seen.method == "POST"]
    # The initialize POST has no session yet; every later one carries the id the server handed out.
    assert posts[0].headers_named("mcp-session-id") == []
    assert all(seen.headers_named("mcp-session-id") == [session_id] for seen in posts[1:])
    assert all(seen.header("mcp-protocol-version") for seen in posts[1:])
    streams = [seen for seen in transcript.upstream if seen.method == "GET"]
    assert streams and all("text/event-stream" in (seen.header("accept") or "") for seen in streams)
    assert all(seen.headers_named("mcp-session-id") == [session_id] for seen in streams)
    ended = [seen for seen in transcript.upstream if seen.method == "DELETE"]
    assert [seen.headers_named("mcp-session-id") for seen in ended] == [[session_id]]


# --- the documents the SDK reads --------------------------------------------------------------------------------


def test_authorization_server_metadata_is_valid_for_the_sdk(mcp_gateway: Gateway):
    gw = mcp_gateway
    response = httpx2.get(gw.issuer_url + AS_METADATA_PATH, timeout=10)
    # The SDK's model requires authorization_endpoint; without it the SDK discards the document and guesses.
    metadata = OAuthMetadata.model_validate_json(response.content)
    # RFC 8414 §3.3: compared as strings with the issuer the client derived the metadata URL from.
    assert str(metadata.issuer) == gw.issuer_url
    assert str(metadata.token_endpoint) == gw.issuer_url + "/oauth/token"
    assert str(metadata.authorization_endpoint) == gw.issuer_url + "/oauth/authorize"
    assert metadata.response_types_supported == []


@pytest.mark.parametrize("form", ["root", "path"])
def test_protected_resource_metadata_names_a_resource_the_sdk_accepts(mcp_gateway: Gateway, form: str):
    gw = mcp_gateway
    server_url = gw.proxy_url + MCP_PATH
    url = gw.proxy_url + PRM_PATH + (MCP_PATH if form == "path" else "")
    metadata = ProtectedResourceMetadata.model_validate_json(httpx2.get(url, timeout=10).content)
    # The MCP spec's check (RFC 8707): the resource is the server URL or a parent of it on the same origin.
    assert check_resource_allowed(resource_url_from_server_url(server_url), str(metadata.resource))
    assert [str(server) for server in metadata.authorization_servers] == [gw.issuer_url]
    assert metadata.scopes_supported == [MCP_SCOPE]


def test_authorization_endpoint_refuses_and_never_redirects(mcp_gateway: Gateway):
    gw = mcp_gateway
    params = {
        "response_type": "code",
        "client_id": KEYED_AGENT,
        "redirect_uri": "https://attacker.example/callback",
        "state": "s",
    }
    response = httpx2.get(gw.issuer_url + "/oauth/authorize", params=params, timeout=10)
    assert response.status_code == 400 and "location" not in response.headers
    assert response.json()["error"] == "unsupported_response_type"
    assert gw.issuer_url + "/oauth/token" in response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"
