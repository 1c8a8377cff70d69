"""An MCP server built with the official `mcp` SDK (streamable HTTP), served by uvicorn on a free loopback port,
and a Tollbooth gateway in front of it: the upstream the MCP end-to-end tests reach through the proxy."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from support import Gateway, Seen, free_port, serve_in_thread, start_gateway
from token_support import KeyPair, SecretAgent

MCP_PATH = "/mcp"
MCP_SCOPE = "mcp.tools"
# What the MCP server's tools report back: the identity the gateway stamped, as the upstream received it.
IDENTITY_HEADERS = ("x-tollbooth-agent", "x-tollbooth-subject", "x-tollbooth-scopes", "x-tollbooth-route")
UPSTREAM_CREDENTIAL = "Bearer mcp-upstream-key"  # the gateway's own credential for the MCP server (from env)

KEYED_AGENT = "mcp-keyed-agent"  # private_key_jwt
KEYED_KEY = KeyPair()
SECRET_AGENT = SecretAgent("mcp-secret-agent", "mcp:se%cr+et")  # client_secret_basic / client_secret_post


@dataclass
class McpUpstream:
    """The MCP server's URL and every HTTP request that reached it (method, path, headers)."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def record(self, request: Seen) -> None:
        with self._arrived:
            self.seen.append(request)
            self._arrived.notify_all()

    def wait_for(self, predicate: Callable[[list[Seen]], bool], what: str, timeout: float = 10.0) -> None:
        """Block until the requests seen so far satisfy `predicate` (woken by each arrival, no polling)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: predicate(self.seen), timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def sdk_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    """An initialized session of the official SDK's client at `url`, sending `token` as its bearer token."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=20) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def build_mcp_server() -> MCPServer:
    server = MCPServer("tollbooth-mcp-test")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def whoami(ctx: Context) -> dict[str, Any]:
        """The identity headers this request carried, and the Authorization the MCP server received."""
        headers = {name.lower(): value for name, value in (ctx.headers or {}).items()}
        return {
            "identity": {name: headers[name] for name in IDENTITY_HEADERS if name in headers},
            "authorization": headers.get("authorization"),
            "session_id": headers.get("mcp-session-id"),
        }

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool(annotations=ToolAnnotations(destructive_hint=True))
    def delete_customer(customer_id: str, region: str) -> str:
        """Deletes a customer (the destructive tool MCP rules guard)."""
        DELETED.append(customer_id)
        return f"deleted {customer_id} in {region}"

    @server.resource("crm://customers/{customer_id}")
    def customer(customer_id: str) -> str:
        return f"customer {customer_id}"

    @server.resource("crm://invoices/all")
    def invoices() -> str:
        return "every invoice"

    @server.resource("crm://customers/index")
    def customer_index() -> str:
        return "c1 c2"

    @server.prompt()
    def summarize(customer_id: str) -> str:
        return f"Summarize customer {customer_id}"

    @server.prompt()
    def purge_advice() -> str:
        return "How to purge the database"

    return server


# Every delete_customer call that reached the MCP server: refused calls must never add to it.
DELETED: list[str] = []


def _recording(app: Callable[..., Any], upstream: McpUpstream) -> Callable[..., Any]:
    """The ASGI app, recording each HTTP request's head as it arrives (the GET stream and DELETE included)."""

    async def recorder(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http":
            # Bodies are the MCP app's to read; the head is what the gateway shapes.
            upstream.record(
                Seen(scope["method"], scope["raw_path"], scope["query_string"], list(scope["headers"]), b"")
            )
        await app(scope, receive, send)

    return recorder


def start_mcp_upstream(json_response: bool = False) -> tuple[McpUpstream, Callable[[], None]]:
    """The SDK's streamable HTTP app (stateful: Mcp-Session-Id, a GET stream; SSE answers, or JSON ones with
    `json_response`) on a free port."""
    port = free_port()
    upstream = McpUpstream(url=f"http://127.0.0.1:{port}")
    app = build_mcp_server().streamable_http_app(streamable_http_path=MCP_PATH, json_response=json_response)
    server = uvicorn.Server(
        uvicorn.Config(_recording(app, upstream), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    stop = serve_in_thread(server, "MCP server")
    return upstream, stop


def mcp_routes() -> list[dict[str, Any]]:
    # Streamable HTTP uses one endpoint: POST for messages, GET for the server's stream, DELETE to end the session.
    return [
        {
            "name": "mcp",
            "upstream": "mcp",
            "methods": ["POST", "GET", "DELETE"],
            "path": MCP_PATH,
            "scopes": [MCP_SCOPE],
        }
    ]


def start_mcp_gateway(
    tmp: Path, upstream: McpUpstream, routes: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None
) -> Gateway:
    """A gateway whose only route is the MCP endpoint, with a private_key_jwt agent and a secret agent (`extra`:
    more top-level config sections)."""
    return start_gateway(
        tmp,
        upstream.url,
        routes=routes or mcp_routes(),
        extra={
            **(extra or {}),
            "upstreams": {
                # Longer than the default test upstream's 2 s: the GET stream stays quiet between events.
                "mcp": {"url": upstream.url, "timeout": "60s", "headers": {"Authorization": "${MCP_UPSTREAM_AUTH}"}}
            },
            "agents": {
                KEYED_AGENT: {"jwks": KEYED_KEY.jwks(), "scopes": [MCP_SCOPE]},
                SECRET_AGENT.client_id: SECRET_AGENT.config(scopes=[MCP_SCOPE]),
            },
        },
        env={"MCP_UPSTREAM_AUTH": UPSTREAM_CREDENTIAL},
    )
