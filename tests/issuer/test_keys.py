"""Signing keys: generation, files and permissions, reload, JWKS (RFC 7517) and RFC 7638 thumbprints."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support import Upstream, start_gateway, wait_until

from gateway.config import Config, load_config
from gateway.issuer.keystore import (
    RELOAD_MARGIN,
    KeyStore,
    KeyStoreError,
    generate_key,
    key_file_name,
    key_statuses,
    prune_keys,
    rotate_keys,
)
from gateway.serve import Gateway
from gateway.tokens.access_token import mint_access_token
from gateway.tokens.jwk import SIGNING_ALGORITHMS, SigningKey, public_members, thumbprint

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 §3.1: the worked example's key and its thumbprint.
    members = {
        "e": "AQAB",
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
            "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZH"
            "zu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8"
            "awapJzKnqDKgw"
        ),
    }
    assert thumbprint(members) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_empty_dir_gets_one_key_with_private_permissions(tmp_path: Path) -> None:
    keys_dir = tmp_path / "state" / "keys"
    store = KeyStore.load(keys_dir, "ES256")
    files = list(keys_dir.glob("*.pem"))
    assert len(files) == 1 and store.keys == (store.active,)
    assert mode(keys_dir) == 0o700
    assert mode(files[0]) == 0o600
    assert store.active.path == files[0]
    assert files[0].read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_generation_leaves_no_temp_files(tmp_path: Path) -> None:
    generate_key(tmp_path, "ES256")
    assert [p.name for p in tmp_path.iterdir() if p.name != ".lock"] == [p.name for p in tmp_path.glob("*.pem")]


@pytest.mark.parametrize("algorithm", SIGNING_ALGORITHMS)
def test_reload_from_disk_gives_the_same_key(tmp_path: Path, algorithm: str) -> None:
    first = KeyStore.load(tmp_path, algorithm)
    again = KeyStore.load(tmp_path, algorithm, generate_if_empty=False)
    assert again.active.kid == first.active.kid
    assert again.active.algorithm == algorithm
    assert again.active.created_at == first.active.created_at
    assert again.jwks() == first.jwks()


def test_kid_is_the_rfc7638_thumbprint_of_the_public_key(tmp_path: Path) -> None:
    key = generate_key(tmp_path, "ES256")
    assert key.kid == thumbprint(public_members(key.public_key))
    assert len(key.kid) == 43  # base64url of 32 bytes, no padding


def test_newest_key_is_active_and_keys_are_newest_first(tmp_path: Path) -> None:
    old = generate_key(tmp_path, "ES256", now=1_700_000_000.0)
    new = generate_key(tmp_path, "ES256", now=1_700_000_600.5)
    store = KeyStore.load(tmp_path, "ES256")
    assert store.active.kid == new.kid
    assert [k.kid for k in store.keys] == [new.kid, old.kid]
    assert set(store.verification_keys()) == {old.kid, new.kid}


def test_file_name_records_creation_time_and_algorithm(tmp_path: Path) -> None:
    key = generate_key(tmp_path, "PS256", now=1_700_000_000.25)
    assert key.path is not None and key.path.name == "20231114T221320.250000Z-PS256.pem"
    assert key.path.name == key_file_name(1_700_000_000.25, "PS256")
    assert key.created_at == 1_700_000_000.25


def test_changing_the_algorithm_adds_a_key_and_keeps_the_old_one(tmp_path: Path) -> None:
    es = KeyStore.load(tmp_path, "ES256").active
    store = KeyStore.load(tmp_path, "EdDSA")
    assert store.active.algorithm == "EdDSA"
    assert es.kid in store.verification_keys()


def test_a_read_only_keys_dir_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A mounted secret: the lock file cannot be created (tests may run as root, so simulate the refusal).
    key = generate_key(tmp_path, "ES256")
    (tmp_path / ".lock").unlink()
    real_open = os.open

    def read_only_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_open)
    assert KeyStore.load(tmp_path, "ES256").active.kid == key.kid
    assert KeyStore.load(tmp_path, "ES256", generate_if_empty=False).active.kid == key.kid


def test_no_key_and_no_generation_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="tollbooth keys generate"):
        KeyStore.load(tmp_path / "missing", "ES256", generate_if_empty=False)
    with pytest.raises(KeyStoreError, match="no ES256 signing key"):
        KeyStore.load(tmp_path, "ES256", generate_if_empty=False)


def test_unsupported_algorithm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HS256"):
        KeyStore.load(tmp_path, "HS256")
    with pytest.raises(ValueError, match="none"):
        generate_key(tmp_path, "none")


def test_a_pem_with_another_name_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "mykey.pem").write_bytes(b"")
    with pytest.raises(KeyStoreError, match="mykey.pem"):
        KeyStore.load(tmp_path, "ES256")


def test_a_corrupt_pem_is_an_error_that_does_not_quote_it(tmp_path: Path) -> None:
    secretish = b"-----BEGIN PRIVATE KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n-----END PRIVATE KEY-----\n"
    path = tmp_path / key_file_name(1_700_000_000, "ES256")
    path.write_bytes(secretish)
    with pytest.raises(KeyStoreError) as caught:
        KeyStore.load(tmp_path, "ES256")
    assert path.name in str(caught.value)
    assert "QUJDREVG" not in str(caught.value)


def test_a_key_of_the_wrong_type_for_its_name_is_an_error(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / key_file_name(1_700_000_000, "RS256")).write_bytes(pem)
    with pytest.raises(KeyStoreError, match="RS256 needs an RSA key"):
        KeyStore.load(tmp_path, "RS256")


def test_one_key_under_two_algorithms_is_an_error(tmp_path: Path) -> None:
    key = generate_key(tmp_path, "RS256", now=1_700_000_000)
    assert key.path is not None
    (tmp_path / key_file_name(1_700_000_001, "PS256")).write_bytes(key.path.read_bytes())
    with pytest.raises(KeyStoreError, match="same key under two algorithms"):
        KeyStore.load(tmp_path, "PS256")


def test_workers_starting_together_on_an_empty_dir_share_one_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        stores = list(pool.map(lambda _: KeyStore.load(tmp_path, "ES256"), range(8)))
    assert len(list(tmp_path.glob("*.pem"))) == 1
    assert {store.active.kid for store in stores} == {stores[0].active.kid}


@pytest.mark.parametrize("algorithm", SIGNING_ALGORITHMS)
def test_jwks_has_public_members_only(tmp_path: Path, algorithm: str) -> None:
    store = KeyStore.load(tmp_path, algorithm)
    (jwk,) = store.jwks()["keys"]
    assert jwk["kid"] == store.active.kid
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    assert {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[algorithm] == jwk["kty"]
    assert not PRIVATE_MEMBERS & set(jwk)
    assert json.loads(json.dumps(store.jwks())) == store.jwks()


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[tuple[str, KeyStore]]:
    """The store's JWKS served over real HTTP on a free loopback port."""
    generate_key(tmp_path, "RS256", now=1_700_000_000)
    store = KeyStore.load(tmp_path, "ES256")  # an older RSA key and a newer active EC key
    body = json.dumps(store.jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_pyjwt_jwks_client_verifies_our_tokens(jwks_server: tuple[str, KeyStore]) -> None:
    url, store = jwks_server
    client = jwt.PyJWKClient(url, cache_keys=False)
    for key in store.keys:
        token, claims = mint_access_token(
            key, issuer="http://issuer", audience="http://proxy", subject="bot", client_id="bot", scopes=["a"], ttl=60
        )
        signing_key = client.get_signing_key_from_jwt(token)
        assert signing_key.key_id == key.kid
        decoded = jwt.decode(
            token, signing_key.key, algorithms=[key.algorithm], audience="http://proxy", issuer="http://issuer"
        )
        assert decoded == claims


# ---------------------------------------------------------------- retention: rotate, publish, prune

LIFETIME = 100.0  # token lifetime in the table tests: a retired key is published for 100 s more
T0 = 1_700_000_000.0


def stub(name: str, algorithm: str, created: float) -> SigningKey:
    """A key with no key material: key_statuses looks at algorithms and creation times only."""
    return SigningKey(name, algorithm, private_key=None, public_key=None, created_at=created, path=None)


# (keys as (kid, algorithm, created), configured algorithm, now, lifetime) -> {kid: (state, retired_at, prunable)}
RETENTION_CASES = {
    "one key signs": ([("a", "ES256", 0)], "ES256", 10_000, LIFETIME, {"a": ("active", None, False)}),
    "previous key within its window": (
        [("a", "ES256", 0), ("b", "ES256", 10)],
        "ES256",
        109.9,
        LIFETIME,
        {"b": ("active", None, False), "a": ("retired", 10, False)},
    ),
    "previous key at the end of its window": (
        [("a", "ES256", 0), ("b", "ES256", 10)],
        "ES256",
        110,
        LIFETIME,
        {"b": ("active", None, False), "a": ("expired", 10, True)},
    ),
    "each key retires when the next one is created": (
        [("a", "ES256", 0), ("b", "ES256", 10), ("c", "ES256", 20)],
        "ES256",
        115,
        LIFETIME,
        {"c": ("active", None, False), "b": ("retired", 20, False), "a": ("expired", 10, True)},
    ),
    "an old key of another algorithm retires at the first newer configured key": (
        [("r", "RS256", 5), ("e1", "ES256", 0), ("e2", "ES256", 20), ("e3", "ES256", 30)],
        "ES256",
        119,
        LIFETIME,
        {
            "e3": ("active", None, False),
            "e2": ("retired", 30, False),
            "r": ("retired", 20, False),
            "e1": ("retired", 20, False),
        },
    ),
    "the newest key of another algorithm is expired but kept": (
        [("r1", "RS256", 0), ("r2", "RS256", 5), ("e", "ES256", 10)],
        "ES256",
        1_000,
        LIFETIME,
        {"e": ("active", None, False), "r2": ("expired", 10, False), "r1": ("expired", 10, True)},
    ),
    "a newer key of another algorithm waits": (
        [("e", "ES256", 0), ("p", "PS256", 10)],
        "ES256",
        1_000,
        LIFETIME,
        {"p": ("next", None, False), "e": ("active", None, False)},
    ),
    "no configured key yet: nothing retires": (
        [("r", "RS256", 0)],
        "ES256",
        1_000,
        LIFETIME,
        {"r": ("next", None, False)},
    ),
    "a pending key is published while the current key keeps signing": (
        [("a", "ES256", 0), ("b", "ES256", 100)],
        "ES256",
        50,
        LIFETIME,
        {"b": ("pending", None, False), "a": ("active", 100, False)},
    ),
    "a pending key signs from its time, and the previous key retires then": (
        [("a", "ES256", 0), ("b", "ES256", 100)],
        "ES256",
        100,
        LIFETIME,
        {"b": ("active", None, False), "a": ("retired", 100, False)},
    ),
    "an unknown token lifetime publishes every key": (
        [("a", "ES256", 0), ("b", "ES256", 10)],
        "ES256",
        1e9,
        None,
        {"b": ("active", None, False), "a": ("retired", 10, False)},
    ),
}


@pytest.mark.parametrize("case", RETENTION_CASES.values(), ids=RETENTION_CASES.keys())
def test_retention_window(case: tuple[Any, ...]) -> None:
    keys, algorithm, now, lifetime, expected = case
    statuses = key_statuses([stub(kid, alg, T0 + created) for kid, alg, created in keys], algorithm, lifetime, T0 + now)
    got = {s.key.kid: (s.state, None if s.retired_at is None else s.retired_at - T0, s.prunable) for s in statuses}
    assert got == expected
    assert [s.key.created_at for s in statuses] == sorted((s.key.created_at for s in statuses), reverse=True)
    for status in statuses:
        if status.state in ("retired", "expired") and lifetime is not None:
            assert status.published_until == status.retired_at + lifetime


def test_token_lifetime_is_the_access_token_ttl_plus_leeway_plus_reload_margin() -> None:
    config = Config.model_validate({"issuer": {"access_token_ttl": "10m"}, "proxy": {"clock_leeway": "5s"}})
    assert KeyStore.token_lifetime(config) == 600 + 5 + RELOAD_MARGIN


def three_generations(keys_dir: Path) -> tuple[SigningKey, SigningKey, SigningKey]:
    """Keys made at T0, T0+1000 and T0+2000: at T0+2000+LIFETIME/2 the first is expired, the second retired."""
    return (
        generate_key(keys_dir, "ES256", now=T0),
        generate_key(keys_dir, "ES256", now=T0 + 1000),
        generate_key(keys_dir, "ES256", now=T0 + 2000),
    )


def test_jwks_publishes_the_active_and_previous_key_but_not_an_expired_one(tmp_path: Path) -> None:
    expired, previous, active = three_generations(tmp_path)
    store = KeyStore.load(tmp_path, "ES256", token_lifetime=LIFETIME, now=T0 + 2000 + LIFETIME / 2)
    assert store.active.kid == active.kid
    assert [jwk["kid"] for jwk in store.jwks()["keys"]] == [active.kid, previous.kid]
    assert set(store.verification_keys()) == {active.kid, previous.kid}
    assert [key.kid for key in store.keys] == [active.kid, previous.kid, expired.kid]  # still on disk
    assert expired.path is not None and expired.path.exists(), "loading never deletes"


def test_without_a_token_lifetime_every_key_is_published(tmp_path: Path) -> None:
    keys = three_generations(tmp_path)
    store = KeyStore.load(tmp_path, "ES256", now=T0 + 1e6)
    assert set(store.verification_keys()) == {key.kid for key in keys}
    assert store.next_change_at() is None


def test_next_change_is_when_the_first_published_window_ends(tmp_path: Path) -> None:
    three_generations(tmp_path)
    store = KeyStore.load(tmp_path, "ES256", token_lifetime=LIFETIME, now=T0 + 2000 + LIFETIME / 2)
    assert store.next_change_at() == T0 + 2000 + LIFETIME  # the middle key's window; the oldest is gone already
    assert not store.outdated(now=T0 + 2000 + LIFETIME - 0.001)
    assert store.outdated(now=T0 + 2000 + LIFETIME)
    reloaded = KeyStore.load(tmp_path, "ES256", token_lifetime=LIFETIME, now=T0 + 2000 + LIFETIME)
    assert list(reloaded.verification_keys()) == [reloaded.active.kid]
    assert reloaded.next_change_at() is None


def test_prune_deletes_only_expired_key_files(tmp_path: Path) -> None:
    expired, previous, active = three_generations(tmp_path)
    (tmp_path / ".tmp-leftover.pem").write_bytes(b"")
    pruned = prune_keys(tmp_path, "ES256", LIFETIME, now=T0 + 2000 + LIFETIME / 2)
    assert [status.key.kid for status in pruned] == [expired.kid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".lock", ".tmp-leftover.pem", previous.path.name, active.path.name]  # type: ignore[union-attr]
    )


def test_prune_dry_run_deletes_nothing_and_names_what_prune_would(tmp_path: Path) -> None:
    expired, previous, active = three_generations(tmp_path)
    before = sorted(tmp_path.glob("*.pem"))
    dry = prune_keys(tmp_path, "ES256", LIFETIME, now=T0 + 1e6, dry_run=True)
    assert [status.key.kid for status in dry] == [previous.kid, expired.kid]
    assert sorted(tmp_path.glob("*.pem")) == before
    real = prune_keys(tmp_path, "ES256", LIFETIME, now=T0 + 1e6)
    assert [status.key.kid for status in real] == [previous.kid, expired.kid]
    assert list(tmp_path.glob("*.pem")) == [active.path]


def test_prune_never_deletes_the_newest_key_of_an_algorithm(tmp_path: Path) -> None:
    # issuer.algorithm went from RS256 to ES256 long ago; the RS256 key is kept so the config can switch back.
    rsa_key = generate_key(tmp_path, "RS256", now=T0)
    generate_key(tmp_path, "ES256", now=T0 + 10)
    assert prune_keys(tmp_path, "ES256", LIFETIME, now=T0 + 1e6) == ()
    assert rsa_key.path is not None and rsa_key.path.exists()


def test_prune_of_a_missing_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no such directory"):
        prune_keys(tmp_path / "missing", "ES256", LIFETIME)


def test_rotate_adds_an_active_key_and_prunes_expired_ones(tmp_path: Path) -> None:
    expired, previous, active = three_generations(tmp_path)
    rotation = rotate_keys(tmp_path, "ES256", LIFETIME, now=T0 + 2000 + LIFETIME / 2)
    assert rotation.generated is not None
    assert [status.key.kid for status in rotation.pruned] == [expired.kid]
    store = KeyStore.load(tmp_path, "ES256", token_lifetime=LIFETIME, now=T0 + 2000 + LIFETIME / 2)
    assert store.active.kid == rotation.generated.kid
    # The key that signed until now stays published; so does the one before it, still within its window.
    assert [jwk["kid"] for jwk in store.jwks()["keys"]] == [rotation.generated.kid, active.kid, previous.kid]
    assert [key.kid for key in store.keys] == [rotation.generated.kid, active.kid, previous.kid]


def test_rotate_writes_a_private_key_file_in_a_private_directory(tmp_path: Path) -> None:
    keys_dir = tmp_path / "state" / "keys"
    rotation = rotate_keys(keys_dir, "ES256", LIFETIME)
    assert rotation.generated is not None and rotation.generated.path is not None
    assert mode(keys_dir) == 0o700
    assert mode(rotation.generated.path) == 0o600


def test_rotate_dry_run_changes_nothing_and_matches_the_real_run(tmp_path: Path) -> None:
    # Rotating to RS256 makes the new RS256 key the newest of its kind: the old one loses its protection.
    old_rsa = generate_key(tmp_path, "RS256", now=T0)
    generate_key(tmp_path, "ES256", now=T0 + 10)
    before = sorted(tmp_path.glob("*.pem"))
    dry = rotate_keys(tmp_path, "ES256", LIFETIME, new_algorithm="RS256", now=T0 + 1e6, dry_run=True)
    assert dry.generated is None
    assert [status.key.kid for status in dry.pruned] == [old_rsa.kid]
    assert sorted(tmp_path.glob("*.pem")) == before
    real = rotate_keys(tmp_path, "ES256", LIFETIME, new_algorithm="RS256", now=T0 + 1e6)
    assert [status.key.kid for status in real.pruned] == [old_rsa.kid]
    assert old_rsa.path is not None and not old_rsa.path.exists()


def test_rotate_dry_run_on_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    assert rotate_keys(tmp_path / "keys", "ES256", LIFETIME, dry_run=True).pruned == ()
    assert not (tmp_path / "keys").exists()


def test_rotate_adds_no_key_to_a_directory_with_a_broken_key_file(tmp_path: Path) -> None:
    (tmp_path / key_file_name(T0, "ES256")).write_bytes(b"not a key")
    with pytest.raises(KeyStoreError, match="not an unencrypted PEM private key"):
        rotate_keys(tmp_path, "ES256", LIFETIME)
    assert len(list(tmp_path.glob("*.pem"))) == 1


def test_gateway_key_watcher_drops_a_key_whose_window_ends_with_no_file_change(tmp_path: Path) -> None:
    config_path = tmp_path / "tollbooth.yaml"
    config_path.write_text(f"issuer:\n  keys_dir: {tmp_path / 'keys'}\n")
    loaded = load_config(config_path)
    lifetime = KeyStore.token_lifetime(loaded.config)
    now = time.time()
    old = generate_key(tmp_path / "keys", "ES256", now=now - 10 * lifetime)
    # The newer key was made just under a token lifetime ago: the old key's window ends in a quarter second.
    generate_key(tmp_path / "keys", "ES256", now=now - lifetime + 0.25)
    store = KeyStore.load(tmp_path / "keys", "ES256", token_lifetime=lifetime, now=now)
    assert old.kid in store.verification_keys()
    # watch_keys reads only `loaded` and `keys`; a stand-in keeps this test off the rest of the Gateway.
    running = SimpleNamespace(loaded=loaded, keys=store)

    async def watch_until_dropped() -> None:
        watcher = asyncio.create_task(Gateway.watch_keys(running, 0.01))  # type: ignore[arg-type]
        try:
            # Polling what the watcher publishes: no event announces a reload.
            while old.kid in running.keys.verification_keys():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            watcher.cancel()

    asyncio.run(asyncio.wait_for(watch_until_dropped(), timeout=10))
    assert running.keys is not store
    assert old.kid not in {jwk["kid"] for jwk in running.keys.jwks()["keys"]}
    assert old.path is not None and old.path.exists()


def test_running_gateway_still_publishes_the_previous_key_after_rotate(upstream: Upstream, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, upstream.url)
    try:
        jwks_url = gw.issuer_url + "/.well-known/jwks.json"
        (previous,) = [jwk["kid"] for jwk in httpx2.get(jwks_url).json()["keys"]]
        old_token = gw.mint()
        rotated = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "rotate", "--config", str(gw.config_path)],
            env={**os.environ, "TEST_UPSTREAM_KEY": "x"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rotated.returncode == 0, rotated.stderr
        new = rotated.stdout.split()[3]
        kids = wait_until(
            lambda: (k := [jwk["kid"] for jwk in httpx2.get(jwks_url).json()["keys"]]) != [previous] and k,
            what="the rotated key published",
        )
        assert kids == [new, previous]
        response = httpx2.get(gw.proxy_url + "/v1/customers/1", headers={"Authorization": f"Bearer {old_token}"})
        assert response.status_code == 200, "a token signed by the previous key still verifies"
    finally:
        gw.stop()


def test_workers_starting_together_on_no_keys_directory_share_one_new_key(tmp_path: Path) -> None:
    # `serve --workers N` on a fresh machine: every worker finds no directory and makes it at the same moment.
    keys_dir = tmp_path / "fresh" / "keys"
    start = threading.Barrier(8)
    loaded: list[str] = []
    failures: list[BaseException] = []

    def load() -> None:
        start.wait()
        try:
            loaded.append(KeyStore.load(keys_dir, "ES256").active.kid)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(loaded) == 8 and len(set(loaded)) == 1


def test_a_key_dated_in_the_future_is_published_but_signs_only_from_then(tmp_path: Path) -> None:
    current = generate_key(tmp_path, "ES256", now=T0)
    pending = generate_key(tmp_path, "ES256", now=T0 + 120)
    before = KeyStore.load(tmp_path, "ES256", token_lifetime=LIFETIME, now=T0 + 60)
    assert before.active.kid == current.kid
    assert {pending.kid, current.kid} <= set(before.verification_keys())
    assert before.next_change_at() == pending.created_at  # the gateway reloads then, with no file change
    assert not before.outdated(now=T0 + 119) and before.outdated(now=T0 + 120)
    assert KeyStore.load(tmp_path, "ES256", token_lifetime=LIFETIME, now=T0 + 120).active.kid == pending.kid


def test_when_every_key_is_pending_the_earliest_signs(tmp_path: Path) -> None:
    first = generate_key(tmp_path, "ES256", now=T0 + 60)
    generate_key(tmp_path, "ES256", now=T0 + 120)
    assert KeyStore.load(tmp_path, "ES256", now=T0).active.kid == first.kid
