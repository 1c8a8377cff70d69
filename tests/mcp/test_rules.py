"""The `mcp:` rules' verdicts: first match wins, globs, default deny, the rule's scopes, delegation and arguments
schema, and what a filtered list keeps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import McpConfig
from gateway.mcp.message import parse_message
from gateway.mcp.rules import McpRules, decide, glob_pattern
from gateway.principal import Principal

RULES = McpRules.from_config(
    McpConfig.model_validate(
        {
            "tools": [
                {"name": "search_*", "scopes": ["crm.read"]},
                {
                    "name": "delete_customer",
                    "scopes": ["crm.admin"],
                    "delegation": "required",
                    "arguments": {"type": "object", "properties": {"region": {"enum": ["eu"]}}, "required": ["region"]},
                },
                {"name": "delete_*", "scopes": ["crm.read"]},  # never reached for delete_customer: first match wins
                {"name": "robot_only", "delegation": "forbidden"},
            ],
            "resources": [{"uri": "crm://customers/*", "scopes": ["crm.read"]}],
            "prompts": [{"name": "*", "scopes": ["crm.read"]}],
        }
    )
)
ROUTE_SCOPES = ("mcp",)


def principal(*scopes: str, delegated: bool = False) -> Principal:
    return Principal(
        agent="bot",
        subject="alice" if delegated else "bot",
        scopes=frozenset(("mcp", *scopes)),
        jti="j",
        issuer="i",
        expires_at=2e9,
        issued_at=1e9,
        delegation=("bot",) if delegated else (),
    )


def message(method: str, **params: Any) -> Any:
    return parse_message(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())


def tool(name: str, **arguments: Any) -> Any:
    return message("tools/call", name=name, arguments=arguments)


@pytest.mark.parametrize(
    ("msg", "who", "reason"),
    [
        (tool("search_customers"), principal("crm.read"), "allowed"),
        (tool("search_customers"), principal(), "insufficient_scope"),
        (tool("search_"), principal("crm.read"), "allowed"),
        (tool("Search_customers"), principal("crm.read"), "no_matching_rule"),  # names are case-sensitive
        (tool("search_customers\n"), principal("crm.read"), "allowed"),  # `*` spans any character
        (tool("xsearch_customers"), principal("crm.read"), "no_matching_rule"),
        (tool("export_all"), principal("crm.read", "crm.admin"), "no_matching_rule"),
        (tool("delete_customer", region="eu"), principal("crm.admin", delegated=True), "allowed"),
        (tool("delete_customer", region="us"), principal("crm.admin", delegated=True), "arguments_refused"),
        (tool("delete_customer"), principal("crm.admin", delegated=True), "arguments_refused"),
        (tool("delete_customer", region="eu"), principal("crm.admin"), "delegation_required"),
        (tool("delete_customer", region="eu"), principal("crm.read", delegated=True), "insufficient_scope"),
        (tool("delete_orders"), principal("crm.read"), "allowed"),
        (tool("robot_only"), principal(delegated=True), "delegation_forbidden"),
        (tool("robot_only"), principal(), "allowed"),
        (message("resources/read", uri="crm://customers/42"), principal("crm.read"), "allowed"),
        (message("resources/subscribe", uri="crm://customers/42"), principal(), "insufficient_scope"),
        (message("resources/read", uri="crm://invoices/42"), principal("crm.read"), "no_matching_rule"),
        (message("prompts/get", name="summarize"), principal("crm.read"), "allowed"),
        (message("prompts/get", name="summarize"), principal(), "insufficient_scope"),
        (message("tools/list"), principal(), "allowed"),
        (message("initialize", protocolVersion="2025-06-18"), principal(), "allowed"),
        (message("completion/complete", ref={"type": "ref/prompt", "name": "x"}), principal(), "allowed"),
    ],
)
def test_verdicts(msg: Any, who: Principal, reason: str):
    assert decide(RULES, ROUTE_SCOPES, msg, who).reason == reason


def test_insufficient_scope_names_everything_the_call_needs():
    verdict = decide(RULES, ROUTE_SCOPES, tool("delete_customer", region="eu"), principal(delegated=True))
    assert (verdict.allow, verdict.scopes) == (False, ("mcp", "crm.admin"))
    assert verdict.rule is not None and verdict.rule.label == "tools[1] (delete_customer)"


def test_refused_arguments_say_where_and_why():
    verdict = decide(RULES, ROUTE_SCOPES, tool("delete_customer", region="us"), principal("crm.admin", delegated=True))
    assert verdict.description.startswith("tool 'delete_customer': arguments region: ")


def test_lists_keep_only_what_the_principal_may_use():
    reader = principal("crm.read")
    kept = [
        name
        for name in ("search_a", "delete_customer", "delete_x", "robot_only", "other")
        if RULES.allows("tools", name, reader)
    ]
    assert kept == ["search_a", "delete_x", "robot_only"]
    assert not RULES.allows("tools", "robot_only", principal(delegated=True))
    assert RULES.allows("resources", "crm://customers/1", reader) and not RULES.allows("resources", "crm://x", reader)


@pytest.mark.parametrize(
    ("glob", "name", "matches"),
    [
        ("a.b", "a.b", True),
        ("a.b", "axb", False),
        ("*", "", True),
        ("a*c", "abbbc", True),
        ("a*c", "abbbd", False),
        ("[x]", "[x]", True),
        ("[x]", "x", False),
        ("a?", "ab", False),
    ],
)
def test_globs_know_only_the_star(glob: str, name: str, matches: bool):
    assert bool(glob_pattern(glob).fullmatch(name)) is matches
