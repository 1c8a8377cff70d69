"""`tollbooth explain --mcp-tool/--mcp-resource/--mcp-prompt`: the verdict of a route's mcp: rules, as the proxy's."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config
from gateway.explain import explain

CONFIG = {
    "upstreams": {"mcp": {"url": "http://127.0.0.1:9"}},
    "routes": [
        {
            "name": "crm-mcp",
            "path": "/mcp",
            "scopes": ["mcp"],
            "mcp": {
                "tools": [
                    {"name": "search_*", "scopes": ["crm.read"]},
                    {
                        "name": "delete_customer",
                        "scopes": ["crm.admin"],
                        "arguments": {"type": "object", "required": ["region"]},
                    },
                ],
                "resources": [{"uri": "crm://customers/*", "scopes": ["crm.read"]}],
                "prompts": [{"name": "summarize"}],
            },
        },
        {"name": "plain", "path": "/plain", "scopes": ["mcp"]},
    ],
}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "tollbooth.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def run(
    config_path: Path, mcp: tuple[str, str, dict[str, Any]] | None, *scopes: str, path: str = "/mcp"
) -> dict[str, Any]:
    config = load_config(config_path, env={}).config
    return asyncio.run(
        explain(
            config,
            method="POST",
            path=path,
            token=None,
            scopes=list(scopes),
            agent=None,
            subject=None,
            delegation=[],
            mcp=mcp,
        )
    )


@pytest.mark.parametrize(
    ("call", "scopes", "reason", "rule"),
    [
        (("tools/call", "search_x", {}), ("mcp crm.read",), "allowed", "tools[0] (search_*)"),
        (
            ("tools/call", "delete_customer", {"region": "eu"}),
            ("mcp crm.read",),
            "insufficient_scope",
            "tools[1] (delete_customer)",
        ),
        (("tools/call", "delete_customer", {}), ("mcp crm.admin",), "arguments_refused", "tools[1] (delete_customer)"),
        (("tools/call", "drop", {}), ("mcp crm.admin",), "no_matching_rule", None),
        (("resources/read", "crm://customers/1", {}), ("mcp crm.read",), "allowed", "resources[0] (crm://customers/*)"),
        (("prompts/get", "other", {}), ("mcp",), "no_matching_rule", None),
    ],
)
def test_explain_gives_the_rules_verdict(config_path: Path, call: Any, scopes: Any, reason: str, rule: str | None):
    result = run(config_path, call, *scopes)
    assert (result["reason"], result["mcp"]["rule"]) == (reason, rule)
    assert result["allow"] is (reason == "allowed") and result["status"] == (200 if reason == "allowed" else 403)


def test_the_route_decides_first_and_a_plain_route_says_it_has_no_rules(config_path: Path):
    assert run(config_path, ("tools/call", "search_x", {}), "crm.read")["reason"] == "insufficient_scope"
    plain = run(config_path, ("tools/call", "anything", {}), "mcp", path="/plain")
    assert plain["allow"] and "mcp" not in plain
    assert plain["notes"] == ["route 'plain' has no mcp: block: any MCP message passes with the route's scopes"]


def explain_cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", "explain", "--config", str(config_path), "POST", "/mcp", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_cli_prints_the_rule_and_exits_1_on_deny(config_path: Path):
    arguments = '{"region": "eu"}'
    done = explain_cli(
        config_path, "--scope", "mcp crm.read", "--mcp-tool", "delete_customer", "--mcp-arguments", arguments
    )
    assert done.returncode == 1, done.stderr
    assert "reason: insufficient_scope: tool 'delete_customer' needs scopes crm.admin" in done.stdout
    assert "mcp:    tools/call delete_customer -> tools[1] (delete_customer)" in done.stdout
    bad = explain_cli(config_path, "--mcp-tool", "t", "--mcp-arguments", "[1]")
    assert bad.returncode == 2 and "--mcp-arguments must be a JSON object" in bad.stderr
