"""Loading a config: YAML read strictly, ${VAR} expanded, the routes file and agents' key files read, every
problem collected before one ConfigError.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from gateway.config.messages import ConfigError, Loc, describe_validation_error, type_name, where_in
from gateway.config.models import AgentConfig, Config, RouteConfig, RoutesFile
from gateway.tokens.jwk import VERIFY_ALGORITHMS
from gateway.tokens.jwks import JwksError, parse_jwks


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path
    sources: tuple[Path, ...]  # every file the config was read from: the reloader watches these
    routes_path: Path | None = None  # the routes file, when `routes_file` names one
    inline_routes: int = -1  # how many of config.routes came from the main file (-1: all of them)

    def route_origin(self, index: int) -> str:
        """Where config.routes[index] is written: `routes.yaml: routes[2]`, counting within its own file."""
        if self.routes_path is None or self.inline_routes < 0 or index < self.inline_routes:
            return f"{self.path}: routes[{index}]"
        return f"{self.routes_path}: routes[{index - self.inline_routes}]"


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def expand_env(value: Any, loc: Loc, env: dict[str, str], problems: list[tuple[Loc, str]]) -> Any:
    """Expand ${VAR} and ${VAR:-default} in every string of a parsed YAML tree; report (location, problem).

    Expansion happens after parsing, so a value from the environment can never inject YAML structure, and
    the result is not expanded again. An unset ${VAR} without a default is an error: a silently empty
    credential is worse than no start. Like the shell's `:-`, the default also replaces an empty value.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, has_default, default = match.group(1), match.group(2), match.group(3)
        found = env.get(name)
        if found:
            return found
        if has_default is not None:
            return default or ""
        state = "is empty" if found == "" else "is not set"
        problems.append(
            (loc, f"environment variable {name} {state} (set it, or write ${{{name}:-default}} to give a default)")
        )
        return ""

    return _VAR.sub(substitute, value)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: YAML keeps the last silently, hiding an edit."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f'key "{key}" appears twice in one mapping (first on line {first.start_mark.line + 1}); keep one',
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        relative = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ConfigError([f"{path}: no such file{relative}; check the path"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader: plain data only)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: not valid YAML{at}: {problem}"]) from exc


def _check_references(config: Config, loaded: LoadedConfig) -> list[str]:
    """Cross-field rules: unique route names, known upstreams, public routes without scopes."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for i, route in enumerate(config.routes):
        where = f"{loaded.route_origin(i)} ({route.name})"
        if route.name in seen:
            problems.append(
                f"{where}: name: duplicate route name (first used by {seen[route.name]}); names must be unique"
            )
        seen.setdefault(route.name, loaded.route_origin(i))
        if route.upstream is not None and route.upstream not in config.upstreams:
            known = ", ".join(config.upstreams) or "none defined under `upstreams:`"
            hint = difflib.get_close_matches(route.upstream, list(config.upstreams), n=1)
            suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
            problems.append(f'{where}: upstream: unknown upstream "{route.upstream}"{suggestion}; known: {known}')
        elif route.upstream is None and not config.upstreams:
            problems.append(f"{where}: upstream: no upstream to forward to; define one under `upstreams:`")
        elif route.upstream is None and len(config.upstreams) > 1:
            problems.append(
                f"{where}: upstream: required when there is more than one upstream "
                f"(name one of: {', '.join(config.upstreams)})"
            )
        if route.public and route.scopes:
            problems.append(
                f"{where}: scopes: a public route takes no token, so it cannot require scopes "
                "(remove `scopes` or `public: true`)"
            )
    oidc = config.login.oidc
    if oidc is not None and oidc.issuer.rstrip("/") == config.issuer.url.rstrip("/"):
        problems.append(
            f"{loaded.path}: login.oidc: issuer: {oidc.issuer} is this token service itself; name the organisation's "
            "OpenID provider"
        )
    return problems + _check_subject_prefixes(config, loaded.path)


def _check_subject_prefixes(config: Config, path: Path) -> list[str]:
    """Two identity providers' `alice` must stay two subjects: with more than one (trusted issuers, and the
    OpenID provider people sign in with), each needs a prefix, and no prefix may begin another (`okta:` +
    `eu:alice` would be `okta:eu:` + `alice`)."""
    external = [
        (f"trusted_issuers[{i}] ({t.issuer})", t.issuer, t.subject_prefix)
        for i, t in enumerate(config.trusted_issuers)
        if t.issuer != config.issuer.url
    ]
    if config.login.oidc is not None:
        external.append(
            (f"login.oidc ({config.login.oidc.issuer})", config.login.oidc.issuer, config.login.oidc.subject_prefix)
        )
    if len(external) < 2:
        return []
    problems: list[str] = []
    for i, (label, _, prefix) in enumerate(external):
        where = f"{path}: {label}: subject_prefix"
        clash = next((other for j, other in enumerate(external) if j != i and other[2].startswith(prefix)), None)
        if not prefix:
            problems.append(
                f"{where}: required when more than one issuer is trusted, so that the same sub from two issuers "
                "names two subjects (for example subject_prefix: okta:)"
            )
        elif clash is not None:
            problems.append(
                f"{where}: {prefix!r} begins {clash[1]}'s {clash[2]!r}, so their "
                "subjects could collide; give each issuer a prefix no other one starts with"
            )
    return problems


# Top-level sections that may be left empty in YAML (`agents:` with every entry commented out).
_SECTIONS = ("proxy", "issuer", "admin", "redis", "audit", "upstreams", "agents", "trusted_issuers", "routes")


def _without_empty_sections(data: dict[Any, Any]) -> dict[Any, Any]:
    return {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}


def _expanded(raw: dict[Any, Any], path: Path, env: dict[str, str], problems: list[str]) -> dict[Any, Any]:
    found: list[tuple[Loc, str]] = []
    data: dict[Any, Any] = expand_env(raw, (), env, found)
    problems.extend(f"{path}: {where_in(loc, data)}: {problem}" for loc, problem in found)
    return data


def _load_routes_file(routes_path: Path, env: dict[str, str], problems: list[str]) -> list[RouteConfig]:
    routes_raw = _read_yaml(routes_path)
    if routes_raw is None:
        return []
    if not isinstance(routes_raw, dict):
        problems.append(f"{routes_path}: the top level must be a mapping with a `routes:` list, like `routes: []`")
        return []
    before = len(problems)
    routes_data = _without_empty_sections(_expanded(routes_raw, routes_path, env, problems))
    if len(problems) > before:
        return []  # the values that failed to expand would only add confusing follow-on errors
    try:
        return RoutesFile.model_validate(routes_data).routes
    except ValidationError as exc:
        problems.extend(describe_validation_error(exc, routes_data, RoutesFile, routes_path))
        return []


def _absolute(path: Path) -> Path:
    """Absolute, but symlinks kept: in a Kubernetes ConfigMap `routes.yaml` is a link into a timestamped directory
    that the next update deletes. Its name is what stays valid (and what errors should show)."""
    return Path(os.path.abspath(path))


def load_config(path: str | Path, env: dict[str, str] | None = None) -> LoadedConfig:
    """Read, expand and validate a config (and its routes file); raise ConfigError naming every problem."""
    path = Path(path)
    env = dict(os.environ) if env is None else env
    raw = _read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [
                f"{path}: the top level must be a mapping of keys (version, proxy, upstreams, routes, …), "
                f"not {type_name(raw)}"
            ]
        )
    problems: list[str] = []
    data = _without_empty_sections(_expanded(raw, path, env, problems))
    if problems:
        raise ConfigError(problems)  # the values that failed to expand would only add follow-on errors

    sources = [path]
    routes_path: Path | None = None
    file_routes: list[RouteConfig] = []
    if isinstance(data.get("routes_file"), str) and data["routes_file"]:
        routes_path = _absolute(path.parent / data["routes_file"])
        sources.append(routes_path)
        try:
            file_routes = _load_routes_file(routes_path, env, problems)
        except ConfigError as exc:
            problems.extend(exc.problems)

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems[:0] = describe_validation_error(exc, data, Config, path)
    if problems:
        raise ConfigError(problems)

    inline = len(config.routes)
    if file_routes:
        config = config.model_copy(update={"routes": [*config.routes, *file_routes]})
    loaded = LoadedConfig(
        config=config,
        path=path,
        sources=tuple(sources),
        routes_path=routes_path,
        inline_routes=inline if routes_path is not None else -1,
    )
    problems = _check_references(config, loaded)
    agents = _resolve_agent_keys(config, path, problems)
    if problems:
        raise ConfigError(problems)
    if agents != config.agents:
        # Edits to a key file reload like edits to the config (a new agent key without a restart).
        key_files = tuple(Path(a.jwks_file) for a in agents.values() if a.jwks_file)
        loaded = replace(
            loaded, config=config.model_copy(update={"agents": agents}), sources=(*loaded.sources, *key_files)
        )
    return loaded


def _resolve_agent_keys(config: Config, path: Path, problems: list[str]) -> dict[str, AgentConfig]:
    """Read each agent's `jwks_file` (relative to the config file) into `jwks`, and check every agent JWKS has a
    usable public key, so a broken key file fails `tollbooth check` rather than the agent's first token request."""

    agents: dict[str, AgentConfig] = {}
    for name, agent in config.agents.items():
        jwks = agent.jwks
        if agent.jwks_file is not None:
            key_file = _absolute(path.parent / agent.jwks_file)
            try:
                text = key_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{path}: agents.{name}: jwks_file: cannot read {key_file} ({exc.__class__.__name__})")
                continue
            agent = agent.model_copy(update={"jwks_file": str(key_file)})
            document = text.encode("utf-8")
        elif jwks is not None:
            document = json.dumps(jwks).encode("utf-8")
        else:
            agents[name] = agent
            continue
        try:
            parsed = parse_jwks(document, VERIFY_ALGORITHMS)
        except JwksError as exc:
            where = "jwks_file" if agent.jwks_file else "jwks"
            problems.append(f"{path}: agents.{name}: {where}: {exc}")
            continue
        if any(key.private_key is not None for key in parsed.values()):  # parse_jwks never keeps private parts
            problems.append(f"{path}: agents.{name}: a JWKS holds public keys only")
            continue
        agents[name] = agent.model_copy(update={"jwks": json.loads(document)})
    return agents
