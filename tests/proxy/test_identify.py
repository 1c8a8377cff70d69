"""identify: bearer extraction (RFC 6750 §2.1), the JWT attack table at the Verifier (RFC 8725, RFC 9068 §4),
the verified-token cache, and revocation on every request."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms
from prometheus_client import REGISTRY

from gateway.config import TrustedIssuerConfig
from gateway.issuer.keystore import KeyStore
from gateway.principal import Principal
from gateway.proxy.answers import Refusal
from gateway.proxy.identify import Verifier, extract_bearer
from gateway.state import RevocationList
from gateway.tokens.access_token import REQUIRED_CLAIMS, mint_access_token
from gateway.tokens.jwk import SigningKey
from gateway.trust import JwksCaches

pytestmark = pytest.mark.anyio

ISSUER = "http://127.0.0.1:8081"
AUDIENCE = "http://127.0.0.1:8080"
IDP = "https://idp.example.com"
NOW = 1_750_000_000.0
LEEWAY = 30
REMOVE = object()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def to_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def a_key(private_key: Any, algorithm: str, kid: str) -> SigningKey:
    return SigningKey(kid, algorithm, private_key, private_key.public_key(), NOW, None)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore.load(tmp_path_factory.mktemp("keys"), "ES256")


@dataclass
class Forge:
    """Builds tokens, honest and otherwise. Signs whatever header and claims it is given."""

    ours: SigningKey
    other: SigningKey  # ES256, unknown to the verifier
    rsa_key: Any  # an RSA private key, unknown to the verifier

    def header(self, **overrides: Any) -> dict[str, Any]:
        header = {"alg": "ES256", "typ": "at+jwt", "kid": self.ours.kid}
        return {k: v for k, v in (header | overrides).items() if v is not REMOVE}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims = {
            "iss": ISSUER,
            "sub": "billing-bot",
            "aud": AUDIENCE,
            "exp": int(NOW) + 300,
            "iat": int(NOW),
            "jti": "jti-1",
            "client_id": "billing-bot",
            "scope": "crm.read",
        }
        return {k: v for k, v in (claims | overrides).items() if v is not REMOVE}

    def raw(self, header: bytes, payload: bytes, key: Any = None, alg: str = "ES256") -> str:
        signing_input = f"{b64(header)}.{b64(payload)}"
        signature = get_default_algorithms()[alg].sign(signing_input.encode(), key or self.ours.private_key)
        return f"{signing_input}.{b64(signature)}"

    def signed(
        self, header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None, key: Any = None, alg: str = ""
    ) -> str:
        header = self.header() if header is None else header
        claims = self.claims() if claims is None else claims
        return self.raw(to_json(header), to_json(claims), key, alg or header["alg"])

    def unsigned(self, alg: str) -> str:
        return f"{b64(to_json(self.header(alg=alg)))}.{b64(to_json(self.claims()))}."

    def hmac_with_public_pem(self) -> str:
        # The classic key-confusion attack: HS256 keyed with the verifier's *public* key, which anyone can fetch.
        secret = self.ours.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = f"{b64(to_json(self.header(alg='HS256')))}.{b64(to_json(self.claims()))}"
        return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"

    def tampered(self) -> str:
        header, _, signature = self.signed().split(".")
        return f"{header}.{b64(to_json(self.claims(scope='crm.read crm.admin')))}.{signature}"


@pytest.fixture(scope="module")
def forge(store: KeyStore) -> Forge:
    other = ec.generate_private_key(ec.SECP256R1())
    return Forge(
        ours=store.active,
        other=a_key(other, "ES256", "other-kid"),
        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


MakeVerifier = Callable[..., Verifier]


@pytest.fixture
def make_verifier(store: KeyStore) -> MakeVerifier:
    def make(**overrides: Any) -> Verifier:
        args: dict[str, Any] = {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "keys": store.verification_keys,
            "trusted_issuers": [TrustedIssuerConfig(issuer=IDP, jwks_uri=f"{IDP}/jwks.json", accept_at_proxy=False)],
            "revocations": RevocationList(clock=FakeClock()),
            "leeway": LEEWAY,
            "clock": FakeClock(),
        }
        return Verifier(**(args | overrides))

    return make


async def rejected(verifier: Verifier, token: str) -> Refusal:
    with pytest.raises(Refusal) as caught:
        await verifier.verify(token)
    return caught.value


def bearer(headers: list[tuple[bytes, bytes]], query: bytes, *, max_token_bytes: int = 8192) -> str | None:
    """extract_bearer on the Authorization fields of a header list, as RequestHead collects them."""
    values = [value for name, value in headers if name == b"authorization"]
    return extract_bearer(values, query, max_token_bytes=max_token_bytes)


def sample(outcome: str) -> float:
    return REGISTRY.get_sample_value("tollbooth_token_verifications_total", {"outcome": outcome}) or 0.0


# ---- extract_bearer (RFC 6750 §2.1, §3.1) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ([], b"", None),
        ([(b"accept", b"*/*")], b"page=2", None),
        ([(b"authorization", b"Bearer abc.def.ghi")], b"", "abc.def.ghi"),
        ([(b"authorization", b"bearer abc.def.ghi")], b"", "abc.def.ghi"),
        ([(b"authorization", b"BEARER abc.def.ghi")], b"", "abc.def.ghi"),
        ([(b"authorization", b"Bearer   abc-_~+/==")], b"", "abc-_~+/=="),
        ([(b"authorization", b"Bearer abc")], b"q=access_token", "abc"),  # a value, not the parameter
    ],
)
def test_extract_bearer_accepts(headers: list[tuple[bytes, bytes]], query: bytes, expected: str | None) -> None:
    assert bearer(headers, query) == expected


@pytest.mark.parametrize(
    ("headers", "query", "reason"),
    [
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], b"", "duplicate_authorization"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], b"", "wrong_scheme"),
        ([(b"authorization", b"DPoP abc.def.ghi")], b"", "wrong_scheme"),
        ([(b"authorization", b"Bearerabc")], b"", "wrong_scheme"),
        ([(b"authorization", b"")], b"", "wrong_scheme"),
        ([(b"authorization", b"Bearer")], b"", "malformed_bearer"),
        ([(b"authorization", b"Bearer ")], b"", "malformed_bearer"),
        ([(b"authorization", b"Bearer abc def")], b"", "malformed_bearer"),
        ([(b"authorization", b"Bearer abc,Bearer def")], b"", "malformed_bearer"),
        ([(b"authorization", b"Bearer a=b")], b"", "malformed_bearer"),
        ([(b"authorization", b'Bearer "abc"')], b"", "malformed_bearer"),
        ([(b"authorization", b"Bearer abc\xff")], b"", "malformed_bearer"),
        ([], b"access_token=abc.def.ghi", "token_in_query"),
        ([], b"x=1&ACCESS_TOKEN=a&access_token=", "token_in_query"),
        ([], b"access%5Ftoken=abc", "token_in_query"),
        ([(b"authorization", b"Bearer abc")], b"access_token=abc", "token_in_query"),
    ],
)
def test_extract_bearer_refuses_as_invalid_request(
    headers: list[tuple[bytes, bytes]], query: bytes, reason: str
) -> None:
    with pytest.raises(Refusal) as caught:
        bearer(headers, query)
    assert (caught.value.status, caught.value.error, caught.value.reason) == (400, "invalid_request", reason)


def test_extract_bearer_oversized_token_is_invalid_token() -> None:
    with pytest.raises(Refusal) as caught:
        bearer([(b"authorization", b"Bearer " + b"a" * 101)], b"", max_token_bytes=100)
    assert (caught.value.status, caught.value.error, caught.value.reason) == (401, "invalid_token", "oversized")
    assert bearer([(b"authorization", b"Bearer " + b"a" * 100)], b"", max_token_bytes=100) == "a" * 100


# ---- the attack table ----------------------------------------------------------------------------------------------

ATTACKS: list[tuple[str, Callable[[Forge], str], str]] = [
    ("alg-none", lambda f: f.unsigned("none"), "unsigned"),
    ("alg-None", lambda f: f.unsigned("None"), "unsigned"),
    ("alg-NONE", lambda f: f.unsigned("NONE"), "unsigned"),
    ("alg-none-with-a-signature", lambda f: f.unsigned("none") + "c2ln", "bad_alg"),
    ("hs256-keyed-with-public-pem", lambda f: f.hmac_with_public_pem(), "bad_alg"),
    ("tampered-payload", lambda f: f.tampered(), "bad_signature"),
    ("stripped-signature", lambda f: f.signed().rsplit(".", 1)[0] + ".", "unsigned"),
    ("signature-segment-removed", lambda f: f.signed().rsplit(".", 1)[0], "malformed"),
    ("other-key-under-our-kid", lambda f: f.signed(key=f.other.private_key), "bad_signature"),
    ("unknown-kid", lambda f: f.signed(f.header(kid="other-kid"), key=f.other.private_key), "unknown_kid"),
    (
        "embedded-jwk",
        lambda f: f.signed(f.header(kid="other-kid", jwk=f.other.public_jwk()), key=f.other.private_key),
        "forbidden_header",
    ),
    ("embedded-jwk-under-our-kid", lambda f: f.signed(f.header(jwk=f.other.public_jwk())), "forbidden_header"),
    ("jku", lambda f: f.signed(f.header(jku="https://attacker.example/jwks.json")), "forbidden_header"),
    ("x5u", lambda f: f.signed(f.header(x5u="https://attacker.example/cert.pem")), "forbidden_header"),
    ("x5c", lambda f: f.signed(f.header(x5c=["MIIB"])), "forbidden_header"),
    ("crit", lambda f: f.signed(f.header(crit=["exp"], exp=0)), "forbidden_header"),
    ("expired", lambda f: f.signed(claims=f.claims(iat=int(NOW) - 400, exp=int(NOW) - LEEWAY - 1)), "expired"),
    ("expired-at-leeway-edge", lambda f: f.signed(claims=f.claims(exp=int(NOW) - LEEWAY)), "expired"),
    ("not-yet-valid", lambda f: f.signed(claims=f.claims(nbf=int(NOW) + LEEWAY + 1)), "not_yet_valid"),
    (
        "iat-far-future",
        lambda f: f.signed(claims=f.claims(iat=int(NOW) + 3600, exp=int(NOW) + 4000)),
        "issued_in_future",
    ),
    ("wrong-iss", lambda f: f.signed(claims=f.claims(iss="https://attacker.example")), "wrong_issuer"),
    ("iss-with-trailing-slash", lambda f: f.signed(claims=f.claims(iss=ISSUER + "/")), "wrong_issuer"),
    ("iss-not-a-string", lambda f: f.signed(claims=f.claims(iss=[ISSUER])), "bad_claim"),
    ("wrong-aud", lambda f: f.signed(claims=f.claims(aud="http://127.0.0.1:9999")), "wrong_audience"),
    ("wrong-aud-list", lambda f: f.signed(claims=f.claims(aud=["http://a", "http://b"])), "wrong_audience"),
    ("aud-is-issuer", lambda f: f.signed(claims=f.claims(aud=ISSUER)), "wrong_audience"),
    ("aud-empty-list", lambda f: f.signed(claims=f.claims(aud=[])), "bad_claim"),
    ("typ-JWT", lambda f: f.signed(f.header(typ="JWT")), "wrong_typ"),
    ("typ-missing", lambda f: f.signed(f.header(typ=REMOVE)), "wrong_typ"),
    ("typ-dpop", lambda f: f.signed(f.header(typ="dpop+jwt")), "wrong_typ"),
    ("kid-missing", lambda f: f.signed(f.header(kid=REMOVE)), "missing_kid"),
    ("es256-header-rsa-signature", lambda f: f.signed(key=f.rsa_key, alg="RS256"), "bad_signature"),
    ("rs256-header-on-our-ec-kid", lambda f: f.signed(f.header(alg="RS256"), key=f.rsa_key), "bad_alg"),
    ("ps256-header-on-our-ec-kid", lambda f: f.signed(f.header(alg="PS256"), key=f.rsa_key), "bad_alg"),
    ("header-not-json", lambda f: f.raw(b"not json", to_json(f.claims())), "malformed"),
    ("header-json-array", lambda f: f.raw(b'["ES256"]', to_json(f.claims())), "malformed"),
    (
        "header-duplicate-alg",
        lambda f: f.raw(b'{"alg":"none","alg":"ES256","typ":"at+jwt","kid":"%s"}' % f.ours.kid.encode(), b"{}"),
        "malformed",
    ),
    ("claims-not-json", lambda f: f.raw(to_json(f.header()), b"\xff\xfe"), "malformed"),
    ("claims-json-string", lambda f: f.raw(to_json(f.header()), b'"claims"'), "malformed"),
    ("exp-NaN", lambda f: f.raw(to_json(f.header()), json.dumps(f.claims(exp=float("nan"))).encode()), "malformed"),
    ("exp-a-string", lambda f: f.signed(claims=f.claims(exp=str(int(NOW) + 300))), "bad_claim"),
    ("exp-true", lambda f: f.signed(claims=f.claims(exp=True)), "bad_claim"),
    ("sub-header-injection", lambda f: f.signed(claims=f.claims(sub="bot\r\nX-Tollbooth-Agent: root")), "bad_claim"),
    ("client-id-a-number", lambda f: f.signed(claims=f.claims(client_id=42)), "bad_claim"),
    ("act-sub-a-number", lambda f: f.signed(claims=f.claims(act={"sub": 7})), "bad_claim"),
    ("act-sub-control-char", lambda f: f.signed(claims=f.claims(act={"sub": "a\x00b"})), "bad_claim"),
    ("act-a-string", lambda f: f.signed(claims=f.claims(act="planner")), "bad_claim"),
    ("scope-a-list", lambda f: f.signed(claims=f.claims(scope=["crm.read"])), "bad_claim"),
    ("scope-with-quote", lambda f: f.signed(claims=f.claims(scope='crm.read x"y')), "bad_claim"),
    ("padded-segments", lambda f: f.signed().replace(".", "=.", 1), "malformed"),
    ("jwe-five-segments", lambda f: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "malformed"),
    ("non-ascii", lambda f: f.signed() + "é", "malformed"),
    ("oversized", lambda f: f.signed(claims=f.claims(pad="x" * 9000)), "oversized"),
    (
        "idp-not-accepted-at-proxy",
        lambda f: f.signed(claims=f.claims(iss=IDP), key=f.other.private_key),
        "issuer_not_accepted",
    ),
] + [
    (f"missing-{name}", lambda f, name=name: f.signed(claims=f.claims(**{name: REMOVE})), "missing_claim")
    for name in REQUIRED_CLAIMS
]


@pytest.mark.parametrize(("make_token", "reason"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
async def test_attack_is_invalid_token(
    make_verifier: MakeVerifier, forge: Forge, make_token: Callable[[Forge], str], reason: str
) -> None:
    token = make_token(forge)
    exc = await rejected(make_verifier(), token)
    assert (exc.status, exc.error, exc.reason) == (401, "invalid_token", reason)
    # Safe for WWW-Authenticate error_description, and never an echo of the token.
    assert '"' not in exc.description and "\\" not in exc.description
    assert token[:20] not in str(exc) and token[-20:] not in str(exc)


# ---- what a good token gives ---------------------------------------------------------------------------------------


async def test_valid_token_gives_the_principal(make_verifier: MakeVerifier, store: KeyStore) -> None:
    token, claims = mint_access_token(
        store.active,
        issuer=ISSUER,
        audience=AUDIENCE,
        subject="user:alice",
        client_id="billing-bot",
        scopes=["crm.read", "crm.write"],
        ttl=300,
        act={"sub": "billing-bot", "act": {"sub": "planner"}},
        now=NOW,
    )
    principal = await make_verifier().verify(token)
    assert principal == Principal(
        agent="billing-bot",
        subject="user:alice",
        scopes=frozenset({"crm.read", "crm.write"}),
        jti=claims["jti"],
        issuer=ISSUER,
        expires_at=NOW + 300,
        issued_at=NOW,
        delegation=("billing-bot", "planner"),
    )
    assert principal.claims == claims


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        ({"typ": "application/at+jwt"}, {}),
        ({"typ": "AT+JWT"}, {}),
        ({}, {"aud": ["http://elsewhere", AUDIENCE]}),
        ({}, {"exp": int(NOW) - LEEWAY + 1}),  # expired, but within the leeway
        ({}, {"nbf": int(NOW) + LEEWAY, "iat": int(NOW) + LEEWAY}),  # clock skew the other way
        ({}, {"scope": REMOVE}),
        ({}, {"scope": "a  b "}),
    ],
    ids=["application-at-jwt", "upper-case-typ", "aud-list", "leeway-exp", "leeway-nbf-iat", "no-scope", "spaces"],
)
async def test_tolerated_variations(make_verifier: MakeVerifier, forge: Forge, header: dict, claims: dict) -> None:
    principal = await make_verifier().verify(forge.signed(forge.header(**header), forge.claims(**claims)))
    assert principal.agent == "billing-bot"


async def test_scope_claim_becomes_a_set(make_verifier: MakeVerifier, forge: Forge) -> None:
    principal = await make_verifier().verify(forge.signed(claims=forge.claims(scope="a  b a")))
    assert principal.scopes == {"a", "b"}
    principal = await make_verifier().verify(forge.signed(claims=forge.claims(scope=REMOVE)))
    assert principal.scopes == frozenset()


# ---- the cache --------------------------------------------------------------------------------------------------


@pytest.fixture
def counted_keys(store: KeyStore) -> tuple[Callable[[], dict[str, SigningKey]], list[int]]:
    """The key lookup, counting its calls: one per full verification."""
    calls = [0]

    def keys() -> dict[str, SigningKey]:
        calls[0] += 1
        return store.verification_keys()

    return keys, calls


async def test_cache_hit_does_not_verify_again(make_verifier: MakeVerifier, forge: Forge, counted_keys: Any) -> None:
    keys, calls = counted_keys
    verifier = make_verifier(keys=keys)
    token = forge.signed()
    cached_before, verified_before = sample("cached"), sample("verified")
    first = await verifier.verify(token)
    for _ in range(5):
        assert await verifier.verify(token) is first
    assert calls[0] == 1
    assert sample("verified") - verified_before == 1
    assert sample("cached") - cached_before == 5


async def test_revoked_jti_is_rejected_even_when_cached(make_verifier: MakeVerifier, forge: Forge) -> None:
    revocations = RevocationList(clock=FakeClock())
    verifier = make_verifier(revocations=revocations)
    token = forge.signed()
    principal = await verifier.verify(token)
    rejected_before = sample("rejected")
    revocations.revoke_jti(principal.jti, principal.expires_at)
    exc = await rejected(verifier, token)
    assert (exc.status, exc.reason) == (401, "revoked")
    assert sample("rejected") - rejected_before == 1


async def test_revoked_before_first_use_is_rejected(make_verifier: MakeVerifier, forge: Forge) -> None:
    revocations = RevocationList(clock=FakeClock())
    revocations.revoke_agent_before("billing-bot", NOW + 1)
    assert (await rejected(make_verifier(revocations=revocations), forge.signed())).reason == "revoked"


async def test_cached_token_expires_with_the_token(make_verifier: MakeVerifier, forge: Forge) -> None:
    clock = FakeClock()
    verifier = make_verifier(clock=clock)
    token = forge.signed(claims=forge.claims(exp=int(NOW) + 60))
    await verifier.verify(token)
    clock.now = NOW + 60 + LEEWAY - 1
    await verifier.verify(token)
    clock.now = NOW + 60 + LEEWAY
    assert (await rejected(verifier, token)).reason == "expired"


async def test_cache_is_bounded_and_evicts_oldest(make_verifier: MakeVerifier, forge: Forge, counted_keys: Any) -> None:
    keys, calls = counted_keys
    verifier = make_verifier(keys=keys, cache_size=10)
    tokens = [forge.signed(claims=forge.claims(jti=f"jti-{i}")) for i in range(25)]
    for token in tokens:
        await verifier.verify(token)
    assert calls[0] == 25
    await verifier.verify(tokens[-1])  # newest: still cached
    assert calls[0] == 25
    await verifier.verify(tokens[0])  # oldest: evicted, verified again
    assert calls[0] == 26


async def test_expired_entries_are_evicted_first(make_verifier: MakeVerifier, forge: Forge, counted_keys: Any) -> None:
    keys, calls = counted_keys
    clock = FakeClock()
    verifier = make_verifier(keys=keys, cache_size=4, clock=clock)
    long_lived = forge.signed(claims=forge.claims(jti="long", exp=int(NOW) + 3600))
    await verifier.verify(long_lived)
    for i in range(3):
        await verifier.verify(forge.signed(claims=forge.claims(jti=f"short-{i}", exp=int(NOW) + 10)))
    clock.now = NOW + 10 + LEEWAY
    await verifier.verify(forge.signed(claims=forge.claims(jti="new", exp=int(NOW) + 3600)))
    calls_before = calls[0]
    await verifier.verify(long_lived)  # the oldest entry survived: the expired ones made room
    assert calls[0] == calls_before


async def test_rejections_are_not_cached(make_verifier: MakeVerifier, forge: Forge, counted_keys: Any) -> None:
    keys, calls = counted_keys
    verifier = make_verifier(keys=keys)
    token = forge.signed(key=forge.other.private_key)
    for _ in range(3):
        assert (await rejected(verifier, token)).reason == "bad_signature"
    assert calls[0] == 3


# ---- revocation semantics ------------------------------------------------------------------------------------------


def principal(**overrides: Any) -> Principal:
    fields: dict[str, Any] = {
        "agent": "billing-bot",
        "subject": "user:alice",
        "scopes": frozenset(),
        "jti": "j1",
        "issuer": ISSUER,
        "expires_at": NOW + 300,
        "issued_at": NOW,
    }
    return Principal(**(fields | overrides))


def test_revoke_jti_revokes_that_token_only() -> None:
    revocations = RevocationList(clock=FakeClock())
    revocations.revoke_jti("j1", NOW + 300)
    assert revocations.is_revoked(principal(jti="j1"))
    assert not revocations.is_revoked(principal(jti="j2"))


def test_revoke_agent_before_revokes_its_earlier_tokens_only() -> None:
    revocations = RevocationList(clock=FakeClock())
    revocations.revoke_agent_before("billing-bot", NOW)
    assert revocations.is_revoked(principal(issued_at=NOW - 1))
    assert not revocations.is_revoked(principal(issued_at=NOW))  # issued at or after the cut-off
    assert not revocations.is_revoked(principal(agent="other-bot", issued_at=NOW - 1))
    # A delegated token is issued to its agent (client_id) whoever the subject is.
    assert revocations.is_revoked(principal(subject="user:bob", issued_at=NOW - 1))


def test_revoke_subject_before_revokes_every_agents_tokens_for_it() -> None:
    revocations = RevocationList(clock=FakeClock())
    revocations.revoke_subject_before("user:alice", NOW)
    assert revocations.is_revoked(principal(agent="billing-bot", issued_at=NOW - 1))
    assert revocations.is_revoked(principal(agent="other-bot", issued_at=NOW - 1))
    assert not revocations.is_revoked(principal(issued_at=NOW + 1))
    assert not revocations.is_revoked(principal(subject="user:bob", issued_at=NOW - 1))


def test_cut_offs_only_move_forward() -> None:
    revocations = RevocationList(clock=FakeClock())
    revocations.revoke_agent_before("billing-bot", NOW)
    revocations.revoke_agent_before("billing-bot", NOW - 100)
    assert revocations.is_revoked(principal(issued_at=NOW - 1))


def test_revoked_jtis_are_forgotten_after_their_tokens_expire() -> None:
    clock = FakeClock()
    revocations = RevocationList(clock=clock, retain_after_expiry=300)
    revocations.revoke_jti("j1", NOW + 10)
    clock.now = NOW + 10 + 299
    revocations.revoke_jti("j2", NOW + 600)
    assert revocations.is_revoked(principal(jti="j1"))  # still inside the retention window
    clock.now = NOW + 10 + 301
    revocations.revoke_jti("j3", NOW + 600)
    assert not revocations.is_revoked(principal(jti="j1"))
    assert revocations.is_revoked(principal(jti="j2"))


# ---- trusted issuers at the proxy ---------------------------------------------------------------------------------


@pytest.fixture
def idp_key() -> SigningKey:
    return a_key(ec.generate_private_key(ec.SECP256R1()), "ES256", "idp-1")


def jwks_client(jwks: dict[str, Any], requests: list[str]) -> httpx2.AsyncClient:
    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(str(request.url))
        return httpx2.Response(200, json=jwks)

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


def idp_claims(**overrides: Any) -> dict[str, Any]:
    claims = {"iss": IDP, "sub": "alice@example.com", "aud": AUDIENCE, "azp": "crm-app", "jti": "idp-jti"}
    return claims | {"iat": int(NOW), "exp": int(NOW) + 300} | overrides


async def test_trusted_issuer_token_accepted_when_entry_allows(
    make_verifier: MakeVerifier, forge: Forge, idp_key: SigningKey
) -> None:
    requests: list[str] = []
    entry = TrustedIssuerConfig(issuer=IDP, jwks_uri=f"{IDP}/jwks.json", accept_at_proxy=True)
    async with jwks_client({"keys": [idp_key.public_jwk()]}, requests) as http:
        verifier = make_verifier(trusted_issuers=[entry], jwks=JwksCaches(http))
        token = forge.signed(forge.header(kid="idp-1"), idp_claims(), key=idp_key.private_key)
        principal = await verifier.verify(token)
        assert (principal.issuer, principal.agent, principal.subject) == (IDP, "crm-app", "alice@example.com")
        # Its token-exchange audience is not ours: not a bearer token here.
        other = forge.signed(forge.header(kid="idp-1"), idp_claims(aud=ISSUER, jti="x"), key=idp_key.private_key)
        assert (await rejected(verifier, other)).reason == "wrong_audience"
        await verifier.aclose()
    assert requests == [f"{IDP}/jwks.json"]


async def test_trusted_issuer_subject_prefix_names_every_party_at_the_proxy(
    make_verifier: MakeVerifier, forge: Forge, idp_key: SigningKey
) -> None:
    # Rules, rate limits, revocation and audit see `okta:alice`: never our agents, never another IdP's alice.
    entry = TrustedIssuerConfig(issuer=IDP, jwks_uri=f"{IDP}/jwks.json", accept_at_proxy=True, subject_prefix="okta:")
    async with jwks_client({"keys": [idp_key.public_jwk()]}, []) as http:
        verifier = make_verifier(trusted_issuers=[entry], jwks=JwksCaches(http))
        claims = idp_claims(act={"sub": "helper"})
        principal = await verifier.verify(forge.signed(forge.header(kid="idp-1"), claims, key=idp_key.private_key))
        assert (principal.agent, principal.subject) == ("okta:crm-app", "okta:alice@example.com")
        assert principal.delegation == ("okta:helper",)
        await verifier.aclose()


async def test_trusted_issuer_keys_outside_its_algorithms_are_not_used(
    make_verifier: MakeVerifier, forge: Forge, idp_key: SigningKey
) -> None:
    entry = TrustedIssuerConfig(issuer=IDP, jwks_uri=f"{IDP}/jwks.json", accept_at_proxy=True, algorithms=["RS256"])
    async with jwks_client({"keys": [idp_key.public_jwk()]}, []) as http:
        verifier = make_verifier(trusted_issuers=[entry], jwks=JwksCaches(http))
        token = forge.signed(forge.header(kid="idp-1"), idp_claims(), key=idp_key.private_key)
        assert (await rejected(verifier, token)).reason == "unknown_kid"


async def test_our_keys_never_verify_a_trusted_issuers_token(
    make_verifier: MakeVerifier, forge: Forge, idp_key: SigningKey
) -> None:
    # Signed with our key, claiming the IdP: the IdP's JWKS has no such kid.
    entry = TrustedIssuerConfig(issuer=IDP, jwks_uri=f"{IDP}/jwks.json", accept_at_proxy=True)
    async with jwks_client({"keys": [idp_key.public_jwk()]}, []) as http:
        verifier = make_verifier(trusted_issuers=[entry], jwks=JwksCaches(http))
        assert (await rejected(verifier, forge.signed(claims=idp_claims()))).reason == "unknown_kid"
