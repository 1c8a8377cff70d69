"""What an MCP server offers, asked with the official `mcp` SDK client: its tools (with their annotations),
resources, resource templates and prompts, every page of each. And what follows from it for a route's rules:
a draft `mcp:` block, and the coverage of the rules a route has.

Used by `tollbooth mcp draft` and `tollbooth check --mcp-coverage`; never by the proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from gateway.mcp.rules import Kind, McpRules


class SurveyError(Exception):
    """The MCP server could not be reached or did not answer as one; the message says which and why."""


@dataclass(frozen=True)
class Offer:
    tools: list[dict[str, Any]] = field(default_factory=list)  # {"name", "read_only", "destructive"}
    resources: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def names(self, kind: Kind) -> list[str]:
        if kind == "tools":
            return [tool["name"] for tool in self.tools]
        return self.resources + self.templates if kind == "resources" else list(self.prompts)


async def _all_pages(fetch: Callable[[str | None], Awaitable[Any]], items: str) -> list[Any]:
    found: list[Any] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        found += getattr(page, items)
        cursor = page.next_cursor
        if not cursor:
            return found


async def survey(url: str, headers: dict[str, str], *, http_timeout: float = 15.0) -> Offer:
    """Connect to the MCP server at `url` with `headers` (the upstream's own credentials) and list what it offers."""
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import PaginatedRequestParams

    def params(cursor: str | None) -> PaginatedRequestParams | None:
        return PaginatedRequestParams(cursor=cursor) if cursor else None

    try:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=http_timeout) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            initialized = await session.initialize()
            capabilities = initialized.capabilities
            tools, resources, templates, prompts = [], [], [], []
            if capabilities.tools:
                tools = await _all_pages(lambda c: session.list_tools(params=params(c)), "tools")
            if capabilities.resources:
                resources = await _all_pages(lambda c: session.list_resources(params=params(c)), "resources")
                templates = await _all_pages(
                    lambda c: session.list_resource_templates(params=params(c)), "resource_templates"
                )
            if capabilities.prompts:
                prompts = await _all_pages(lambda c: session.list_prompts(params=params(c)), "prompts")
    except Exception as exc:  # the SDK raises transport errors inside exception groups; say the cause plainly
        raise SurveyError(f"cannot list what the MCP server at {url} offers: {_cause(exc)}") from None
    return Offer(
        tools=[
            {
                "name": tool.name,
                "read_only": bool(tool.annotations and tool.annotations.read_only_hint),
                "destructive": bool(tool.annotations and tool.annotations.destructive_hint),
            }
            for tool in tools
        ],
        resources=[str(resource.uri) for resource in resources],
        templates=[template.uri_template for template in templates],
        prompts=[prompt.name for prompt in prompts],
    )


def _cause(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def draft_rules(offer: Offer, prefix: str) -> dict[str, Any]:
    """A draft `mcp:` block: read tools (readOnlyHint) need `<prefix>.read`, destructive ones (destructiveHint)
    `<prefix>.admin`, the rest `<prefix>.write`; resources and prompts `<prefix>.read`. Nothing else is allowed."""

    def scope_of(tool: dict[str, Any]) -> str:
        level = "read" if tool["read_only"] else "admin" if tool["destructive"] else "write"
        return f"{prefix}.{level}"

    block: dict[str, Any] = {"tools": [{"name": tool["name"], "scopes": [scope_of(tool)]} for tool in offer.tools]}
    if offer.resources or offer.templates:
        block["resources"] = [
            {"uri": uri.split("{", 1)[0] + "*" if "{" in uri else uri, "scopes": [f"{prefix}.read"]}
            for uri in dict.fromkeys([*offer.resources, *offer.templates])
        ]
    if offer.prompts:
        block["prompts"] = [{"name": name, "scopes": [f"{prefix}.read"]} for name in offer.prompts]
    return block


def coverage(rules: McpRules, offer: Offer) -> tuple[list[str], list[str]]:
    """(what the server offers that no rule covers, rules that match nothing it offers), as sentences' subjects."""
    uncovered: list[str] = []
    unused: list[str] = []
    kinds: tuple[Kind, ...] = ("tools", "resources", "prompts")
    for kind in kinds:
        names = offer.names(kind)
        uncovered += [f"{kind[:-1]} '{name}'" for name in names if rules.rule_for(kind, name) is None]
        unused += [rule.label for rule in rules.rules[kind] if not any(rule.pattern.fullmatch(n) for n in names)]
    return uncovered, unused
