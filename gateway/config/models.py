"""The YAML configuration as typed, frozen models: what each section may hold, and the JSON Schema of the file.

Nothing past `load_config` sees a raw dict: every other module takes these models.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gateway.config.values import (
    AllowedHost,
    ByteSize,
    Duration,
    HeaderName,
    HttpUrl,
    Listen,
    RateSetting,
    check_injected_headers,
    check_json_schema,
    check_scopes,
)
from gateway.hosts import parse_authority
from gateway.redis.url import parse_redis_url
from gateway.tokens.jwk import SigningAlgorithm, VerifyAlgorithm


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
        check_scopes(list(caps))
        for scope, ttl in caps.items():
            if ttl <= 0:
                raise ValueError(f"{scope}: a lifetime cap must be positive")
        return caps


class AdminConfig(Model):
    listen: Listen = "127.0.0.1:9090"
    # The admin API (/api/: blocks) takes `Authorization: Bearer <token>` checked against this argon2id hash from
    # `tollbooth hash-secret`; unset, the API is off (metrics and probes stay open either way).
    token_hash: str | None = None
    token_label: str = "admin"  # noqa: S105  (a name, not a secret: who a call was, in the audit `by`)

    @field_validator("token_hash")
    @classmethod
    def _token_hash(cls, value: str | None) -> str | None:
        return None if not value else _argon2id(value)


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
        return check_injected_headers(headers)


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
        return check_scopes(scopes)

    @field_validator("default_scopes")
    @classmethod
    def _default_scopes(cls, scopes: list[str] | None) -> list[str] | None:
        return None if scopes is None else check_scopes(scopes)

    @field_validator("secret_hash")
    @classmethod
    def _secret_hash(cls, secret_hash: str | None) -> str | None:
        if secret_hash == "":
            return None  # `${AGENT_SECRET_HASH:-}` left unset: an agent without a secret
        return None if secret_hash is None else _argon2id(secret_hash)

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


def _argon2id(value: str) -> str:
    # Only a memory-hard hash: a plain secret pasted here by mistake must not become the secret's "hash".
    if not value.startswith("$argon2id$"):
        raise ValueError("not an argon2id hash; make one with `tollbooth hash-secret` (reads the secret on stdin)")
    return value


_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class LoginUserConfig(Model):
    """An embedded account: a person who signs in on the token service's own page."""

    # Empty (`${ALICE_PASSWORD_HASH:-}` left unset): the account exists but cannot sign in.
    password_hash: str | None = None
    scopes: list[str] = Field(default_factory=list)  # the most this person may grant a client

    @field_validator("password_hash")
    @classmethod
    def _password_hash(cls, value: str | None) -> str | None:
        return None if not value else _argon2id(value)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        return check_scopes(scopes)


class LoginOidcConfig(Model):
    """Sign-in through the organisation's OpenID Connect provider: code flow with PKCE and a nonce; the ID token is
    checked against the provider's JWKS (iss, aud, nonce, exp)."""

    issuer: str  # discovery at {issuer}/.well-known/openid-configuration must name exactly this issuer
    client_id: str
    client_secret: str | None = None  # none: a public client (PKCE only)
    subject_claim: str = "sub"  # the ID-token claim that becomes the token's `sub`
    subject_prefix: str = ""  # put before every subject (okta:alice), so no IdP name can be an embedded account's
    scopes_claim: str = ""  # a claim listing the scopes the person may grant (a list, or space-separated text)
    default_scopes: list[str] = Field(default_factory=list)  # what a person may grant when scopes_claim is unset
    provider_scopes: list[str] = Field(default_factory=lambda: ["openid"])  # asked of the provider
    label: str = ""  # the sign-in button's text; default: "Sign in with <issuer host>"

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, issuer: str) -> str:
        return https_or_loopback(issuer, "an OpenID provider's metadata")

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        return _subject_prefix(prefix)

    @field_validator("default_scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        return check_scopes(scopes)

    @field_validator("provider_scopes")
    @classmethod
    def _openid(cls, scopes: list[str]) -> list[str]:
        # OIDC Core §3.1.2.1: without `openid` the provider answers as plain OAuth, with no ID token.
        return scopes if "openid" in scopes else ["openid", *scopes]


class LoginConfig(Model):
    users: dict[str, LoginUserConfig] = Field(default_factory=dict)
    oidc: LoginOidcConfig | None = None

    @field_validator("users")
    @classmethod
    def _names(cls, users: dict[str, LoginUserConfig]) -> dict[str, LoginUserConfig]:
        # The name becomes the token's `sub` and an identity header: header- and audit-safe text only.
        for name in users:
            if not _USERNAME.match(name):
                raise ValueError(f"{name!r}: a user name is 1-64 letters, digits and . _ @ -")
        return users


class TlsConfig(Model):
    # Outbound HTTPS (client metadata documents, identity providers) trusts the system store plus this CA bundle.
    ca_file: str | None = None


class InteractiveLimits(Model):
    """Per client address, on the endpoints anyone may call without credentials: each authorization request holds a
    pending record and each registration a client for 90 days, so a flood is cut off before it fills the store."""

    authorize: RateSetting = Field(default="60/minute", validate_default=True)
    registration: RateSetting = Field(default="20/hour", validate_default=True)


class InteractiveConfig(Model):
    """Clients a person runs (IDE and desktop MCP clients): authorization code with PKCE, sign-in and consent."""

    client_metadata_documents: bool = True
    dynamic_registration: bool = False
    redirect_hosts: list[str] = Field(default_factory=lambda: ["*"])  # loopback is always allowed
    # http://localhost:<any port> redirect URIs, as loopback ones (Claude Code, the MCP Inspector use them; RFC 8252
    # §8.3 advises the IP literal, since the name is resolved on the person's machine).
    localhost_redirects: bool = False
    scopes: list[str] = Field(default_factory=list)
    max_token_ttl: Duration = 600
    refresh_token_ttl: Duration = 30 * 86400
    session_ttl: Duration = 8 * 3600
    # How long an "Allow, and remember" lasts for one person, client, redirect origin and scope set; 0: never asked.
    remember_consent: Duration = 0
    limits: InteractiveLimits = Field(default_factory=InteractiveLimits)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        return check_scopes(scopes)

    @model_validator(mode="after")
    def _positive(self) -> InteractiveConfig:
        for name in ("max_token_ttl", "refresh_token_ttl", "session_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
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
        return _subject_prefix(prefix)

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_over_https(cls, uri: str) -> str:
        return https_or_loopback(uri, "a JWKS")


def _subject_prefix(prefix: str) -> str:
    # It becomes part of every subject: the same header- and audit-safe text as an identifier, and short.
    if len(prefix) > 64 or not _PREFIX.match(prefix):
        raise ValueError(f"{prefix!r}: use at most 64 letters, digits and . _ - : / @ (for example okta:)")
    return prefix


def https_or_loopback(uri: str, what: str) -> str:
    # DESIGN.md: keys and identity providers only over HTTPS; plain HTTP only for loopback (tests, sidecars).
    parts = urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{uri!r}: {what} is fetched over https (plain http only for loopback addresses)")
    return uri


_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The methods a route may name; "all" means these. TRACE and CONNECT are never proxied.
HTTP_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


Delegation = Literal["allowed", "required", "forbidden"]
# A rule's glob: `*` is any run of characters (also none), nothing else is special.
_GLOB = re.compile(r"^[^\x00-\x1f\x7f]+$")


def _glob(pattern: str) -> str:
    if not _GLOB.match(pattern):
        raise ValueError(f"{pattern!r}: a name or URI pattern is non-empty text without control characters")
    return pattern


class McpRule(Model):
    """What one tool, resource or prompt needs beyond the route's own scopes."""

    scopes: list[str] = Field(default_factory=list)
    delegation: Delegation = "allowed"

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        return check_scopes(scopes)


class Approvable(Model):
    """`approval: required` holds a call that passed every other check until a person approves that exact call."""

    approval: Literal["none", "required"] = "none"
    approval_wait: Duration = 60  # how long the call is held open for a decision
    approval_valid_for: Duration = 600  # how long a decision stands: an identical retry passes once within it

    @model_validator(mode="after")
    def _approval_times(self) -> Approvable:
        if self.approval_wait < 0 or self.approval_valid_for <= 0 or self.approval_wait > self.approval_valid_for:
            raise ValueError("approval_wait must be between 0 and approval_valid_for, which must be positive")
        return self


class McpToolRule(McpRule, Approvable):
    name: str = Field(description="the tool's name; `*` matches any run of characters")
    arguments: dict[str, Any] | None = Field(
        default=None, description="a JSON Schema (2020-12) the call's `arguments` must satisfy"
    )

    _name = field_validator("name")(_glob)

    @field_validator("arguments")
    @classmethod
    def _arguments(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if schema is None else check_json_schema(schema)


class McpPromptRule(McpRule):
    name: str = Field(description="the prompt's name; `*` matches any run of characters")

    _name = field_validator("name")(_glob)


class McpResourceRule(McpRule):
    uri: str = Field(description="the resource's URI; `*` matches any run of characters")

    _uri = field_validator("uri")(_glob)


class McpConfig(Model):
    """A route carrying MCP's Streamable HTTP transport: per-tool, per-resource and per-prompt rules, first match
    wins, and whatever no rule matches is denied."""

    max_message_bytes: ByteSize = Field(default=1024 * 1024, validate_default=True)
    tools: list[McpToolRule] = Field(default_factory=list)
    resources: list[McpResourceRule] = Field(default_factory=list)
    prompts: list[McpPromptRule] = Field(default_factory=list)


class ApprovalsConfig(Model):
    # POSTed a signed JSON notice of each new approval request (X-Tollbooth-Signature: sha256=<HMAC of the body>).
    notify_url: str | None = None
    notify_secret: str | None = None

    @model_validator(mode="after")
    def _signed(self) -> ApprovalsConfig:
        if self.notify_url and not self.notify_secret:
            raise ValueError("notify_secret is required with notify_url: the receiver checks the signature")
        return self


class RouteConfig(Approvable):
    name: str
    path: str
    upstream: str | None = None
    methods: list[str] | None = None
    scopes: list[str] = Field(default_factory=list)
    delegation: Delegation = "allowed"
    rate_limit: RateSetting = None
    public: bool = False
    mcp: McpConfig | None = None

    @model_validator(mode="after")
    def _mcp_route(self) -> RouteConfig:
        if self.public and self.approval == "required":  # (MCP routes are never public, below)
            raise ValueError("approval: a person approves a caller's call, and a public route has no caller")
        if self.mcp is None:
            return self
        if self.public:
            # Per-tool scopes (and approvals of who calls) mean nothing without a token to read them from.
            raise ValueError("mcp: an MCP route needs tokens; it cannot be public")
        if self.methods is not None and "POST" not in self.methods:
            raise ValueError("mcp: MCP clients send every message as a POST; add POST to `methods`")
        return self

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
        return check_scopes(scopes)

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
    tls: TlsConfig = Field(default_factory=TlsConfig)
    login: LoginConfig = Field(default_factory=LoginConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    # Absent: no authorization endpoint (the token service serves agents only).
    interactive: InteractiveConfig | None = None
    routes_file: str | None = None
    routes: list[RouteConfig] = Field(default_factory=list)

    def upstream_for(self, route: RouteConfig) -> str:
        """The upstream a route forwards to (the only one when the route names none)."""
        if route.upstream is not None:
            return route.upstream
        return next(iter(self.upstreams))


class RoutesFile(Model):
    routes: list[RouteConfig] = Field(default_factory=list)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for `tollbooth schema` and editors."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Tollbooth configuration"
    return schema
