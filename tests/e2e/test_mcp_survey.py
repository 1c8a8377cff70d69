"""`tollbooth mcp draft` and `tollbooth check --mcp-coverage` against the SDK-built MCP server: what it offers,
read with the upstream's own credentials, becomes a draft block or a coverage report; an unreachable server is
said to be so."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp_support import MCP_PATH, UPSTREAM_CREDENTIAL, McpUpstream, start_mcp_upstream
from support import free_port


@pytest.fixture(scope="module")
def upstream() -> Iterator[McpUpstream]:
    server, stop = start_mcp_upstream()
    yield server
    stop()


def write_config(tmp: Path, url: str, mcp: dict[str, Any] | None = None) -> Path:
    route: dict[str, Any] = {"name": "crm-mcp", "upstream": "crm", "path": MCP_PATH, "scopes": ["mcp"]}
    if mcp is not None:
        route["mcp"] = mcp
    config = {
        "upstreams": {"crm": {"url": url, "headers": {"Authorization": UPSTREAM_CREDENTIAL}}},
        "routes": [route, {"name": "plain", "upstream": "crm", "path": "/v1/x", "scopes": ["crm.read"]}],
    }
    path = tmp / "tollbooth.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tollbooth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_draft_lists_the_servers_offer_with_scopes_from_tool_annotations(upstream: McpUpstream, tmp_path: Path):
    config = write_config(tmp_path, upstream.url)
    done = tollbooth("mcp", "draft", "--config", str(config), "--route", "crm-mcp")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# A draft mcp: block for route crm-mcp")
    block = yaml.safe_load(done.stdout)["mcp"]
    scopes = {rule["name"]: rule["scopes"] for rule in block["tools"]}
    assert scopes == {"whoami": ["crm.read"], "add": ["crm.write"], "delete_customer": ["crm.admin"]}
    assert {rule["uri"] for rule in block["resources"]} == {
        "crm://customers/index",
        "crm://invoices/all",
        "crm://customers/*",
    }
    assert [rule["name"] for rule in block["prompts"]] == ["summarize", "purge_advice"]
    # The upstream's credential went to the MCP server: the draft is what the gateway itself would reach.
    posts = [seen for seen in upstream.seen if seen.method == "POST"]
    assert posts and all(dict(seen.headers)[b"authorization"] == UPSTREAM_CREDENTIAL.encode() for seen in posts)


def test_a_draft_pasted_into_the_route_loads_and_covers_everything(upstream: McpUpstream, tmp_path: Path):
    draft = tollbooth("mcp", "draft", "--config", str(write_config(tmp_path, upstream.url)), "--route", "crm-mcp")
    config = write_config(tmp_path, upstream.url, yaml.safe_load(draft.stdout)["mcp"])
    done = tollbooth("check", "--strict", "--mcp-coverage", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")


def test_coverage_names_what_no_rule_covers_and_rules_that_match_nothing(upstream: McpUpstream, tmp_path: Path):
    rules = {"tools": [{"name": "add"}, {"name": "export_*"}], "prompts": [{"name": "summarize"}]}
    done = tollbooth("check", "--mcp-coverage", "--config", str(write_config(tmp_path, upstream.url, rules)))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert "warning: route 'crm-mcp': tool 'delete_customer' is offered but no rule covers it (denied)" in warnings
    assert (
        "warning: route 'crm-mcp': resource 'crm://invoices/all' is offered but no rule covers it (denied)" in warnings
    )
    assert "warning: route 'crm-mcp': rule tools[1] (export_*) matches nothing the MCP server offers" in warnings
    assert not any("'add'" in w or "summarize" in w for w in warnings)
    strict = tollbooth(
        "check", "--strict", "--mcp-coverage", "--config", str(write_config(tmp_path, upstream.url, rules))
    )
    assert strict.returncode == 1


def test_an_unreachable_server_is_said_to_be_so(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"
    draft = tollbooth("mcp", "draft", "--config", str(write_config(tmp_path, url)), "--route", "crm-mcp")
    assert draft.returncode == 2 and draft.stdout == ""
    assert f"cannot list what the MCP server at {url}{MCP_PATH} offers: " in draft.stderr
    check = tollbooth("check", "--mcp-coverage", "--config", str(write_config(tmp_path, url, {"tools": []})))
    assert check.returncode == 1 and "cannot list what the MCP server" in check.stderr


def test_draft_names_an_unknown_route(tmp_path: Path):
    done = tollbooth("mcp", "draft", "--config", str(write_config(tmp_path, "http://127.0.0.1:9")), "--route", "nope")
    assert done.returncode == 1 and "no route named 'nope'; routes: crm-mcp, plain" in done.stderr
