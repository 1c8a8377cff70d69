"""`TollboothAuth`: an httpx2 (and httpx) `Auth` that gets, caches, presents, refreshes and revokes an agent's
tokens. The protocol steps live in `discovery` and `grants`; this module holds the cache and its concurrency:
one token request in flight however many requests need a token, in threads or in asyncio tasks."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx2

from gateway.client.credentials import ClientSecret, Credential, PrivateKeyJwt
from gateway.client.discovery import Endpoints, bearer_challenge, discover, resource_covers, same_origin
from gateway.client.errors import DiscoveryError, InsufficientScope, TokenRequestError, TollboothError
from gateway.client.exchange import Exchange, T, run_async, run_sync
from gateway.client.token_requests import (
    ClientCredentials,
    Token,
    TokenExchange,
    refresh_form,
    revocation,
    token_from,
    token_request,
)
from gateway.wire import ACCESS_TOKEN_TYPE

log = logging.getLogger("tollbooth.client")

try:  # httpx 0.28 clients accept only subclasses of their own Auth, so the class derives from both when present.
    import httpx

    _AUTH_BASES: tuple[type, ...] = (httpx2.Auth, httpx.Auth)
    _NOT_READ: tuple[type[Exception], ...] = (httpx2.RequestNotRead, httpx.RequestNotRead)
except ImportError:  # pragma: no cover - httpx is optional
    _AUTH_BASES = (httpx2.Auth,)
    _NOT_READ = (httpx2.RequestNotRead,)

# After a failed early refresh, wait this long before the next attempt (the current token is still good).
REFRESH_RETRY_SECONDS = 2.0


class _Session:
    """What an agent's auths share: its credential, the discovered endpoints and the HTTP clients that reach
    the token service (never the clients the agent's requests go through)."""

    def __init__(self, credential: Credential, proxy_url: str | None, issuer_url: str | None, timeout: float):
        if proxy_url is None and issuer_url is None:
            raise TollboothError("give proxy_url (the token service is discovered from it) or issuer_url")
        self.credential = credential
        self.proxy_url = proxy_url
        self.issuer_url = issuer_url
        self.timeout = timeout
        self.endpoints: Endpoints | None = None
        self._sync: httpx2.Client | None = None
        # An httpx2.AsyncClient belongs to the event loop it first ran on: one per loop, dropped with the loop.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def with_endpoints(self, step: Callable[[Endpoints], Exchange[T]]) -> Exchange[T]:
        """Run `step(endpoints)`, discovering the endpoints first on first use."""
        if self.endpoints is None:
            self.endpoints = yield from discover(self.proxy_url, self.issuer_url)
        return (yield from step(self.endpoints))

    def run(self, exchange: Exchange[T]) -> T:
        if self._sync is None:
            self._sync = httpx2.Client(timeout=self.timeout)
        return run_sync(exchange, self._sync)

    async def arun(self, exchange: Exchange[T]) -> T:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = self._async[loop] = httpx2.AsyncClient(timeout=self.timeout)
        return await run_async(exchange, client)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        self.close()
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


class TollboothAuth(*_AUTH_BASES):  # type: ignore[misc]
    """Authenticates an agent's requests through a Tollbooth proxy.

    >>> auth = TollboothAuth("billing-bot", proxy_url="http://127.0.0.1:8080", private_key="billing-bot.pem",
    ...                      scopes=["crm.read"])
    >>> httpx2.get("http://127.0.0.1:8080/v1/customers", auth=auth)
    """

    requires_request_body = False  # bodies stream; only a body already in memory is replayed after a 401
    requires_response_body = False

    def __init__(
        self,
        client_id: str,
        *,
        proxy_url: str | None = None,
        issuer_url: str | None = None,
        private_key: str | bytes | Path | Any | None = None,
        secret: str | None = None,
        scopes: Iterable[str] = (),
        algorithm: str | None = None,
        key_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if (private_key is None) == (secret is None):
            raise TollboothError("give the agent's private_key (private_key_jwt, recommended) or its secret")
        credential: Credential = (
            PrivateKeyJwt.load(client_id, private_key, algorithm=algorithm, kid=key_id)
            if private_key is not None
            else ClientSecret(client_id, str(secret))
        )
        self._start(_Session(credential, proxy_url, issuer_url, timeout), ClientCredentials(tuple(scopes)), True)

    def _start(self, session: _Session, grant: ClientCredentials | TokenExchange, owns_session: bool) -> None:
        self._session = session
        self._grant = grant
        self._owns_session = owns_session
        self._token: Token | None = None
        # One fetch in flight for every caller: threads, tasks of any event loop, early refreshes. The lock guards
        # only these two fields and is never held across I/O.
        self._lock = threading.Lock()
        self._inflight: Future[Token] | None = None
        self._next_refresh_attempt = 0.0

    def on_behalf_of(
        self,
        subject_token: str,
        scopes: Iterable[str] | None = None,
        *,
        subject_token_type: str = ACCESS_TOKEN_TYPE,
    ) -> TollboothAuth:
        """An auth for this agent acting for the holder of `subject_token` (RFC 8693 token exchange). It uses the
        refresh tokens the gateway grants, and exchanges the subject token again when a refresh is refused."""
        delegated = TollboothAuth.__new__(type(self))
        grant = TokenExchange(subject_token, subject_token_type, tuple(scopes or ()))
        delegated._start(self._session, grant, False)
        return delegated

    # -- tokens --------------------------------------------------------------------------------------------

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes of the current token (empty before the first one)."""
        return self._token.scopes if self._token else ()

    def get_token(self) -> str:
        """The current access token, fetched or refreshed as needed (blocking)."""
        return self._sync_token().access_token

    async def aget_token(self) -> str:
        """The current access token, fetched or refreshed as needed."""
        return (await self._async_token()).access_token

    def _fetch(self, current: Token | None) -> Exchange[Token]:
        return self._session.with_endpoints(lambda endpoints: self._grant_exchange(endpoints, current))

    def _grant_exchange(self, endpoints: Endpoints, current: Token | None) -> Exchange[Token]:
        credential, scopes = self._session.credential, self._grant.scopes
        body = None
        if current is not None and current.refresh_token is not None:
            try:
                body = yield from token_request(endpoints, credential, refresh_form(current, scopes))
            except TokenRequestError as exc:
                if exc.error != "invalid_grant":
                    raise
                # The family ended (expired, revoked, or a config change): start again from the subject token.
                log.info("refresh refused (%s); exchanging the subject token again", exc.description or exc.error)
        if body is None:
            body = yield from token_request(endpoints, credential, self._grant.form(endpoints.resource))
        jitter = random.random()  # noqa: S311 - spreads refreshes over time; not a secret
        return token_from(body, scopes, time.time(), jitter, endpoints.server.token_endpoint)

    def _claim(self, stale: str | None) -> tuple[Token | None, Future[Token] | None, bool]:
        """(a token to use now, or None and the fetch to wait for, and whether this caller must run it). A due
        token starts a background refresh and is used meanwhile, so no request waits for an early refresh."""
        now = time.time()
        with self._lock:
            token = self._token
            if token is not None and token.access_token != stale and token.usable(now):
                if token.due(now) and self._inflight is None and now >= self._next_refresh_attempt:
                    self._inflight = Future()
                    threading.Thread(target=self._refresh_early, args=(token, self._inflight), daemon=True).start()
                return token, None, False
            if self._inflight is None:
                self._inflight = Future()
                return None, self._inflight, True
            return None, self._inflight, False

    def _settle(self, inflight: Future[Token], token: Token | None, error: BaseException | None) -> None:
        with self._lock:
            if token is not None:
                self._token = token
            if self._inflight is inflight:
                self._inflight = None
        if token is not None:
            inflight.set_result(token)
        elif isinstance(error, Exception):
            inflight.set_exception(error)
        else:
            inflight.cancel()  # the fetching task was cancelled (or the process is stopping): waiters fetch anew

    @contextmanager
    def _fetching(self, inflight: Future[Token]) -> Iterator[Callable[[Token], Token]]:
        """For the caller that runs the fetch: `done(token)` hands the token to every waiter; an error raised
        inside reaches them too (a cancellation sends them to fetch anew)."""

        def done(token: Token) -> Token:
            self._settle(inflight, token, None)
            return token

        try:
            yield done
        except BaseException as exc:
            self._settle(inflight, None, exc)
            raise

    def _refresh_early(self, current: Token, inflight: Future[Token]) -> None:
        try:
            with self._fetching(inflight) as done:
                done(self._session.run(self._fetch(current)))
        except TollboothError as exc:
            self._next_refresh_attempt = time.time() + REFRESH_RETRY_SECONDS
            log.warning("early token refresh failed, keeping the current token: %s", exc)

    def _sync_token(self, stale: str | None = None) -> Token:
        while True:
            token, inflight, owner = self._claim(stale)
            if token is not None:
                return token
            assert inflight is not None
            if owner:
                with self._fetching(inflight) as done:
                    return done(self._session.run(self._fetch(self._token)))
            try:
                return inflight.result()
            except CancelledError:
                continue  # its fetcher was cancelled: claim again

    async def _async_token(self, stale: str | None = None) -> Token:
        while True:
            token, inflight, owner = self._claim(stale)
            if token is not None:
                return token
            assert inflight is not None
            if owner:
                with self._fetching(inflight) as done:
                    return done(await self._session.arun(self._fetch(self._token)))
            # Shielded: cancelling this caller must not cancel the fetch others wait for. The fetch may run in a
            # thread or another event loop; wrap_future crosses over safely.
            try:
                return await asyncio.shield(asyncio.wrap_future(inflight))
            except asyncio.CancelledError:
                if inflight.cancelled() and not _being_cancelled():
                    continue
                raise

    # -- the auth flow -------------------------------------------------------------------------------------

    def _covers(self, request: Any, token: Token) -> bool:
        """Whether `request` goes to the resource the token is for. A token sent anywhere else could be replayed
        there against the proxy (RFC 9700 §2.3, RFC 8707): requests to other hosts go out without it."""
        endpoints = self._session.endpoints
        resource = endpoints.resource if endpoints is not None and endpoints.resource else token.audience
        return resource is not None and resource_covers(resource, str(request.url))

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        token = self._sync_token()
        if not self._covers(request, token):
            yield request
            return
        response = yield _present(request, token)
        if _should_retry(request, response):
            token = self._sync_token(stale=token.access_token)
            response = yield _present(request, token)
        _check_scope(request, response, token)

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        token = await self._async_token()
        if not self._covers(request, token):
            yield request
            return
        response = yield _present(request, token)
        if _should_retry(request, response):
            token = await self._async_token(stale=token.access_token)
            response = yield _present(request, token)
        _check_scope(request, response, token)

    # -- revocation and lifetime ---------------------------------------------------------------------------

    def _revocation(self) -> Exchange[None] | None:
        with self._lock:
            token, self._token = self._token, None
        if token is None:
            return None
        return self._session.with_endpoints(lambda endpoints: revocation(endpoints, self._session.credential, token))

    def revoke(self) -> None:
        """Revoke the current token (and its refresh token) at the token service (RFC 7009)."""
        exchange = self._revocation()
        if exchange is not None:
            self._session.run(exchange)

    async def arevoke(self) -> None:
        """Revoke the current token (and its refresh token) at the token service (RFC 7009)."""
        exchange = self._revocation()
        if exchange is not None:
            await self._session.arun(exchange)

    def close(self) -> None:
        """Close the connections to the token service (not the agent's own clients)."""
        if self._owns_session:
            self._session.close()

    async def aclose(self) -> None:
        if self._owns_session:
            await self._session.aclose()

    def __enter__(self) -> TollboothAuth:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.revoke()
        except TollboothError as failure:
            if exc is None:
                raise
            log.warning("could not revoke the token on exit: %s", failure)  # the block's own error matters more
        finally:
            self.close()

    async def __aenter__(self) -> TollboothAuth:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.arevoke()
        except TollboothError as failure:
            if exc is None:
                raise
            log.warning("could not revoke the token on exit: %s", failure)
        finally:
            await self.aclose()


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _present(request: Any, token: Token) -> Any:
    request.headers["Authorization"] = f"Bearer {token.access_token}"
    return request


def _proxy_challenge(request: Any, response: Any) -> dict[str, str]:
    """The proxy's Bearer challenge in `response`, or {}. The proxy names its RFC 9728 metadata on its own origin in
    every challenge; a challenge without it is the upstream's, passed through, and not about the agent's token."""
    challenge = bearer_challenge(response.headers) or {}
    metadata = challenge.get("resource_metadata", "")
    try:
        if same_origin(metadata, str(request.url)):
            return challenge
    except DiscoveryError:
        pass
    return {}


def _should_retry(request: Any, response: Any) -> bool:
    """RFC 6750 §3.1 `invalid_token`: the token expired early or was revoked; one retry with a new token, when
    the body can be sent again (a streamed upload cannot)."""
    if response.status_code != 401 or _proxy_challenge(request, response).get("error") != "invalid_token":
        return False
    try:
        request.content  # noqa: B018 - raises when the body is a stream that was not read into memory
    except _NOT_READ:
        return False
    return True


def _check_scope(request: Any, response: Any, token: Token) -> None:
    if response.status_code != 403:
        return
    challenge = _proxy_challenge(request, response)
    if challenge.get("error") == "insufficient_scope":
        required = tuple(challenge.get("scope", "").split())
        raise InsufficientScope(required, token.scopes, request.method, str(request.url.copy_with(query=None)))
