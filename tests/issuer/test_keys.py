"""Signing keys: generation, files and permissions, reload, JWKS (RFC 7517) and RFC 7638 thumbprints."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.issuer.keys import (
    SIGNING_ALGORITHMS,
    KeyStore,
    KeyStoreError,
    generate_key,
    key_file_name,
    public_members,
    thumbprint,
)
from gateway.issuer.tokens import mint_access_token

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
