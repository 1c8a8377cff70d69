"""An MCP tool behind a person's approval, on the embedded defaults (no Redis): the call is held and refused in
JSON-RPC with the approval's id; approved through the admin API, the same call (any JSON-RPC id, a new SDK
session) reaches the server once; other tools are never held."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from argon2 import PasswordHasher
from mcp_support import DELETED, MCP_PATH, MCP_SCOPE, McpUpstream, sdk_session, start_mcp_gateway, start_mcp_upstream
from support import Gateway

ADMIN_TOKEN = "approver-token"  # noqa: S105
ROUTE = {
    "name": "crm-mcp",
    "upstream": "mcp",
    "methods": ["POST", "GET", "DELETE"],
    "path": MCP_PATH,
    "scopes": [MCP_SCOPE],
    "mcp": {
        "tools": [
            {"name": "delete_*", "scopes": ["crm.read"], "approval": "required", "approval_wait": "1s"},
            {"name": "*", "scopes": []},
        ]
    },
}
AGENT_SCOPES = f"{MCP_SCOPE} crm.read"


@pytest.fixture(scope="module")
def upstream() -> Iterator[McpUpstream]:
    server, stop = start_mcp_upstream()
    yield server
    stop()


@pytest.fixture(scope="module")
def gateway(upstream: McpUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    extra = {"admin": {"token_hash": PasswordHasher().hash(ADMIN_TOKEN), "token_label": "oncall"}}
    gw = start_mcp_gateway(tmp_path_factory.mktemp("approvals-mcp"), upstream, routes=[ROUTE], extra=extra)
    yield gw
    gw.stop()


def call(gw: Gateway, name: str, request_id: int, **arguments: Any) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {gw.mint(AGENT_SCOPES)}",
    }
    return httpx2.post(gw.proxy_url + MCP_PATH, content=json.dumps(body).encode(), headers=headers, timeout=10)


async def sdk_call(gw: Gateway, name: str, arguments: dict[str, Any]) -> Any:
    async with sdk_session(gw.proxy_url + MCP_PATH, gw.mint(AGENT_SCOPES)) as session:
        return await session.call_tool(name, arguments)


def test_a_held_tool_call_passes_once_after_a_person_approves_it(gateway: Gateway):
    before = list(DELETED)
    held = call(gateway, "delete_customer", 7, customer_id="c9", region="eu")
    assert held.status_code == 403 and held.headers["content-type"].startswith("application/json")
    error = held.json()
    assert error["id"] == 7 and error["error"]["code"] == -32003 and "approval" in error["error"]["message"]
    approval_id = held.headers["x-tollbooth-approval"]
    shown = httpx2.get(
        f"{gateway.admin_url}/api/approvals/{approval_id}", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    assert shown["call"]["rule"] == "tools[0] (delete_*)" and shown["status"] == "pending"
    approved = httpx2.post(
        f"{gateway.admin_url}/api/approvals/{approval_id}/approve", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert approved.status_code == 200
    # The same tool and arguments from a new SDK session (another JSON-RPC id): through, once.
    asyncio.run(sdk_call(gateway, "delete_customer", {"customer_id": "c9", "region": "eu"}))
    assert DELETED == [*before, "c9"]
    again = call(gateway, "delete_customer", 8, customer_id="c9", region="eu")
    assert again.status_code == 403 and again.headers["x-tollbooth-approval"] != approval_id
    event = gateway.wait_audit(lambda e: e["event"] == "access" and e.get("approval") == approval_id)
    assert event["by"] == "oncall" and event.get("mcp_name") == "delete_customer"


def test_tools_without_the_rule_are_never_held(gateway: Gateway):
    asyncio.run(sdk_call(gateway, "whoami", {}))  # answered at once: nothing to approve
    listed = httpx2.get(f"{gateway.admin_url}/api/approvals", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert all(a["call"]["rule"] != "tools[1] (*)" for a in listed.json()["approvals"])
