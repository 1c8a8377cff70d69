"""Signing keys: load, generate, JWKS (RFC 7517) with RFC 7638 thumbprints as `kid`.

On disk, `keys_dir` (mode 0700) holds one unencrypted PKCS#8 PEM private key per file (mode 0600), named
`<created>-<alg>.pem`, e.g. `20250131T120000.123456Z-ES256.pem`: `created` is the UTC creation time to the
microsecond. The name carries what the PEM cannot: the creation time (the newest key of the configured
algorithm signs) and the algorithm (an RSA key alone does not say RS256 or PS256; RFC 8725 §3.1 wants one
algorithm per key). Older keys stay in the JWKS so tokens they signed verify until the files are removed.
Files starting with '.' (the generator's temp files, the lock file) are ignored; any other `*.pem` must follow
the naming scheme.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

logger = logging.getLogger(__name__)

SIGNING_ALGORITHMS = ("ES256", "EdDSA", "RS256", "PS256")
MIN_RSA_BITS = 2048  # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used"
_GENERATED_RSA_BITS = 3072

# RFC 7638 §3.2: the thumbprint (and the public JWK) carry exactly the required members of each key type.
JWK_REQUIRED_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_FILE_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)-(ES256|EdDSA|RS256|PS256)\.pem$")
_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"


class KeyStoreError(Exception):
    """A keys directory or key file that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class SigningKey:
    kid: str  # RFC 7638 JWK thumbprint (base64url SHA-256) for our keys; the IdP's `kid` for a trusted issuer's
    algorithm: str  # decided by the key, never by a token header (RFC 8725 §2.1, §3.1)
    private_key: Any | None
    public_key: Any
    created_at: float
    path: Path | None

    def public_jwk(self) -> dict[str, Any]:
        return {**public_members(self.public_key), "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def check_key_fits(algorithm: str, public_key: Any) -> None:
    """Raise ValueError unless `public_key` is the kind of key `algorithm` signs with (RFC 7518 §3, RFC 8037)."""
    if algorithm in ("ES256", "ES384"):
        curve = ec.SECP256R1 if algorithm == "ES256" else ec.SECP384R1
        if not (isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, curve)):
            raise ValueError(f"{algorithm} needs an EC {curve.name} key")
    elif algorithm == "EdDSA":
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise ValueError("EdDSA needs an Ed25519 key")
    elif algorithm in ("RS256", "PS256"):
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise ValueError(f"{algorithm} needs an RSA key")
        if public_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{algorithm} needs an RSA key of at least {MIN_RSA_BITS} bits")
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r}")


def public_members(public_key: Any) -> dict[str, str]:
    """The required public JWK members of a key, as RFC 7638 §3.2 lists them (no private parts, ever)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise ValueError(f"unsupported key type {type(public_key).__name__}")
    return {name: jwk[name] for name in JWK_REQUIRED_MEMBERS[jwk["kty"]]}


def thumbprint(members: dict[str, str]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, no whitespace; base64url without padding."""
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in SIGNING_ALGORITHMS:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}; use one of {', '.join(SIGNING_ALGORITHMS)}")


def _new_private_key(algorithm: str) -> Any:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=_GENERATED_RSA_BITS)  # RS256, PS256


def _signing_key(private_key: Any, algorithm: str, created_at: float, path: Path | None) -> SigningKey:
    public_key = private_key.public_key()
    return SigningKey(
        kid=thumbprint(public_members(public_key)),
        algorithm=algorithm,
        private_key=private_key,
        public_key=public_key,
        created_at=created_at,
        path=path,
    )


def key_file_name(created_at: float, algorithm: str) -> str:
    return f"{datetime.fromtimestamp(created_at, UTC).strftime(_TIME_FORMAT)}-{algorithm}.pem"


def _parse_file_name(name: str) -> tuple[float, str] | None:
    match = _FILE_NAME.match(name)
    if not match:
        return None
    created = datetime.strptime(match.group(1), _TIME_FORMAT).replace(tzinfo=UTC)
    return created.timestamp(), match.group(2)


def _ensure_dir(keys_dir: Path) -> None:
    if not keys_dir.exists():
        keys_dir.mkdir(parents=True, mode=0o700)
        keys_dir.chmod(0o700)  # mkdir's mode is filtered by the umask


@contextmanager
def _dir_lock(keys_dir: Path) -> Iterator[None]:
    # Several workers may start at once on an empty directory: without the lock each would generate its own
    # "newest" key, and tokens signed by one would be unknown to the others until they reload.
    try:
        fd = os.open(keys_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        # A read-only keys directory (a mounted Kubernetes secret): nobody writes there, nothing to serialise.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(keys_dir: Path, name: str, data: bytes) -> Path:
    # mkstemp creates the file 0600; rename is atomic, so a reader never sees a half-written key.
    fd, temp = tempfile.mkstemp(dir=keys_dir, prefix=".tmp-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        final = keys_dir / name
        os.replace(temp, final)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(keys_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return final


def _generate_unlocked(keys_dir: Path, algorithm: str, now: float) -> SigningKey:
    private_key = _new_private_key(algorithm)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write_atomically(keys_dir, key_file_name(now, algorithm), pem)
    parsed = _parse_file_name(path.name)
    assert parsed is not None  # key_file_name writes what _parse_file_name reads
    key = _signing_key(private_key, algorithm, parsed[0], path)
    logger.info("generated %s signing key kid=%s in %s", algorithm, key.kid, path)
    return key


def generate_key(keys_dir: str | Path, algorithm: str, *, now: float | None = None) -> SigningKey:
    """Create a new key file in `keys_dir` (created 0700 when missing); it becomes the active key on next load."""
    keys_dir = Path(keys_dir)
    _check_algorithm(algorithm)
    _ensure_dir(keys_dir)
    with _dir_lock(keys_dir):
        return _generate_unlocked(keys_dir, algorithm, time.time() if now is None else now)


def _load_file(path: Path, created_at: float, algorithm: str) -> SigningKey:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s: a private key readable by other users; run `chmod 600 %s`", path, path)
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        # The library's message never quotes key bytes; keep it, it says "encrypted" or "malformed".
        raise KeyStoreError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    try:
        check_key_fits(algorithm, private_key.public_key())
    except ValueError as exc:
        raise KeyStoreError(f"{path}: the file name says {algorithm}, but {exc}") from None
    return _signing_key(private_key, algorithm, created_at, path)


def _read_dir(keys_dir: Path) -> list[SigningKey]:
    keys = []
    for path in sorted(keys_dir.iterdir()):
        if path.name.startswith(".") or path.suffix != ".pem":
            continue
        parsed = _parse_file_name(path.name)
        if parsed is None:
            raise KeyStoreError(
                f"{path}: key files are named <created>-<alg>.pem, e.g. "
                f"{key_file_name(time.time(), 'ES256')}; rename it or create keys with `tollbooth keys generate`"
            )
        keys.append(_load_file(path, *parsed))
    return keys


def _newest_first(keys: list[SigningKey]) -> tuple[SigningKey, ...]:
    ordered: dict[str, SigningKey] = {}
    for key in sorted(keys, key=lambda k: k.created_at, reverse=True):
        seen = ordered.setdefault(key.kid, key)  # the same key in two files: one JWK is enough
        if seen.algorithm != key.algorithm:
            # RFC 8725 §3.1: one key, one algorithm (an RSA key must not sign both RS256 and PS256).
            raise KeyStoreError(f"{key.path} and {seen.path} hold the same key under two algorithms; remove one")
    return tuple(ordered.values())


@dataclass(frozen=True)
class KeyStore:
    """An immutable snapshot of the keys directory: rotation loads a new KeyStore."""

    active: SigningKey
    keys: tuple[SigningKey, ...]  # newest first

    @classmethod
    def load(cls, keys_dir: str | Path, algorithm: str, *, generate_if_empty: bool = True) -> KeyStore:
        """Read every key in `keys_dir`; the newest key of `algorithm` signs.

        With `generate_if_empty`, a missing or empty directory, or one with no key of `algorithm` (the config's
        algorithm changed), gets a new key; the older keys keep verifying the tokens they signed.
        """
        keys_dir = Path(keys_dir)
        _check_algorithm(algorithm)
        if not keys_dir.is_dir():
            if not generate_if_empty:
                raise KeyStoreError(f"{keys_dir}: no such directory; create a key with `tollbooth keys generate`")
            _ensure_dir(keys_dir)
        with _dir_lock(keys_dir):
            keys = _read_dir(keys_dir)
            if not any(key.algorithm == algorithm for key in keys):
                if not generate_if_empty:
                    raise KeyStoreError(
                        f"{keys_dir}: no {algorithm} signing key; create one with `tollbooth keys generate`"
                    )
                keys.append(_generate_unlocked(keys_dir, algorithm, time.time()))
        newest_first = _newest_first(keys)
        return cls(active=next(key for key in newest_first if key.algorithm == algorithm), keys=newest_first)

    def verification_keys(self) -> dict[str, SigningKey]:
        return {key.kid: key for key in self.keys}

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        return {"keys": [key.public_jwk() for key in self.keys]}
