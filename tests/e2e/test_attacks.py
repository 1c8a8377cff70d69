"""An attacker's view of the proxy, end to end: forged tokens, header tricks and parser boundaries over real sockets.

Every attack that must be refused asserts two things: what the agent gets back, and that the upstream never saw the
request. "Never saw" is checked after `Watch.forwarded()` has let the gateway settle (no request in flight, then a
marker request pushed through to the upstream), so a request the gateway forwards late is still caught.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from raw_http import Watch, bearer, exchange, parse_responses, request, send_raw
from support import Gateway, Upstream

from gateway.issuer.keystore import KeyStore
from gateway.tokens.jwk import SigningKey

# --- forging tokens -----------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


_ES256 = ECAlgorithm(ECAlgorithm.SHA256)
_ATTACKER_KEY = ec.generate_private_key(ec.SECP256R1())


def es256_sign(private_key: ec.EllipticCurvePrivateKey, signing_input: str) -> str:
    return b64url(_ES256.sign(signing_input.encode("ascii"), private_key))


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    jwk = json.loads(_ES256.to_jwk(public_key))
    canonical = _json({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]})
    return b64url(hashlib.sha256(canonical).digest())


@dataclass
class Forge:
    """Builds tokens byte by byte: any header, any claims, signed by any key (ours by default)."""

    gateway: Gateway
    upstream: Upstream
    key: SigningKey

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.gateway.issuer_url,
            "sub": "billing-bot",
            "aud": self.gateway.proxy_url,
            "exp": now + 300,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "client_id": "billing-bot",
            "scope": "crm.read",
        }
        for name, value in changes.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def header(self, **changes: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"typ": "at+jwt", "alg": "ES256", "kid": self.key.kid}
        for name, value in changes.items():
            if value is _DROP:
                header.pop(name, None)
            else:
                header[name] = value
        return header

    def token(
        self,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        *,
        payload: bytes | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        """ES256-signed by `signer` (our signing key when None); `payload` overrides `claims` with raw JSON bytes."""
        body = payload if payload is not None else _json(claims if claims is not None else self.claims())
        signing_input = b64url(_json(header if header is not None else self.header())) + "." + b64url(body)
        private_key = signer if signer is not None else self.key.private_key
        return signing_input + "." + es256_sign(private_key, signing_input)  # type: ignore[arg-type]

    def unsigned(self, header: dict[str, Any], claims: dict[str, Any] | None = None, signature: str = "") -> str:
        return b64url(_json(header)) + "." + b64url(_json(claims or self.claims())) + "." + signature


_DROP = object()


@pytest.fixture(scope="module")
def forge(gateway: Gateway, upstream: Upstream) -> Forge:
    keys = KeyStore.load(gateway.dir / "keys", "ES256", generate_if_empty=False)
    return Forge(gateway, upstream, keys.active)


def _hs256_with_public_pem(f: Forge) -> str:
    # The classic key-confusion attack: a verifier that lets the header pick the algorithm would key HMAC with the
    # public key it holds, which anyone can fetch from the JWKS.
    pem = f.key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = b64url(_json(f.header(alg="HS256"))) + "." + b64url(_json(f.claims()))
    return signing_input + "." + b64url(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())


def _tampered_scope(f: Forge) -> str:
    header, _, signature = f.token().split(".")
    widened = b64url(_json(f.claims(scope="crm.read crm.write admin")))
    return f"{header}.{widened}.{signature}"


def _embedded_jwk(f: Forge, kid: str | None = None) -> str:
    public = _ATTACKER_KEY.public_key()
    jwk = json.loads(_ES256.to_jwk(public))
    return f.token(f.header(kid=kid or jwk_thumbprint(public), jwk=jwk), signer=_ATTACKER_KEY)


def _act_chain(depth: int) -> dict[str, Any]:
    act: dict[str, Any] | None = None
    for i in range(depth):
        act = {"sub": f"agent-{i}", **({"act": act} if act else {})}
    assert act is not None
    return act


_NOW = int(time.time())

# Each builder returns a token the proxy must answer with 401 invalid_token, forwarding nothing.
INVALID_TOKENS: dict[str, Callable[[Forge], str]] = {
    "alg_none": lambda f: f.unsigned(f.header(alg="none")),
    "alg_None": lambda f: f.unsigned(f.header(alg="None")),
    "alg_NONE": lambda f: f.unsigned(f.header(alg="NONE")),
    "alg_none_with_a_signature": lambda f: f.unsigned(f.header(alg="none"), signature=b64url(b"\x00" * 64)),
    "hs256_keyed_with_the_public_key_pem": _hs256_with_public_pem,
    "payload_tampered_to_widen_scope": _tampered_scope,
    "signature_stripped": lambda f: f.token().rsplit(".", 1)[0] + ".",
    "signature_stripped_no_dot": lambda f: f.token().rsplit(".", 1)[0],
    "signature_padded_with_equals": lambda f: f.token() + "=",
    "other_es256_key_under_our_kid": lambda f: f.token(signer=_ATTACKER_KEY),
    "unknown_kid": lambda f: f.token(f.header(kid="attacker-key-1"), signer=_ATTACKER_KEY),
    "kid_path_traversal": lambda f: f.token(f.header(kid="../../../../../../etc/passwd"), signer=_ATTACKER_KEY),
    "no_kid": lambda f: f.token(f.header(kid=_DROP)),
    "embedded_jwk_header": _embedded_jwk,
    "embedded_jwk_header_under_our_kid": lambda f: _embedded_jwk(f, f.key.kid),
    # jku/x5u point at the recording upstream: a gateway that followed them would show up in Upstream.seen.
    "jku_header": lambda f: f.token(f.header(jku=f.upstream.url + "/jwks.json"), signer=_ATTACKER_KEY),
    "jku_header_signed_by_our_key": lambda f: f.token(f.header(jku=f.upstream.url + "/jwks.json")),
    "x5u_header": lambda f: f.token(f.header(x5u=f.upstream.url + "/cert.pem"), signer=_ATTACKER_KEY),
    "x5c_header": lambda f: f.token(f.header(x5c=[b64url(b"not a certificate")]), signer=_ATTACKER_KEY),
    "crit_header": lambda f: f.token(f.header(crit=["exp"])),
    "alg_es384_on_an_es256_key": lambda f: f.token(f.header(alg="ES384")),
    "alg_rs256_on_an_es256_key": lambda f: f.token(f.header(alg="RS256")),
    "alg_hs256_signed_es256": lambda f: f.token(f.header(alg="HS256")),
    "expired": lambda f: f.token(claims=f.claims(exp=_NOW - 3600, iat=_NOW - 7200)),
    "expired_just_past_the_leeway": lambda f: f.token(claims=f.claims(exp=int(time.time()) - 45)),
    "not_yet_valid_nbf": lambda f: f.token(claims=f.claims(nbf=int(time.time()) + 3600)),
    "issued_in_the_future": lambda f: f.token(claims=f.claims(iat=int(time.time()) + 3600)),
    "wrong_iss": lambda f: f.token(claims=f.claims(iss="https://evil.example")),
    "iss_with_a_trailing_slash": lambda f: f.token(claims=f.claims(iss=f.gateway.issuer_url + "/")),
    "iss_not_a_string": lambda f: f.token(claims=f.claims(iss=["x"])),
    "wrong_aud": lambda f: f.token(claims=f.claims(aud="https://other-api.example")),
    "aud_list_without_us": lambda f: f.token(claims=f.claims(aud=["https://a.example", "https://b.example"])),
    "aud_is_the_issuer": lambda f: f.token(claims=f.claims(aud=f.gateway.issuer_url)),
    "aud_with_a_trailing_slash": lambda f: f.token(claims=f.claims(aud=f.gateway.proxy_url + "/")),
    "typ_JWT": lambda f: f.token(f.header(typ="JWT")),
    "typ_missing": lambda f: f.token(f.header(typ=_DROP)),
    "typ_dpop": lambda f: f.token(f.header(typ="dpop+jwt")),
    "missing_jti": lambda f: f.token(claims=f.claims(jti=_DROP)),
    "missing_client_id": lambda f: f.token(claims=f.claims(client_id=_DROP)),
    "missing_exp": lambda f: f.token(claims=f.claims(exp=_DROP)),
    "exp_as_a_string": lambda f: f.token(claims=f.claims(exp=str(_NOW + 300))),
    "exp_as_true": lambda f: f.token(claims=f.claims(exp=True)),
    "exp_nan": lambda f: f.token(payload=_json(f.claims(exp=0)).replace(b'"exp":0', b'"exp":NaN')),
    "exp_huge_integer": lambda f: f.token(payload=_json(f.claims(exp=0)).replace(b'"exp":0', b'"exp":1' + b"0" * 5000)),
    "duplicate_scope_claim": lambda f: f.token(
        payload=_json(f.claims()).replace(b'"scope":"crm.read"', b'"scope":"crm.read","scope":"crm.read crm.write"')
    ),
    "scope_as_a_list": lambda f: f.token(claims=f.claims(scope=["crm.read", "crm.write"])),
    "sub_with_crlf_header_injection": lambda f: f.token(claims=f.claims(sub="user\r\nX-Tollbooth-Agent: admin")),
    "sub_with_nel": lambda f: f.token(claims=f.claims(sub="user\x85admin")),
    "sub_empty": lambda f: f.token(claims=f.claims(sub="")),
    "client_id_with_lf": lambda f: f.token(claims=f.claims(client_id="billing-bot\nadmin")),
    "act_sub_with_lf": lambda f: f.token(claims=f.claims(sub="user:alice", act={"sub": "bot\nX-Evil: 1"})),
    "act_not_an_object": lambda f: f.token(claims=f.claims(sub="user:alice", act="billing-bot")),
    "act_chain_of_17": lambda f: f.token(claims=f.claims(sub="user:alice", act=_act_chain(17))),
    "oversized_but_validly_signed": lambda f: f.token(claims=f.claims(pad="x" * 9000)),
    "five_segments_jwe_shaped": lambda f: f.token() + ".AAAA.BBBB",
    "empty_segment": lambda f: f.token().replace(".", "..", 1),
    "non_json_payload": lambda f: f.token(payload=b"not json"),
    "payload_is_a_list": lambda f: f.token(payload=b"[1,2]"),
}


# --- the JWT attack table -----------------------------------------------------------------------------------------


def test_forged_tokens_baseline_a_correctly_forged_token_is_accepted(forge: Forge, upstream: Upstream):
    """The forging helpers are honest: with nothing wrong, the token works (so every refusal below means the attack)."""
    response = send_raw(forge.gateway.proxy_url, request(b"/v1/customers/42", bearer(forge.token())))
    assert response is not None and response.status == 200
    assert upstream.last().header("x-tollbooth-agent") == "billing-bot"


@pytest.mark.parametrize("attack", list(INVALID_TOKENS))
def test_forged_or_invalid_token_is_401_invalid_token_and_never_forwarded(forge: Forge, watch: Watch, attack: str):
    token = INVALID_TOKENS[attack](forge)
    response = httpx2.get(
        forge.gateway.proxy_url + "/v1/customers/42", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert response.json()["error"] == "invalid_token"
    assert not any(part in response.text for part in token.split(".") if len(part) > 16)  # nothing of the token echoed
    assert watch.forwarded() == []


def test_oversized_token_is_refused_before_anything_else(forge: Forge, watch: Watch):
    token = forge.token(claims=forge.claims(pad="x" * 9000))
    assert len(token) > 8192
    response = httpx2.get(forge.gateway.proxy_url + "/v1/customers/1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "too large" in response.json()["error_description"]
    assert watch.forwarded() == []


def test_act_chain_of_16_is_the_deepest_accepted(forge: Forge, upstream: Upstream):
    token = forge.token(claims=forge.claims(sub="user:alice", act=_act_chain(16)))
    response = httpx2.get(forge.gateway.proxy_url + "/v1/customers/1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert len(upstream.last().header("x-tollbooth-delegation").split(",")) == 16


# --- how the bearer token travels (RFC 6750 §2) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(lambda t: [b"Authorization: Bearer " + t + b" " + t], id="two-tokens-in-one-header"),
        pytest.param(lambda t: [b"Authorization: Bearer " + t + b", Bearer " + t], id="a-list-of-credentials"),
        pytest.param(lambda t: [b"Authorization: Bearer " + t, b"authorization: Bearer " + t], id="the-header-twice"),
        pytest.param(
            lambda t: [b"Authorization: Bearer " + t, b"Authorization: Basic dXNlcjpwYXNz"], id="bearer-and-basic"
        ),
        pytest.param(lambda t: [b"Authorization: Basic dXNlcjpwYXNz"], id="another-scheme"),
        pytest.param(lambda t: [b"Authorization: Bearer"], id="no-token"),
        pytest.param(lambda t: [b"Authorization: Bearer\t" + t], id="tab-instead-of-space"),
        pytest.param(lambda t: [b"Authorization: Token " + t], id="another-scheme-name"),
        pytest.param(lambda t: [b"Authorization:  " + t], id="no-scheme"),
        pytest.param(lambda t: [b"Authorization: Bearer " + t[:-2] + b"\xc3\xb6"], id="non-ascii-in-the-token"),
    ],
)
def test_malformed_authorization_is_400_invalid_request_and_never_forwarded(
    gateway: Gateway, watch: Watch, authorization: Callable[[bytes], list[bytes]]
):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", *authorization(gateway.mint().encode())))
    assert response is not None and response.status == 400
    assert json.loads(response.body)["error"] == "invalid_request"
    assert 'error="invalid_request"' in (response.header("www-authenticate") or "")
    assert watch.forwarded() == []


@pytest.mark.parametrize(
    "authorization",
    [b"bearer ", b"BEARER ", b"bEaReR ", b"Bearer   "],
    ids=["lowercase", "uppercase", "mixed-case", "several-spaces"],
)
def test_auth_scheme_is_case_insensitive_and_spaces_before_the_token_are_allowed(
    gateway: Gateway, upstream: Upstream, authorization: bytes
):
    # RFC 9110 §11.1: the auth-scheme is case-insensitive; RFC 6750 §2.1: "Bearer" 1*SP b64token.
    response = send_raw(
        gateway.proxy_url, request(b"/v1/customers/42", b"Authorization: " + authorization + gateway.mint().encode())
    )
    assert response is not None and response.status == 200
    assert upstream.last().headers_named("authorization") == ["Bearer upstream-secret"]


@pytest.mark.parametrize("trailing", [b" ", b"\t", b"  \t "], ids=["space", "tab", "mixed"])
def test_whitespace_after_the_token_is_not_part_of_it(gateway: Gateway, trailing: bytes):
    # RFC 9110 §5.5: leading and trailing whitespace is not part of a field value.
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()) + trailing))
    assert response is not None and response.status == 200


@pytest.mark.parametrize(
    "query",
    [
        "access_token={t}",
        "a=1&access_token={t}",
        "access%5Ftoken={t}",
        "access_token=",
    ],
)
def test_token_in_the_query_string_is_400_even_beside_a_valid_header(gateway: Gateway, watch: Watch, query: str):
    token = gateway.mint()
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        response = httpx2.get(f"{gateway.proxy_url}/v1/customers/42?{query.format(t=token)}", headers=headers)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert token not in response.text
    # Not even on a public route: the token must not reach upstream logs.
    assert httpx2.get(f"{gateway.proxy_url}/status?{query.format(t=token)}").status_code == 400
    assert watch.forwarded() == []


def test_token_in_a_form_body_is_not_a_credential(gateway: Gateway, watch: Watch):
    token = gateway.mint("crm.write")
    response = httpx2.post(
        gateway.proxy_url + "/upload",
        content=f"access_token={token}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]  # as if no token was sent at all
    assert watch.forwarded() == []


def test_public_route_with_an_invalid_token_is_401_and_never_forwarded(forge: Forge, watch: Watch):
    token = forge.token(signer=_ATTACKER_KEY)
    response = httpx2.get(forge.gateway.proxy_url + "/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert watch.forwarded() == []


# --- what the upstream sees of a hostile identity -------------------------------------------------------------------


def test_subject_and_actor_cannot_break_identity_headers(gateway: Gateway, upstream: Upstream):
    subject = 'user:a,b "q" \\ ü % 100'
    token = gateway.mint("crm.read", subject=subject, act={"sub": "bot,admin", "act": {"sub": "planner\u2028x"}})
    assert (
        httpx2.get(gateway.proxy_url + "/v1/customers/1", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    seen = upstream.last()
    # Percent-encoded: a comma cannot add an actor, a quote or backslash cannot reopen a quoted-string.
    assert seen.header("x-tollbooth-subject") == "user:a%2Cb%20%22q%22%20%5C%20%C3%BC%20%25%20100"
    assert seen.header("x-tollbooth-delegation") == "bot%2Cadmin,planner%E2%80%A8x"
    assert seen.headers_named("x-tollbooth-agent") == ["billing-bot"]


def test_scope_claim_with_odd_spacing_is_stamped_canonically(forge: Forge, upstream: Upstream):
    token = forge.token(claims=forge.claims(scope="  crm.read   crm.read "))
    assert (
        httpx2.get(
            forge.gateway.proxy_url + "/v1/customers/1", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )
    assert upstream.last().header("x-tollbooth-scopes") == "crm.read"


# --- spoofing headers the upstream trusts -----------------------------------------------------------------------------


def test_identity_and_gateway_headers_named_in_connection_are_still_stamped(gateway: Gateway, upstream: Upstream):
    response = send_raw(
        gateway.proxy_url,
        request(
            b"/v1/customers/42",
            bearer(gateway.mint()),
            b"Connection: x-tollbooth-route, host, x-forwarded-for, x-forwarded-proto, x-tollbooth-scopes",
        ),
    )
    assert response is not None and response.status == 200
    seen = upstream.last()
    assert seen.headers_named("x-tollbooth-route") == ["get-customer"]
    assert seen.headers_named("x-tollbooth-scopes") == ["crm.read"]
    assert seen.headers_named("x-forwarded-for") == ["127.0.0.1"]
    assert seen.headers_named("x-forwarded-proto") == ["http"]
    assert seen.headers_named("host") == [upstream.url.removeprefix("http://")]


def test_callers_forwarding_headers_are_replaced(gateway: Gateway, upstream: Upstream):
    response = send_raw(
        gateway.proxy_url,
        request(
            b"/v1/customers/42",
            bearer(gateway.mint()),
            b"X-Forwarded-For: 6.6.6.6",
            b"X-Forwarded-For: 7.7.7.7",
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: evil.example",
            b"Forwarded: for=6.6.6.6;proto=https;host=evil.example",
            b"Proxy-Authorization: Basic dXNlcjpwYXNz",
            b"X-Tollbooth-Agent: admin-bot",
            b"X-TOLLBOOTH-SUBJECT: root",
            b"x-tollbooth-delegation: nobody",
        ),
    )
    assert response is not None and response.status == 200
    seen = upstream.last()
    assert seen.headers_named("x-forwarded-for") == ["127.0.0.1"]
    assert seen.headers_named("x-forwarded-proto") == ["http"]
    assert seen.headers_named("x-forwarded-host") == [gateway.proxy_url.removeprefix("http://")]  # public_url, not Host
    assert seen.header("forwarded") is None and seen.header("proxy-authorization") is None
    assert seen.headers_named("x-tollbooth-agent") == ["billing-bot"]
    assert seen.headers_named("x-tollbooth-subject") == ["billing-bot"]
    assert seen.header("x-tollbooth-delegation") is None


# Names that WSGI/CGI-style upstreams (HTTP_X_TOLLBOOTH_AGENT), PHP, older gunicorn and some Ruby/Java stacks read as
# the dashed header: `_` and `-` both become `_` in the environ key.
UNDERSCORE_SPOOFS = [
    b"X_Tollbooth_Agent: admin-bot",
    b"X-Tollbooth_Scopes: crm.admin",
    b"x_tollbooth_subject: root",
    b"X_Forwarded_For: 6.6.6.6",
    b"X_Forwarded_Host: evil.example",
    b"X_HTTP_Method_Override: DELETE",
    b"X_Request_Id: spoofed",
]


@pytest.mark.parametrize("line", UNDERSCORE_SPOOFS, ids=lambda b: b.split(b":")[0].decode())
def test_underscore_spellings_of_gateway_headers_never_reach_upstream(
    gateway: Gateway, upstream: Upstream, line: bytes
):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), line))
    assert response is not None and response.status == 200
    name = line.split(b":")[0].lower()
    assert all(k != name for k, _ in upstream.last().headers)


@pytest.mark.parametrize(
    "line",
    [
        b"X-Forwarded-Port: 443",
        b"X-Forwarded-Prefix: /admin",
        b"X-Forwarded-Ssl: on",
        b"X-Forwarded-Scheme: https",
        b"X-Forwarded-Server: evil.example",
        b"X-Forwarded-Uri: /admin",
        b"X-Forwarded-Method: DELETE",
    ],
    ids=lambda b: b.split(b":")[0].decode(),
)
def test_every_x_forwarded_header_from_the_caller_is_dropped(gateway: Gateway, upstream: Upstream, line: bytes):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), line))
    assert response is not None and response.status == 200
    assert upstream.last().header(line.split(b":")[0].decode()) is None


@pytest.mark.parametrize(
    "line",
    [b"X-Real-IP: 6.6.6.6", b"True-Client-IP: 6.6.6.6", b"X-Client-IP: 6.6.6.6"],
    ids=lambda b: b.split(b":")[0].decode(),
)
def test_client_address_headers_from_the_caller_are_dropped(gateway: Gateway, upstream: Upstream, line: bytes):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), line))
    assert response is not None and response.status == 200
    assert upstream.last().header(line.split(b":")[0].decode()) is None


@pytest.mark.parametrize(
    "line", [b"X-Original-URL: /admin/users", b"X-Rewrite-URL: /admin/users"], ids=["original", "rewrite"]
)
def test_path_override_headers_never_reach_upstream(gateway: Gateway, upstream: Upstream, line: bytes):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), line))
    assert response is not None and response.status == 200
    assert upstream.last().header(line.split(b":")[0].decode()) is None


# --- Host and request targets ---------------------------------------------------------------------------------------


def test_host_header_cannot_steer_the_upstream_host(gateway: Gateway, upstream: Upstream):
    # An allowed name on another port (a foreign name is refused outright: tests/e2e/test_host_origin.py).
    response = send_raw(
        gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), host=b"tollbooth.test:443")
    )
    assert response is not None and response.status == 200
    seen = upstream.last()
    assert seen.headers_named("host") == [upstream.url.removeprefix("http://")]
    # X-Forwarded-Host is the public URL's authority, never the caller's Host (host-header poisoning).
    assert seen.headers_named("x-forwarded-host") == [gateway.proxy_url.removeprefix("http://")]


@pytest.mark.parametrize(
    "host", [b"evil.example/x?y", b"a, b", b"a b", b"evil.example\xff"], ids=["path", "list", "space", "obs-text"]
)
def test_malformed_host_is_never_relayed_as_x_forwarded_host(gateway: Gateway, upstream: Upstream, host: bytes):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), host=host))
    if response is not None and response.status == 200:
        assert upstream.last().headers_named("x-forwarded-host") == [gateway.proxy_url.removeprefix("http://")]
        assert upstream.last().headers_named("host") == [upstream.url.removeprefix("http://")]
    else:
        assert response is not None and response.status == 400


def test_absolute_form_target_cannot_choose_the_upstream(gateway: Gateway, upstream: Upstream):
    # The authority is the gateway's own (a foreign one is 421: tests/e2e/test_host_origin.py); the upstream's URL
    # decides where the request goes, and only the path and query are taken from the target.
    target = b"http://tollbooth.test/v1/customers/42?x=1"
    response = send_raw(gateway.proxy_url, request(target, bearer(gateway.mint()), host=b"x"))
    assert response is not None and response.status == 200
    seen = upstream.last()
    assert (seen.raw_path, seen.query) == (b"/v1/customers/42", b"x=1")
    assert seen.headers_named("host") == [upstream.url.removeprefix("http://")]


@pytest.mark.parametrize(
    "target",
    [b"http://tollbooth.test", b"http://tollbooth.test//v1/customers/1", b"*", b"v1/customers/1", b"evil.example:443"],
)
def test_unusable_request_targets_are_400_and_never_forwarded(gateway: Gateway, watch: Watch, target: bytes):
    response = send_raw(gateway.proxy_url, request(target, bearer(gateway.mint())))
    assert response is not None and response.status == 400
    assert watch.forwarded() == []


@pytest.mark.parametrize(
    "headers",
    [[], [b"Host: a.example", b"Host: b.example"]],
    ids=["no-host", "two-hosts"],
)
def test_http11_request_without_exactly_one_host_is_400(gateway: Gateway, watch: Watch, headers: list[bytes]):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), *headers, host=None))
    assert response is not None and response.status == 400
    assert watch.forwarded() == []


def test_fragment_is_never_part_of_the_forwarded_path(gateway: Gateway, upstream: Upstream):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42#/../../admin", bearer(gateway.mint())))
    assert response is not None and response.status == 200
    assert upstream.last().raw_path == b"/v1/customers/42"


@pytest.mark.parametrize(
    "target",
    [b"/files/a%2Fb", b"/files/a%3Fb", b"/files/a%23b", b"/files/caf\xc3\xa9", b"/files/a\xffb", b"/files/%C3%28"],
    ids=["encoded-slash", "encoded-question", "encoded-hash", "raw-utf8", "raw-ff", "bad-utf8-escape"],
)
def test_structural_escapes_and_raw_bytes_in_the_path_are_400(gateway: Gateway, watch: Watch, target: bytes):
    response = send_raw(gateway.proxy_url, request(target, bearer(gateway.mint())))
    assert response is not None and response.status == 400
    assert watch.forwarded() == []


def test_encoded_slash_in_the_query_is_forwarded_verbatim(gateway: Gateway, upstream: Upstream):
    response = send_raw(gateway.proxy_url, request(b"/files/a?next=%2F..%2Fadmin&q=%3F%23", bearer(gateway.mint())))
    assert response is not None and response.status == 200
    assert (upstream.last().raw_path, upstream.last().query) == (b"/files/a", b"next=%2F..%2Fadmin&q=%3F%23")


@pytest.mark.parametrize(
    "suffix",
    [b"/../../v1/customers/1", b"/%2e%2e/admin", b"/a%0d%0ab"],
    ids=["dot-dot", "encoded-dots", "encoded-crlf"],
)
def test_metadata_path_form_refuses_paths_the_proxy_would_refuse(gateway: Gateway, watch: Watch, suffix: bytes):
    response = send_raw(gateway.proxy_url, request(b"/.well-known/oauth-protected-resource" + suffix))
    assert response is not None and response.status in (400, 404)
    assert watch.forwarded() == []


# --- methods ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "statuses"),
    [
        (b"TRACE", b"/files/x", (403, 405)),
        (b"TRACK", b"/files/x", (400, 403, 405)),
        (b"CONNECT", b"/files/x", (400, 403, 405)),
        (b"CONNECT", b"127.0.0.1:22", (400,)),
        (b"get", b"/v1/customers/1", (400, 405)),
        (b"HEAD", b"/sse", (403,)),  # route "sse" lists GET only
        (b"PROPFIND", b"/files/x", (403, 405)),
        (b"OPTIONS", b"*", (400,)),
        (b"PRI", b"*", (400,)),
    ],
)
def test_methods_no_route_names_are_refused_and_never_forwarded(
    gateway: Gateway, watch: Watch, method: bytes, target: bytes, statuses: tuple[int, ...]
):
    response = send_raw(gateway.proxy_url, request(target, bearer(gateway.mint("crm.read crm.write")), method=method))
    assert response is not None and response.status in statuses
    assert watch.forwarded() == []


# --- Expect (upgrades: test_framing.py) ---------------------------------------------------------------------------


def test_expect_100_continue_on_a_denied_request_gets_no_continue_and_is_never_forwarded(
    gateway: Gateway, watch: Watch
):
    # The body never comes: a gateway that said 100 Continue or forwarded the head would be waiting for it.
    data = exchange(
        gateway.proxy_url,
        request(
            b"/upload", bearer(gateway.mint("crm.read")), b"Expect: 100-continue", b"Content-Length: 5", method=b"POST"
        ),
    )
    assert data.startswith(b"HTTP/1.1 403 ")
    assert b"100 Continue" not in data
    assert watch.forwarded() == []


def test_expect_is_not_relayed_and_the_body_arrives(gateway: Gateway, upstream: Upstream):
    data = exchange(
        gateway.proxy_url,
        request(
            b"/upload",
            bearer(gateway.mint("crm.write")),
            b"Expect: 100-continue",
            b"Content-Length: 5",
            method=b"POST",
            body=b"hello",
        ),
    )
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert upstream.last().body == b"hello" and upstream.last().header("expect") is None


# --- request smuggling and framing ---------------------------------------------------------------------------------

_SMUGGLED = b"GET /v1/admin HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        ([b"Content-Length: 4", b"Transfer-Encoding: chunked"], b"0\r\n\r\n" + _SMUGGLED),
        ([b"Transfer-Encoding: chunked", b"Content-Length: 4"], b"0\r\n\r\n" + _SMUGGLED),
        ([b"Content-Length: 3", b"Content-Length: 3"], b"abc"),
        ([b"Content-Length: 3", b"Content-Length: 40"], b"abc" + _SMUGGLED),
        ([b"Content-Length: 3, 3"], b"abc"),
        ([b"Content-Length: +3"], b"abc"),
        ([b"Content-Length: -1"], b"abc"),
        ([b"Content-Length: 0x3"], b"abc"),
        ([b"Content-Length: 99999999999999999999999"], b"abc"),
        ([b"Transfer-Encoding : chunked"], b"3\r\nabc\r\n0\r\n\r\n"),
        ([b"Transfer-Encoding: chunked, gzip"], b"3\r\nabc\r\n0\r\n\r\n"),
        ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"], b"3\r\nabc\r\n0\r\n\r\n"),
        ([b"X-Folded: a", b" Transfer-Encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n"),
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "duplicate-cl-same",
        "duplicate-cl-different",
        "cl-list",
        "cl-plus-sign",
        "cl-negative",
        "cl-hex",
        "cl-overflow",
        "te-space-before-colon",
        "te-chunked-not-last",
        "te-two-lines-chunked-not-last",
        "obs-fold",
    ],
)
def test_ambiguous_framing_is_400_and_never_forwarded(
    gateway: Gateway, watch: Watch, framing: list[bytes], body: bytes
):
    response = send_raw(
        gateway.proxy_url, request(b"/upload", bearer(gateway.mint("crm.write")), *framing, method=b"POST", body=body)
    )
    assert response is not None and response.status == 400
    assert watch.forwarded() == []


_GET = b"GET /v1/customers/1 HTTP/1.1\r\nHost: x\r\n"
_AUTH = b"Authorization: Bearer {t}\r\n"
_CLOSE = b"Connection: close\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1/customers/1 HTTP/1.1\nHost: x\nAuthorization: Bearer {t}\nConnection: close\n\n",
        _GET + _AUTH + b"X-A: a\rX-Tollbooth-Agent: admin\r\n" + _CLOSE,
        _GET + _AUTH + b"X-A: a\x00b\r\n" + _CLOSE,
        _GET + _AUTH + b"X-\xc3\xa9: v\r\n" + _CLOSE,
        _GET + b"Authorization: Bearer\r\n {t}\r\n" + _CLOSE,
        _GET + b": empty-name\r\n" + _AUTH + _CLOSE,
        _GET + b"Authorization : Bearer {t}\r\n" + _CLOSE,
    ],
    ids=[
        "bare-lf",
        "bare-cr",
        "nul-in-value",
        "utf8-in-name",
        "folded-authorization",
        "empty-name",
        "space-before-colon",
    ],
)
def test_malformed_header_section_is_400_and_never_forwarded(gateway: Gateway, watch: Watch, raw: bytes):
    response = send_raw(gateway.proxy_url, raw.replace(b"{t}", gateway.mint().encode()))
    assert response is not None and response.status in (400, 505)
    assert watch.forwarded() == []


@pytest.mark.parametrize("coding", [b"identity", b"xchunked", b"gzip"])
def test_transfer_encoding_that_does_not_end_in_chunked_is_never_forwarded(
    gateway: Gateway, watch: Watch, coding: bytes
):
    response = send_raw(
        gateway.proxy_url,
        request(
            b"/upload",
            bearer(gateway.mint("crm.write")),
            b"Transfer-Encoding: " + coding,
            method=b"POST",
            body=b"3\r\nabc\r\n0\r\n\r\n",
        ),
    )
    assert response is not None and response.status == 400
    assert watch.forwarded() == []


def test_a_request_inside_a_chunked_body_stays_body(gateway: Gateway, watch: Watch):
    chunk = _SMUGGLED
    response = send_raw(
        gateway.proxy_url,
        request(
            b"/upload",
            bearer(gateway.mint("crm.write")),
            b"Transfer-Encoding: chunked",
            method=b"POST",
            body=b"%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk),
        ),
    )
    assert response is not None and response.status == 200
    forwarded = watch.forwarded()
    assert [(s.method, s.raw_path, s.body) for s in forwarded] == [("POST", b"/upload", chunk)]


def test_pipelined_requests_are_each_authorized(gateway: Gateway, watch: Watch):
    token = gateway.mint()
    data = exchange(
        gateway.proxy_url,
        b"GET /v1/customers/1 HTTP/1.1\r\nHost: x\r\n" + bearer(token) + b"\r\n\r\n"
        b"GET /v1/admin HTTP/1.1\r\nHost: x\r\n\r\n"
        b"DELETE /v1/customers/1 HTTP/1.1\r\nHost: x\r\n" + bearer(token) + b"\r\nConnection: close\r\n\r\n",
    )
    assert [r.status for r in parse_responses(data)] == [200, 401, 403]
    assert [(s.method, s.raw_path) for s in watch.forwarded()] == [("GET", b"/v1/customers/1")]


@pytest.mark.parametrize("case", ["authorization-in-trailer", "trailer-forwarded-as-header"])
def test_chunked_trailer_fields_are_never_headers(gateway: Gateway, upstream: Upstream, case: str):
    token = gateway.mint("crm.write").encode()
    before = len(upstream.seen)
    if case == "authorization-in-trailer":
        head, trailer = [], b"Authorization: Bearer " + token
    else:
        head, trailer = [b"Authorization: Bearer " + token], b"X-Smuggled: 1"
    response = send_raw(
        gateway.proxy_url,
        request(
            b"/upload",
            *head,
            b"Transfer-Encoding: chunked",
            method=b"POST",
            body=b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n\r\n",
        ),
    )
    assert response is not None
    if case == "authorization-in-trailer":
        assert response.status == 401
        assert len(upstream.seen) == before
    else:
        assert response.status == 200
        assert upstream.last().body == b"abc"
        assert upstream.last().header("x-smuggled") is None


@pytest.mark.parametrize("shape", ["one-1MiB-value", "5000-headers"])
def test_oversized_header_section_is_431_and_never_forwarded(gateway: Gateway, watch: Watch, shape: str):
    if shape == "one-1MiB-value":
        extra = [b"X-Big: " + b"a" * (1 << 20)]
    else:
        extra = [b"X-H%d: v" % i for i in range(5000)]
    response = send_raw(gateway.proxy_url, request(b"/status", *extra))
    assert response is None or response.status in (400, 431)
    assert watch.forwarded() == []


# --- trace context and request ids ---------------------------------------------------------------------------------


def test_tracestate_is_dropped_with_an_invalid_traceparent(gateway: Gateway, upstream: Upstream):
    response = send_raw(
        gateway.proxy_url,
        request(
            b"/v1/customers/42",
            bearer(gateway.mint()),
            b"traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            b"tracestate: evil=1",
        ),
    )
    assert response is not None and response.status == 200
    seen = upstream.last()
    assert seen.header("tracestate") is None
    assert seen.header("traceparent").split("-")[1] != "4bf92f3577b34da6a3ce929d0e0e4736"


def test_two_traceparent_headers_start_a_new_trace(gateway: Gateway, upstream: Upstream):
    response = send_raw(
        gateway.proxy_url,
        request(
            b"/v1/customers/42",
            bearer(gateway.mint()),
            b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"traceparent: 00-11111111111111111111111111111111-1111111111111111-01",
            b"tracestate: a=1",
        ),
    )
    assert response is not None and response.status == 200
    seen = upstream.last()
    assert len(seen.headers_named("traceparent")) == 1
    assert seen.header("traceparent").split("-")[1] not in ("4bf92f3577b34da6a3ce929d0e0e4736", "1" * 32)
    assert seen.header("tracestate") is None
    assert response.header("traceparent") == seen.header("traceparent")


_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@pytest.mark.parametrize(
    "value",
    [b'a"b', b"a b", b"a,b", b"caf\xc3\xa9", b"x" * 129, b"<script>", b"id;rm -rf", b"%0d%0aX-Evil:%201"],
    ids=["quote", "space", "comma", "utf8", "129-chars", "html", "semicolon", "encoded-crlf"],
)
def test_hostile_x_request_id_is_replaced_not_relayed(gateway: Gateway, upstream: Upstream, value: bytes):
    response = send_raw(
        gateway.proxy_url, request(b"/v1/customers/42", bearer(gateway.mint()), b"X-Request-Id: " + value)
    )
    assert response is not None and response.status == 200
    echoed = response.header("x-request-id")
    assert echoed is not None and _SAFE_ID.match(echoed) and echoed.encode() != value
    assert upstream.last().headers_named("x-request-id") == [echoed]


def test_request_id_on_a_denial_is_also_safe(gateway: Gateway):
    response = send_raw(gateway.proxy_url, request(b"/v1/customers/42", b'X-Request-Id: a"b'))
    assert response is not None and response.status == 401
    assert _SAFE_ID.match(response.header("x-request-id") or "")
    assert json.loads(response.body)["request_id"] == response.header("x-request-id")
