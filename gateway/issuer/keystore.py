"""Signing keys: load, generate, JWKS (RFC 7517) with RFC 7638 thumbprints as `kid`.

On disk, `keys_dir` (mode 0700) holds one unencrypted PKCS#8 PEM private key per file (mode 0600), named
`<created>-<alg>.pem`, e.g. `20250131T120000.123456Z-ES256.pem`: `created` is the UTC creation time to the
microsecond. The name carries what the PEM cannot: the creation time (the newest key of the configured
algorithm signs) and the algorithm (an RSA key alone does not say RS256 or PS256; RFC 8725 §3.1 wants one
algorithm per key). Files starting with '.' (the generator's temp files, the lock file) are ignored; any other
`*.pem` must follow the naming scheme.

Retention: a key stops signing (is retired) when a newer key of the configured algorithm appears. It stays in the
JWKS and among the verification keys for `token_lifetime` more, long enough for every token it signed to expire,
then drops out; `tollbooth keys rotate|prune` delete the files of such expired keys (loading never deletes: the
directory may be a read-only mounted secret).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization

from gateway.config import Config
from gateway.tokens.jwk import (
    SIGNING_ALGORITHMS,
    SigningKey,
    check_key_fits,
    new_private_key,
    public_members,
    thumbprint,
)

logger = logging.getLogger(__name__)

_FILE_NAME = re.compile(rf"^(\d{{8}}T\d{{6}}\.\d{{6}}Z)-({'|'.join(SIGNING_ALGORITHMS)})\.pem$")
_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"

# A retired key may still sign for a moment: running gateways notice a new key file only at their next poll of
# keys_dir (every second by default, later on a busy loop), and the new key's creation time comes from the clock of
# the host that ran `keys rotate`, which may run ahead of the gateways' clocks. A minute covers both.
RELOAD_MARGIN = 60.0

KeyState = Literal["pending", "active", "next", "retired", "expired"]


class KeyStoreError(Exception):
    """A keys directory or key file that cannot be used; the message names the file and what to do."""


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in SIGNING_ALGORITHMS:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}; use one of {', '.join(SIGNING_ALGORITHMS)}")


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
    try:
        keys_dir.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        return  # another worker starting at the same moment made it first
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
    private_key = new_private_key(algorithm)
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
class KeyStatus:
    """Where a key stands: published ahead of signing (`pending`: its file says it was made in the future), signing
    (`active`), waiting to sign (`next`), or retired and published for a while."""

    key: SigningKey
    state: KeyState
    retired_at: float | None  # when a newer key of the configured algorithm took over signing
    published_until: float | None  # retired_at + token lifetime; None while it signs or when no lifetime is known
    prunable: bool  # expired, and not the newest key of its algorithm (kept so the config can switch back to it)

    @property
    def published(self) -> bool:
        return self.state != "expired"

    def describe(self) -> str:
        """The state in words, as `tollbooth keys list` shows it."""
        if self.state == "retired" and self.published_until is not None:
            return f"retired, published until {utc_text(self.published_until)}"
        if self.state == "pending":
            return f"pending, signs from {utc_text(self.key.created_at)}"
        if self.state == "expired":
            if self.prunable:
                return "expired (not published; pruned by keys rotate|prune)"
            return f"expired (not published; kept as the newest {self.key.algorithm} key)"
        return self.state  # active, next, or retired with no known lifetime


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def key_statuses(
    keys: Iterable[SigningKey], algorithm: str, token_lifetime: float | None, now: float
) -> tuple[KeyStatus, ...]:
    """The state of each key at `now` when the newest key of `algorithm` signs; newest first.

    A key is retired at the creation of the closest newer key of `algorithm`: for a key of `algorithm` that is the
    next newer one, for a key of another algorithm the first key of `algorithm` made after it. With
    `token_lifetime` None nothing expires (the caller does not know how long tokens live).
    """
    statuses = []
    taken_over_at: float | None = None  # created_at of the closest newer key of `algorithm` seen so far
    newest_seen: set[str] = set()
    for key in sorted(keys, key=lambda k: k.created_at, reverse=True):
        retired_at = taken_over_at
        if key.algorithm == algorithm:
            taken_over_at = key.created_at
        newest_of_its_algorithm = key.algorithm not in newest_seen
        newest_seen.add(key.algorithm)
        published_until = None
        state: KeyState
        if key.created_at > now:
            state = "pending"  # published, so every replica knows it before any of them signs with it
        elif retired_at is None or retired_at > now:
            state = "active" if key.algorithm == algorithm else "next"
        else:
            published_until = None if token_lifetime is None else retired_at + token_lifetime
            state = "expired" if published_until is not None and now >= published_until else "retired"
        prunable = state == "expired" and not newest_of_its_algorithm
        statuses.append(KeyStatus(key, state, retired_at, published_until, prunable))
    return tuple(statuses)


@dataclass(frozen=True)
class KeyStore:
    """An immutable snapshot of the keys directory: rotation, or a retired key's window ending, loads a new one."""

    active: SigningKey
    keys: tuple[SigningKey, ...]  # every key in the directory, newest first
    statuses: tuple[KeyStatus, ...]  # the same keys, with their state when loaded

    @classmethod
    def load(
        cls,
        keys_dir: str | Path,
        algorithm: str,
        *,
        generate_if_empty: bool = True,
        token_lifetime: float | None = None,
        now: float | None = None,
    ) -> KeyStore:
        """Read every key in `keys_dir`; the newest key of `algorithm` dated no later than now signs.

        With `generate_if_empty`, a missing or empty directory, or one with no key of `algorithm` (the config's
        algorithm changed), gets a new key; the older keys keep verifying the tokens they signed. Retired keys are
        published for `token_lifetime` seconds (see `KeyStore.token_lifetime`); None publishes every key.
        """
        keys_dir = Path(keys_dir)
        _check_algorithm(algorithm)
        now = time.time() if now is None else now
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
                keys.append(_generate_unlocked(keys_dir, algorithm, now))
        newest_first = _newest_first(keys)
        of_algorithm = [key for key in newest_first if key.algorithm == algorithm]
        # The newest key whose time has come signs; only when every key is still pending does the earliest sign.
        return cls(
            active=next((key for key in of_algorithm if key.created_at <= now), of_algorithm[-1]),
            keys=newest_first,
            statuses=key_statuses(newest_first, algorithm, token_lifetime, now),
        )

    @staticmethod
    def token_lifetime(config: Config) -> float:
        """How long after a key stops signing a token it signed may still be accepted.

        Every access token lives at most issuer.access_token_ttl (agent and scope caps only shorten it); the proxy
        accepts it for proxy.clock_leeway more; RELOAD_MARGIN covers gateways still signing before they reload.
        """
        return config.issuer.access_token_ttl + config.proxy.clock_leeway + RELOAD_MARGIN

    @property
    def published(self) -> tuple[SigningKey, ...]:
        """The active key, newer keys, and retired keys whose tokens may still be alive; newest first."""
        return tuple(status.key for status in self.statuses if status.published)

    def verification_keys(self) -> dict[str, SigningKey]:
        return {key.kid: key for key in self.published}

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        return {"keys": [key.public_jwk() for key in self.published]}

    def next_change_at(self) -> float | None:
        """When the keys change with no file change: a retired key's window ends, or a pending key starts signing."""
        ends = [s.published_until for s in self.statuses if s.state == "retired" and s.published_until is not None]
        starts = [s.key.created_at for s in self.statuses if s.state == "pending"]
        return min([*ends, *starts], default=None)

    def outdated(self, now: float | None = None) -> bool:
        """Whether the keys changed with the time since loading (see next_change_at): reload."""
        change = self.next_change_at()
        return change is not None and (time.time() if now is None else now) >= change


def _delete_files(keys_dir: Path, statuses: tuple[KeyStatus, ...]) -> None:
    for status in statuses:
        # Only paths _read_dir returned: files following the naming scheme, never the lock or anything else.
        assert status.key.path is not None
        status.key.path.unlink(missing_ok=True)
        logger.info("deleted expired %s signing key kid=%s: %s", status.key.algorithm, status.key.kid, status.key.path)
    if statuses:
        dir_fd = os.open(keys_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the unlinks durable, as _write_atomically does for the rename
        finally:
            os.close(dir_fd)


def _prunable(keys: list[SigningKey], algorithm: str, token_lifetime: float, now: float) -> tuple[KeyStatus, ...]:
    return tuple(
        status for status in key_statuses(_newest_first(keys), algorithm, token_lifetime, now) if status.prunable
    )


def prune_keys(
    keys_dir: str | Path, algorithm: str, token_lifetime: float, *, now: float | None = None, dry_run: bool = False
) -> tuple[KeyStatus, ...]:
    """Delete the files of keys whose window has passed when `algorithm` signs; return them (with `dry_run`, only
    return them). The active key and the newest key of each algorithm are never deleted."""
    keys_dir = Path(keys_dir)
    _check_algorithm(algorithm)
    if not keys_dir.is_dir():
        raise KeyStoreError(f"{keys_dir}: no such directory; create a key with `tollbooth keys generate`")
    with _dir_lock(keys_dir):
        doomed = _prunable(_read_dir(keys_dir), algorithm, token_lifetime, time.time() if now is None else now)
        if not dry_run:
            _delete_files(keys_dir, doomed)
    return doomed


@dataclass(frozen=True)
class Rotation:
    generated: SigningKey | None  # None on a dry run
    pruned: tuple[KeyStatus, ...]  # deleted, or on a dry run would be


def rotate_keys(
    keys_dir: str | Path,
    algorithm: str,
    token_lifetime: float,
    *,
    new_algorithm: str | None = None,
    now: float | None = None,
    activate_in: float = 0.0,
    dry_run: bool = False,
) -> Rotation:
    """Generate a key of `new_algorithm` (default `algorithm`, the configured one), then prune as `prune_keys` does.

    One lock covers both, so a concurrent `keys rotate` or a starting gateway sees the directory before or after.
    """
    keys_dir = Path(keys_dir)
    new_algorithm = new_algorithm or algorithm
    _check_algorithm(algorithm)
    _check_algorithm(new_algorithm)
    now = time.time() if now is None else now
    if dry_run and not keys_dir.is_dir():
        return Rotation(None, ())
    _ensure_dir(keys_dir)
    with _dir_lock(keys_dir):
        keys = _read_dir(keys_dir)  # before generating: a directory with a broken key file gets no new key
        if dry_run:
            # A stand-in for the key a real run would write: it retires keys only from now on, but it does take
            # over "newest key of its algorithm", which may leave an older key of that algorithm prunable.
            generated = SigningKey(
                "", new_algorithm, private_key=None, public_key=None, created_at=now + activate_in, path=None
            )
        else:
            # activate_in > 0: the file is dated in the future, so gateways publish the key at once and sign with it
            # only from then on, after every replica has had time to see it.
            generated = _generate_unlocked(keys_dir, new_algorithm, now + activate_in)
        doomed = _prunable([*keys, generated], algorithm, token_lifetime, now)
        if not dry_run:
            _delete_files(keys_dir, doomed)
    return Rotation(None if dry_run else generated, doomed)
