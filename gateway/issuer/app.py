"""The token service's listener: token (RFC 6749, 8693), revocation (RFC 7009), introspection (RFC 7662),
authorization server metadata (RFC 8414) and the signing keys (RFC 7517).

The endpoints only wire the steps: parse the form, authenticate the client (clients.py), run the grant
(grants.py), answer, audit. Every answer from the token endpoints is `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit.events import AuditEvent
from gateway.audit.sinks import AuditSink
from gateway.config import Config
from gateway.issuer.authorization import is_loopback_host
from gateway.issuer.client_documents import ClientDocuments
from gateway.issuer.clients import (
    AUTH_METHODS,
    Client,
    ClientRegistry,
    SecretChecker,
    basic_credentials,
    claimed_client_id,
)
from gateway.issuer.codes import AuthorizationCodes
from gateway.issuer.federation import OpenIdProvider
from gateway.issuer.grants import GRANT_TYPES, Issued, TokenService, grant_revoked
from gateway.issuer.interactive import (
    AUTHORIZATION_CODE,
    CONSENT_PATH,
    LOGIN_PATH,
    LOGOUT_PATH,
    OIDC_CALLBACK_PATH,
    OIDC_PATH,
    Interactive,
)
from gateway.issuer.keystore import KeyStore
from gateway.issuer.oauth import (
    MAX_FORM_BYTES,
    NO_STORE,
    Form,
    OAuthError,
    check_form_head,
    error_response,
    parse_form,
    too_large,
)
from gateway.issuer.pages import error_page
from gateway.issuer.registration import REGISTER_PATH, Registrations
from gateway.issuer.sessions import SignIns
from gateway.issuer.subjects import SubjectVerifier
from gateway.issuer.throttle import LOGIN_BUDGET, AuthThrottle
from gateway.metrics import TOKEN_REQUESTS
from gateway.state import SharedState, StateUnavailable, refresh_token_hash
from gateway.state.ratelimit import LocalRateLimiter, RateLimiter
from gateway.tokens.access_token import (
    InvalidToken,
    delegation_chain,
    parse_unverified,
    validate_claims,
    verify_signature,
)
from gateway.tokens.jwk import VERIFY_ALGORITHMS
from gateway.tracing import request_id_from
from gateway.trust import JwksCaches, TrustedIssuers
from gateway.wire import AUTHORIZATION_SERVER_PATH, AUTHORIZE_PATH, INTROSPECT_PATH, JWKS_PATH, REVOKE_PATH, TOKEN_PATH

log = logging.getLogger("tollbooth.issuer")

_MAX_AUDIT_NAME = 128


def endpoint(config: Config, path: str) -> str:
    return config.issuer.url.rstrip("/") + path


def authorization_server_metadata(config: Config) -> dict[str, Any]:
    """RFC 8414 §2. `issuer` is exactly the `iss` of our tokens."""
    methods = list(AUTH_METHODS)
    algorithms = list(VERIFY_ALGORITHMS)
    scopes = sorted({scope for agent in config.agents.values() for scope in agent.scopes})
    interactive = config.interactive
    if interactive is not None:
        scopes = sorted({*scopes, *interactive.scopes})
    document: dict[str, Any] = {
        "issuer": config.issuer.url,
        # RFC 8414 §2 lets a server without authorization-endpoint grants omit this, but MCP clients (the `mcp`
        # SDK's OAuthMetadata) refuse metadata without it; the endpoint exists and refuses every request (authorize).
        "authorization_endpoint": endpoint(config, AUTHORIZE_PATH),
        "token_endpoint": endpoint(config, TOKEN_PATH),
        "jwks_uri": endpoint(config, JWKS_PATH),
        "scopes_supported": scopes,
        # Required by RFC 8414 even without an authorization endpoint: this server has no response types.
        "response_types_supported": [],
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": algorithms,
        "revocation_endpoint": endpoint(config, REVOKE_PATH),
        "revocation_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_signing_alg_values_supported": algorithms,
        "introspection_endpoint": endpoint(config, INTROSPECT_PATH),
        "introspection_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_signing_alg_values_supported": algorithms,
        "resource_indicators_supported": True,
    }
    if interactive is not None:
        # DESIGN.md, "Interactive clients": what people's MCP clients look for before sending anyone to sign in.
        document["response_types_supported"] = ["code"]
        document["response_modes_supported"] = ["query"]
        document["code_challenge_methods_supported"] = ["S256"]
        document["grant_types_supported"] = [*GRANT_TYPES, AUTHORIZATION_CODE]
        document["token_endpoint_auth_methods_supported"] = [*methods, "none"]
        document["client_id_metadata_document_supported"] = interactive.client_metadata_documents
        document["authorization_response_iss_parameter_supported"] = True
        if interactive.dynamic_registration:
            document["registration_endpoint"] = endpoint(config, REGISTER_PATH)
    return document


def _audit_name(value: str | None) -> str:
    # An unauthenticated caller chose this text: bound it and keep it printable before it reaches the audit log.
    return "".join(c for c in (value or "")[:_MAX_AUDIT_NAME] if c.isprintable())


def _delegation(act: Any) -> str:
    return ",".join(delegation_chain(act))  # audit's form of the chain, as in X-Tollbooth-Delegation


@dataclass
class _Parts:
    """What the endpoints need from one config; rebuilt when the config is replaced (hot reload)."""

    config: Config
    clients: ClientRegistry
    tokens: TokenService
    interactive: Interactive | None


class IssuerApp:
    def __init__(
        self,
        config: Callable[[], Config],
        keys: Callable[[], KeyStore],
        state: SharedState,
        audit: AuditSink,
        *,
        limiter: RateLimiter | None = None,
        jwks: JwksCaches | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._config = config
        self._keys = keys
        self._state = state
        self._audit = audit
        self._clock = clock
        self._owns_jwks = jwks is None
        self._jwks = jwks if jwks is not None else JwksCaches()
        self._parts: _Parts | None = None
        self._secrets = SecretChecker()  # outlives reloads: its cache is keyed by the stored hash
        limiter = limiter if limiter is not None else LocalRateLimiter()
        self._limiter = limiter
        self._throttle = AuthThrottle(limiter)
        self._login_throttle = AuthThrottle(limiter, budget=LOGIN_BUDGET, everywhere=True)
        # People's sign-ins, pending requests, codes and fetched client documents outlive a config reload.
        self._sign_ins = SignIns(state.ephemeral, clock=clock)
        self._codes = AuthorizationCodes(state.ephemeral, clock=clock)
        self._registrations = Registrations(state.ephemeral, clock=clock)
        self._documents: ClientDocuments | None = None
        self._provider: OpenIdProvider | None = None  # login.oidc's, kept while its settings stay
        # Replaced when their settings changed, still possibly in use by a request: closed with the app.
        self._retired: list[ClientDocuments | OpenIdProvider] = []
        self.app = Starlette(
            routes=[
                Route(TOKEN_PATH, self.token, methods=["POST"]),
                Route(AUTHORIZE_PATH, self.authorize, methods=["GET", "POST"]),
                Route(LOGIN_PATH, self.login, methods=["POST"]),
                Route(CONSENT_PATH, self.consent, methods=["POST"]),
                Route(LOGOUT_PATH, self.logout, methods=["POST"]),
                Route(OIDC_PATH, self.oidc_start, methods=["GET"]),
                Route(OIDC_CALLBACK_PATH, self.oidc_callback, methods=["GET"]),
                Route(REGISTER_PATH, self.register, methods=["POST"]),
                Route(REVOKE_PATH, self.revoke, methods=["POST"]),
                Route(INTROSPECT_PATH, self.introspect, methods=["POST"]),
                Route(JWKS_PATH, self.jwks, methods=["GET", "HEAD"]),
                Route(AUTHORIZATION_SERVER_PATH, self.metadata, methods=["GET", "HEAD"]),
                # RFC 8414 §3.1: an issuer URL with a path has its metadata at the path-inserted location.
                Route(AUTHORIZATION_SERVER_PATH + "/{path:path}", self.metadata, methods=["GET", "HEAD"]),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def aclose(self) -> None:
        if self._owns_jwks:
            await self._jwks.aclose()
        self._secrets.close()
        for held in [*self._retired, *(part for part in (self._documents, self._provider) if part is not None)]:
            await held.aclose()

    def _current(self) -> _Parts:
        config = self._config()
        if self._parts is None or self._parts.config is not config:
            subjects = self._subject_verifier(config)
            self._parts = _Parts(
                config=config,
                clients=ClientRegistry(
                    config.agents,
                    issuer=config.issuer.url,
                    token_endpoint=endpoint(config, TOKEN_PATH),
                    state=self._state,
                    leeway=config.proxy.clock_leeway,
                    secret_checker=self._secrets,
                    clock=self._clock,
                ),
                tokens=TokenService(
                    config,
                    signing_key=lambda: self._keys().active,
                    state=self._state,
                    subjects=subjects,
                    clock=self._clock,
                ),
                interactive=self._interactive(config),
            )
        return self._parts

    def _interactive(self, config: Config) -> Interactive | None:
        if config.interactive is None:
            return None
        # Loopback documents only for an issuer on loopback (a developer's machine): elsewhere a client_id naming
        # 127.0.0.1 would have the issuer probe its own host's ports for a stranger.
        loopback = is_loopback_host(urlsplit(config.issuer.url).hostname or "")
        documents = self._documents
        if documents is None or (documents.ca_file, documents.allow_loopback) != (config.tls.ca_file, loopback):
            # The old cache's documents were fetched under the old trust: start afresh.
            if documents is not None:
                self._retired.append(documents)
            documents = self._documents = ClientDocuments(ca_file=config.tls.ca_file, allow_loopback=loopback)
        return Interactive(
            provider=self._openid_provider(config),
            limiter=self._limiter,
            config=config,
            settings=config.interactive,
            signing_key=lambda: self._keys().active,
            state=self._state,
            documents=documents,
            sessions=self._sign_ins,
            codes=self._codes,
            registrations=self._registrations,
            secrets=self._secrets,
            throttle=self._login_throttle,
            emit=self._audit.emit,
            clock=self._clock,
        )

    def _openid_provider(self, config: Config) -> OpenIdProvider | None:
        settings = config.login.oidc
        if self._provider is not None and self._provider.settings != settings:
            self._retired.append(self._provider)
            self._provider = None
        if settings is not None and self._provider is None:
            self._provider = OpenIdProvider(
                settings, self._jwks, ca_file=config.tls.ca_file, leeway=config.proxy.clock_leeway, clock=self._clock
            )
        return self._provider

    def _subject_verifier(self, config: Config) -> SubjectVerifier:
        # The trusted issuers' JWKS caches live in self._jwks, so they stay warm across reloads.
        trust = TrustedIssuers(
            issuer=config.issuer.url,
            own_keys=lambda: self._keys().verification_keys(),
            trusted=config.trusted_issuers,
            caches=self._jwks,
        )
        return SubjectVerifier(
            public_url=config.proxy.public_url,
            trust=trust,
            revocations=self._state.revocations,
            leeway=config.proxy.clock_leeway,
            clock=self._clock,
        )

    async def _authenticated(self, request: Request, path: str) -> tuple[_Parts, Form, Client]:
        parts = self._current()
        self._audit_ready(parts.config)
        form = await _read_form(request)
        request.state.form = form  # a refusal is audited with the client_id claimed, if authentication fails
        authorization = request.headers.get("authorization")
        address = request.client.host if request.client else ""
        claimed = claimed_client_id(form, authorization, parts.config.agents)
        request.state.claimed = claimed
        wait = self._throttle.retry_after(address, claimed)
        if wait is not None:
            raise _throttled(wait)
        try:
            client = await parts.clients.authenticate(form, authorization, endpoint(parts.config, path))
        except OAuthError as error:
            if error.error == "invalid_client":
                await self._throttle.failed(address, claimed, parts.config.issuer.auth_failure_limits)
            raise
        return parts, form, client

    def _audit_ready(self, config: Config) -> None:
        if config.audit.on_failure == "deny" and not self._audit.healthy:
            # Strict mode: refuse before acting. Answering 503 after a refresh token was rotated or a token revoked
            # would leave a change without its record (and make the client's retry look like reuse).
            raise _audit_unavailable()

    def _event(self, request: Request, kind: str, started: float, status: int, **fields: Any) -> AuditEvent:
        return AuditEvent(
            event=kind,
            ts=time.time(),
            request_id=request_id_from(request.headers.get("x-request-id", "").encode("latin-1")),
            client_ip=request.client.host if request.client else "",
            method=request.method,
            path=request.url.path,
            status=status,
            duration_ms=(time.perf_counter() - started) * 1000,
            **fields,
        )

    def _answer(self, event: AuditEvent, response: Response) -> Response:
        TOKEN_REQUESTS.labels(event=event.event, outcome=event.reason or "ok").inc()
        response.headers["x-request-id"] = event.request_id
        if not self._audit.emit(event) and self._config().audit.on_failure == "deny":
            # audit.on_failure: deny: nothing is issued or revoked without a record of it.
            return error_response(_audit_unavailable())
        return response

    def _refused(self, request: Request, started: float, error: OAuthError, client: Client | None) -> Response:
        log.info("token service refused %s: %s (%s)", request.url.path, error.error, error.reason)
        # Unauthenticated: the client_id it claimed, if it got as far as sending one (for the audit trail only).
        form: Form | None = getattr(request.state, "form", None)
        claimed: str | None = getattr(request.state, "claimed", None)
        agent = client.id if client else claimed or _audit_name(form.get("client_id") if form else None)
        event = self._event(
            request, "token.denied", started, error.status, agent=agent, decision="deny", reason=error.reason
        )
        return self._answer(event, error_response(error))

    async def token(self, request: Request) -> Response:
        started = time.perf_counter()
        client: Client | None = None
        interactive = self._current().interactive
        if interactive is not None:
            try:
                form = await _read_form(request)
            except OAuthError as error:
                return self._refused(request, started, error, None)
            authorization = request.headers.get("authorization")
            try:
                ours = await _interactive_grant(form, authorization, self._config(), self._registrations)
            except StateUnavailable as exc:
                return self._refused(request, started, _unavailable(exc), None)
            if ours:
                return await self._code_grant(request, started, interactive, form)
        try:
            parts, form, client = await self._authenticated(request, TOKEN_PATH)
            issued = await parts.tokens.grant(client, form)
        except OAuthError as error:
            return self._refused(request, started, error, client)
        except StateUnavailable as exc:
            return self._refused(request, started, _unavailable(exc), client)
        event = self._issued_event(request, started, issued, client.id)
        return self._answer(event, JSONResponse(issued.response(), headers=NO_STORE))

    async def _code_grant(self, request: Request, started: float, interactive: Interactive, form: Form) -> Response:
        """A person's client redeeming its code or refresh token: a public client (no secret on a person's
        device), proven by the PKCE verifier bound to the code, then by its rotating refresh token."""
        try:
            self._audit_ready(self._config())
            authorization = request.headers.get("authorization")
            if form.get("grant_type") == AUTHORIZATION_CODE:
                issued = await interactive.exchange(form, authorization)
            else:
                issued = await interactive.refresh(form, authorization)
        except OAuthError as error:
            return self._refused(request, started, error, None)
        except StateUnavailable as exc:
            return self._refused(request, started, _unavailable(exc), None)
        event = self._issued_event(request, started, issued, issued.claims["client_id"])
        event.grant = str(form.get("grant_type"))
        return self._answer(event, JSONResponse(issued.response(), headers=NO_STORE))

    def _issued_event(self, request: Request, started: float, issued: Issued, agent: str) -> AuditEvent:
        claims = issued.claims
        return self._event(
            request,
            issued.event,
            started,
            200,
            agent=agent,
            subject=claims["sub"],
            delegation=_delegation(claims.get("act")),
            granted_scopes=issued.scopes,
            jti=claims["jti"],
            decision="allow",
        )

    async def authorize(self, request: Request) -> Response:
        """RFC 6749 §3.1. Without `interactive:` in the config there is no response type to grant and no one to
        sign in: answered to the caller, never by redirect (no client registered a redirect URI here, and
        §4.1.2.1 forbids redirecting to one that is not registered: RFC 9700 §4.11's open redirector)."""
        if self._current().interactive is not None and request.method == "GET":
            return await self._page(request, "authorize")
        token_endpoint = endpoint(self._config(), TOKEN_PATH)
        return error_response(
            OAuthError(
                "unsupported_response_type",
                f"this authorization server has no interactive login; agents get tokens at {token_endpoint} "
                "(client_credentials, or token exchange to act for a user)",
            )
        )

    async def login(self, request: Request) -> Response:
        return await self._page(request, "login")

    async def consent(self, request: Request) -> Response:
        return await self._page(request, "consent")

    async def logout(self, request: Request) -> Response:
        return await self._page(request, "logout")

    async def register(self, request: Request) -> Response:
        return await self._page(request, "register")

    async def oidc_start(self, request: Request) -> Response:
        return await self._page(request, "oidc_start")

    async def oidc_callback(self, request: Request) -> Response:
        return await self._page(request, "oidc_callback")

    async def _page(self, request: Request, name: str) -> Response:
        interactive = self._current().interactive
        if interactive is None:
            return Response(status_code=404)
        handler: Callable[[Request], Any] = getattr(interactive, name)
        try:
            response: Response = await handler(request)
        except StateUnavailable as exc:
            log.error("people's sign-in state unavailable: %s", exc)
            if name == "register":  # a JSON API (RFC 7591), not a page
                return error_response(_unavailable(exc))
            return error_page("server_error", "Signing in is unavailable for a moment. Try again shortly.", 503)
        return response

    async def revoke(self, request: Request) -> Response:
        """RFC 7009 §2: 200 with an empty body whether or not the token was known (§2.2)."""
        started = time.perf_counter()
        client: Client | None = None
        try:
            parts, form, client = await self._authenticated(request, REVOKE_PATH)
            fields = await self._revoke(parts.config, form.require("token"), client)
        except OAuthError as error:
            return self._refused(request, started, error, client)
        except StateUnavailable as exc:
            return self._refused(request, started, _unavailable(exc), client)
        event = self._event(request, "token.revoked", started, 200, agent=client.id, decision="allow", **fields)
        return self._answer(event, Response(status_code=200, headers=NO_STORE))

    async def _revoke(self, config: Config, token: str, client: Client) -> dict[str, str]:
        claims = self._our_signed_claims(config, token)
        if claims is not None:
            if claims.get("client_id") != client.id:
                # RFC 7009 §2.1: only the client the token was issued to may revoke it; it stays valid.
                raise OAuthError("invalid_grant", "the token was issued to another client", reason="other_client")
            jti, exp = claims.get("jti"), claims.get("exp")
            if (
                isinstance(jti, str)
                and isinstance(exp, int | float)
                and exp + config.proxy.clock_leeway > self._clock()
            ):
                await self._state.revoke_jti(jti, float(exp))
            return {"jti": str(jti), "subject": str(claims.get("sub", "")), "reason": "access_token"}
        grant = await self._state.find_refresh(refresh_token_hash(token))
        if grant is None:
            return {"reason": "unknown_token"}
        if grant.agent != client.id:
            raise OAuthError("invalid_grant", "the token was issued to another client", reason="other_client")
        # RFC 7009 §2.1: revoking a refresh token ends its family and the access tokens issued from it.
        await self._state.revoke_family(grant.family)
        return {"subject": grant.subject, "delegation": _delegation(grant.act), "reason": "refresh_token"}

    def _our_signed_claims(self, config: Config, token: str) -> dict[str, Any] | None:
        """The claims of a token our keys signed (expired or not), else None."""
        try:
            unverified = parse_unverified(token)
            kid, alg = unverified.header.get("kid"), unverified.header.get("alg")
            if not isinstance(kid, str) or not isinstance(alg, str):
                return None  # not one of ours, whatever else it is (a list as kid must not reach a dict lookup)
            key = self._keys().verification_keys().get(kid)
            if key is None or unverified.claims.get("iss") != config.issuer.url:
                return None
            return verify_signature(token, alg, key)
        except InvalidToken:
            return None

    async def introspect(self, request: Request) -> Response:
        """RFC 7662 §2.2: anything not active, or not the caller's, is exactly {"active": false}."""
        started = time.perf_counter()
        client: Client | None = None
        try:
            parts, form, client = await self._authenticated(request, INTROSPECT_PATH)
            body = await self._introspection(parts.config, form.require("token"), client)
        except OAuthError as error:
            return self._refused(request, started, error, client)
        except StateUnavailable as exc:
            return self._refused(request, started, _unavailable(exc), client)
        request_id = request_id_from(request.headers.get("x-request-id", "").encode("latin-1"))
        return JSONResponse(body, headers={**NO_STORE, "x-request-id": request_id})

    async def _introspection(self, config: Config, token: str, client: Client) -> dict[str, Any]:
        inactive: dict[str, Any] = {"active": False}
        claims = self._our_signed_claims(config, token)
        if claims is None:
            return await self._refresh_introspection(config, token, client)
        if claims.get("client_id") != client.id:
            return inactive
        try:
            principal = validate_claims(
                claims,
                issuer=config.issuer.url,
                audience=config.proxy.public_url,
                now=self._clock(),
                leeway=0,  # introspection answers "is it active now", without the proxy's grace
            )
        except InvalidToken:
            return inactive
        if self._state.revocations.is_revoked(principal):
            return inactive
        fields = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "act")
        return {"active": True, "token_type": "Bearer", **{k: claims[k] for k in fields if k in claims}}

    async def _refresh_introspection(self, config: Config, token: str, client: Client) -> dict[str, Any]:
        """A refresh token is active while it would refresh: unspent, its family live and unrevoked."""
        grant = await self._state.find_refresh(refresh_token_hash(token), unspent=True)
        if (
            grant is None
            or grant.agent != client.id
            or grant.expires_at <= self._clock()
            or grant_revoked(self._state.revocations, grant)
        ):
            return {"active": False}
        body: dict[str, Any] = {
            "active": True,
            "scope": " ".join(grant.scopes),
            "client_id": grant.agent,
            "sub": grant.subject,
            "iss": config.issuer.url,
            "exp": int(grant.expires_at),
            "iat": int(grant.issued_at),
        }
        return {**body, "act": grant.act} if grant.act else body

    async def jwks(self, request: Request) -> Response:
        # Short cache: verifiers pick up a rotated key within minutes, and refetch on an unknown kid anyway.
        return JSONResponse(self._keys().jwks(), headers={"cache-control": "public, max-age=300"})

    async def metadata(self, request: Request) -> Response:
        config = self._config()
        issuer_path = urlsplit(config.issuer.url).path.strip("/")
        if request.path_params.get("path", "").strip("/") != issuer_path:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse(authorization_server_metadata(config), headers={"cache-control": "public, max-age=300"})


async def _interactive_grant(form: Form, authorization: str | None, config: Config, registered: Registrations) -> bool:
    """A request the interactive flow answers: a code, or a refresh token of a client that is not an agent: a
    registered one, or one that sends no credentials (agents' refresh tokens stay with the agent path and its
    client authentication)."""
    grant_type = form.get("grant_type")
    if grant_type == AUTHORIZATION_CODE:
        return True
    if grant_type != "refresh_token":
        return False
    client_id = form.get("client_id")
    if authorization and authorization[:6].lower() == "basic ":
        try:
            client_id = basic_credentials(authorization)[0][0]
        except OAuthError:
            return False
    if client_id is None or client_id in config.agents:
        return False
    return await registered.get(client_id) is not None or not (authorization or form.get("client_secret"))


async def _read_form(request: Request) -> Form:
    """The request's form parameters, read only up to the size limit (the endpoints take unauthenticated bodies);
    read once per request."""
    cached: Form | None = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    content_type = request.headers.get("content-type")
    check_form_head(content_type, request.headers.get("content-length"))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise too_large()
    form = parse_form(content_type, bytes(body))
    request.state.form = form
    return form


def _throttled(wait: int) -> OAuthError:
    # RFC 6749 §5.2 has no error for this; temporarily_unavailable is its §4.1.2.1 word for "try again later",
    # and RFC 6585 §4 gives the status and Retry-After.
    return OAuthError(
        "temporarily_unavailable",
        f"too many failed client authentications from this address; retry after {wait} s",
        status=429,
        reason="auth_throttled",
        headers={"retry-after": str(wait)},
    )


def _audit_unavailable() -> OAuthError:
    return OAuthError("temporarily_unavailable", "the audit log cannot take events; try again shortly", status=503)


def _unavailable(exc: StateUnavailable) -> OAuthError:
    log.error("token service state unavailable: %s", exc)
    return OAuthError(
        "temporarily_unavailable",
        "shared state is unreachable; try again shortly",
        status=503,
        reason="state_unavailable",
    )
