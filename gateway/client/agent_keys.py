"""Agent key pairs for `private_key_jwt`: the private key stays with the agent, the public JWK goes into the
gateway config under the agent's `jwks`."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from gateway.client.errors import TollboothError
from gateway.tokens.jwk import SIGNING_ALGORITHMS, new_private_key, public_members, thumbprint

AGENT_ALGORITHMS = SIGNING_ALGORITHMS  # an agent signs its assertions as we sign tokens
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


def agent_jwk(private_key: Any, algorithm: str) -> dict[str, str]:
    """The public JWK the gateway verifies the agent's assertions with; `kid` is the RFC 7638 thumbprint."""
    members = public_members(private_key.public_key())
    return {**members, "kid": thumbprint(members), "alg": algorithm, "use": "sig"}


def write_private_key(path: Path, private_key: Any, *, overwrite: bool = False) -> None:
    """Write the PEM readable by its owner only; never replace an existing key unless asked (it may be in use).

    The key is written to a new 0600 file beside `path` and renamed over it: an existing file's looser mode is not
    inherited, and a symlink at `path` is replaced, not followed into wherever it points."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if not overwrite and (path.exists() or path.is_symlink()):
        raise TollboothError(f"{path} exists; pass --force to replace it (agents using it will stop working)")
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the path appeared meanwhile, rather than replacing it
            os.unlink(temporary)
    except FileExistsError:
        os.unlink(temporary)
        raise TollboothError(f"{path} exists; pass --force to replace it") from None
    except OSError as exc:
        raise TollboothError(f"cannot write {path}: {exc.strerror}") from None


def default_key_file(name: str) -> Path:
    """`NAME.pem` in the current directory, for a name that cannot point anywhere else."""
    if not _PLAIN_NAME.fullmatch(name):
        raise TollboothError(f"{name!r} makes no safe file name: give --out FILE")
    return Path(f"{name}.pem")


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
