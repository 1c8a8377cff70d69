"""MCP rules end to end: an SDK-built MCP server behind an `mcp:` route. A reader's SDK session calls the tools its
rules allow and is refused the destructive one; raw HTTP shows every refusal's status, JSON-RPC body and challenge,
and that nothing refused ever reached the server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp_support import DELETED, MCP_PATH, MCP_SCOPE, McpUpstream, sdk_session, start_mcp_gateway, start_mcp_upstream
from prometheus_client.parser import text_string_to_metric_families
from support import Gateway

ROUTE = {
    "name": "crm-mcp",
    "upstream": "mcp",
    "methods": ["POST", "GET", "DELETE"],
    "path": MCP_PATH,
    "scopes": [MCP_SCOPE],
    "mcp": {
        "max_message_bytes": "16KiB",
        "tools": [
            {"name": "whoami", "scopes": []},
            {"name": "add", "scopes": ["crm.read"]},
            {
                "name": "delete_*",
                "scopes": ["crm.admin"],
                "arguments": {"type": "object", "properties": {"region": {"enum": ["eu"]}}, "required": ["region"]},
            },
        ],
        "resources": [{"uri": "crm://customers/*", "scopes": ["crm.read"]}],
        "prompts": [{"name": "summarize", "scopes": ["crm.read"]}],
    },
}
READER = f"{MCP_SCOPE} crm.read"
ADMIN = f"{MCP_SCOPE} crm.read crm.admin"


@pytest.fixture(scope="module", params=["sse", "json"])
def upstream(request: pytest.FixtureRequest) -> Iterator[McpUpstream]:
    """The SDK's server answering POSTs as SSE streams, then as JSON: lists are filtered in both."""
    server, stop = start_mcp_upstream(json_response=request.param == "json")
    yield server
    stop()


@pytest.fixture(scope="module")
def gateway(upstream: McpUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_mcp_gateway(tmp_path_factory.mktemp("mcp-rules"), upstream, routes=[ROUTE])
    yield gw
    gw.stop()


async def session_calls(gw: Gateway, token: str, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    """One SDK session (initialize, then each call in turn); a refused call's result is its exception."""
    results: list[Any] = []
    async with sdk_session(gw.proxy_url + MCP_PATH, token) as session:
        for name, arguments in calls:
            try:
                results.append(await session.call_tool(name, arguments))
            except Exception as exc:  # noqa: BLE001 (the refusal is the result under test)
                results.append(exc)
    return results


def test_an_sdk_session_calls_what_its_rules_allow_and_is_refused_the_rest(gateway: Gateway):
    before = list(DELETED)
    added, deleted = asyncio.run(
        session_calls(
            gateway,
            gateway.mint(READER),
            ("add", {"a": 2, "b": 3}),
            ("delete_customer", {"customer_id": "c1", "region": "eu"}),
        )
    )
    assert added.structured_content == {"result": 5}
    assert isinstance(deleted, Exception), deleted
    assert DELETED == before, "the refused call never reached the MCP server"


async def listings(gw: Gateway, token: str) -> dict[str, list[str]]:
    async with sdk_session(gw.proxy_url + MCP_PATH, token) as session:
        return {
            "tools": sorted(tool.name for tool in (await session.list_tools()).tools),
            "resources": sorted(str(r.uri) for r in (await session.list_resources()).resources),
            "templates": sorted(t.uri_template for t in (await session.list_resource_templates()).resource_templates),
            "prompts": sorted(prompt.name for prompt in (await session.list_prompts()).prompts),
        }


def test_lists_show_each_agent_only_what_its_rules_let_it_use(gateway: Gateway):
    everything = {
        "tools": ["add", "delete_customer", "whoami"],
        "resources": ["crm://customers/index", "crm://invoices/all"],
        "templates": ["crm://customers/{customer_id}"],
        "prompts": ["purge_advice", "summarize"],
    }
    admin = asyncio.run(listings(gateway, gateway.mint(ADMIN)))
    assert admin == {**everything, "resources": ["crm://customers/index"], "prompts": ["summarize"]}
    reader = asyncio.run(listings(gateway, gateway.mint(READER)))
    assert reader == {**admin, "tools": ["add", "whoami"]}
    bare = asyncio.run(listings(gateway, gateway.mint(MCP_SCOPE)))
    assert bare == {"tools": ["whoami"], "resources": [], "templates": [], "prompts": []}


def test_an_admin_deletes_only_within_the_arguments_schema(gateway: Gateway):
    before = list(DELETED)
    allowed, refused = asyncio.run(
        session_calls(
            gateway,
            gateway.mint(ADMIN),
            ("delete_customer", {"customer_id": "c2", "region": "eu"}),
            ("delete_customer", {"customer_id": "c3", "region": "us"}),
        )
    )
    assert not isinstance(allowed, Exception) and allowed.content[0].text == "deleted c2 in eu"
    assert isinstance(refused, Exception)
    assert DELETED == [*before, "c2"]


def post(gw: Gateway, body: bytes | dict[str, Any], token: str | None = None, **headers: str) -> httpx2.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
    sent["Authorization"] = f"Bearer {token or gw.mint(READER)}"
    return httpx2.post(gw.proxy_url + MCP_PATH, content=raw, headers=sent, timeout=10)


def tool_call(name: Any, request_id: Any = 41, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def posts_reaching(upstream: McpUpstream) -> int:
    return sum(1 for request in upstream.seen if request.method == "POST")


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "reason"),
    [
        (tool_call("delete_customer", customer_id="c", region="eu"), {}, 403, -32003, "insufficient_scope"),
        (tool_call("drop_database"), {}, 403, -32003, "no_matching_rule"),
        (
            b'{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"add","name":"delete_customer"}}',
            {},
            400,
            -32700,
            "mcp_parse_error",
        ),
        (json.dumps([tool_call("add")]).encode(), {}, 400, -32600, "mcp_invalid_message"),
        (tool_call(["delete_customer"]), {}, 400, -32602, "mcp_invalid_params"),
        (tool_call("add"), {"Mcp-Name": "whoami"}, 400, -32020, "mcp_header_mismatch"),
        (
            tool_call("delete_customer"),
            {"Mcp-Name": "=?base64?" + base64.b64encode(b"add").decode() + "?="},
            400,
            -32020,
            "mcp_header_mismatch",
        ),
        (tool_call("add"), {"Mcp-Method": "tools/list"}, 400, -32020, "mcp_header_mismatch"),
        (tool_call("add"), {"Content-Type": "text/plain"}, 415, -32600, "unsupported_media_type"),
    ],
    ids=[
        "scope",
        "no-rule",
        "duplicate-key",
        "batch",
        "name-not-string",
        "mcp-name",
        "mcp-name-base64",
        "mcp-method",
        "content-type",
    ],
)
def test_refusals_answer_in_json_rpc_and_forward_nothing(
    gateway: Gateway, upstream: McpUpstream, body: Any, headers: dict[str, str], status: int, code: int, reason: str
):
    before = posts_reaching(upstream)
    response = post(gateway, body, **headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["jsonrpc"] == "2.0" and answer["error"]["code"] == code
    if status == 403 or reason == "mcp_header_mismatch":
        assert answer["id"] == 41, "the JSON-RPC id of the refused request"
    assert answer["error"]["data"]["request_id"] == response.headers["x-request-id"]
    if reason == "insufficient_scope":
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and f'scope="{MCP_SCOPE} crm.admin"' in challenge
    else:
        assert "www-authenticate" not in response.headers, "more scopes would not help"
    gateway.wait_audit(lambda e: e.get("request_id") == response.headers["x-request-id"] and e.get("reason") == reason)
    assert posts_reaching(upstream) == before


def test_the_401_names_the_routes_scopes_so_a_narrow_agent_can_finish_the_sdks_flow(gateway: Gateway):
    # Finding no scope here, the SDK would ask for every scope in scopes_supported, refused to a narrow agent.
    response = httpx2.post(gateway.proxy_url + MCP_PATH, json=tool_call("add"), timeout=10)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert f'scope="{MCP_SCOPE}"' in challenge and "resource_metadata=" in challenge


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_body_on_another_method_than_post_is_refused_unread(gateway: Gateway, upstream: McpUpstream, method: str):
    before = len(upstream.seen)
    headers = {"Authorization": f"Bearer {gateway.mint(READER)}", "Content-Type": "application/json"}
    body = json.dumps(tool_call("delete_customer", customer_id="c", region="eu")).encode()
    response = httpx2.request(method, gateway.proxy_url + MCP_PATH, content=body, headers=headers, timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert len(upstream.seen) == before


def test_a_message_over_max_message_bytes_is_413_before_anything_is_forwarded(gateway: Gateway, upstream: McpUpstream):
    before = posts_reaching(upstream)
    response = post(gateway, tool_call("add", padding="x" * 20_000))
    assert response.status_code == 413
    assert posts_reaching(upstream) == before


def test_audit_names_the_mcp_method_and_tool(gateway: Gateway):
    response = post(gateway, tool_call("drop_database", request_id="q-1"))
    event = gateway.wait_audit(lambda e: e.get("request_id") == response.headers["x-request-id"])
    assert (event["mcp_method"], event["mcp_name"], event["decision"]) == ("tools/call", "drop_database", "deny")


def test_metrics_count_decisions_by_route_method_and_rule_pattern_never_by_sent_name(gateway: Gateway):
    post(gateway, tool_call("drop_database_" + "x" * 40))
    post(gateway, tool_call("delete_customer", customer_id="c", region="eu"))
    post(gateway, b"[]")
    metrics = gateway.metrics()
    counted = [
        sample.labels
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "tollbooth_mcp_decisions_total"
    ]
    route = {"route": "crm-mcp", "decision": "deny"}
    assert {**route, "method": "tools/call", "rule": "none", "reason": "no_matching_rule"} in counted
    assert {**route, "method": "tools/call", "rule": "delete_*", "reason": "insufficient_scope"} in counted
    assert {**route, "method": "invalid", "rule": "none", "reason": "mcp_invalid_message"} in counted
    assert "drop_database_" not in metrics


def test_routes_without_mcp_rules_keep_refusing_nothing_new(tmp_path: Path, upstream: McpUpstream):
    # The plain route of tests/e2e/test_mcp.py: any tool, the route's scope alone.
    gw = start_mcp_gateway(tmp_path, upstream)
    try:
        (deleted,) = asyncio.run(
            session_calls(gw, gw.mint(MCP_SCOPE), ("delete_customer", {"customer_id": "c9", "region": "us"}))
        )
        assert not isinstance(deleted, Exception) and "c9" in DELETED
    finally:
        gw.stop()
