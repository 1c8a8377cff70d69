"""Client authentication (RFC 6749 §2.3.1, RFC 7523) and agent key pairs (`tollbooth keys agent`)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import unquote

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.client.agent_keys import generate_agent_key
from gateway.client.credentials import ClientSecret, PrivateKeyJwt, algorithm_for
from gateway.client.errors import TollboothError
from gateway.tokens.jwks import parse_jwks
from gateway.wire import ASSERTION_TYPE


def test_client_secret_basic_form_encodes_before_base64():
    headers, fields = ClientSecret("bot:1", "p:a%ss+w rd").authenticate("http://issuer")
    user, _, password = base64.b64decode(headers["authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (unquote(user), unquote(password)) == ("bot:1", "p:a%ss+w rd") and fields == {}


def test_private_key_jwt_assertion_is_short_lived_single_use_and_for_the_issuer():
    key = ec.generate_private_key(ec.SECP256R1())
    credential = PrivateKeyJwt.load("bot", key)
    _, first = credential.authenticate("http://issuer")
    _, second = credential.authenticate("http://issuer")
    assert first["client_assertion_type"] == ASSERTION_TYPE and first["client_id"] == "bot"
    claims = jwt.decode(first["client_assertion"], key.public_key(), algorithms=["ES256"], audience="http://issuer")
    assert claims["iss"] == claims["sub"] == "bot" and claims["exp"] - claims["iat"] == 60
    assert claims["jti"] != jwt.decode(second["client_assertion"], options={"verify_signature": False})["jti"]
    assert jwt.get_unverified_header(first["client_assertion"])["kid"] == credential.kid


def test_algorithm_follows_the_key():
    assert algorithm_for(ec.generate_private_key(ec.SECP256R1())) == "ES256"
    assert algorithm_for(ed25519.Ed25519PrivateKey.generate()) == "EdDSA"
    with pytest.raises(TollboothError):
        algorithm_for(object())


def test_unreadable_or_bad_key_files_are_clear_errors(tmp_path: Path):
    with pytest.raises(TollboothError, match="cannot read the agent key"):
        PrivateKeyJwt.load("bot", str(tmp_path / "missing.pem"))
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TollboothError, match="not an unencrypted PEM private key"):
        PrivateKeyJwt.load("bot", tmp_path / "bad.pem")


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
def test_agent_key_block_is_a_jwks_the_gateway_accepts_and_matches_the_sdks_kid(tmp_path: Path, algorithm: str):
    key_file = tmp_path / "bot.pem"
    block = yaml.safe_load(generate_agent_key("bot", key_file, algorithm))
    jwks = block["agents"]["bot"]["jwks"]
    ((kid, key),) = parse_jwks(json.dumps(jwks).encode(), [algorithm]).items()
    assert key.algorithm == algorithm and "d" not in jwks["keys"][0]
    assert PrivateKeyJwt.load("bot", key_file).kid == kid
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_agent_key_is_never_overwritten_by_accident(tmp_path: Path):
    key_file = tmp_path / "bot.pem"
    generate_agent_key("bot", key_file)
    before = key_file.read_bytes()
    with pytest.raises(TollboothError, match="exists; pass --force"):
        generate_agent_key("bot", key_file)
    assert key_file.read_bytes() == before
    generate_agent_key("bot", key_file, overwrite=True)
    assert key_file.read_bytes() != before
