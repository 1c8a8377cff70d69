"""Minting and checking RFC 9068 JWT access tokens.

Checking is split into steps so that each is a pure function with its own table of tests, and so that the
caller can look the key up (possibly over the network, for a trusted issuer) between them:

    parse_unverified → check_header → (caller selects the key by iss + kid) → verify_signature → validate_claims

Every failure raises InvalidToken with a short machine `reason` and a `description` that is safe to show the
client: fixed text that never quotes the token, its claims or a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError

from gateway.principal import Principal
from gateway.tokens.jwk import VERIFY_ALGORITHMS, SigningKey, reject_constant
from gateway.wire import SCOPE_TOKEN

ACCESS_TOKEN_TYPES: frozenset[str | None] = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §2.1
# An identity provider's access tokens often predate RFC 9068 and say `JWT` or nothing (RFC 8725 §3.11 asks
# for explicit types but cannot make IdPs comply). Other explicit types (ID tokens say nothing either, but their
# audience is the relying party, never us) mark tokens of another kind: a DPoP proof, a logout token.
SUBJECT_TOKEN_TYPES: frozenset[str | None] = ACCESS_TOKEN_TYPES | {"jwt", "application/jwt", None}
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")  # RFC 9068 §2.2
# Headers that bring or point at keys (RFC 7515 §4.1.2-4.1.6) let the token pick its own key (CVE-2018-0114 for
# `jwk`) or make us fetch a URL of its choosing (SSRF, RFC 8725 §3.10); `crit` (§4.1.11) demands extensions we do
# not implement. Ignoring them would be allowed; refusing is stricter and no honest issuer of ours sends them.
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
MAX_DELEGATION_DEPTH = 16
# A private claim (RFC 7519 §4.3) of delegated tokens: the jtis of the tokens they were exchanged from, oldest
# first, so that revoking one revokes everything derived from it.
ANCESTORS_CLAIM = "ancestor_jtis"
_MINTED_CLAIMS = frozenset({*REQUIRED_CLAIMS, "scope", "act", "may_act", ANCESTORS_CLAIM})

# One PyJWS per algorithm, each knowing only that algorithm: even a bug upstream of it cannot make PyJWT run
# `none`, an HMAC or another algorithm than the key's (RFC 8725 §3.1).
_JWS = {alg: PyJWS(algorithms=[alg]) for alg in VERIFY_ALGORITHMS}
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")  # RFC 7515 §2: base64url without padding
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidToken(Exception):
    """The token is not a valid access token. `description` is safe to send back; `reason` is for audit/metrics."""

    def __init__(self, reason: str, description: str):
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    header: dict[str, Any]
    claims: dict[str, Any]  # NOT verified: only to choose the key by `iss`


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §4 / RFC 7519 §4: member names must be unique; two parsers picking different duplicates is a
    # classic way to make a checker and a consumer disagree.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity by default; an `exp` of NaN would compare False to everything and never expire.
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        raise InvalidToken("malformed", "The access token is not a well-formed JWT") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed", "The access token is not a well-formed JWT")
    return value


def _segment_json(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise InvalidToken("malformed", "The access token is not a well-formed JWT") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        # Non-zero trailing bits: one token with many spellings would defeat the verified-token cache key.
        raise InvalidToken("malformed", "The access token is not a well-formed JWT")
    return _json_object(raw)


def parse_unverified(token: str) -> UnverifiedToken:
    """Split a compact JWS (RFC 7515 §7.1) and decode header and claims, strictly, without trusting either."""
    segments = token.split(".")
    if not token.isascii() or len(segments) != 3:
        raise InvalidToken("malformed", "The access token is not a well-formed JWT")
    if not segments[2]:
        raise InvalidToken("unsigned", "The access token is not signed")
    if not all(_SEGMENT.match(segment) for segment in segments):
        raise InvalidToken("malformed", "The access token is not a well-formed JWT")
    return UnverifiedToken(header=_segment_json(segments[0]), claims=_segment_json(segments[1]))


def check_header(
    header: dict[str, Any], *, accepted_types: frozenset[str | None] = ACCESS_TOKEN_TYPES
) -> tuple[str, str]:
    """RFC 9068 §4 and RFC 8725 §3.1, §3.11 header rules; return (kid, alg) for the key lookup."""
    typ = header.get("typ")
    if not (typ is None or isinstance(typ, str)) or (typ.lower() if typ else typ) not in accepted_types:
        # RFC 9068 §4: an ID token or a client assertion signed by the same key is not an access token.
        raise InvalidToken("wrong_typ", "The token is not a JWT access token (typ must be at+jwt)")
    for name in FORBIDDEN_HEADERS:
        if name in header:
            raise InvalidToken("forbidden_header", f"The access token carries a {name} header, which is not accepted")
    alg = header.get("alg")
    if alg not in VERIFY_ALGORITHMS:
        # RFC 8725 §3.1-3.2: the allow-list has no `none` (in any spelling) and no HMAC, which a verifier holding
        # only public keys would key with a public key anyone can fetch.
        raise InvalidToken("bad_alg", "The access token's signature algorithm is not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("missing_kid", "The access token has no kid header")
    return kid, alg


def verify_signature(token: str, alg: str, key: SigningKey) -> dict[str, Any]:
    """Check the signature with `key`, under the key's own algorithm only; return the verified claims."""
    if alg != key.algorithm:
        # RFC 8725 §3.1: the key decides the algorithm; a header asking for another one is an attack, not a hint.
        raise InvalidToken("bad_alg", "The access token's algorithm does not match its key")
    try:
        decoded = _JWS[key.algorithm].decode_complete(token, key.public_key, algorithms=[key.algorithm])
    except InvalidSignatureError:
        raise InvalidToken("bad_signature", "The access token's signature is invalid") from None
    except PyJWTError:
        raise InvalidToken("malformed", "The access token is not a well-formed JWT") from None
    return _json_object(decoded["payload"])


def _identifier(claims: dict[str, Any], name: str) -> str:
    value = claims[name]
    # These end up in X-Tollbooth-* headers and audit fields: no control characters (header injection), and
    # text that is valid Unicode (a JSON "\ud800" escape decodes to a lone surrogate no UTF-8 writer accepts).
    if not isinstance(value, str) or not value or _CONTROL.search(value) or not _is_utf8_encodable(value):
        raise InvalidToken("bad_claim", f"The access token's {name} claim is not a valid identifier")
    return value


def _is_utf8_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _numeric_date(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    # RFC 7519 §2 NumericDate; bool is an int in Python and must not pass as one.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken("bad_claim", f"The access token's {name} claim is not a NumericDate")
    return float(value)


def _audiences(value: Any) -> list[str]:
    audiences = [value] if isinstance(value, str) else value  # RFC 7519 §4.1.3: a string or an array of strings
    if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
        raise InvalidToken("bad_claim", "The access token's aud claim is not a string or an array of strings")
    return audiences


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if scope is None:
        return frozenset()
    tokens = scope.split(" ") if isinstance(scope, str) else None  # RFC 9068 §2.2.3, RFC 6749 §3.3
    if tokens is None or not all(SCOPE_TOKEN.match(t) for t in tokens if t):
        raise InvalidToken("bad_claim", "The access token's scope claim is not a space-separated list of scopes")
    return frozenset(t for t in tokens if t)


def ancestor_jtis(claims: dict[str, Any]) -> tuple[str, ...]:
    value = claims.get(ANCESTORS_CLAIM)
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_DELEGATION_DEPTH:
        raise InvalidToken("bad_claim", f"The token's {ANCESTORS_CLAIM} claim is not a short list of token ids")
    return tuple(_identifier({ANCESTORS_CLAIM: jti}, ANCESTORS_CLAIM) for jti in value)


def act_claim(actors: Sequence[str]) -> dict[str, Any] | None:
    """RFC 8693 §4.1: the `act` claim for a chain of actors given outermost (most recent) first."""
    nested: dict[str, Any] | None = None
    for actor in reversed(actors):
        nested = {"sub": actor, "act": nested} if nested is not None else {"sub": actor}
    return nested


def delegation_chain(act: Any) -> tuple[str, ...]:
    """RFC 8693 §4.1: nested `act` claims, the current (outermost) actor first."""
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, dict) or "sub" not in act:
            raise InvalidToken("bad_claim", "The access token's act claim has no sub")
        chain.append(_identifier(act, "sub"))
        if len(chain) > MAX_DELEGATION_DEPTH:
            raise InvalidToken("bad_claim", "The access token's delegation chain is too long")
        act = act.get("act")
    return tuple(chain)


def repeated_party(subject: str, chain: Sequence[str]) -> str | None:
    """The first party named twice in a delegation (the subject, then each actor), or None.

    A party acting for itself (A for A) or coming back into its own chain (A→B→A) would let an agent make a
    token that looks delegated out of its own authority alone, or launder a hop through another agent."""
    seen = {subject}
    for actor in chain:
        if actor in seen:
            return actor
        seen.add(actor)
    return None


def _acyclic(subject: str, chain: tuple[str, ...]) -> tuple[str, ...]:
    if chain and repeated_party(subject, chain) is not None:
        raise InvalidToken("circular_delegation", "The token's delegation chain names the same party twice")
    return chain


def validate_claims(
    claims: dict[str, Any], *, issuer: str, audience: str, now: float, leeway: float, allow_azp: bool = False
) -> Principal:
    """RFC 9068 §4 claim checks on verified claims; the Principal the rest of the pipeline sees.

    `allow_azp`: an external IdP may name the client in `azp` (OpenID Connect) rather than `client_id`.
    """
    agent_claim = "azp" if allow_azp and "client_id" not in claims and "azp" in claims else "client_id"
    for name in (agent_claim if required == "client_id" else required for required in REQUIRED_CLAIMS):
        if name not in claims:
            raise InvalidToken("missing_claim", f"The access token has no {name} claim")
    if claims["iss"] != issuer:
        raise InvalidToken("wrong_issuer", "The access token was not issued by the expected issuer")
    if audience not in _audiences(claims["aud"]):
        # RFC 9068 §4: a token for another resource must not work here (RFC 8707 audience restriction).
        raise InvalidToken("wrong_audience", "The access token is not meant for this resource")
    expires_at = _numeric_date(claims, "exp")
    issued_at = _numeric_date(claims, "iat")
    if now - leeway >= expires_at:
        raise InvalidToken("expired", "The access token has expired")
    if "nbf" in claims and _numeric_date(claims, "nbf") > now + leeway:
        raise InvalidToken("not_yet_valid", "The access token is not valid yet")
    if issued_at > now + leeway:
        raise InvalidToken("issued_in_future", "The access token was issued in the future")
    subject = _identifier(claims, "sub")
    return Principal(
        agent=_identifier(claims, agent_claim),
        subject=subject,
        scopes=_scopes(claims),
        jti=_identifier(claims, "jti"),
        issuer=issuer,
        expires_at=expires_at,
        issued_at=issued_at,
        delegation=_acyclic(subject, delegation_chain(claims.get("act"))),
        ancestors=ancestor_jtis(claims),
        claims=claims,
    )


def _scope_claim(scopes: Iterable[str]) -> str:
    unique = list(dict.fromkeys(scopes))
    for scope in unique:
        if not SCOPE_TOKEN.match(scope):
            raise ValueError(f"{scope!r} is not a valid scope (RFC 6749 §3.3)")
    return " ".join(unique)


def mint_access_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    client_id: str,
    scopes: Iterable[str],
    ttl: float,
    act: dict[str, Any] | None = None,
    may_act: dict[str, Any] | None = None,
    ancestors: Iterable[str] = (),
    now: float | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign an RFC 9068 access token with `key`; return (jwt, claims).

    `extra_claims` (e.g. `cnf`) may not override the registered claims set here.
    """
    if key.private_key is None:
        raise ValueError(f"key {key.kid} has no private part and cannot sign")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": issued_at + max(1, round(ttl)),
        "iat": issued_at,
        "jti": secrets.token_urlsafe(16),  # 128 random bits: unique per token, safe to log and revoke by
        "client_id": client_id,
    }
    scope = _scope_claim(scopes)
    if scope:
        claims["scope"] = scope
    if act is not None:
        claims["act"] = act
    if may_act is not None:
        claims["may_act"] = may_act  # RFC 8693 §4.4, carried from the subject token so it binds every later hop
    if ancestors:
        claims[ANCESTORS_CLAIM] = list(ancestors)
    if extra_claims:
        clash = sorted(set(extra_claims) & _MINTED_CLAIMS)
        if clash:
            raise ValueError(f"extra_claims may not set {', '.join(clash)}")
        claims.update(extra_claims)
    try:
        # Never sign what our own verifier would refuse (a control character in sub, a malformed act chain, ...).
        validate_claims(claims, issuer=issuer, audience=audience, now=issued_at, leeway=0)
    except InvalidToken as exc:
        raise ValueError(f"cannot mint this token: {exc.description}") from None
    payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    token = _JWS[key.algorithm].encode(
        payload, key.private_key, algorithm=key.algorithm, headers={"typ": "at+jwt", "kid": key.kid}
    )
    return token, claims


@dataclass(frozen=True, slots=True)
class SubjectToken:
    """A verified RFC 8693 subject token: whom a delegated token will be for, and what it already allows."""

    issuer: str
    subject: str
    scopes: frozenset[str]
    expires_at: float
    issued_at: float  # -inf when the token does not say: every revocation cut-off then applies to it
    act: dict[str, Any] | None  # the chain so far (RFC 8693 §4.1), nested outermost-first, `sub`s only
    may_act: dict[str, Any] | None  # RFC 8693 §4.4: who may act for the subject, when the token says
    jti: str | None
    ancestors: tuple[str, ...]  # the subject token's own ancestor_jtis


def validate_subject_claims(
    claims: dict[str, Any], *, issuer: str, audiences: Iterable[str], now: float, leeway: float
) -> SubjectToken:
    """Claim checks for a token presented for exchange. Laxer than `validate_claims` only where identity
    providers differ (no `client_id` or `jti` needed, `scp` arrays read as scopes); never on issuer, audience,
    expiry or identifiers."""
    for name in ("iss", "sub", "aud", "exp"):
        if name not in claims:
            raise InvalidToken("missing_claim", f"The subject token has no {name} claim")
    if claims["iss"] != issuer:
        raise InvalidToken("wrong_issuer", "The subject token was not issued by the expected issuer")
    if not set(_audiences(claims["aud"])) & set(audiences):
        raise InvalidToken("wrong_audience", "The subject token is not meant for this token service")
    expires_at = _numeric_date(claims, "exp")
    if now - leeway >= expires_at:
        raise InvalidToken("expired", "The subject token has expired")
    if "nbf" in claims and _numeric_date(claims, "nbf") > now + leeway:
        raise InvalidToken("not_yet_valid", "The subject token is not valid yet")
    if "iat" in claims and _numeric_date(claims, "iat") > now + leeway:
        raise InvalidToken("issued_in_future", "The subject token was issued in the future")
    scopes = _scopes(claims)
    scp = claims.get("scp")  # Okta and Entra ID put scopes in an array named scp
    if isinstance(scp, list) and all(isinstance(s, str) and SCOPE_TOKEN.match(s) for s in scp):
        scopes |= frozenset(scp)
    may_act = claims.get("may_act")
    if may_act is not None and not (isinstance(may_act, dict) and isinstance(may_act.get("sub"), str)):
        raise InvalidToken("bad_claim", "The subject token's may_act claim has no sub")
    subject = _identifier(claims, "sub")
    return SubjectToken(
        issuer=issuer,
        subject=subject,
        scopes=scopes,
        expires_at=expires_at,
        issued_at=_numeric_date(claims, "iat") if "iat" in claims else float("-inf"),
        # The chain reduced to its actors' `sub`s: only identities we checked travel into tokens we sign.
        act=act_claim(_acyclic(subject, delegation_chain(claims.get("act")))),
        # Only the named actor travels on (RFC 8693 §4.4 lets may_act carry more; we decide on `sub` alone).
        may_act=None if may_act is None else {"sub": _identifier(may_act, "sub")},
        jti=_identifier(claims, "jti") if "jti" in claims else None,
        ancestors=ancestor_jtis(claims),
    )


def namespaced(token: SubjectToken, prefix: str) -> SubjectToken:
    """`trusted_issuers[].subject_prefix` applied to every party an identity provider's token names, so that its
    `alice` is never another issuer's `alice`, nor one of our agents."""
    if not prefix:
        return token
    chain = delegation_chain(token.act)
    return replace(token, subject=prefix + token.subject, act=act_claim([prefix + actor for actor in chain]))
