"""Authorize: (method, raw path, principal) → the route that governs the request → allow or deny, and why.

Pure functions and data, used in this order by the proxy app:
- `normalize_path`: the path as received → the one decoded path we match, or `PathRejected` (400) whenever an
  upstream could read the same bytes as a different path. We forward the raw path unchanged, so the path we
  match must be the path every reasonable upstream sees.
- `RouteTable`: the config's routes compiled once into a matcher (exact-path dict, then a segment trie).
- `authorize`: route + principal → `Decision`.
`route_warnings` serves `tollbooth check`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from gateway.config import HTTP_METHODS, Config, RateLimit, RouteConfig
from gateway.mcp.rules import McpRules
from gateway.principal import Principal
from gateway.proxy.answers import Refusal
from gateway.state.approvals import HoldPolicy, hold_policy

# The methods a route may list (RouteConfig accepts these); a route without `methods` gets all of them.
# TRACE and CONNECT are never proxied: TRACE reflects headers (cross-site tracing), CONNECT opens tunnels.


class PathRejected(Exception):
    """A request path that cannot be normalized unambiguously; `reason` is a short sentence for the 400 body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Raw bytes refused before decoding: controls and space (request-line injection, RFC 3986 §2 excludes them),
# backslash (a separator for Windows/IIS and some frameworks), ';' (path parameters that servlet containers
# strip: "/admin;x" would be "/admin" there), '#'/'?' (a re-parsing upstream or client library would cut the
# path there), and '//' (empty segments that nginx-style upstreams merge).
_RAW_REJECTED = re.compile(rb"[\x00-\x20\x7f\\;#?]|//")
_RAW_REASONS = {
    b"//": "empty segment ('//') in path",
    b"\\": "backslash in path",
    b";": "';' path parameter in path",
    b"#": "'#' in path",
    b"?": "'?' in path",
    b" ": "unencoded space in path (send it as %20)",
}
# RFC 3986 §2.1: pct-encoded = "%" HEXDIG HEXDIG; anything else is malformed and upstreams disagree on it.
_MALFORMED_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Escapes whose decoded byte would change the path's structure for someone: '/' and '\' (segment separators
# after decoding), ';', '#', '?', and controls.
_STRUCTURAL_ESCAPE = re.compile(rb"%(2[Ff]|5[Cc]|3[Bb]|23|3[Ff]|[01][0-9A-Fa-f]|7[Ff])")
_ESCAPE_REASONS = {
    "2F": "encoded slash (%2F) in path",
    "5C": "encoded backslash (%5C) in path",
    "3B": "encoded ';' (%3B) in path",
    "23": "encoded '#' (%23) in path",
    "3F": "encoded '?' (%3F) in path",
}
# Decoding once must leave no escape behind: an upstream (or a framework behind it) that decodes again would
# see "/a%252fb" as "/a/b" while we matched "/a%2fb".
_DOUBLE_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_C1_CONTROLS = re.compile("[\x80-\x9f]")


def normalize_path(raw_path: bytes) -> str:
    """Decode the wire path once (UTF-8) into the path used for matching, or raise PathRejected.

    Accepted paths are already in the form an RFC 3986 §6.2.2 normalizing upstream reaches (decode once,
    remove_dot_segments §5.2.4, merge slashes), so forwarding the raw path unchanged cannot reach another route.
    Case and a trailing slash are kept: both are significant to matching.
    """
    if not raw_path.startswith(b"/"):
        raise PathRejected("path must start with '/'")
    found = _RAW_REJECTED.search(raw_path)
    if found:
        raise PathRejected(_RAW_REASONS.get(found.group(), "control character in path"))
    # Fast path: most paths have no escapes, and ASCII needs no Unicode checks.
    path = _decode_escapes(raw_path) if b"%" in raw_path else _utf8(raw_path)
    if not path.isascii():
        _check_unicode(path)
    if "." in path and _has_dot_segment(path):
        # RFC 3986 §5.2.4: an upstream removes dot segments, so "/public/../admin" would reach "/admin".
        raise PathRejected("dot segment ('.' or '..') in path")
    return path


def _decode_escapes(raw_path: bytes) -> str:
    if _MALFORMED_ESCAPE.search(raw_path):
        raise PathRejected("malformed percent-escape in path (use %XX with two hex digits)")
    found = _STRUCTURAL_ESCAPE.search(raw_path)
    if found:
        code = found.group(1).decode().upper()
        raise PathRejected(_ESCAPE_REASONS.get(code, f"encoded control character (%{code}) in path"))
    path = _utf8(unquote_to_bytes(raw_path))
    if _DOUBLE_ENCODED.search(path):
        raise PathRejected("double percent-encoding in path (%25 followed by hex digits)")
    return path


def _utf8(data: bytes) -> str:
    try:
        # Strict UTF-8 also refuses overlong forms (%C0%AE for '.') and surrogates (RFC 3629 §3).
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PathRejected("path is not valid UTF-8") from None


def _check_unicode(path: str) -> None:
    if _C1_CONTROLS.search(path):
        raise PathRejected("control character in path")
    # An upstream that applies Unicode compatibility normalization would read "/．．/admin" (fullwidth dots) as
    # "/../admin" and "/ａdmin" as "/admin": refuse what NFKC would change rather than match a different path.
    if not unicodedata.is_normalized("NFKC", path):
        raise PathRejected("path is not in Unicode NFKC form (an upstream might normalize it to another path)")


def _has_dot_segment(path: str) -> bool:
    # Every segment follows a '/', so a dot segment is "/./", "/../", or one of those at the end.
    return "/./" in path or "/../" in path or path.endswith(("/.", "/.."))


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled route rule. `methods` None means every method in HTTP_METHODS."""

    name: str
    upstream: str
    methods: frozenset[str] | None
    scopes: tuple[str, ...]
    delegation: str
    public: bool
    rate_limit: RateLimit | None
    pattern: str
    mcp: McpRules | None = None  # an MCP route's compiled `mcp:` rules
    approval: HoldPolicy | None = None  # `approval: required`: held for a person's decision

    @classmethod
    def from_config(cls, route: RouteConfig, config: Config) -> Route:
        return cls(
            name=route.name,
            upstream=config.upstream_for(route),
            methods=frozenset(route.methods) if route.methods is not None else None,
            scopes=tuple(route.scopes),
            delegation=route.delegation,
            public=route.public,
            rate_limit=route.rate_limit,
            pattern=route.path,
            mcp=McpRules.from_config(route.mcp) if route.mcp is not None else None,
            approval=hold_policy(route),
        )

    @property
    def effective_methods(self) -> frozenset[str]:
        return frozenset(HTTP_METHODS) if self.methods is None else self.methods


@dataclass(slots=True)
class _Node:
    """A trie node over path segments; each field holds the first route in file order for that shape."""

    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None  # a `{x}` segment
    rest: Route | None = None  # a `{x:path}` segment ends the pattern here
    end: Route | None = None  # the pattern ends exactly here


def _segments(pattern: str) -> list[str]:
    return pattern.split("/")[1:]


def _is_rest(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith(":path}")


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and not _is_rest(segment)


def _insert(root: _Node, segments: list[str], route: Route) -> None:
    node = root
    for segment in segments:
        if _is_rest(segment):
            node.rest = node.rest or route
            return
        if _is_param(segment):
            node.param = node.param or _Node()
            node = node.param
        else:
            node = node.literals.setdefault(segment, _Node())
    node.end = node.end or route


def _search(node: _Node, segments: list[str], i: int) -> Route | None:
    """Depth-first, literal before `{x}` before `{x:path}`: the first match is the most specific one.

    Specificity compares segment by segment from the left, which is exactly the order this search tries.
    """
    if i == len(segments):
        return node.end
    segment = segments[i]
    child = node.literals.get(segment)
    if child is not None:
        found = _search(child, segments, i + 1)
        if found is not None:
            return found
    if not segment:
        return None  # `{x}` and `{x:path}` never match an empty segment (only a trailing slash gives one)
    if node.param is not None:
        found = _search(node.param, segments, i + 1)
        if found is not None:
            return found
    return node.rest


class RouteTable:
    """The routes of one config, compiled per method into an exact-path dict and a segment trie."""

    __slots__ = ("routes", "_by_method")

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._by_method: dict[str, tuple[dict[str, Route], _Node]] = {}
        for method in HTTP_METHODS:
            exact: dict[str, Route] = {}
            trie = _Node()
            for route in self.routes:
                if method not in route.effective_methods:
                    continue
                segments = _segments(route.pattern)
                if any(s.startswith("{") for s in segments):
                    _insert(trie, segments, route)
                else:
                    # A fully literal pattern outranks every other match of its path, so a dict hit is final.
                    exact.setdefault(route.pattern, route)
            self._by_method[method] = (exact, trie)

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        return cls(Route.from_config(route, config) for route in config.routes)

    def match(self, method: str, path: str) -> Route | None:
        """The most specific route for a normalized path, then the first in the file; None when none matches.

        Methods are case-sensitive (RFC 9110 §9.1): "get" is not GET.
        """
        tables = self._by_method.get(method)
        if tables is None:
            return None
        exact, trie = tables
        route = exact.get(path)
        if route is not None:
            return route
        return _search(trie, path.split("/"), 1)

    def scopes_supported(self) -> list[str]:
        """Every scope some route requires, sorted (RFC 9728 `scopes_supported`)."""
        return sorted({scope for route in self.routes for scope in route.scopes})


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request.

    For `missing_token`, `route` and `required_scopes` are for audit and the `scope` hint only: the response must
    not otherwise tell an anonymous caller whether a route exists. Descriptions never contain '"' or '\\', so they
    fit an RFC 6750 §3 error_description as they are.
    """

    allow: bool
    status: int
    reason: str
    route: Route | None
    required_scopes: tuple[str, ...]
    description: str


def authorize(table: RouteTable, method: str, path: str, principal: Principal | None) -> Decision:
    """Decide one request. `principal` None means no token was sent (an invalid one was answered 401 already)."""
    route = table.match(method, path)
    if route is not None and route.public:
        return Decision(True, 200, "public", route, route.scopes, f"route '{route.name}' is public")
    if principal is None:
        scopes = route.scopes if route is not None else ()
        return Decision(False, 401, "missing_token", route, scopes, "a bearer token is required")
    if route is None:
        # Default deny: a path no rule names is not reachable with any token.
        return Decision(False, 403, "no_matching_route", None, (), "no route matches this method and path")
    missing = [scope for scope in route.scopes if scope not in principal.scopes]
    if missing:
        description = f"route '{route.name}' requires scopes {' '.join(route.scopes)}; missing {' '.join(missing)}"
        return Decision(False, 403, "insufficient_scope", route, route.scopes, description)
    if route.delegation == "required" and not principal.delegated:
        description = f"route '{route.name}' requires a delegated token (one issued through token exchange)"
        return Decision(False, 403, "delegation_required", route, route.scopes, description)
    if route.delegation == "forbidden" and principal.delegated:
        description = f"route '{route.name}' does not accept delegated tokens; use the agent's own token"
        return Decision(False, 403, "delegation_forbidden", route, route.scopes, description)
    return Decision(True, 200, "allowed", route, route.scopes, f"allowed by route '{route.name}'")


# RFC 6750 §3.1: no error code when the request carried no token; insufficient_scope lets clients step up.
_CHALLENGES = {"missing_token": "no_token", "insufficient_scope": "insufficient_scope"}


def permitted(decision: Decision) -> Route:
    """The route a decision lets the request through to, or the Refusal it answers with."""
    if not decision.allow:
        challenge = _CHALLENGES.get(decision.reason)
        raise Refusal(
            decision.status,
            decision.reason,
            decision.description,
            reason=decision.reason,
            challenge=challenge,
            scope=decision.required_scopes,
        )
    assert decision.route is not None  # every allowing decision names its route
    return decision.route


def _shape(pattern: str) -> tuple[str, ...]:
    """The pattern with parameter names erased: two routes of one shape match exactly the same paths."""
    return tuple("{:path}" if _is_rest(s) else "{}" if _is_param(s) else s for s in _segments(pattern))


def _label(route: RouteConfig, index: int) -> str:
    return f'route "{route.name}" (routes[{index}])'


def _unmatchable(route: RouteConfig, index: int) -> str | None:
    """A warning when normalize_path rejects every path the pattern describes (e.g. an empty segment)."""
    sample = "/".join("x" if s.startswith("{") else s for s in route.path.split("/"))
    try:
        normalize_path(quote(sample, safe="/").encode())
    except PathRejected as rejected:
        return f"{_label(route, index)} can never match: the proxy rejects paths like {route.path} ({rejected.reason})"
    return None


def _shadowing(config: Config, index: int) -> str | None:
    """A warning when earlier routes of the same shape take some or all of this route's methods.

    Only a same-shape route can win for every path of another: a more specific route covers fewer paths, and a
    less specific one loses to it. So "shadowed" means: for a method, an earlier route has the same shape.
    """
    route = config.routes[index]
    shape = _shape(route.path)
    methods = frozenset(route.methods or HTTP_METHODS)
    taken: dict[int, set[str]] = {}  # earlier route index → the methods it takes from this one
    for earlier in range(index):
        other = config.routes[earlier]
        if _shape(other.path) != shape:
            continue
        other_methods = frozenset(other.methods or HTTP_METHODS)
        if other_methods == methods:
            return f"{_label(route, index)} duplicates {_label(other, earlier)}: same path pattern and methods"
        for method in methods & other_methods:
            if not any(method in done for done in taken.values()):
                taken.setdefault(earlier, set()).add(method)
    if not taken:
        return None
    by = "; and by ".join(
        f"{_label(config.routes[i], i)}: both match {_methods_text(taken[i])} {route.path}" for i in sorted(taken)
    )
    left = methods.difference(*taken.values())
    if not left:
        return f"{_label(route, index)} is shadowed by {by}"
    return f"{_label(route, index)} is partly shadowed by {by}; it only ever gets {_methods_text(left)}"


def _methods_text(methods: Collection[str]) -> str:
    return ", ".join(m for m in HTTP_METHODS if m in methods)


def route_warnings(config: Config) -> list[str]:
    """Sentences for `tollbooth check` about routes that never match for some or all of their methods.

    Indices count the routes of the main file first, then those of `routes_file`, as the loaded config holds them.
    """
    if not config.routes:
        # Default deny makes this legal, but it is never what a deployment means: usually a routes file that
        # lost its entries, or a chart's `routes` value left empty.
        return ["no routes: every request to the proxy is denied (403); add routes to the config or its routes_file"]
    warnings: list[str] = []
    for index, route in enumerate(config.routes):
        for warning in (_unmatchable(route, index), _shadowing(config, index)):
            if warning is not None:
                warnings.append(warning)
    return warnings
