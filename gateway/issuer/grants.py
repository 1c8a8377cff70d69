"""The token endpoint's grants: client_credentials (RFC 6749 §4.4), token exchange (RFC 8693) and refresh (§6).

Each grant turns an authenticated client and its parameters into an `Issued` token, or raises OAuthError with
the code the RFCs give. The decisions (which scopes, how long, whose `act`) are pure functions below; the
TokenService only adds the I/O: verifying subject tokens, refresh-token state, signing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Config
from gateway.issuer.clients import Client
from gateway.issuer.oauth import Form, OAuthError, invalid_request
from gateway.issuer.subjects import SubjectVerifier
from gateway.state import RefreshGrant, RefreshReused, RevocationList, SharedState, refresh_token_hash
from gateway.tokens.access_token import InvalidToken, SubjectToken, delegation_chain, mint_access_token, repeated_party
from gateway.tokens.jwk import SigningKey
from gateway.wire import ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, SCOPE_TOKEN, TOKEN_EXCHANGE

# Protocol identifiers, not secrets (hence the noqa for the password heuristic).
CLIENT_CREDENTIALS = "client_credentials"
REFRESH_TOKEN = "refresh_token"  # noqa: S105
GRANT_TYPES = (CLIENT_CREDENTIALS, TOKEN_EXCHANGE, REFRESH_TOKEN)
SUBJECT_TOKEN_TYPES = (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE)


@dataclass(frozen=True, slots=True)
class Issued:
    access_token: str
    claims: dict[str, Any]
    refresh_token: str | None
    exchanged: bool  # RFC 8693 responses carry issued_token_type
    event: str  # token.issued or token.refreshed

    @property
    def scopes(self) -> str:
        return str(self.claims.get("scope", ""))

    def response(self) -> dict[str, Any]:
        """RFC 6749 §5.1 (and RFC 8693 §2.2.1): `scope` always, so an agent never has to guess what it holds."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.claims["exp"] - self.claims["iat"],
            "scope": self.scopes,
        }
        if self.exchanged:
            body["issued_token_type"] = ACCESS_TOKEN_TYPE
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


def invalid_scope(description: str, reason: str = "invalid_scope") -> OAuthError:
    return OAuthError("invalid_scope", description, reason=reason)


def parse_scope(value: str | None) -> list[str] | None:
    """RFC 6749 §3.3: space-delimited, case-sensitive scope-tokens; None when the parameter was not sent."""
    if value is None:
        return None
    scopes = [s for s in value.split(" ") if s]
    bad = [s for s in scopes if not SCOPE_TOKEN.match(s)]
    if bad or not scopes:
        raise invalid_scope("the scope parameter must be scope names separated by spaces", "malformed_scope")
    return list(dict.fromkeys(scopes))


def choose_scopes(requested: list[str] | None, default: Iterable[str], limits: list[tuple[set[str], str]]) -> list[str]:
    """The scopes to grant. Any requested scope outside a limit is refused by name, never dropped silently:
    an agent that asked for crm.write and silently got less would fail later, somewhere harder to debug."""
    if requested is None:
        return [s for s in default if all(s in allowed for allowed, _ in limits)]
    for allowed, whose in limits:
        outside = [s for s in requested if s not in allowed]
        if outside:
            raise invalid_scope(f"{whose} does not allow {' '.join(outside)}", "scope_not_allowed")
    return requested


def token_ttl(*caps: float | None) -> float:
    """The smallest lifetime any rule allows (the issuer default, the agent's, per-scope caps, the parent grant)."""
    ttl = min(cap for cap in caps if cap is not None)
    if ttl < 1:
        raise OAuthError("invalid_grant", "the grant this token would come from has expired", reason="expired")
    return ttl


def _origin(parts: Any) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default


def resource_audience(values: list[str], public_url: str) -> str:
    """RFC 8707 §2 / RFC 8693 §2.1: a named resource or audience must be the proxy's public URL or a URL under
    it (MCP clients name the MCP endpoint); the token's `aud` is then the public URL itself."""
    public = urlsplit(public_url)
    base = public.path.rstrip("/")
    for value in values:
        try:
            parts = urlsplit(value)
            origin = _origin(parts)
        except ValueError:
            origin = None
        path = parts.path if origin else ""
        under = origin == _origin(public) and (path.rstrip("/") == base or path.startswith(base + "/"))
        if not under or parts.fragment or "\\" in path or any(seg in (".", "..") for seg in path.split("/")):
            raise OAuthError(
                "invalid_target", f"tokens are issued only for {public_url} and URLs under it", reason="wrong_resource"
            )
    return public_url


def _unknown_refresh() -> OAuthError:
    return OAuthError("invalid_grant", "the refresh token is invalid, expired or revoked", reason="unknown_refresh")


def may_act_for(patterns: Iterable[str], subject: str) -> bool:
    """`agents.X.may_act_for`: exact subjects, `*` for any, or a prefix ending in `*` (`user:*`)."""
    return any(
        pattern == subject or (pattern.endswith("*") and subject.startswith(pattern[:-1])) for pattern in patterns
    )


def nest_act(agent: str, prior: dict[str, Any] | None) -> dict[str, Any]:
    """RFC 8693 §4.1: the current actor outermost, earlier actors nested inside."""
    return {"sub": agent, "act": prior} if prior is not None else {"sub": agent}


def refuse_blocked(revocations: RevocationList, agent: str, subject: str, act: dict[str, Any] | None) -> None:
    """The kill switch at the token service: nothing is minted for a blocked agent, actor or subject."""
    blocked = revocations.blocked(agent, subject, delegation_chain(act))
    if blocked is not None:
        raise OAuthError("unauthorized_client", blocked, reason="blocked")


def grant_revoked(revocations: RevocationList, grant: RefreshGrant) -> bool:
    """Whether a refresh family fell under a revocation since it started: its agent's or subject's cut-off, an agent
    in its chain, or a token it was exchanged from."""
    return revocations.is_cut_off(grant.agent, grant.subject, grant.issued_at) or revocations.is_chain_revoked(
        delegation_chain(grant.act), grant.ancestors, grant.issued_at
    )


class TokenService:
    """Issues tokens for one config."""

    def __init__(
        self,
        config: Config,
        *,
        signing_key: Callable[[], SigningKey],
        state: SharedState,
        subjects: SubjectVerifier,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self._signing_key = signing_key
        self._state = state
        self._subjects = subjects
        self._clock = clock

    async def grant(self, client: Client, form: Form) -> Issued:
        grant_type = form.require("grant_type")
        if grant_type not in GRANT_TYPES:
            raise OAuthError("unsupported_grant_type", f"supported grant types: {', '.join(GRANT_TYPES)}")
        audience = resource_audience(form.all("resource") + form.all("audience"), self.config.proxy.public_url)
        if grant_type == CLIENT_CREDENTIALS:
            return self._client_credentials(client, form, audience)
        if grant_type == TOKEN_EXCHANGE:
            return await self._token_exchange(client, form, audience)
        return await self._refresh(client, form, audience)

    def _client_credentials(self, client: Client, form: Form, audience: str) -> Issued:
        agent = client.config
        scopes = choose_scopes(
            parse_scope(form.get("scope")),
            agent.default_scopes if agent.default_scopes is not None else agent.scopes,
            [(set(agent.scopes), f"agent {client.id} (agents.{client.id}.scopes)")],
        )
        token, claims = self._mint(client, subject=client.id, scopes=scopes, act=None, audience=audience)
        # RFC 6749 §4.4.3: no refresh token; the agent can always ask again with its own credentials.
        return Issued(token, claims, refresh_token=None, exchanged=False, event="token.issued")

    async def _token_exchange(self, client: Client, form: Form, audience: str) -> Issued:
        agent = client.config
        if not agent.may_act_for:
            raise OAuthError(
                "unauthorized_client",
                f"agent {client.id} may not act for anyone (set agents.{client.id}.may_act_for)",
                reason="no_delegation",
            )
        subject_token = form.require("subject_token")
        if form.require("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            raise invalid_request(f"subject_token_type must be one of {', '.join(SUBJECT_TOKEN_TYPES)}", "bad_type")
        if "actor_token" in form or "actor_token_type" in form:
            # The authenticated client is the actor (act.sub); a second actor identity would only confuse that.
            raise invalid_request("actor_token is not accepted: the authenticated agent is the actor", "actor_token")
        requested_type = form.get("requested_token_type")
        if requested_type is not None and requested_type not in SUBJECT_TOKEN_TYPES:
            raise invalid_request(f"requested_token_type must be {ACCESS_TOKEN_TYPE}", "bad_type")
        subject = await self._verify_subject(subject_token)
        self._check_parties(client.id, subject)
        self._check_may_act(client.id, subject)
        act = nest_act(client.id, subject.act)
        depth = len(delegation_chain(act))
        if depth > self.config.issuer.max_delegation_depth:
            raise invalid_request(
                f"the delegation chain would have {depth} actors; at most {self.config.issuer.max_delegation_depth}",
                "chain_too_deep",
            )
        scopes = choose_scopes(
            parse_scope(form.get("scope")),
            agent.default_scopes if agent.default_scopes is not None else agent.scopes,
            [
                (set(agent.scopes), f"agent {client.id} (agents.{client.id}.scopes)"),
                (set(subject.scopes), "the subject token"),  # each hop only narrows (RFC 8693 §1.1)
            ],
        )
        if not scopes:
            raise invalid_scope("the agent and the subject token have no scope in common", "no_common_scope")
        now = self._clock()
        # Revoking any token of the lineage revokes this one. Our own tokens only: we cannot revoke an IdP's, and
        # an IdP's claim of that name means nothing here.
        ours = subject.issuer == self.config.issuer.url
        ancestors = (*subject.ancestors, subject.jti) if ours and subject.jti else ()
        token, claims = self._mint(
            client,
            subject=subject.subject,
            scopes=scopes,
            act=act,
            may_act=subject.may_act,
            audience=audience,
            deadline=subject.expires_at,
            ancestors=ancestors,
        )
        refresh_token = None
        if agent.refresh_tokens:
            refresh_token = secrets.token_urlsafe(32)
            grant = RefreshGrant(
                family=secrets.token_urlsafe(12),
                agent=client.id,
                subject=subject.subject,
                scopes=tuple(scopes),
                act=act,
                issued_at=now,
                # A hop never outlives what it came from, refreshed or not (RFC 8693 §1.1: only narrowing).
                expires_at=min(now + self.config.issuer.refresh_token_ttl, subject.expires_at),
                ancestors=ancestors,
                may_act=subject.may_act,
            )
            await self._state.store_refresh(refresh_token_hash(refresh_token), grant)
            if not await self._state.record_family_token(grant.family, claims["jti"], claims["exp"]):
                raise _unknown_refresh()  # revoked in the instant since it was stored: hand nothing out
        return Issued(token, claims, refresh_token=refresh_token, exchanged=True, event="token.issued")

    async def _verify_subject(self, subject_token: str) -> SubjectToken:
        try:
            return await self._subjects.verify(subject_token)
        except InvalidToken as exc:
            # RFC 8693 §2.2.2: an invalid or unacceptable subject_token is invalid_request.
            raise invalid_request(f"subject_token: {exc.description}", f"subject_{exc.reason}") from None

    def _check_parties(self, agent: str, subject: SubjectToken) -> None:
        """Who may appear in a chain: each party once, and an identity provider's subjects never as our agents."""
        chain = delegation_chain(subject.act)
        if agent == subject.subject:
            raise invalid_request(f"agent {agent} cannot act for itself; use its own token", "self_delegation")
        repeated = repeated_party(subject.subject, (agent, *chain))
        if repeated is not None:
            raise invalid_request(f"the delegation chain would name {repeated} twice", "repeated_party")
        if subject.issuer != self.config.issuer.url:
            named = next((p for p in (subject.subject, *chain) if p in self.config.agents), None)
            if named is not None:
                # Without a subject_prefix an IdP account named like an agent would be that agent to every rule.
                raise invalid_request(
                    f"the identity provider's party {named} has the name of an agent here "
                    "(set trusted_issuers[].subject_prefix)",
                    "subject_is_agent",
                )

    def _check_may_act(self, agent: str, subject: SubjectToken) -> None:
        if not may_act_for(self.config.agents[agent].may_act_for, subject.subject):
            raise invalid_request(
                f"agent {agent} may not act for {subject.subject} (agents.{agent}.may_act_for)", "may_not_act_for"
            )
        # RFC 8693 §4.4: when the subject token names who may act for it, nobody else may, at any hop: the tokens
        # we mint from it carry the same may_act.
        if subject.may_act is not None and subject.may_act.get("sub") != agent:
            raise invalid_request(f"the subject token's may_act does not name agent {agent}", "may_act")

    async def _refresh(self, client: Client, form: Form, audience: str) -> Issued:
        if not client.config.refresh_tokens:
            raise OAuthError(
                "unauthorized_client", f"agent {client.id} does not use refresh tokens", reason="no_refresh_tokens"
            )
        old_hash = refresh_token_hash(form.require("refresh_token"))
        grant = await self._state.find_refresh(old_hash)
        if grant is None:
            raise OAuthError(
                "invalid_grant", "the refresh token is invalid, expired or revoked", reason="unknown_refresh"
            )
        if grant.agent != client.id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client", reason="other_client")
        if grant_revoked(self._state.revocations, grant):
            await self._state.revoke_family(grant.family)
            raise OAuthError("invalid_grant", "the refresh token has been revoked", reason="revoked")
        if not may_act_for(client.config.may_act_for, grant.subject):
            # The config changed since the grant: a refresh re-checks it like a new exchange would.
            raise OAuthError(
                "invalid_grant", f"agent {client.id} may no longer act for {grant.subject}", reason="may_not_act_for"
            )
        # RFC 6749 §6: a refresh may narrow the scope, never widen it; the family keeps its original scope, less
        # any scope the agent no longer holds. Checked before rotating so a client's scope mistake does not spend
        # its token. A spent token refused here is not yet treated as reuse: nothing is issued, and its next
        # well-formed use is.
        allowed = set(grant.scopes) & set(client.config.scopes)
        scopes = choose_scopes(
            parse_scope(form.get("scope")),
            [s for s in grant.scopes if s in allowed],
            [(set(grant.scopes), "the refresh token"), (allowed, f"agent {client.id} (agents.{client.id}.scopes)")],
        )
        if not scopes:
            raise OAuthError("invalid_grant", f"agent {client.id} no longer holds any of the grant's scopes")
        new_token = secrets.token_urlsafe(32)
        try:
            rotated = await self._state.rotate_refresh(old_hash, refresh_token_hash(new_token), self._clock())
        except RefreshReused:
            # RFC 9700 §4.14.2: a spent token presented again means two parties hold it; the family is now revoked.
            raise OAuthError(
                "invalid_grant", "the refresh token was already used; its whole family is revoked", reason="reused"
            ) from None
        if rotated is None:
            raise OAuthError(
                "invalid_grant", "the refresh token is invalid, expired or revoked", reason="unknown_refresh"
            )
        token, claims = self._mint(
            client,
            subject=grant.subject,
            scopes=scopes,
            act=grant.act,
            may_act=grant.may_act,
            audience=audience,
            deadline=grant.expires_at,
            ancestors=grant.ancestors,
        )
        if not await self._state.record_family_token(grant.family, claims["jti"], claims["exp"]):
            raise _unknown_refresh()  # the family was revoked while this token was minted
        return Issued(token, claims, refresh_token=new_token, exchanged=False, event="token.refreshed")

    def _mint(
        self,
        client: Client,
        *,
        subject: str,
        scopes: list[str],
        act: dict[str, Any] | None,
        audience: str,
        may_act: dict[str, Any] | None = None,
        deadline: float | None = None,
        ancestors: tuple[str, ...] = (),
    ) -> tuple[str, dict[str, Any]]:
        refuse_blocked(self._state.revocations, client.id, subject, act)
        issuer = self.config.issuer
        now = self._clock()
        caps = [issuer.scope_ttl[s] for s in scopes if s in issuer.scope_ttl]
        ttl = token_ttl(
            issuer.access_token_ttl,
            client.config.max_token_ttl,
            min(caps) if caps else None,
            None if deadline is None else deadline - now,  # a hop never outlives what it came from
        )
        return mint_access_token(
            self._signing_key(),
            issuer=issuer.url,
            audience=audience,
            subject=subject,
            client_id=client.id,
            scopes=scopes,
            ttl=ttl,
            act=act,
            may_act=may_act,
            now=now,
            ancestors=ancestors,
        )
