"""A route's `mcp:` rules compiled once per config, and the verdict on one message (DESIGN.md, "MCP-aware routes").

Rules are tried in file order and the first whose pattern matches wins; a tool, resource or prompt no rule matches
is denied. Every other method, and a client's response to a server request, needs only the route's own scopes,
which the route already checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema_rs

from gateway.config import McpConfig
from gateway.mcp.message import NAMED_METHODS, McpMessage
from gateway.principal import Principal
from gateway.state.approvals import HoldPolicy, hold_policy

Kind = Literal["tools", "resources", "prompts"]
# JSON-RPC error code of every gateway denial (-32001 is the SDK's own timeout code, so not that).
DENIED = -32003


def glob_pattern(glob: str) -> re.Pattern[str]:
    """`search_*` → a regex matching the whole name; `*` is any run of characters, nothing else is special."""
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Rule:
    kind: Kind
    index: int
    glob: str
    pattern: re.Pattern[str]
    scopes: tuple[str, ...]
    delegation: str
    arguments: Any  # a compiled jsonschema_rs validator, or None
    approval: HoldPolicy | None = None  # a tool rule's `approval: required`

    @property
    def label(self) -> str:
        return f"{self.kind}[{self.index}] ({self.glob})"


# Names come from callers, so the memo of name → rule is bounded: past this many it starts over.
_MEMO_SIZE = 4096


@dataclass(frozen=True, slots=True)
class McpRules:
    max_message_bytes: int
    rules: dict[Kind, tuple[Rule, ...]]
    # Agents call the same few tools over and over: matching each name against every glob once is enough.
    _memo: dict[tuple[Kind, str], Rule | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, mcp: McpConfig) -> McpRules:
        def compiled(kind: Kind, entries: Sequence[Any]) -> tuple[Rule, ...]:
            rules = []
            for i, entry in enumerate(entries):
                glob = entry.uri if kind == "resources" else entry.name
                schema = entry.arguments if kind == "tools" else None
                validator = jsonschema_rs.validator_for(schema) if schema is not None else None
                approval = hold_policy(entry) if kind == "tools" else None
                rules.append(
                    Rule(kind, i, glob, glob_pattern(glob), tuple(entry.scopes), entry.delegation, validator, approval)
                )
            return tuple(rules)

        return cls(
            mcp.max_message_bytes,
            {
                "tools": compiled("tools", mcp.tools),
                "resources": compiled("resources", mcp.resources),
                "prompts": compiled("prompts", mcp.prompts),
            },
        )

    def rule_for(self, kind: Kind, name: str) -> Rule | None:
        key = (kind, name)
        try:
            return self._memo[key]
        except KeyError:
            pass
        rule = next((rule for rule in self.rules[kind] if rule.pattern.fullmatch(name)), None)
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = rule
        return rule

    def allows(self, kind: Kind, name: str, principal: Principal) -> bool:
        """Whether a listed tool, resource or prompt is one this principal may use (for filtered lists)."""
        rule = self.rule_for(kind, name)
        return rule is not None and _delegation_ok(rule, principal) and all(s in principal.scopes for s in rule.scopes)


@dataclass(frozen=True, slots=True)
class Verdict:
    allow: bool
    reason: str  # for audit and metrics: allowed, insufficient_scope, no_matching_rule, ...
    description: str
    scopes: tuple[str, ...] = ()  # for insufficient_scope: everything the call needs (route's and rule's)
    rule: Rule | None = None


def _delegation_ok(rule: Rule, principal: Principal) -> bool:
    if rule.delegation == "required":
        return principal.delegated
    if rule.delegation == "forbidden":
        return not principal.delegated
    return True


def decide(rules: McpRules, route_scopes: tuple[str, ...], message: McpMessage, principal: Principal) -> Verdict:
    """The verdict on one message that already passed the route's own checks."""
    named = NAMED_METHODS.get(message.method or "") if message.kind == "request" else None
    if named is None or message.name is None:
        return Verdict(True, "allowed", "needs only the route's scopes")
    kind = named[0]
    rule = rules.rule_for(kind, message.name)
    what = f"{kind[:-1]} '{message.name}'"
    if rule is None:
        return Verdict(False, "no_matching_rule", f"no rule allows {what}")
    missing = [scope for scope in rule.scopes if scope not in principal.scopes]
    if missing:
        needed = tuple(dict.fromkeys((*route_scopes, *rule.scopes)))
        return Verdict(False, "insufficient_scope", f"{what} needs scopes {' '.join(missing)}", needed, rule)
    if not _delegation_ok(rule, principal):
        if rule.delegation == "required":
            return Verdict(False, "delegation_required", f"{what} needs a delegated token", rule=rule)
        return Verdict(False, "delegation_forbidden", f"{what} does not accept delegated tokens", rule=rule)
    if rule.arguments is not None and not rule.arguments.is_valid(message.arguments or {}):
        error = next(iter(rule.arguments.iter_errors(message.arguments or {})))
        where = "/".join(str(part) for part in error.instance_path) or "(top level)"
        return Verdict(False, "arguments_refused", f"{what}: arguments {where}: {error.message}", rule=rule)
    return Verdict(True, "allowed", f"allowed by {rule.label}", rule=rule)
