"""Hot reload: watch the config and routes files, swap in a valid edit, keep the last good config otherwise.

Files are polled (stat, then content hash) rather than watched with inotify: Kubernetes updates a
mounted ConfigMap by swapping a symlink, which inotify watches on the old target miss, and polling
once a second costs nothing measurable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.audit.events import config_event
from gateway.audit.sinks import AuditSink
from gateway.config import Config, ConfigError, LoadedConfig, load_config
from gateway.metrics import CONFIG_LAST_RELOAD, CONFIG_RELOADS

log = logging.getLogger("tollbooth.config")

# Changing these needs a restart: they bind sockets or open connections at start.
_RESTART_ONLY = ("proxy.listen", "issuer.listen", "admin.listen", "issuer.keys_dir", "redis", "audit", "tls")


def fingerprint(paths: tuple[Path, ...]) -> str:
    """A hash of the files' contents (a missing file hashes as missing, so its return is noticed)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing")
    return digest.hexdigest()


def watched_paths(loaded: LoadedConfig) -> tuple[Path, ...]:
    """The files to poll: where the config was read from, plus the routes file by the name the config gives it.

    `load_config` resolves symlinks, and in a ConfigMap volume `routes.yaml -> ..data/routes.yaml` resolves into a
    timestamped directory that the kubelet deletes at the next update. After a rejected edit the current config
    still points there, so without the named path no later edit (the fix) would ever be noticed.
    """
    named = (loaded.path.parent / loaded.config.routes_file,) if loaded.config.routes_file else ()
    return (*loaded.sources, *named)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Names of changed settings that a reload cannot apply (they are logged, not silently ignored)."""
    changed = []
    for key in _RESTART_ONLY:
        section, _, field = key.partition(".")
        before, after = getattr(old, section), getattr(new, section)
        if field:
            before, after = getattr(before, field), getattr(after, field)
        if before != after:
            changed.append(key)
    return changed


class ConfigWatcher:
    """Polls the config's files and calls `apply` with each new valid config."""

    def __init__(
        self,
        loaded: LoadedConfig,
        apply: Callable[[LoadedConfig], None],
        audit: AuditSink,
        *,
        interval: float = 1.0,
    ) -> None:
        self.current = loaded
        self._apply = apply
        self._audit = audit
        self._interval = interval
        self._seen = fingerprint(watched_paths(loaded))
        CONFIG_LAST_RELOAD.set_to_current_time()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

    async def check(self) -> bool | None:
        """Reload when the files changed: True applied, False rejected, None unchanged."""
        # Reading and parsing happen in a thread (file I/O stays off the event loop); applying on the loop.
        outcome = await asyncio.to_thread(self._read_if_changed)
        if outcome is None:
            return None
        if isinstance(outcome, ConfigError):
            CONFIG_RELOADS.labels("rejected").inc()
            reason = "; ".join(outcome.problems)
            log.error("config edit rejected, the last good config stays in force: %s", reason)
            self._audit.emit(config_event("config.rejected", reason=reason, path=str(self.current.path)))
            return False
        pending = restart_only_changes(self.current.config, outcome.config)
        if pending:
            log.warning("config: changes to %s take effect after a restart", ", ".join(pending))
        self._apply(outcome)
        self.current = outcome
        CONFIG_RELOADS.labels("applied").inc()
        CONFIG_LAST_RELOAD.set_to_current_time()
        log.info("config reloaded from %s (%d routes)", outcome.path, len(outcome.config.routes))
        self._audit.emit(
            config_event("config.reloaded", reason=f"{len(outcome.config.routes)} routes", path=str(outcome.path))
        )
        return True

    def _read_if_changed(self) -> LoadedConfig | ConfigError | None:
        seen = fingerprint(watched_paths(self.current))
        if seen == self._seen:
            return None
        try:
            loaded = load_config(self.current.path)
        except ConfigError as exc:
            self._seen = seen
            return exc
        # The routes file may have been added or renamed: from now on watch what this config reads.
        watched = watched_paths(loaded)
        self._seen = seen if watched == watched_paths(self.current) else fingerprint(watched)
        return loaded
