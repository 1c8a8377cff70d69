"""People's clients: the authorization code flow with PKCE, sign-in and consent (DESIGN.md, "Interactive clients").

GET /oauth/authorize checks the request (authorization.py), holds it, and shows the sign-in page or, for a person
already signed in, the consent page. POST /login and POST /consent move it on; an approval redirects to the client
with a code (codes.py), which the token endpoint exchanges for a token whose `sub` is the person and whose `act` is
the client: the client acts for the person. Only the I/O lives here; the decisions are in authorization.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.audit.events import AuditEvent, request_event
from gateway.bodies import read_limited
from gateway.config import Config, InteractiveConfig, RateLimit
from gateway.issuer.authorization import (
    AuthorizationRequest,
    PageError,
    RedirectError,
    authorization_request,
    client_and_redirect,
    display_name,
    redirect_host_allowed,
    redirect_with,
    s256,
)
from gateway.issuer.client_documents import ClientDocument, ClientDocumentError, ClientDocuments, is_document_client_id
from gateway.issuer.clients import SecretChecker, basic_credentials, invalid_client
from gateway.issuer.codes import AuthorizationCodes, CodeReplayed
from gateway.issuer.federation import FederationError, OpenIdProvider, authorization_url, person_of
from gateway.issuer.grants import Issued, grant_revoked, nest_act, refuse_blocked
from gateway.issuer.oauth import Form, OAuthError, parse_form
from gateway.issuer.pages import error_page, form_target, page
from gateway.issuer.registration import (
    RegistrationError,
    Registrations,
    read_registration,
    registration_response,
    secret_matches,
)
from gateway.issuer.sessions import PENDING_TTL, Pending, SignIn, SignIns, csrf_ok, new_browser
from gateway.issuer.throttle import AuthThrottle, network_of
from gateway.state import RefreshGrant, RefreshReused, SharedState, refresh_token_hash
from gateway.state.ratelimit import RateLimiter, address_key
from gateway.tokens.access_token import mint_access_token
from gateway.tokens.jwk import SigningKey

log = logging.getLogger("tollbooth.issuer")

AUTHORIZATION_CODE = "authorization_code"
LOGIN_PATH = "/login"
CONSENT_PATH = "/consent"
LOGOUT_PATH = "/logout"
OIDC_PATH = "/login/oidc"
OIDC_CALLBACK_PATH = "/login/oidc/callback"
MAX_PAGE_FORM = 8 * 1024
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_BROWSER = re.compile(r"^[A-Za-z0-9_-]{32}$")
# A document that could not be fetched is named on the page only as that: which of these it was would tell a
# stranger what answers at an address the issuer can reach (a port scanner). The audit keeps the reason.
_NETWORK_REASONS = frozenset({"fetch_failed", "blocked_address", "redirect", "bad_status", "too_large", "timeout"})


def granted_scopes(requested: tuple[str, ...], offered: list[str], person: tuple[str, ...]) -> tuple[str, ...]:
    """DESIGN.md: requested ∩ `interactive.scopes` ∩ what the person may grant; nothing requested asks for all."""
    wanted = requested or tuple(offered)
    return tuple(scope for scope in wanted if scope in offered and scope in person)


def cookie_secure(issuer_url: str) -> bool:
    """Secure unless the issuer is plain http on a loopback IP literal (a developer's machine)."""
    parts = urlsplit(issuer_url)
    if parts.scheme != "http":
        return True
    try:
        return not ipaddress.ip_address((parts.hostname or "").strip("[]")).is_loopback
    except ValueError:
        return True


@dataclass
class Interactive:
    """The pages and the code grant; rebuilt with the config (its sessions and codes are carried over)."""

    config: Config
    settings: InteractiveConfig
    signing_key: Callable[[], SigningKey]
    state: SharedState
    documents: ClientDocuments
    sessions: SignIns
    codes: AuthorizationCodes
    registrations: Registrations
    secrets: SecretChecker
    throttle: AuthThrottle  # people's sign-in failures (its own budget, not the agents')
    emit: Callable[[AuditEvent], bool]
    limiter: RateLimiter | None = None  # interactive.limits, shared by the replicas (Redis when configured)
    provider: OpenIdProvider | None = None  # login.oidc
    clock: Callable[[], float] = time.time

    @property
    def cookie(self) -> str:
        return self._cookie_name("session")

    @property
    def browser_cookie(self) -> str:
        return self._cookie_name("browser")

    def _cookie_name(self, name: str) -> str:
        # `__Host-` makes browsers refuse the cookie unless it is Secure, host-only and for path / (RFC 6265bis), so
        # a sibling subdomain cannot plant one.
        return f"__Host-tollbooth-{name}" if cookie_secure(self.config.issuer.url) else f"tollbooth-{name}"

    def _set_cookie(self, response: Response, name: str, value: str, max_age: float) -> None:
        secure = cookie_secure(self.config.issuer.url)
        response.set_cookie(name, value, max_age=int(max_age), path="/", secure=secure, httponly=True, samesite="lax")

    def _browser(self, request: Request) -> str | None:
        value = request.cookies.get(self.browser_cookie)
        return value if value is not None and _BROWSER.match(value) else None

    def _from_our_pages(self, request: Request) -> bool:
        """A page's POST came from our own pages, as far as the browser says: Fetch Metadata, else Origin. A browser
        that sends neither is an old one or not a browser; the csrf fields still hold for it."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        if origin is None or origin == "null":  # no-referrer pages make Chromium send "null" for its own forms
            return True
        issuer = urlsplit(self.config.issuer.url)
        return origin.lower() == f"{issuer.scheme}://{issuer.netloc}".lower()

    def _person_scopes(self, signed_in: SignIn) -> tuple[str, ...] | None:
        """What the person may grant now (None: they may not sign in any more): an embedded account is read from
        the config each time, so a removed account or narrowed list takes effect within the session; a
        provider's person keeps what their ID token said while `login.oidc` stays."""
        return self._grantable(signed_in.source, signed_in.subject, signed_in.scopes)

    def _grantable(self, source: str, subject: str, granted: tuple[str, ...]) -> tuple[str, ...] | None:
        """What a person signed in through `source` may grant now, None if they may not sign in any more: an
        account's list as it is in login.users now; a provider's person, who cannot be asked again, keeps `granted`
        while that same provider is configured and no account took their name."""
        if source == "users":
            user = self.config.login.users.get(subject)
            return None if user is None or user.password_hash is None else tuple(user.scopes)
        oidc = self.config.login.oidc
        if oidc is not None and source == _oidc_source(oidc.issuer) and subject not in self.config.login.users:
            return granted
        return None

    def _path(self, path: str) -> str:
        return urlsplit(self.config.issuer.url).path.rstrip("/") + path

    def _audit(self, request: Request, kind: str, status: int, **fields: Any) -> None:
        self.emit(request_event(kind, request, status, **fields))

    async def _client(self, client_id: str | None) -> ClientDocument | None:
        """The client's registered metadata: its document (an https client_id), or its RFC 7591 registration."""
        if client_id is None or client_id in self.config.agents:
            return None  # an agent's client_id is never a person's client, however it is spelled
        if self._is_document(client_id):
            return await self.documents.fetch(client_id)
        registered = await self.registrations.get(client_id) if self.settings.dynamic_registration else None
        return registered.document if registered else None

    def _is_document(self, client_id: str) -> bool:
        return self.settings.client_metadata_documents and is_document_client_id(client_id)

    # GET /oauth/authorize ------------------------------------------------------------------------------------------

    async def _over_limit(self, request: Request, budget: str, limit: RateLimit | None) -> int | None:
        """Seconds to wait when this address spent its budget on `budget`; None to go on."""
        if self.limiter is None or limit is None:
            return None
        address = request.client.host if request.client else ""
        verdict = await self.limiter.check(address_key(budget, network_of(address)), limit)
        return None if verdict.allowed else max(1, math.ceil(verdict.retry_after))

    async def authorize(self, request: Request) -> Response:
        wait = await self._over_limit(request, "~authorize", self.settings.limits.authorize)
        if wait is not None:
            self._audit(request, "authorize.denied", 429, reason="rate_limited")
            return _too_many(wait)
        params = parse_qs(request.url.query, keep_blank_values=True)
        claimed = _first(params, "client_id")
        try:
            document = await self._client(claimed)
            localhost = self.settings.localhost_redirects
            client_id, redirect_uri = client_and_redirect(
                params, document.redirect_uris if document else None, localhost=localhost
            )
            if not redirect_host_allowed(redirect_uri, self.settings.redirect_hosts, localhost=localhost):
                raise PageError("invalid_request", "the redirect_uri's host is not allowed here", "redirect_host")
        except ClientDocumentError as exc:
            log.info("client metadata document refused: %s", exc.description)
            self._audit(request, "authorize.denied", 400, agent=_bounded(claimed), reason=exc.reason)
            if exc.reason in _NETWORK_REASONS:
                return error_page("invalid_client", "the client's metadata document could not be fetched")
            return error_page("invalid_client", f"the client's metadata document could not be used: {exc.description}")
        except PageError as exc:
            self._audit(request, "authorize.denied", 400, agent=_bounded(claimed), reason=exc.reason)
            return error_page(exc.error, exc.description)
        assert document is not None
        if self._is_document(client_id) and document.token_endpoint_auth_method != "none":  # noqa: S105
            # Keys for private_key_jwt would come from the document's jwks; only public clients are taken so far.
            self._audit(request, "authorize.denied", 400, agent=client_id, reason="client_auth_method")
            return error_page("invalid_client", "only public clients (token_endpoint_auth_method none) sign in here")
        try:
            checked = authorization_request(params, client_id, redirect_uri, self.config.proxy.public_url)
        except RedirectError as exc:
            self._audit(request, "authorize.denied", 302, agent=client_id, reason=exc.reason)
            state = _first(params, "state")
            return self._back(redirect_uri, error=exc.error, error_description=exc.description, state=state)
        signed_in = await self.sessions.session(request.cookies.get(self.cookie))
        scopes = self._person_scopes(signed_in) if signed_in is not None else None
        if signed_in is not None and scopes is not None:
            granted = granted_scopes(checked.scopes, self.settings.scopes, scopes)
            if await self._remembered(signed_in.subject, checked, granted):
                return await self._approved(request, checked, signed_in, granted, remembered=True)
        browser = self._browser(request) or new_browser()
        name = display_name(document.client_name, _client_host(client_id) or "an application")
        key, pending = await self.sessions.hold(checked, name, browser)
        if signed_in is not None and scopes is not None:
            response = self._consent_page(key, pending, signed_in, scopes)
        else:
            response = self._login_page(key, pending)
        self._set_cookie(response, self.browser_cookie, browser, PENDING_TTL)
        return response

    def _back(self, redirect_uri: str, **values: str | None) -> Response:
        # RFC 9207: `iss` tells the client which server answered, against mix-up attacks.
        target = redirect_with(redirect_uri, {**values, "iss": self.config.issuer.url})
        return RedirectResponse(target, status_code=303, headers={"cache-control": "no-store"})

    def _login_page(
        self, key: str, pending: Pending, error: str = "", username: str = "", status: int = 200
    ) -> Response:
        return page(
            "login.html",
            status,
            title="Sign in",
            passwords=bool(self.config.login.users),
            federation=self.provider.label if self.provider else "",
            federation_link=f"{self._path(OIDC_PATH)}?{urlencode({'request': key})}",
            action=self._path(LOGIN_PATH),
            csrf=pending.csrf,
            request_id=key,
            client_name=pending.client_name,
            client_host=_client_host(pending.request.client_id),
            error=error,
            username=username,
        )

    def _consent_page(self, key: str, pending: Pending, signed_in: SignIn, person: tuple[str, ...]) -> Response:
        request = pending.request
        scopes = granted_scopes(request.scopes, self.settings.scopes, person)
        return page(
            "consent.html",
            title="Allow access",
            form_targets=(form_target(request.redirect_uri),),
            action=self._path(CONSENT_PATH),
            logout=self._path(LOGOUT_PATH),
            csrf=signed_in.csrf,
            request_id=key,
            client_name=pending.client_name,
            client_host=_client_host(request.client_id),
            redirect_host=urlsplit(request.redirect_uri).netloc or request.redirect_uri.split(":", 1)[0],
            subject=signed_in.subject,
            scopes=scopes,
            remember=_duration_words(self.settings.remember_consent),
        )

    # POST /login ---------------------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if not self._from_our_pages(request):
            return error_page("invalid_request", "the sign-in form was sent from another site", 403)
        form = await _page_form(request)
        if form is None:
            return error_page("invalid_request", "the sign-in form could not be read")
        key = form.get("request")
        pending = await self.sessions.pending(key, self._browser(request))
        if pending is None or key is None:
            return error_page("invalid_request", "this sign-in has expired: start again from the application", 400)
        if not csrf_ok(form.get("csrf"), pending.csrf):
            return error_page("invalid_request", "the sign-in form was not sent from this page", 403)
        username = (form.get("username") or "")[:64]
        user = self.config.login.users.get(username)
        # A password typed into the username field must not reach the audit log: only a name-shaped text does.
        tried = username if _USERNAME.match(username) else "?"
        address = request.client.host if request.client else ""
        account = tried  # invented names too: a budget only real names had would tell which names exist
        wait = self.throttle.retry_after(address, account)
        if wait is not None:
            self._audit(
                request, "login.failed", 429, subject=tried, agent=pending.request.client_id, reason="throttled"
            )
            return self._login_page(key, pending, f"Too many attempts. Try again in {wait} seconds.", username, 429)
        try:
            matched = await self.secrets.matches(user.password_hash if user else None, form.get("password") or "")
        except OAuthError:  # every password checker busy: a flood; the person may simply try again
            return self._login_page(key, pending, "The service is busy. Try again in a moment.", username, 503)
        if not matched:
            await self.throttle.failed(address, account, self.config.issuer.auth_failure_limits)
            self._audit(
                request, "login.failed", 401, subject=tried, agent=pending.request.client_id, reason="bad_password"
            )
            return self._login_page(key, pending, "The username or password is not right.", username, 401)
        assert user is not None
        cookie, signed_in = await self.sessions.start(username, tuple(user.scopes), "users", self.settings.session_ttl)
        self._audit(request, "login.succeeded", 200, subject=username, agent=pending.request.client_id)
        response = self._consent_page(key, pending, signed_in, tuple(user.scopes))
        self._set_cookie(response, self.cookie, cookie, self.settings.session_ttl)
        return response

    # GET /login/oidc and its callback: sign-in at the organisation's OpenID provider -----------------------------

    async def oidc_start(self, request: Request) -> Response:
        """Send the person to the provider, for the pending request the sign-in page named."""
        if self.provider is None:
            return error_page("invalid_request", "sign-in through an OpenID provider is not configured here", 404)
        wait = await self._over_limit(request, "~authorize", self.settings.limits.authorize)
        if wait is not None:  # each start holds a record, as an authorization request does: the same budget
            return _too_many(wait)
        browser = self._browser(request)
        key = request.query_params.get("request")
        pending = await self.sessions.pending(key, browser)
        if pending is None or key is None or browser is None:
            return error_page("invalid_request", "this sign-in has expired: start again from the application", 400)
        try:
            metadata = await self.provider.metadata()
        except FederationError as exc:
            self._audit(request, "login.failed", 503, agent=pending.request.client_id, reason=exc.reason)
            return self._login_page(key, pending, "The sign-in provider cannot be reached. Try again shortly.", "", 503)
        state, federation = await self.sessions.federate(key, browser)
        target = authorization_url(
            metadata,
            self.provider.settings,
            redirect_uri=self._oidc_callback(),
            state=state,
            nonce=federation.nonce,
            challenge=s256(federation.verifier),
        )
        return RedirectResponse(target, status_code=303, headers={"cache-control": "no-store"})

    def _oidc_callback(self) -> str:
        return self.config.issuer.url.rstrip("/") + OIDC_CALLBACK_PATH

    async def oidc_callback(self, request: Request) -> Response:
        """The provider's answer (OIDC Core §3.1.2.5): redeem the code, check the ID token, sign the person in."""
        if self.provider is None:
            return error_page("invalid_request", "sign-in through an OpenID provider is not configured here", 404)
        params = request.query_params
        browser = self._browser(request)
        federation = await self.sessions.federated(params.get("state"), browser)
        pending = await self.sessions.pending(federation.request, browser) if federation else None
        if federation is None or pending is None:
            # An answer this browser did not ask for: a replayed or planted callback (login CSRF) is refused here.
            self._audit(request, "login.failed", 400, reason="oidc_state")
            return error_page("invalid_request", "this sign-in has expired or was started elsewhere: start again", 400)
        code = params.get("code")
        try:
            if params.get("error") or not code:
                raise FederationError("oidc_error", "the sign-in at the provider did not complete")
            claims = await self.provider.redeem(
                code, verifier=federation.verifier, redirect_uri=self._oidc_callback(), nonce=federation.nonce
            )
            taken = [*self.config.login.users, *self.config.agents]
            subject, scopes = person_of(claims, self.provider.settings, taken)
        except FederationError as exc:
            status = 503 if exc.reason == "oidc_unavailable" else 401
            self._audit(request, "login.failed", status, agent=pending.request.client_id, reason=exc.reason)
            message = f"{exc.description[:1].upper()}{exc.description[1:]}."
            return self._login_page(federation.request, pending, message, "", status)
        cookie, signed_in = await self.sessions.start(
            subject, scopes, _oidc_source(self.provider.settings.issuer), self.settings.session_ttl
        )
        self._audit(request, "login.succeeded", 200, subject=subject, agent=pending.request.client_id)
        response = self._consent_page(federation.request, pending, signed_in, scopes)
        self._set_cookie(response, self.cookie, cookie, self.settings.session_ttl)
        return response

    # POST /consent -------------------------------------------------------------------------------------------------

    async def consent(self, request: Request) -> Response:
        if not self._from_our_pages(request):
            return error_page("invalid_request", "the consent form was sent from another site", 403)
        form = await _page_form(request)
        signed_in = await self.sessions.session(request.cookies.get(self.cookie))
        person = self._person_scopes(signed_in) if signed_in is not None else None
        if form is None or signed_in is None or person is None:
            return error_page("access_denied", "you are not signed in here any more: start again from the application")
        if not csrf_ok(form.get("csrf"), signed_in.csrf):
            return error_page("invalid_request", "the consent form was not sent from this page", 403)
        pending = await self.sessions.decided(form.get("request"), self._browser(request))
        if pending is None:
            return error_page("invalid_request", "this request has expired: start again from the application")
        checked = pending.request
        if form.get("decision") != "approve":
            self._audit(request, "consent.denied", 303, subject=signed_in.subject, agent=checked.client_id)
            return self._back(checked.redirect_uri, error="access_denied", state=checked.state)
        scopes = granted_scopes(checked.scopes, self.settings.scopes, person)
        if self.settings.remember_consent and form.get("remember") == "1":
            record = json.dumps({"at": self.clock()})
            await self.state.ephemeral.put(
                _consent_key(signed_in.subject, checked, scopes), record, self.settings.remember_consent
            )
        return await self._approved(request, checked, signed_in, scopes, remembered=False)

    async def _approved(
        self,
        request: Request,
        checked: AuthorizationRequest,
        signed_in: SignIn,
        scopes: tuple[str, ...],
        remembered: bool,
    ) -> Response:
        subject = signed_in.subject
        code = await self.codes.issue(checked, subject, scopes, signed_in.source)
        self._audit(
            request,
            "consent.granted",
            303,
            subject=subject,
            agent=checked.client_id,
            granted_scopes=" ".join(scopes),
            reason="remembered" if remembered else "",
        )
        return self._back(checked.redirect_uri, code=code, state=checked.state)

    async def _remembered(self, subject: str, checked: AuthorizationRequest, scopes: tuple[str, ...]) -> bool:
        """A remembered "Allow" for exactly this person, client, redirect origin and scope set, given after any
        revocation of the client or the person (`tollbooth revoke --agent/--subject` voids it too)."""
        if not self.settings.remember_consent:
            return False
        raw = await self.state.ephemeral.get(_consent_key(subject, checked, scopes))
        try:
            at = float(json.loads(raw)["at"]) if raw else None
        except (ValueError, TypeError, KeyError):
            at = None
        return at is not None and not self.state.revocations.is_cut_off(checked.client_id, subject, at)

    # POST /oauth/register (RFC 7591) ---------------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        if not self.settings.dynamic_registration:
            return JSONResponse({"error": "not_found"}, status_code=404)
        wait = await self._over_limit(request, "~register", self.settings.limits.registration)
        if wait is not None:
            self._audit(request, "client.registration_denied", 429, reason="rate_limited")
            return JSONResponse(
                {"error": "temporarily_unavailable", "error_description": f"too many registrations; retry in {wait} s"},
                status_code=429,
                headers={"retry-after": str(wait)},
            )
        body = await read_limited(request, MAX_PAGE_FORM)
        if body is None:
            return _registration_error("invalid_client_metadata", "the registration request is too large")
        if (request.headers.get("content-type") or "").split(";")[0].strip().lower() != "application/json":
            return _registration_error("invalid_client_metadata", "send the registration as application/json")
        try:
            uris, name, method = read_registration(
                _json(body), self.settings.redirect_hosts, localhost=self.settings.localhost_redirects
            )
        except RegistrationError as exc:
            self._audit(request, "client.registration_denied", 400, reason=exc.error)
            return _registration_error(exc.error, exc.description)
        registered, secret = await self.registrations.register(uris, name, method)
        self._audit(request, "client.registered", 201, agent=registered.document.client_id)
        return JSONResponse(
            registration_response(registered, secret), status_code=201, headers={"cache-control": "no-store"}
        )

    async def _client_id(self, form: Form, authorization: str | None) -> str:
        """Who presents a code or refresh token: a registered confidential client proves its secret (Basic or in
        the body, RFC 6749 §2.3.1), a public one only names itself (the code's PKCE or refresh token proves it)."""
        secret = form.get("client_secret")
        client_id = form.get("client_id")
        if authorization:
            client_id, secret = basic_credentials(authorization)[0]
        if client_id is None:
            raise OAuthError("invalid_request", "the client_id parameter is missing", reason="missing_parameter")
        registered = await self.registrations.get(client_id)
        if client_id in self.config.agents or (registered is None and not self._is_document(client_id)):
            # Neither a document URL nor a live registration: a registration forgotten (restart, eviction) must not
            # turn its client public, or its stolen refresh token would work without the secret.
            raise invalid_client("this client is not known to the token service", "unknown_client")
        if registered is not None and registered.secret_hash is not None:
            if not secret_matches(registered, secret):
                raise invalid_client("the client secret is wrong", "bad_secret", basic=bool(authorization))
        elif secret is not None:
            raise invalid_client("this client is public: it has no secret", "unexpected_secret")
        return client_id

    # POST /logout --------------------------------------------------------------------------------------------------

    async def logout(self, request: Request) -> Response:
        if not self._from_our_pages(request):
            return error_page("invalid_request", "the sign-out form was sent from another site", 403)
        form = await _page_form(request)
        cookie = request.cookies.get(self.cookie)
        signed_in = await self.sessions.session(cookie)
        if signed_in is not None and form is not None and csrf_ok(form.get("csrf"), signed_in.csrf):
            await self.sessions.end(cookie)
        response = error_page("access_denied", "You are signed out. You can close this page.", 200)
        response.delete_cookie(self.cookie, path="/", secure=cookie_secure(self.config.issuer.url), httponly=True)
        return response

    # The token endpoint's authorization_code grant ----------------------------------------------------------------

    async def exchange(self, form: Form, authorization: str | None) -> Issued:
        """A client's code → an access token for the person, with the client as actor."""
        client_id = await self._client_id(form, authorization)
        code = form.require("code")
        try:
            grant = await self.codes.redeem(
                code, client_id=client_id, redirect_uri=form.get("redirect_uri"), verifier=form.get("code_verifier")
            )
        except CodeReplayed as replayed:
            # RFC 6749 §4.1.2: a code used twice revokes what it issued; one holder of the code is an attacker.
            for kind, issued in replayed.issued:
                if kind == "family":
                    await self.state.revoke_family(issued)
                else:
                    await self.state.revoke_jti(issued, self.clock() + self.settings.max_token_ttl)
            raise
        token, claims = self._mint(grant.subject, client_id, grant.scopes, grant.request.resource)
        if not await self.codes.record_issued(code, "jti", claims["jti"]):
            await self._replayed_meanwhile(claims, None)
        # A person's device holds no secret, so its refresh tokens rotate on every use and a reused one ends the
        # whole family (RFC 9700 §4.14.2, the state's rotate_refresh).
        refresh_token = secrets.token_urlsafe(32)
        now = self.clock()
        family = RefreshGrant(
            family=secrets.token_urlsafe(12),
            agent=client_id,
            subject=grant.subject,
            scopes=grant.scopes,
            act=claims["act"],
            issued_at=now,
            expires_at=now + self.settings.refresh_token_ttl,
            source=grant.source,
        )
        await self.state.store_refresh(refresh_token_hash(refresh_token), family)
        if not await self.state.record_family_token(family.family, claims["jti"], claims["exp"]):
            raise _unknown_refresh()
        if not await self.codes.record_issued(code, "family", family.family):
            await self._replayed_meanwhile(claims, family.family)
        return Issued(token, claims, refresh_token=refresh_token, exchanged=False, event="token.issued")

    async def _replayed_meanwhile(self, claims: dict[str, Any], family: str | None) -> None:
        """The code came back while this redemption ran: what it just minted is revoked here (the replay revoked
        what had been recorded before it)."""
        await self.state.revoke_jti(claims["jti"], claims["exp"])
        if family is not None:
            await self.state.revoke_family(family)
        raise CodeReplayed([])

    async def refresh(self, form: Form, authorization: str | None) -> Issued:
        """A client's refresh token → a new access token and a new refresh token (the old one is spent)."""
        client_id = await self._client_id(form, authorization)
        old_hash = refresh_token_hash(form.require("refresh_token"))
        family = await self.state.find_refresh(old_hash)
        if family is None:
            raise _unknown_refresh()
        if family.agent != client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client", reason="other_client")
        if grant_revoked(self.state.revocations, family):
            await self.state.revoke_family(family.family)
            raise OAuthError("invalid_grant", "the refresh token has been revoked", reason="revoked")
        # What the person and the config still allow: a removed account or a narrowed scope list ends the grant.
        person = self._grantable(family.source, family.subject, family.scopes) or ()
        allowed = [s for s in family.scopes if s in self.settings.scopes and s in person]
        requested = form.get("scope")
        scopes = tuple(s for s in allowed if requested is None or s in requested.split())
        if requested is not None and any(s not in allowed for s in requested.split()):
            raise OAuthError("invalid_scope", "a refresh may narrow the scope, never widen it", reason="invalid_scope")
        if not scopes:
            raise OAuthError("invalid_grant", "nothing of this grant is still allowed", reason="grant_withdrawn")
        new_token = secrets.token_urlsafe(32)
        try:
            rotated = await self.state.rotate_refresh(old_hash, refresh_token_hash(new_token), self.clock())
        except RefreshReused:
            raise OAuthError(
                "invalid_grant", "the refresh token was already used; its whole family is revoked", reason="reused"
            ) from None
        if rotated is None:
            raise _unknown_refresh()
        token, claims = self._mint(family.subject, client_id, scopes, self.config.proxy.public_url)
        if not await self.state.record_family_token(family.family, claims["jti"], claims["exp"]):
            raise _unknown_refresh()
        return Issued(token, claims, refresh_token=new_token, exchanged=False, event="token.refreshed")

    def _mint(self, subject: str, client_id: str, scopes: tuple[str, ...], audience: str) -> tuple[str, dict[str, Any]]:
        refuse_blocked(self.state.revocations, client_id, subject, None)
        return mint_access_token(
            self.signing_key(),
            issuer=self.config.issuer.url,
            audience=audience,
            subject=subject,
            client_id=client_id,
            scopes=scopes,
            ttl=min(self.settings.max_token_ttl, self.config.issuer.access_token_ttl),
            act=nest_act(client_id, None),
            now=self.clock(),
        )


def _registration_error(error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _unknown_refresh() -> OAuthError:
    return OAuthError("invalid_grant", "the refresh token is invalid, expired or revoked", reason="unknown_refresh")


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _too_many(wait: int) -> Response:
    refused = error_page("temporarily_unavailable", f"Too many sign-in requests. Try again in {wait} s.", 429)
    refused.headers["retry-after"] = str(wait)
    return refused


def _oidc_source(issuer: str) -> str:
    return f"oidc:{issuer}"


def _consent_key(subject: str, checked: AuthorizationRequest, scopes: tuple[str, ...]) -> str:
    # The redirect URI is part of it, so a document that changes where codes go asks the person again; a loopback
    # one without its port, which a native app picks afresh for every sign-in (RFC 8252 §7.3).
    target = urlsplit(checked.redirect_uri)
    if target.scheme == "http" and target.port is not None:
        target = target._replace(netloc=target.netloc.rsplit(":", 1)[0])
    parts = json.dumps([subject, checked.client_id, target.geturl(), sorted(scopes)])
    return "consent:" + hashlib.sha256(parts.encode()).hexdigest()


def _duration_words(seconds: float) -> str:
    """ "30 days", "8 hours", "" for 0: for the consent page's remember box."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{int(seconds)} seconds" if seconds else ""


def _client_host(client_id: str) -> str:
    """The host a document client_id names; "" for a registered client, whose id names nothing."""
    return (urlsplit(client_id).hostname or "") if "://" in client_id else ""


def _bounded(value: str | None) -> str:
    return "".join(c for c in (value or "")[:128] if c.isprintable())


async def _page_form(request: Request) -> Form | None:
    """A page's form, or None when it is not one (wrong type, too large, malformed)."""
    body = await read_limited(request, MAX_PAGE_FORM)
    if body is None:
        return None
    try:
        return parse_form(request.headers.get("content-type"), body)
    except OAuthError:
        return None
