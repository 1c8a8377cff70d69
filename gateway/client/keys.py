"""Agent key pairs for `private_key_jwt`: the private key stays with the agent, the public JWK goes into the
gateway config under the agent's `jwks`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from gateway.client.errors import TollboothError
from gateway.issuer.keys import new_private_key, public_members, thumbprint

AGENT_ALGORITHMS = ("ES256", "EdDSA", "RS256", "PS256")


def agent_jwk(private_key: Any, algorithm: str) -> dict[str, str]:
    """The public JWK the gateway verifies the agent's assertions with; `kid` is the RFC 7638 thumbprint."""
    members = public_members(private_key.public_key())
    return {**members, "kid": thumbprint(members), "alg": algorithm, "use": "sig"}


def write_private_key(path: Path, private_key: Any, *, overwrite: bool = False) -> None:
    """Write the PEM readable by its owner only; never replace an existing key unless asked (it may be in use)."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise TollboothError(f"{path} exists; pass --force to replace it (agents using it will stop working)") from None
    except OSError as exc:
        raise TollboothError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def generate_agent_key(name: str, key_file: Path, algorithm: str = "ES256", *, overwrite: bool = False) -> str:
    """Generate a key pair, write the private key to `key_file`, and return the config block to paste."""
    if algorithm not in AGENT_ALGORITHMS:
        raise TollboothError(f"unsupported algorithm {algorithm!r}; use one of {', '.join(AGENT_ALGORITHMS)}")
    private_key = new_private_key(algorithm)
    write_private_key(key_file, private_key, overwrite=overwrite)
    block = {"agents": {name: {"jwks": {"keys": [agent_jwk(private_key, algorithm)]}}}}
    return (
        f"# The public key of agent {name!r}; its private key is in {key_file}. Paste under `agents:` and add\n"
        "# its `scopes:` (and `may_act_for:` if it acts for users).\n" + yaml.safe_dump(block, sort_keys=False)
    )
