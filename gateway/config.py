"""The YAML configuration as typed models: loading, ${VAR} expansion, durations, error messages.

Nothing past `load_config` sees a raw dict: every other module takes these models.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `24h`, `250ms`, or a plain number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 24h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: use 30s, 5m, 24h, or a number of seconds")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day|s|m|h|d)\s*$")
_RATE_WINDOW = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600, "day": 86400, "d": 86400}


@dataclass(frozen=True)
class RateLimit:
    """`60/minute` → 60 requests per 60-second window."""

    limit: int
    window_seconds: int

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_seconds}s"


def parse_rate_limit(value: Any) -> RateLimit | None:
    if value is None or isinstance(value, RateLimit):
        return value
    match = _RATE.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a rate limit: use a form like 60/minute or 10/second")
    return RateLimit(int(match.group(1)), _RATE_WINDOW[match.group(2)])


def _listen(value: Any) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return str(value)


Listen = Annotated[str, BeforeValidator(_listen)]


def _http_url(value: Any) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    return text.rstrip("/")


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProxyConfig(Model):
    listen: Listen = "127.0.0.1:8080"
    public_url: HttpUrl = "http://127.0.0.1:8080"
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_token_bytes: int = Field(default=8192, gt=0)
    clock_leeway: Duration = 30
    trust_forwarded_for: bool = False


class IssuerConfig(Model):
    listen: Listen = "127.0.0.1:8081"
    url: HttpUrl = "http://127.0.0.1:8081"
    keys_dir: str = ".tollbooth/keys"
    algorithm: Literal["ES256", "EdDSA", "RS256", "PS256"] = "ES256"
    access_token_ttl: Duration = 300


class AdminConfig(Model):
    listen: Listen = "127.0.0.1:9090"


class RedisConfig(Model):
    url: str = ""


class AuditConfig(Model):
    stream: str = "tollbooth:audit"
    max_len: int = Field(default=1_000_000, gt=0)
    file: str = ".tollbooth/audit.jsonl"
    spool_dir: str = ".tollbooth/spool"
    on_failure: Literal["spool", "deny"] = "spool"
    queue_size: int = Field(default=100_000, gt=0)


class UpstreamConfig(Model):
    url: HttpUrl
    timeout: Duration = 30
    connect_timeout: Duration = 5
    max_connections: int = Field(default=256, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break or NUL in its value")
        return headers


class AgentConfig(Model):
    secret_hash: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    scopes: list[str] = Field(default_factory=list)
    max_token_ttl: Duration | None = None
    may_act_for: list[str] = Field(default_factory=list)
    refresh_tokens: bool = False


class TrustedIssuerConfig(Model):
    issuer: str
    jwks_uri: str
    audiences: list[str] = Field(default_factory=list)
    accept_at_proxy: bool = False
    algorithms: list[Literal["ES256", "ES384", "EdDSA", "RS256", "PS256"]] = Field(
        default_factory=lambda: ["ES256", "RS256", "PS256", "EdDSA"]
    )

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_over_https(cls, uri: str) -> str:
        # DESIGN.md: JWKS only over HTTPS; plain HTTP only for loopback (tests, sidecars).
        parts = urlsplit(uri)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError(f"{uri!r}: a JWKS is fetched over https (plain http only for loopback addresses)")
        return uri


_SCOPE = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")  # RFC 6749 §3.3 scope-token
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The methods a route may name; "all" means these. TRACE and CONNECT are never proxied.
HTTP_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class RouteConfig(Model):
    name: str
    path: str
    upstream: str | None = None
    methods: list[str] | None = None
    scopes: list[str] = Field(default_factory=list)
    delegation: Literal["allowed", "required", "forbidden"] = "allowed"
    rate_limit: Annotated[RateLimit | None, BeforeValidator(parse_rate_limit)] = None
    public: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        # The name travels in X-Tollbooth-Route and metrics labels: keep it header- and label-safe.
        if not _ROUTE_NAME.match(name):
            raise ValueError(f"{name!r}: use letters, digits, '.', '_' and '-'")
        return name

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str] | None) -> list[str] | None:
        if methods is None:
            return None
        if not methods:
            raise ValueError("an empty list matches nothing: leave `methods` out to allow all methods")
        upper = [m.upper() for m in methods]
        unknown = [m for m in upper if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; known: {', '.join(HTTP_METHODS)}")
        return upper

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        for scope in scopes:
            if not _SCOPE.match(scope):
                raise ValueError(f"{scope!r} is not a valid scope (RFC 6749 §3.3: no spaces, quotes or backslashes)")
        return scopes

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} must start with '/'")
        segments = path.split("/")[1:]
        for i, segment in enumerate(segments):
            if segment in (".", ".."):
                raise ValueError(f"{path!r} has a dot segment")
            if segment.startswith("{"):
                match = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}", segment)
                if not match:
                    raise ValueError(f"{path!r}: {segment!r} is not a parameter; use {{name}} or {{name:path}}")
                if match.group(2) and i != len(segments) - 1:
                    raise ValueError(f"{path!r}: a {{x:path}} parameter must be the last segment")
            elif any(c in segment for c in "{}%;\\?#"):
                raise ValueError(f"{path!r}: segment {segment!r} has a character routes may not use")
        return path


class Config(Model):
    version: Literal[1] = 1
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    issuer: IssuerConfig = Field(default_factory=IssuerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    trusted_issuers: list[TrustedIssuerConfig] = Field(default_factory=list)
    routes_file: str | None = None
    routes: list[RouteConfig] = Field(default_factory=list)

    def upstream_for(self, route: RouteConfig) -> str:
        """The upstream a route forwards to (the only one when the route names none)."""
        if route.upstream is not None:
            return route.upstream
        return next(iter(self.upstreams))


class RoutesFile(Model):
    routes: list[RouteConfig] = Field(default_factory=list)


class ConfigError(Exception):
    """A config that cannot be used; `problems` are complete sentences naming file, rule and field."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path
    sources: tuple[Path, ...]  # every file the config was read from: the reloader watches these


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def expand_env(value: Any, where: str, env: dict[str, str], problems: list[str]) -> Any:
    """Expand ${VAR} and ${VAR:-default} in every string of a parsed YAML tree.

    Expansion happens after parsing, so a value from the environment can never inject YAML structure.
    An unset ${VAR} without a default is an error: a silently empty credential is worse than no start.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, has_default, default = match.group(1), match.group(2), match.group(3)
        found = env.get(name)
        if found:
            return found
        if has_default is not None:
            return default or ""
        problems.append(
            f"{where}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
        )
        return ""

    return _VAR.sub(substitute, value)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: not valid YAML{at}: {problem}"]) from exc


def _describe_location(loc: tuple[Any, ...], data: Any) -> str:
    """('routes', 1, 'methds') → `routes[1] (typo-route).methds`, naming routes by their name."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _fields_of(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The known keys at the parent of `loc`, for did-you-mean suggestions."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def describe_validation_error(error: ValidationError, data: Any, model: type[BaseModel], path: Path) -> list[str]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        # Pydantic adds the tag of a failing union branch or validator to loc: keep only real keys.
        while loc and isinstance(loc[-1], str) and ("[" in loc[-1] or "function-" in loc[-1]):
            loc = loc[:-1]
        *parent, key = loc or ("top level",)
        parent_where = _describe_location(tuple(parent), data) or "top level"
        field = f"{key}" if not isinstance(key, int) else f"[{key}]"
        if item["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(key), _fields_of(model, loc), n=1)
            suggestion = f' (did you mean "{hint[0]}"?)' if hint else ""
            problems.append(f'{path}: {parent_where}: unknown key "{key}"{suggestion}')
        elif item["type"] == "missing":
            problems.append(f'{path}: {parent_where}: required key "{key}" is missing')
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: {parent_where}: {field}: {message}")
    return problems


def _check_references(config: Config, path: Path, routes_path: Path | None, inline: int) -> list[str]:
    """Cross-field rules: unique route names, known upstreams. `inline` routes came from the main file."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for i, route in enumerate(config.routes):
        source, index = (path, i) if i < inline else (routes_path or path, i - inline)
        where = f"{source}: routes[{index}] ({route.name})"
        if route.name in seen:
            problems.append(f"{where}: name: duplicate route name (first used by {seen[route.name]})")
        seen.setdefault(route.name, f"{source.name} routes[{index}]")
        if route.upstream is not None and route.upstream not in config.upstreams:
            known = ", ".join(config.upstreams) or "none defined"
            problems.append(f'{where}: upstream: unknown upstream "{route.upstream}" (known: {known})')
        elif route.upstream is None and len(config.upstreams) != 1:
            problems.append(
                f"{where}: upstream: required when there is not exactly one upstream ({len(config.upstreams)} defined)"
            )
        if route.public and route.scopes:
            problems.append(f"{where}: scopes: a public route takes no token, so it cannot require scopes")
    return problems


def _load_routes_file(routes_path: Path, env: dict[str, str], problems: list[str]) -> list[RouteConfig]:
    routes_raw = _read_yaml(routes_path) or {}
    if not isinstance(routes_raw, dict):
        problems.append(f"{routes_path}: the top level must be a mapping with a `routes:` list")
        return []
    expanded: list[str] = []
    routes_data = expand_env(routes_raw, "", env, expanded)
    problems.extend(f"{routes_path}: {p}" for p in expanded)
    try:
        return RoutesFile.model_validate(routes_data).routes
    except ValidationError as exc:
        problems.extend(describe_validation_error(exc, routes_data, RoutesFile, routes_path))
        return []


def load_config(path: str | Path, env: dict[str, str] | None = None) -> LoadedConfig:
    """Read, expand and validate a config (and its routes file); raise ConfigError naming every problem."""
    path = Path(path)
    env = dict(os.environ) if env is None else env
    raw = _read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys (version, proxy, routes, …)"])
    problems: list[str] = []
    data = expand_env(raw, "", env, problems)
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])

    sources = [path]
    routes_path: Path | None = None
    file_routes: list[RouteConfig] = []
    if isinstance(data.get("routes_file"), str) and data["routes_file"]:
        routes_path = (path.parent / data["routes_file"]).resolve()
        sources.append(routes_path)
        file_routes = _load_routes_file(routes_path, env, problems)

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems[:0] = describe_validation_error(exc, data, Config, path)
    if problems:
        raise ConfigError(problems)

    inline = len(config.routes)
    if file_routes:
        config = config.model_copy(update={"routes": [*config.routes, *file_routes]})
    problems = _check_references(config, path, routes_path, inline)
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(config=config, path=path, sources=tuple(sources))


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for `tollbooth schema` and editors."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Tollbooth configuration"
    return schema
