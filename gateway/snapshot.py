"""Everything the proxy builds from one config: routes, upstream targets, verifier, forwarder.

A request reads one Snapshot at its start and uses it to the end. A reload builds a new Snapshot and
swaps it in; parts whose config did not change (the upstream pools, the verifier and its cache) are
carried over, and a retired forwarder is closed only once its last in-flight request has finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.config import Config, UpstreamConfig
from gateway.issuer.keys import SigningKey
from gateway.proxy.authorize import RouteTable
from gateway.proxy.errors import resource_metadata_url
from gateway.proxy.forward import Forwarder
from gateway.proxy.identify import Verifier
from gateway.state import RevocationList

log = logging.getLogger("tollbooth.config")


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """How to address one upstream: its Host header, a path prefix, and the credentials injected for it."""

    host: bytes
    base_path: bytes
    injected: list[tuple[bytes, bytes]]


def upstream_target(upstream: UpstreamConfig) -> UpstreamTarget:
    parts = urlsplit(upstream.url)
    injected = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in upstream.headers.items()]
    return UpstreamTarget(
        host=parts.netloc.encode("idna"), base_path=parts.path.rstrip("/").encode(), injected=injected
    )


def _verifier_inputs(config: Config) -> tuple[object, ...]:
    return (
        config.issuer.url,
        config.proxy.public_url,
        tuple(config.trusted_issuers),
        config.proxy.clock_leeway,
        config.proxy.max_token_bytes,
    )


@dataclass(eq=False)
class Snapshot:
    config: Config
    routes: RouteTable
    upstreams: dict[str, UpstreamTarget]
    verifier: Verifier
    forwarder: Forwarder
    resource_metadata_url: str
    public_scheme: bytes
    public_host: bytes
    in_flight: int = 0
    retired: bool = False
    _on_idle: list[Callable[[], None]] = field(default_factory=list)

    def enter(self) -> None:
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight -= 1
        if self.retired and self.in_flight == 0:
            self._idle()

    def retire(self, on_idle: Callable[[], None]) -> None:
        """Run `on_idle` once no request uses this snapshot any more (at once when none does)."""
        self.retired = True
        self._on_idle.append(on_idle)
        if self.in_flight == 0:
            self._idle()

    def _idle(self) -> None:
        callbacks, self._on_idle = self._on_idle, []
        for callback in callbacks:
            callback()


def build_snapshot(
    config: Config,
    *,
    keys: Callable[[], dict[str, SigningKey]],
    revocations: RevocationList,
    previous: Snapshot | None = None,
) -> Snapshot:
    """Compile a validated config into a Snapshot, reusing `previous`'s pools and caches where unchanged."""
    if previous is not None and previous.config.upstreams == config.upstreams:
        forwarder = previous.forwarder
    else:
        forwarder = Forwarder(config.upstreams)
    if previous is not None and _verifier_inputs(previous.config) == _verifier_inputs(config):
        verifier = previous.verifier
    else:
        verifier = Verifier(
            issuer=config.issuer.url,
            audience=config.proxy.public_url,
            keys=keys,
            trusted_issuers=config.trusted_issuers,
            revocations=revocations,
            leeway=config.proxy.clock_leeway,
            max_token_bytes=config.proxy.max_token_bytes,
        )
    public = urlsplit(config.proxy.public_url)
    return Snapshot(
        config=config,
        routes=RouteTable.from_config(config),
        upstreams={name: upstream_target(up) for name, up in config.upstreams.items()},
        verifier=verifier,
        forwarder=forwarder,
        resource_metadata_url=resource_metadata_url(config.proxy.public_url),
        public_scheme=public.scheme.encode("ascii"),
        public_host=public.netloc.encode("idna"),
    )


def retire_snapshot(old: Snapshot, new: Snapshot) -> None:
    """Close what `old` owned and `new` does not share, once `old`'s last request is done."""
    closers = []
    if old.forwarder is not new.forwarder:
        closers.append(old.forwarder.aclose)
    if old.verifier is not new.verifier:
        closers.append(old.verifier.aclose)
    if not closers:
        return
    loop = asyncio.get_running_loop()

    def close_all() -> None:
        for closer in closers:
            task = loop.create_task(closer())
            # The loop keeps only weak references to tasks: hold them until they finish.
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    old.retire(close_all)


_closing: set[asyncio.Task[None]] = set()
