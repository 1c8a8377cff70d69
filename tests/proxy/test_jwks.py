"""Trusted issuers' JWKS cache, against a real HTTP server on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from prometheus_client import REGISTRY

from gateway.config import TrustedIssuerConfig
from gateway.tokens.jwk import SigningKey
from gateway.tokens.jwks import JwksError, parse_jwks
from gateway.trust import JwksCache

pytestmark = pytest.mark.anyio

ALL = ["ES256", "ES384", "EdDSA", "RS256", "PS256"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def jwk(private_key: Any, kid: str, alg: str | None) -> dict[str, Any]:
    key = SigningKey(kid, alg or "ES256", private_key, private_key.public_key(), 0.0, None).public_jwk()
    if alg is None:
        del key["alg"]
    return key


def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


async def until(predicate: Any, what: str) -> None:
    # Polls with a deadline: the conditions are set by the server's thread or by a metric, not by an event.
    with anyio.fail_after(10):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


@dataclass
class JwksServer:
    """Serves `jwks` at /jwks.json; `mode` makes it misbehave; `hold` keeps answers back until set."""

    url: str = ""
    jwks: dict[str, Any] = field(default_factory=dict)
    mode: str = "ok"
    requests: int = 0
    hold: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        await asyncio.to_thread(self.hold.wait, 30)
        status, headers, body = 200, [(b"content-type", b"application/json")], json.dumps(self.jwks).encode()
        if self.mode == "500":
            status, body = 500, b'{"error": "down"}'
        elif self.mode == "garbage":
            body = b"<html>not json</html>"
        elif self.mode == "not-a-jwks":
            body = b'{"keys": "none"}'
        elif self.mode == "huge":
            body = json.dumps({"keys": [], "pad": "x" * (2 * 1024 * 1024)}).encode()
        elif self.mode == "redirect":
            status, headers, body = 302, [(b"location", b"https://attacker.example/jwks.json")], b""
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[JwksServer]:
    app = JwksServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"
    uv = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: uv.started, "the JWKS server to start")
    try:
        yield app
    finally:
        app.hold.set()
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def k1() -> dict[str, Any]:
    return jwk(ec.generate_private_key(ec.SECP256R1()), "k1", "ES256")


@pytest.fixture(scope="module")
def k2() -> dict[str, Any]:
    return jwk(ed25519.Ed25519PrivateKey.generate(), "k2", "EdDSA")


@pytest.fixture
def jwks_server(server: JwksServer, k1: dict[str, Any]) -> JwksServer:
    server.jwks, server.mode, server.requests = {"keys": [k1]}, "ok", 0
    server.hold.set()
    return server


@pytest.fixture
async def http() -> Any:
    async with httpx2.AsyncClient() as client:
        yield client


def cache(server: JwksServer, http: httpx2.AsyncClient, clock: FakeClock, **kwargs: Any) -> JwksCache:
    entry = TrustedIssuerConfig(issuer="https://idp.test", jwks_uri=server.url, accept_at_proxy=True)
    return JwksCache(entry, http, clock=clock, **kwargs)


def fetches(outcome: str) -> float:
    labels = {"issuer": "https://idp.test", "outcome": outcome}
    return REGISTRY.get_sample_value("tollbooth_jwks_fetches_total", labels) or 0.0


async def test_first_use_fetches_then_known_kids_are_served_from_cache(jwks_server: JwksServer, http: Any) -> None:
    keys = cache(jwks_server, http, FakeClock())
    ok_before = fetches("ok")
    for _ in range(5):
        key = await keys.get("k1")
        assert key is not None and key.algorithm == "ES256" and key.private_key is None
    assert jwks_server.requests == 1
    assert fetches("ok") - ok_before == 1


async def test_unknown_kid_refetches_at_most_once_per_interval(
    jwks_server: JwksServer, http: Any, k1: dict[str, Any], k2: dict[str, Any]
) -> None:
    clock = FakeClock()
    keys = cache(jwks_server, http, clock, min_refetch_interval=60)
    assert await keys.get("k1") is not None
    for _ in range(10):  # a flood of made-up kids right after a fetch: no request to the IdP
        assert await keys.get("made-up") is None
    assert jwks_server.requests == 1
    jwks_server.jwks = {"keys": [k1, k2]}  # the IdP rotates in a new key
    clock.now += 59
    assert await keys.get("k2") is None
    assert jwks_server.requests == 1
    clock.now += 1
    assert await keys.get("k2") is not None
    assert jwks_server.requests == 2
    assert await keys.get("made-up") is None  # the refetch for k2 counts against this interval too
    assert jwks_server.requests == 2


async def test_concurrent_misses_share_one_fetch(jwks_server: JwksServer, http: Any) -> None:
    keys = cache(jwks_server, http, FakeClock())
    jwks_server.hold.clear()
    results: list[SigningKey | None] = []

    async def lookup() -> None:
        results.append(await keys.get("k1"))

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(lookup)
        await until(lambda: jwks_server.requests == 1, "the fetch to reach the server")
        jwks_server.hold.set()
    assert len(results) == 20 and all(key is not None for key in results)
    assert jwks_server.requests == 1


@pytest.mark.parametrize("mode", ["500", "garbage", "not-a-jwks", "huge", "redirect"])
async def test_last_good_set_is_kept_when_the_idp_misbehaves(jwks_server: JwksServer, http: Any, mode: str) -> None:
    clock = FakeClock()
    keys = cache(jwks_server, http, clock)
    good = await keys.get("k1")
    assert good is not None
    jwks_server.mode = mode
    clock.now += 60
    errors_before = fetches("error")
    assert await keys.get("new-kid") is None
    assert jwks_server.requests == 2
    assert fetches("error") - errors_before == 1
    assert await keys.get("k1") is good


async def test_a_set_with_no_usable_key_is_not_adopted(jwks_server: JwksServer, http: Any, k1: dict[str, Any]) -> None:
    clock = FakeClock()
    keys = cache(jwks_server, http, clock)
    assert await keys.get("k1") is not None
    jwks_server.jwks = {"keys": [{**k1, "kid": "enc", "use": "enc"}]}
    clock.now += 60
    assert await keys.get("enc") is None
    assert await keys.get("k1") is not None


async def test_a_slow_idp_times_out_and_the_old_set_stays(jwks_server: JwksServer, http: Any) -> None:
    clock = FakeClock()
    keys = cache(jwks_server, http, clock, timeout=0.3)
    assert await keys.get("k1") is not None
    jwks_server.hold.clear()
    clock.now += 60
    errors_before = fetches("error")
    with anyio.fail_after(5):
        assert await keys.get("new-kid") is None
    assert fetches("error") - errors_before == 1
    assert await keys.get("k1") is not None


async def test_a_stale_set_is_refreshed_in_the_background(
    jwks_server: JwksServer, http: Any, k2: dict[str, Any]
) -> None:
    clock = FakeClock()
    keys = cache(jwks_server, http, clock, max_age=3600)
    assert await keys.get("k1") is not None
    jwks_server.jwks = {"keys": [k2]}  # the IdP withdrew k1
    clock.now += 3600
    ok_before = fetches("ok")
    assert await keys.get("k1") is not None  # answered at once from the stale set...
    await until(lambda: fetches("ok") > ok_before, "the background refresh")
    assert jwks_server.requests == 2
    assert await keys.get("k1") is None  # ...and gone once the refresh lands
    assert await keys.get("k2") is not None


async def test_aclose_cancels_a_fetch_in_flight(jwks_server: JwksServer, http: Any) -> None:
    keys = cache(jwks_server, http, FakeClock())
    jwks_server.hold.clear()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(keys.get, "k1")
        await until(lambda: jwks_server.requests == 1, "the fetch to start")
        with anyio.fail_after(5):
            await keys.aclose()
        tasks.cancel_scope.cancel()


# ---- parse_jwks: which JWKs become keys ----------------------------------------------------------------------------


def test_parse_jwks_selects_usable_signing_keys() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (must be refused)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with_private_part = {**jwk(ec_key, "with-d", "ES256"), "d": "AAAA"}
    document = {
        "keys": [
            jwk(ec_key, "es", "ES256"),
            jwk(rsa_key, "rsa-no-alg", None),
            jwk(p384, "p384-no-alg", None),
            jwk(rsa_key, "ps", "PS256"),
            {**jwk(ec_key, "enc", "ES256"), "use": "enc"},
            {**jwk(ec_key, "wrap-only", "ES256"), "key_ops": ["wrapKey"]},
            {k: v for k, v in jwk(ec_key, "x", "ES256").items() if k != "kid"},
            jwk(rsa_key, "claims-es256", "ES256"),  # an RSA key labelled ES256
            jwk(small_rsa, "small", "RS256"),
            jwk(ec_key, "es512", "ES512"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            jwk(ec_key, "dup", "ES256"),
            jwk(rsa_key, "dup", "RS256"),
            with_private_part,
            "not an object",
        ]
    }
    keys = parse_jwks(json.dumps(document).encode(), ALL)
    assert {kid: key.algorithm for kid, key in keys.items()} == {
        "es": "ES256",
        "rsa-no-alg": "RS256",
        "p384-no-alg": "ES384",
        "ps": "PS256",
        "with-d": "ES256",
    }
    assert isinstance(keys["with-d"].public_key, ec.EllipticCurvePublicKey)
    assert all(key.private_key is None for key in keys.values())


def test_parse_jwks_honours_the_issuers_algorithms() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    body = json.dumps({"keys": [jwk(ec_key, "es", "ES256")]}).encode()
    with pytest.raises(JwksError, match="no usable signing key"):
        parse_jwks(body, ["RS256"])


@pytest.mark.parametrize("body", [b"", b"[]", b'{"keys": {}}', b'{"keys": [NaN]}', b"{" * 100_000])
def test_parse_jwks_refuses_what_is_not_a_jwks(body: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(body, ALL)
