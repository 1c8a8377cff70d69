"""The YAML configuration as typed models: loading, ${VAR} expansion, durations, error messages.

Nothing past `load_config` sees a raw dict: every other module takes these models.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway.hosts import parse_authority
from gateway.redis_url import parse_redis_url
from gateway.tokens.jwk import VERIFY_ALGORITHMS, SigningAlgorithm, VerifyAlgorithm
from gateway.tokens.jwks import JwksError, parse_jwks
from gateway.wire import SCOPE_TOKEN

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
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a duration: it must be a positive, finite number of seconds or like 30s")
    return seconds


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": _DURATION.pattern},
    ],
    "description": "a duration: 250ms, 30s, 5m, 24h, 7d, or a number of seconds",
}
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day|s|m|h|d)\s*$")
_RATE_WINDOW = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600, "day": 86400, "d": 86400}


@dataclass(frozen=True)
class RateLimit:
    """`60/minute` → 60 requests per 60-second window."""

    limit: int
    window_seconds: int

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_seconds}s"


# Budgets are kept in microseconds (gateway.state.gcra): N × interval must stay exact in the Lua script's doubles.
MAX_RATE_LIMIT = 1_000_000_000


def parse_rate_limit(value: Any) -> RateLimit | None:
    if value is None or isinstance(value, RateLimit):
        return value
    match = _RATE.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a rate limit: use a form like 60/minute or 10/second")
    if int(match.group(1)) > MAX_RATE_LIMIT:
        raise ValueError(f"{value!r}: at most {MAX_RATE_LIMIT:,} per window; leave rate_limit out for no limit")
    return RateLimit(int(match.group(1)), _RATE_WINDOW[match.group(2)])


# In YAML a rate limit is a string; the RateLimit it becomes is not what an editor should check against.
_RATE_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": _RATE.pattern}, {"type": "null"}],
    "default": None,
    "description": "requests per agent: 60/minute, 10/second, 1000/hour, 5000/day",
}


def _listen(value: Any) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return str(value)


Listen = Annotated[str, BeforeValidator(_listen)]


def _http_url(value: Any) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL like https://api.example.com")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    if parts.username is not None or parts.password is not None:
        # The userinfo would travel in the Host header and in logs; credentials belong in `headers`.
        raise ValueError(
            f"{parts.scheme}://…@{parts.hostname}: no user or password in the URL; "
            "put credentials in the upstream's `headers`"
        )
    try:
        parts.port  # noqa: B018  (urlsplit checks the port only when asked)
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return text.rstrip("/")


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def _allowed_host(value: Any) -> str:
    text = str(value)
    if text == "*" or text.startswith("*."):
        # No wildcard: it would switch the DNS-rebinding check off for every name an attacker can point here.
        raise ValueError(f"{text!r}: no wildcards; list each name the gateway is reached by")
    if "://" in text:
        raise ValueError(f"{text!r}: write the host (and port), not a URL: {urlsplit(text).netloc or 'gw.example.com'}")
    if not text.isascii() or parse_authority(text.encode("ascii")) is None:
        raise ValueError(
            f"{text!r} is not a host or host:port (gw.example.com, gw.example.com:8443, 10.0.0.7, [::1]:8080; "
            "IDNA names as xn--)"
        )
    return text


AllowedHost = Annotated[str, BeforeValidator(_allowed_host)]

# RFC 9110 §5.6.2 token: what a field name may be.
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(value: Any) -> str:
    text = str(value)
    if not _FIELD_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a header name (letters, digits and !#$%&'*+.^_`|~- only)")
    # The proxy judges incoming names with '_' read as '-' (CGI servers do): an entry spelled x_debug_user must
    # strip X-Debug-User and x_debug_user alike, so it is kept in that one spelling.
    return text.lower().replace("_", "-")


HeaderName = Annotated[str, BeforeValidator(_header_name)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProxyConfig(Model):
    listen: Listen = "127.0.0.1:8080"
    public_url: HttpUrl = "http://127.0.0.1:8080"
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_token_bytes: int = Field(default=8192, gt=0)
    max_header_bytes: int = Field(default=65536, ge=1024)
    max_headers: int = Field(default=100, gt=0)
    clock_leeway: Duration = 30
    trust_forwarded_for: bool = False
    allowed_hosts: list[AllowedHost] = Field(
        default_factory=list,
        description=(
            "Host/Origin names accepted besides public_url's own (DNS rebinding): `name` on any port, `name:port` "
            "on that one; loopback names are added when listening on loopback"
        ),
    )
    strip_headers: list[HeaderName] = Field(
        default_factory=list,
        description=(
            "more incoming request headers never forwarded upstream, beside the built-in list of client-address, "
            "host, URL, method and identity override headers (which cannot be removed)"
        ),
    )

    @field_validator("public_url")
    @classmethod
    def _public_authority(cls, url: str) -> str:
        # Host and Origin are compared with it (gateway.hosts): its host must be one a browser can send.
        netloc = urlsplit(url).netloc
        try:
            parsed = parse_authority(netloc.encode("idna"))
        except UnicodeError:
            parsed = None
        if parsed is None:
            raise ValueError(f"{url!r}: the host must be a DNS name or an IP address (IPv6 in brackets)")
        return url


RateSetting = Annotated[RateLimit | None, BeforeValidator(parse_rate_limit), WithJsonSchema(_RATE_SCHEMA)]


class AuthFailureLimits(Model):
    """Failed client authentications the token service takes before it answers 429 without checking (each check
    of a secret costs tens of milliseconds of CPU by design). Only failures count: an agent that authenticates is
    never slowed, and failures from elsewhere never lock it out of its own address."""

    per_client: RateSetting = Field(
        default="10/minute", validate_default=True, description="failures from one address naming one agent"
    )
    per_address: RateSetting = Field(
        default="100/minute", validate_default=True, description="failures from one address, whatever it claims"
    )


class IssuerConfig(Model):
    listen: Listen = "127.0.0.1:8081"
    url: HttpUrl = "http://127.0.0.1:8081"
    keys_dir: str = ".tollbooth/keys"
    algorithm: SigningAlgorithm = "ES256"
    access_token_ttl: Duration = 300
    # The whole life of a refresh-token family (a delegated grant): rotation never extends it.
    refresh_token_ttl: Duration = 8 * 3600
    # Actors in one delegation chain (`act` nesting), the new hop included.
    max_delegation_depth: int = Field(default=4, ge=1, le=16)
    # Per-scope lifetime caps: a token carrying the scope lives no longer than this.
    scope_ttl: dict[str, Duration] = Field(default_factory=dict)
    # Revocations when no Redis is configured: a journal every process on this machine reads and appends to.
    revocations_file: str = ".tollbooth/revocations.jsonl"
    auth_failure_limits: AuthFailureLimits = Field(default_factory=AuthFailureLimits)

    @field_validator("scope_ttl")
    @classmethod
    def _scope_ttl(cls, caps: dict[str, float]) -> dict[str, float]:
        _check_scopes(list(caps))
        for scope, ttl in caps.items():
            if ttl <= 0:
                raise ValueError(f"{scope}: a lifetime cap must be positive")
        return caps


class AdminConfig(Model):
    listen: Listen = "127.0.0.1:9090"


class RedisConfig(Model):
    url: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        # Here, so `tollbooth check` catches a bad one; the error shows the URL redacted, never its password.
        if url:
            parse_redis_url(url)
        return url


class AuditConfig(Model):
    stream: str = "tollbooth:audit"
    max_len: int = Field(default=1_000_000, gt=0)
    file: str = ".tollbooth/audit.jsonl"
    spool_dir: str = ".tollbooth/spool"
    on_failure: Literal["spool", "deny"] = "spool"
    queue_size: int = Field(default=100_000, gt=0)
    # Redis answering slower than this counts as down: the batch goes to the spool instead.
    write_timeout: Duration = 2.0


# RFC 9110 §5.1 field-name = token.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value has no CR, LF, NUL or other controls (HTAB aside).
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the proxy writes itself (stamp.py): an injected copy would duplicate or contradict them (two Host or
# Content-Length headers are request smuggling material; an injected X-Tollbooth-Agent would spoof identity).
_GATEWAY_OWNED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "traceparent",
        "tracestate",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    }
)


def _is_latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _check_scopes(scopes: list[str]) -> list[str]:
    for scope in scopes:
        if not SCOPE_TOKEN.match(scope):
            raise ValueError(f"{scope!r} is not a valid scope (RFC 6749 §3.3: no spaces, quotes or backslashes)")
    return scopes


class UpstreamConfig(Model):
    url: HttpUrl
    timeout: Duration = 30
    connect_timeout: Duration = 5
    max_connections: int = Field(default=256, gt=0)
    # Past either limit the response is a 502 to the agent, never relayed. Real APIs stay far below both (nginx
    # refuses an upstream head over 4-8 KiB by default); the limits bound what a hostile upstream makes us hold.
    max_response_header_bytes: int = Field(default=65536, ge=1024)
    max_response_headers: int = Field(default=256, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name (RFC 9110 §5.1: letters, digits, -, no spaces)")
            lower = name.lower()
            if lower in _GATEWAY_OWNED_HEADERS or lower.startswith("x-tollbooth-"):
                raise ValueError(
                    f"{name}: the gateway sets this header itself (framing, routing, tracing or identity); "
                    "remove it from `headers`"
                )
            if lower in seen:
                raise ValueError(f"{name}: given twice (also as {seen[lower]}); header names ignore case")
            seen[lower] = name
            if _HEADER_VALUE_FORBIDDEN.search(value):
                # A CR or LF would end the header and start another one (request splitting) upstream.
                raise ValueError(f"{name}: the value has a line break, NUL or other control character")
            if not value.isascii() and not _is_latin1(value):
                raise ValueError(f"{name}: the value has characters a header cannot carry (use ASCII)")
        return headers


class AgentConfig(Model):
    secret_hash: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    scopes: list[str] = Field(default_factory=list)
    default_scopes: list[str] | None = None  # granted when a request names no scope; default: all of `scopes`
    max_token_ttl: Duration | None = None
    may_act_for: list[str] = Field(default_factory=list)
    refresh_tokens: bool = False

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        return _check_scopes(scopes)

    @field_validator("default_scopes")
    @classmethod
    def _default_scopes(cls, scopes: list[str] | None) -> list[str] | None:
        return None if scopes is None else _check_scopes(scopes)

    @field_validator("secret_hash")
    @classmethod
    def _secret_hash(cls, secret_hash: str | None) -> str | None:
        if secret_hash == "":
            return None  # `${AGENT_SECRET_HASH:-}` left unset: an agent without a secret
        # Only a memory-hard hash: a plain secret pasted here by mistake must not become the secret's "hash".
        if secret_hash is not None and not secret_hash.startswith("$argon2id$"):
            raise ValueError("not an argon2id hash; make one with `tollbooth hash-secret` (reads the secret on stdin)")
        return secret_hash

    @model_validator(mode="after")
    def _one_credential(self) -> AgentConfig:
        given = [name for name in ("secret_hash", "jwks", "jwks_file") if getattr(self, name) is not None]
        # None at all is allowed: such an agent only holds tokens minted locally (`tollbooth token`).
        if len(given) > 1:
            raise ValueError(
                "give the agent one credential: `secret_hash` (client_secret_basic/post) or `jwks` / "
                f"`jwks_file` (private_key_jwt), not {' and '.join(given)}"
            )
        outside = [s for s in self.default_scopes or [] if s not in self.scopes]
        if outside:
            raise ValueError(f"default_scopes names {' '.join(outside)}, which `scopes` does not allow")
        if self.max_token_ttl is not None and self.max_token_ttl <= 0:
            raise ValueError("max_token_ttl must be positive")
        return self


_PREFIX = re.compile(r"^[A-Za-z0-9._:/@-]*$")


# What identity providers sign with, unless an entry says otherwise (ES384 only on request).
_IDP_DEFAULT_ALGORITHMS: tuple[VerifyAlgorithm, ...] = ("ES256", "RS256", "PS256", "EdDSA")


class TrustedIssuerConfig(Model):
    issuer: str
    jwks_uri: str
    audiences: list[str] = Field(default_factory=list)
    accept_at_proxy: bool = False
    algorithms: list[VerifyAlgorithm] = Field(default_factory=lambda: list(_IDP_DEFAULT_ALGORITHMS))
    subject_prefix: str = ""

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        # It becomes part of every subject: the same header- and audit-safe text as an identifier, and short.
        if len(prefix) > 64 or not _PREFIX.match(prefix):
            raise ValueError(f"{prefix!r}: use at most 64 letters, digits and . _ - : / @ (for example okta:)")
        return prefix

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_over_https(cls, uri: str) -> str:
        # DESIGN.md: JWKS only over HTTPS; plain HTTP only for loopback (tests, sidecars).
        parts = urlsplit(uri)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError(f"{uri!r}: a JWKS is fetched over https (plain http only for loopback addresses)")
        return uri


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
    rate_limit: RateSetting = None
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
        for method in upper:
            if method in ("TRACE", "CONNECT"):
                # TRACE reflects headers back (cross-site tracing); CONNECT opens a tunnel past every rule.
                raise ValueError(f"{method} is never proxied; allowed: {', '.join(HTTP_METHODS)}")
            if method not in HTTP_METHODS:
                raise ValueError(f"unknown method {method!r}; allowed: {', '.join(HTTP_METHODS)}")
        return upper

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        return _check_scopes(scopes)

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} must start with '/'")
        if re.search(r"[\x00-\x1f\x7f]", path):
            raise ValueError(f"{path!r} has a control character, which the proxy refuses in every request")
        segments = path.split("/")[1:]
        names: set[str] = set()
        for i, segment in enumerate(segments):
            if segment in (".", ".."):
                # The proxy refuses dot segments in requests (400), so such a route could never match.
                raise ValueError(f"{path!r} has a dot segment ('.' or '..'), which no request can match")
            if segment.startswith("{"):
                match = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}", segment)
                if not match:
                    raise ValueError(
                        f"{path!r}: {segment!r} is not a parameter; use {{name}} or {{name:path}} "
                        "(a name is letters, digits and '_', not starting with a digit)"
                    )
                if match.group(1) in names:
                    raise ValueError(f"{path!r}: parameter {{{match.group(1)}}} appears twice")
                names.add(match.group(1))
                if match.group(2) and i != len(segments) - 1:
                    raise ValueError(f"{path!r}: a {{x:path}} parameter must be the last segment")
            elif any(c in segment for c in "{}%;\\?#"):
                # '%': patterns are decoded paths; ';' and backslash: the proxy refuses them; '?' '#': not path.
                bad = next(c for c in segment if c in "{}%;\\?#")
                raise ValueError(
                    f"{path!r}: segment {segment!r} has {bad!r}, which a route path may not use "
                    "(write paths decoded, parameters as whole segments)"
                )
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
    routes_path: Path | None = None  # the routes file, when `routes_file` names one
    inline_routes: int = -1  # how many of config.routes came from the main file (-1: all of them)

    def route_origin(self, index: int) -> str:
        """Where config.routes[index] is written: `routes.yaml: routes[2]`, counting within its own file."""
        if self.routes_path is None or self.inline_routes < 0 or index < self.inline_routes:
            return f"{self.path}: routes[{index}]"
        return f"{self.routes_path}: routes[{index - self.inline_routes}]"


Loc = tuple[str | int, ...]

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


# Sections keyed by rule: an error inside one names the rule (`routes[1] (get-customer)`, `upstreams.crm`).
_RULE_SECTIONS = {"routes": "name", "trusted_issuers": "issuer", "upstreams": None, "agents": None}


def _render(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _rule_and_field(loc: Loc, data: Any) -> tuple[str, Loc]:
    """('routes', 1, 'methods', 0) → ('routes[1] (typo-route)', ('methods', 0)): the rule, then the field in it."""
    if not loc:
        return "top level", ()
    if loc[0] in _RULE_SECTIONS and len(loc) >= 2:
        rule = _render(loc[:2])
        name_key = _RULE_SECTIONS[str(loc[0])]
        section = data.get(loc[0]) if isinstance(data, dict) else None
        entry = None
        if isinstance(section, list) and isinstance(loc[1], int) and loc[1] < len(section):
            entry = section[loc[1]]
        if name_key and isinstance(entry, dict) and isinstance(entry.get(name_key), str):
            rule += f" ({entry[name_key]})"
        return rule, loc[2:]
    if len(loc) >= 2:
        return str(loc[0]), loc[1:]
    return "top level", loc


def _where(loc: Loc, data: Any) -> str:
    """`routes[1] (typo-route): methods`, `proxy: listen`, `routes`: the rule, then the field."""
    rule, field = _rule_and_field(loc, data)
    if not field:
        return rule
    if rule == "top level":
        return _render(field)
    return f"{rule}: {_render(field)}"


def _fields_of(model: type[BaseModel], loc: Loc) -> list[str]:
    """The known keys at the parent of `loc`, for did-you-mean suggestions."""
    annotation: Any = model
    for part in loc[:-1]:
        annotation = _inner(annotation, part)
        if annotation is None:
            return []
    found = _model_in(annotation)
    return list(found.model_fields) if found is not None else []


def _inner(annotation: Any, part: str | int) -> Any:
    """The type one step into `annotation`: a model's field, a list's item, a dict's value (any key)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return None if field is None else field.annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and isinstance(part, int):
        return args[0]
    if origin is dict:
        return args[1]
    for arg in args:  # Optional[...] and other unions: the first branch that has this step
        found = _inner(arg, part)
        if found is not None:
            return found
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, dict):
        return None  # a list of models is not a model: its keys are not suggestions at this level
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def _message(item: Any) -> str:
    """Pydantic's message, said for a person editing YAML: 'must be …' and what was found instead."""
    kind = item["type"]
    given = item.get("input")
    got = _TYPE_NAMES.get(type(given), "nothing" if given is None else type(given).__name__)
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys, not {got}"
    if kind == "list_type":
        return f"must be a list (e.g. [a, b] or one `- item` per line), not {got}"
    message = str(item["msg"]).removeprefix("Value error, ")
    if message.startswith("Input should be"):
        message = "must be" + message.removeprefix("Input should be")
        if isinstance(given, str | int | float | bool) and not isinstance(given, dict | list):
            shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "…"
            message += f" (got {shown})"
    return message


def describe_validation_error(error: ValidationError, data: Any, model: type[BaseModel], path: Path) -> list[str]:
    items = []
    for item in error.errors():
        # Pydantic adds the tag of a failing union branch or validator to loc: keep only real keys.
        loc: Loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or "function-" in p)))
        items.append((loc, item))
    # A misspelt required key is both unknown and missing: the did-you-mean says it all, so drop the "missing".
    hints: dict[Loc, str] = {}
    for loc, item in items:
        if item["type"] == "extra_forbidden" and loc:
            close = difflib.get_close_matches(str(loc[-1]), _fields_of(model, loc), n=1)
            if close:
                hints[loc] = close[0]
    suggested = {(loc[:-1], hint) for loc, hint in hints.items()}
    problems = []
    for loc, item in items:
        if item["type"] == "missing" and loc and (loc[:-1], str(loc[-1])) in suggested:
            continue
        if item["type"] in ("extra_forbidden", "missing") and loc:
            key = loc[-1]
            where = _where(loc[:-1], data)
            if item["type"] == "missing":
                problems.append(f'{path}: {where}: required key "{key}" is missing')
                continue
            suggestion = f' (did you mean "{hints[loc]}"?)' if loc in hints else ""
            problems.append(f'{path}: {where}: unknown key "{key}"{suggestion}')
        else:
            problems.append(f"{path}: {_where(loc, data)}: {_message(item)}")
    return problems


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
    return problems + _check_subject_prefixes(config, loaded.path)


def _check_subject_prefixes(config: Config, path: Path) -> list[str]:
    """Two identity providers' `alice` must stay two subjects: with more than one, each needs a prefix, and no
    prefix may begin another (`okta:` + `eu:alice` would be `okta:eu:` + `alice`)."""
    external = [(i, t) for i, t in enumerate(config.trusted_issuers) if t.issuer != config.issuer.url]
    if len(external) < 2:
        return []
    problems: list[str] = []
    for i, trusted in external:
        where = f"{path}: trusted_issuers[{i}] ({trusted.issuer}): subject_prefix"
        clash = next(
            (other for j, other in external if j != i and other.subject_prefix.startswith(trusted.subject_prefix)),
            None,
        )
        if not trusted.subject_prefix:
            problems.append(
                f"{where}: required when more than one issuer is trusted, so that the same sub from two issuers "
                "names two subjects (for example subject_prefix: okta:)"
            )
        elif clash is not None:
            problems.append(
                f"{where}: {trusted.subject_prefix!r} begins {clash.issuer}'s {clash.subject_prefix!r}, so their "
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
    problems.extend(f"{path}: {_where(loc, data)}: {problem}" for loc, problem in found)
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
                f"not {_TYPE_NAMES.get(type(raw), type(raw).__name__)}"
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


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for `tollbooth schema` and editors."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Tollbooth configuration"
    return schema
