"""The `mcp:` block of a route (DESIGN.md, "MCP-aware routes"): what loads, and errors that name the file, the
route and the rule, a bad `arguments` JSON Schema among them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_byte_size

DESIGN_EXAMPLE = """
upstreams:
  crm: {url: http://127.0.0.1:9000}
routes:
  - name: crm-mcp
    path: /mcp
    methods: [GET, POST, DELETE]
    scopes: [mcp]
    mcp:
      max_message_bytes: 1MiB
      tools:
        - name: search_*
          scopes: [crm.read]
        - name: delete_customer
          scopes: [crm.admin]
          delegation: required
          arguments:
            type: object
            properties: {region: {enum: [eu]}}
            required: [region]
      resources:
        - uri: "crm://customers/*"
          scopes: [crm.read]
      prompts:
        - name: "*"
          scopes: [crm.read]
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "tollbooth.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, env={}).config


def problem(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    (only,) = caught.value.problems
    return only


def test_the_design_example_loads(tmp_path: Path) -> None:
    mcp = load(tmp_path, DESIGN_EXAMPLE).routes[0].mcp
    assert mcp.max_message_bytes == 1024 * 1024
    assert [(t.name, t.scopes, t.delegation) for t in mcp.tools] == [
        ("search_*", ["crm.read"], "allowed"),
        ("delete_customer", ["crm.admin"], "required"),
    ]
    assert mcp.tools[1].arguments["required"] == ["region"]
    assert [(r.uri, r.scopes) for r in mcp.resources] == [("crm://customers/*", ["crm.read"])]
    assert [p.name for p in mcp.prompts] == ["*"]


def test_an_empty_block_has_no_rules_and_other_routes_no_block(tmp_path: Path) -> None:
    config = load(tmp_path, route_with("{}\n") + "  - name: plain\n    path: /v1\n")
    assert config.routes[0].mcp.model_dump() == {
        "max_message_bytes": 1048576,
        "tools": [],
        "resources": [],
        "prompts": [],
    }
    assert config.routes[1].mcp is None


def route_with(mcp_block: str, **route: str) -> str:
    extra = "".join(f"    {key}: {value}\n" for key, value in route.items())
    body = textwrap.indent(textwrap.dedent(mcp_block), " " * 6)
    head = "upstreams:\n  crm: {url: http://127.0.0.1:9000}\nroutes:\n  - name: crm-mcp\n    path: /mcp\n"
    return f"{head}{extra}    mcp:\n{body}"


@pytest.mark.parametrize(
    ("block", "route", "says"),
    [
        (
            "tools:\n  - name: delete_customer\n    arguments: {type: object, required: 5}\n",
            {},
            "routes[0] (crm-mcp): mcp.tools[0].arguments: not a valid JSON Schema: 5 is not of type",
        ),
        (
            "tools:\n  - name: t\n    arguments: {properties: {a: {pattern: '('}}}\n",
            {},
            "mcp.tools[0].arguments: not a valid JSON Schema",
        ),
        (
            "tools:\n  - name: t\n    arguments: {$ref: 'https://schemas.example.com/x.json'}\n",
            {},
            "mcp.tools[0].arguments: $ref 'https://schemas.example.com/x.json' points outside the schema",
        ),
        ("tools:\n  - name: t\n    scopes: crm.read\n", {}, "mcp.tools[0].scopes"),
        ("tools:\n  - name: ''\n", {}, "mcp.tools[0].name"),
        ("tools:\n  - scopes: [a]\n", {}, 'mcp.tools[0]: required key "name" is missing'),
        ("resources:\n  - uri: 'crm://*'\n    name: x\n", {}, 'mcp.resources[0]: unknown key "name"'),
        ("prompts:\n  - name: p\n    arguments: {}\n", {}, "mcp.prompts[0]"),
        ("tools:\n  - name: t\n    delegation: maybe\n", {}, "mcp.tools[0].delegation"),
        ("max_message_bytes: 1 megabyte\n", {}, "mcp.max_message_bytes: '1 megabyte' is not a size: use 64KiB"),
        ("max_message_bytes: 0\n", {}, "mcp.max_message_bytes"),
        ("bogus: 1\n", {}, 'mcp: unknown key "bogus"'),
        ("tools: []\n", {"public": "true"}, "an MCP route needs tokens; it cannot be public"),
        ("tools: []\n", {"methods": "[GET]"}, "MCP clients send every message as a POST"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_a_bad_mcp_block_names_the_file_the_route_and_the_rule(
    tmp_path: Path, block: str, route: dict[str, str], says: str
) -> None:
    message = problem(tmp_path, route_with(block, **route))
    assert message.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0] (crm-mcp)"), message
    assert says in message, message


@pytest.mark.parametrize(
    ("value", "size"),
    [(1, 1), (512, 512), ("64KiB", 65536), ("1MiB", 1048576), ("500KB", 500000), (" 2 GiB ", 2 << 30)],
)
def test_byte_sizes(value: Any, size: int) -> None:
    assert parse_byte_size(value) == size


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1.5MiB", "1 TB", "", "MiB"])
def test_bad_byte_sizes_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_byte_size(value)
