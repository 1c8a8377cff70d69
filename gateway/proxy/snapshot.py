"""Everything the proxy builds from one config: routes, upstream targets, verifier, forwarder.

A request reads one Snapshot at its start and uses it to the end. A reload builds a new Snapshot and
swaps it in; parts whose config did not change (the upstream pools, the verifier and its cache) are
carried over, and a retired forwarder is closed only once its last in-flight request has finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Config, UpstreamConfig
from gateway.hosts import AllowedHosts, allowed_hosts
from gateway.proxy.answers import resource_metadata_url
from gateway.proxy.authorize import RouteTable
from gateway.proxy.forward import Forwarder
from gateway.proxy.identify import Verifier
from gateway.proxy.upstream import UpstreamClient
from gateway.state import RevocationList
from gateway.tokens.jwk import SigningKey
from gateway.trust import JwksCaches

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


class Leases:
    """How many in-flight requests use each shared part (a forwarder, a verifier), across all snapshots.

    Parts are shared between consecutive snapshots when their config did not change, so "the old snapshot
    is idle" says nothing about its parts: a request that entered two reloads ago may still be using them.
    A retired part is closed when its own count reaches zero.
    """

    def __init__(self) -> None:
        self._users: dict[object, int] = {}
        self._retired: dict[object, Callable[[], Coroutine[Any, Any, None]]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, parts: tuple[object, ...]) -> None:
        users = self._users
        for part in parts:
            users[part] = users.get(part, 0) + 1

    def give_back(self, parts: tuple[object, ...]) -> None:
        users = self._users
        for part in parts:
            left = users[part] - 1
            if left:
                users[part] = left
            else:
                del users[part]
                closer = self._retired.pop(part, None)
                if closer is not None:
                    self._close(closer)

    def retire(self, part: object, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._users.get(part):
            self._retired[part] = closer
        else:
            self._close(closer)

    def _close(self, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(closer())
        # The loop keeps only weak references to tasks: hold them until they finish.
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


@dataclass(eq=False)
class Snapshot:
    config: Config
    routes: RouteTable
    upstreams: dict[str, UpstreamTarget]
    verifier: Verifier
    forwarder: UpstreamClient
    resource_metadata_url: str
    public_scheme: bytes
    public_host: bytes
    allowed_hosts: AllowedHosts
    strip_headers: frozenset[bytes]
    leases: Leases
    policy_version: str = ""  # a hash of the routes in force: an approval is for the rules it was asked under
    parts: tuple[object, ...] = ()

    def __post_init__(self) -> None:
        self.parts = (self.forwarder, self.verifier)

    def enter(self) -> None:
        self.leases.take(self.parts)

    def exit(self) -> None:
        self.leases.give_back(self.parts)


def verifier_for(
    config: Config,
    *,
    keys: Callable[[], dict[str, SigningKey]],
    revocations: RevocationList,
    jwks: JwksCaches | None = None,
) -> Verifier:
    """The proxy's token verifier for this config (`tollbooth explain` uses the very same)."""
    return Verifier(
        issuer=config.issuer.url,
        audience=config.proxy.public_url,
        keys=keys,
        trusted_issuers=config.trusted_issuers,
        revocations=revocations,
        leeway=config.proxy.clock_leeway,
        max_token_bytes=config.proxy.max_token_bytes,
        jwks=jwks,
    )


def build_snapshot(
    config: Config,
    *,
    keys: Callable[[], dict[str, SigningKey]],
    revocations: RevocationList,
    jwks: JwksCaches,
    leases: Leases,
    previous: Snapshot | None = None,
    upstream_client: Callable[[dict[str, UpstreamConfig]], UpstreamClient] = Forwarder,
) -> Snapshot:
    """Compile a validated config into a Snapshot, reusing `previous`'s pools and caches where unchanged.

    `upstream_client` makes the client for the config's upstreams: the pooled Forwarder, or a test's fake.
    """
    if previous is not None and previous.config.upstreams == config.upstreams:
        forwarder = previous.forwarder
    else:
        forwarder = upstream_client(config.upstreams)
    if previous is not None and _verifier_inputs(previous.config) == _verifier_inputs(config):
        verifier = previous.verifier
    else:
        verifier = verifier_for(config, keys=keys, revocations=revocations, jwks=jwks)
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
        allowed_hosts=allowed_hosts(config.proxy.public_url, config.proxy.listen, config.proxy.allowed_hosts),
        strip_headers=frozenset(name.encode("ascii") for name in config.proxy.strip_headers),
        leases=leases,
        policy_version=policy_version(config),
    )


def policy_version(config: Config) -> str:
    routes = [route.model_dump(mode="json") for route in config.routes]
    return hashlib.sha256(json.dumps(routes, sort_keys=True).encode()).hexdigest()[:16]


def retire_snapshot(old: Snapshot, new: Snapshot) -> None:
    """Close the parts of `old` that `new` does not share, once no request in flight uses them."""
    if old.forwarder is not new.forwarder:
        old.leases.retire(old.forwarder, old.forwarder.aclose)
    if old.verifier is not new.verifier:
        old.leases.retire(old.verifier, old.verifier.aclose)
