"""The official `mcp` SDK's OAuthClientProvider, unmodified, connecting a person's client through the proxy: it
finds the token service from the proxy's 401 and RFC 9728 metadata, identifies itself with a Client ID Metadata
Document served over TLS on loopback (the SDK insists on https; a test CA the gateway trusts via tls.ca_file),
sends the person to sign in and consent (its redirect handler drives the real pages), redeems the code with PKCE
and calls a tool: the MCP server sees the client acting for the person."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import uvicorn
from argon2 import PasswordHasher
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp_support import MCP_PATH, MCP_SCOPE, McpUpstream, start_mcp_gateway, start_mcp_upstream
from people_support import field
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support import Gateway, free_port, serve_in_thread
from tls_support import CertificateFiles, make_test_ca

PASSWORD = "tr0ub4dor&3 but longer"
REDIRECT = "http://127.0.0.1:41999/callback"


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_test_ca(tmp_path_factory.mktemp("sdk-ca"))


@pytest.fixture(scope="module")
def document_url(certificate: CertificateFiles) -> Iterator[str]:
    """The client's metadata document at https://localhost:PORT/client.json (its certificate names localhost)."""
    port = free_port()
    url = f"https://localhost:{port}/client.json"

    async def document(request: Request) -> Response:
        return JSONResponse(
            {
                "client_id": url,
                "client_name": "SDK desktop client",
                "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
            }
        )

    config = uvicorn.Config(
        Starlette(routes=[Route("/client.json", document)]),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=certificate.cert_file,
        ssl_keyfile=certificate.key_file,
    )
    stop = serve_in_thread(uvicorn.Server(config), "client metadata document host")
    yield url
    stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[McpUpstream]:
    server, stop = start_mcp_upstream()
    yield server
    stop()


@pytest.fixture(scope="module")
def gw(
    upstream: McpUpstream, certificate: CertificateFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    route = {
        "name": "mcp",
        "upstream": "mcp",
        "methods": ["POST", "GET", "DELETE"],
        "path": MCP_PATH,
        "scopes": [MCP_SCOPE],
        "mcp": {"tools": [{"name": "whoami", "scopes": []}]},
    }
    gateway = start_mcp_gateway(
        tmp_path_factory.mktemp("interactive-sdk"),
        upstream,
        routes=[route],
        extra={
            "tls": {"ca_file": certificate.ca_file},
            "login": {"users": {"alice": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": [MCP_SCOPE]}}},
            "interactive": {"scopes": [MCP_SCOPE], "dynamic_registration": True},
        },
    )
    yield gateway
    gateway.stop()


async def person_at_the_pages(authorization_url: str) -> AuthorizationCodeResult:
    """What the person does in their browser: open the link, sign in, approve; where the browser lands."""
    async with httpx2.AsyncClient(follow_redirects=False) as browser:
        login = await browser.get(authorization_url)
        assert login.status_code == 200, login.text
        base = f"{urlsplit(authorization_url).scheme}://{urlsplit(authorization_url).netloc}"
        consent = await browser.post(
            f"{base}/login",
            data={
                "csrf": field(login.text, "csrf"),
                "request": field(login.text, "request"),
                "username": "alice",
                "password": PASSWORD,
            },
        )
        assert consent.status_code == 200 and "SDK desktop client" in consent.text, consent.text
        landed = await browser.post(
            f"{base}/consent",
            data={
                "csrf": field(consent.text, "csrf"),
                "request": field(consent.text, "request"),
                "decision": "approve",
            },
        )
    assert landed.status_code == 303
    location = landed.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}
    return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))


async def connect_and_ask(gw: Gateway, document_url: str | None) -> tuple[dict[str, Any], MemoryStorage]:
    """The SDK's whole flow; without `document_url` it registers itself (RFC 7591) instead."""
    landed: list[AuthorizationCodeResult] = []

    async def redirect_handler(url: str) -> None:
        landed.append(await person_at_the_pages(url))

    async def callback_handler() -> AuthorizationCodeResult:
        return landed.pop()

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=gw.proxy_url + MCP_PATH,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[AnyUrl(REDIRECT)],
            client_name="SDK desktop client",
            token_endpoint_auth_method="none" if document_url else None,
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=document_url,
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=20) as http,
        streamable_http_client(gw.proxy_url + MCP_PATH, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("whoami", {})
    assert not result.is_error, result
    structured = result.structured_content or {}
    return dict(structured.get("result", structured)), storage


def test_the_sdks_oauth_client_signs_a_person_in_and_acts_for_them(gw: Gateway, document_url: str):
    seen, storage = asyncio.run(connect_and_ask(gw, document_url))
    identity = seen["identity"]
    assert identity["x-tollbooth-subject"] == "alice"
    assert identity["x-tollbooth-agent"] == document_url
    # The MCP server gets the gateway's own credential, never the person's token.
    assert storage.tokens is not None and storage.tokens.access_token not in (seen["authorization"] or "")
    assert storage.client is not None and storage.client.client_id == document_url
    event = gw.wait_audit(lambda e: e["event"] == "token.issued" and e.get("grant") == "authorization_code")
    assert event["subject"] == "alice" and event["agent"] == document_url


def test_an_older_client_registers_itself_and_authenticates_with_its_secret(gw: Gateway):
    seen, storage = asyncio.run(connect_and_ask(gw, None))
    assert storage.client is not None and storage.client.client_id.startswith("dcr_")
    # RFC 7591 §2: no token_endpoint_auth_method asked for means client_secret_basic, so it was given a secret.
    assert storage.client.client_secret
    assert seen["identity"]["x-tollbooth-subject"] == "alice"
    assert seen["identity"]["x-tollbooth-agent"] == storage.client.client_id
    registered = gw.wait_audit(lambda e: e["event"] == "client.registered")
    assert registered["agent"] == storage.client.client_id


def test_a_registered_clients_code_is_refused_without_its_secret(gw: Gateway):
    registration = httpx2.post(
        f"{gw.issuer_url}/oauth/register", json={"redirect_uris": [REDIRECT], "client_name": "Secretive"}
    )
    assert registration.status_code == 201, registration.text
    client = registration.json()
    assert client["token_endpoint_auth_method"] == "client_secret_basic" and client["client_secret"]
    refused = httpx2.post(
        f"{gw.issuer_url}/oauth/token",
        data={"grant_type": "authorization_code", "code": "x" * 43, "client_id": client["client_id"]},
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    bad = httpx2.post(f"{gw.issuer_url}/oauth/register", json={"redirect_uris": ["http://evil.example/cb"]})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_redirect_uri"
