"""`tollbooth serve`: builds the proxy, issuer and admin apps and runs them on one event loop.

With `--workers N` it starts N copies of itself that share the listening ports through SO_REUSEPORT,
so the kernel spreads connections over the processes, and it forwards SIGTERM/SIGINT to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from gateway.admin import ReadinessCheck, admin_app
from gateway.admin_api import AdminApi
from gateway.audit.sinks import AuditSink, FileSink
from gateway.audit.streams import RedisStreamSink
from gateway.config import LoadedConfig, ProxyConfig
from gateway.issuer.app import IssuerApp
from gateway.issuer.keystore import KeyStore, KeyStoreError
from gateway.proxy.app import ProxyApp
from gateway.proxy.hold import Holds
from gateway.proxy.protocol import OnRefuse, guarded_protocol
from gateway.proxy.snapshot import Leases, Snapshot, build_snapshot, retire_snapshot
from gateway.redis.connect import REDIS_FAILURES, async_client
from gateway.reload import ConfigWatcher
from gateway.state import RevocationList, SharedState, open_state
from gateway.state.approvals import Approvals
from gateway.state.ratelimit import LocalRateLimiter, RateLimiter, open_rate_limiter
from gateway.tokens.jwk import SigningKey
from gateway.trust import JwksCaches

log = logging.getLogger("tollbooth")

LISTENERS = ("proxy", "issuer", "admin")


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us: several servers share one loop and stop together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(listen: str, *, reuse_port: bool) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn_config(
    app: object, *, graceful_seconds: float, proxy: ProxyConfig, on_refuse: OnRefuse | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=guarded_protocol(proxy.max_header_bytes, proxy.max_headers, on_refuse),
        # No WebSocket support at all: the protocol refuses every Upgrade itself, so nothing can switch protocols.
        ws="none",
        loop="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        # Never trust X-Forwarded-* at the socket layer: the stamp step decides (proxy.trust_forwarded_for).
        proxy_headers=False,
        # uvicorn annotates an int but waits with it as a float timeout, as a float deadline should be.
        timeout_graceful_shutdown=graceful_seconds,  # type: ignore[arg-type]
        timeout_keep_alive=75,
    )


@dataclass
class Gateway:
    """The running process: the live snapshot and what must be closed at the end."""

    loaded: LoadedConfig
    keys: KeyStore
    audit: AuditSink
    state: SharedState
    limiter: RateLimiter = field(default_factory=LocalRateLimiter)
    jwks: JwksCaches = field(default_factory=JwksCaches)  # the trusted issuers' keys, for proxy and issuer alike
    snapshot: Snapshot | None = None
    leases: Leases = field(default_factory=Leases)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def current(self) -> Snapshot:
        assert self.snapshot is not None
        return self.snapshot

    @property
    def revocations(self) -> RevocationList:
        return self.state.revocations

    def apply(self, loaded: LoadedConfig) -> None:
        previous = self.snapshot
        self.snapshot = build_snapshot(
            loaded.config,
            keys=self.verification_keys,
            revocations=self.revocations,
            jwks=self.jwks,
            leases=self.leases,
            previous=previous,
        )
        self.loaded = loaded
        if previous is not None:
            retire_snapshot(previous, self.snapshot)

    def verification_keys(self) -> dict[str, SigningKey]:
        # Read through `self.keys` on every lookup so a rotated key store is seen at once.
        return self.keys.verification_keys()

    async def watch_keys(self, interval: float) -> None:
        """Reload the signing keys when a file in keys_dir appears, changes or goes (`tollbooth keys rotate`), when
        the keys change with time (a retired key's window ends, a pending key starts signing), and when a config
        reload changes issuer.algorithm."""
        keys_dir = Path(self.loaded.config.issuer.keys_dir)
        seen = await asyncio.to_thread(_listing, keys_dir)
        failed_algorithm: str | None = None
        while True:
            await asyncio.sleep(interval)
            listing = await asyncio.to_thread(_listing, keys_dir)
            config = self.loaded.config
            # A reload that changes issuer.algorithm needs the newest key of that algorithm to sign, file change or not.
            switched = config.issuer.algorithm not in (self.keys.active.algorithm, failed_algorithm)
            if listing == seen and not self.keys.outdated() and not switched:
                continue
            seen = listing
            try:
                self.keys = await asyncio.to_thread(
                    KeyStore.load,
                    keys_dir,
                    config.issuer.algorithm,
                    generate_if_empty=False,
                    token_lifetime=KeyStore.token_lifetime(config),
                )
            except KeyStoreError as exc:
                log.error("signing keys not reloaded, the previous keys stay in use: %s", exc)
                failed_algorithm = config.issuer.algorithm  # said once; retried when the directory changes
                continue
            failed_algorithm = None
            log.info("signing keys reloaded: active kid %s, %d keys", self.keys.active.kid, len(self.keys.keys))

    def degradable(self) -> frozenset[str]:
        """Checks whose failure leaves the gateway serving: on its last known revocations, counting rate limits per
        process, and (audit.on_failure: spool, availability chosen over the record) even with events it cannot
        keep, which /readyz and the audit metrics still report. In strict mode it refuses instead: none are."""
        if self.loaded.config.audit.on_failure == "deny":
            return frozenset()
        return frozenset({"state", "rate_limits", "redis", "audit"})

    async def readiness(self) -> dict[str, ReadinessCheck]:
        async def keys() -> str | None:
            return None if self.keys.verification_keys() else "no signing keys loaded"

        async def config() -> str | None:
            return None if self.snapshot is not None else "no valid config loaded"

        async def audit() -> str | None:
            return self.audit.problem

        async def state() -> str | None:
            return self.state.problem()

        async def rate_limits() -> str | None:
            return self.limiter.problem()

        checks: dict[str, ReadinessCheck] = {
            "keys": keys,
            "config": config,
            "audit": audit,
            "state": state,
            "rate_limits": rate_limits,
        }
        if self.loaded.config.redis.url:
            client = async_client(self.loaded.config.redis.url, socket_timeout=1, socket_connect_timeout=1)
            self._closers.append(client.aclose)

            async def redis_ping() -> str | None:
                try:
                    await client.ping()
                except (*REDIS_FAILURES, OSError) as exc:
                    return f"redis unreachable: {exc.__class__.__name__}"
                return None

            checks["redis"] = redis_ping
        return checks

    async def aclose(self) -> None:
        await self.state.aclose()
        await self.limiter.aclose()
        await self.audit.aclose()
        if self.snapshot is not None:
            await self.snapshot.forwarder.aclose()
            await self.snapshot.verifier.aclose()
        await self.jwks.aclose()
        for closer in self._closers:
            await closer()


async def run_gateway(
    loaded: LoadedConfig,
    only: Iterable[str] = LISTENERS,
    *,
    reuse_port: bool = False,
    reload_interval: float = 1.0,
    graceful_seconds: float = 30.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, finish in-flight requests and drain the audit queue."""
    config = loaded.config
    selected = set(only)
    if not config.redis.url and os.environ.get("TOLLBOOTH_WORKER_INDEX", "0") != "0":
        # Without Redis, refresh-token families and the private_key_jwt replay cache live in one process's memory:
        # the token service must be that one process, or a replayed assertion could land on another worker.
        selected.discard("issuer")
    keys = await asyncio.to_thread(
        KeyStore.load, config.issuer.keys_dir, config.issuer.algorithm, token_lifetime=KeyStore.token_lifetime(config)
    )
    audit: AuditSink
    if config.redis.url:
        audit = RedisStreamSink.from_config(config.redis.url, config.audit)
    else:
        audit = FileSink(config.audit.file, queue_size=config.audit.queue_size)
    await audit.start()
    state = open_state(config.redis.url, revocations_file=config.issuer.revocations_file)
    await state.start()
    gateway = Gateway(
        loaded=loaded,
        keys=keys,
        audit=audit,
        state=state,
        limiter=open_rate_limiter(config.redis.url),
        jwks=JwksCaches(ca_file=config.tls.ca_file),
    )
    gateway.apply(loaded)
    watcher = ConfigWatcher(loaded, gateway.apply, audit, interval=reload_interval)

    holds = Holds(Approvals(state.ephemeral), audit.emit)
    gateway._closers.append(holds.aclose)
    state.revocations.on_block.append(holds.on_block)
    proxy_app = ProxyApp(
        gateway.current, audit, state.problem, gateway.limiter, revocations=state.revocations, holds=holds
    )
    issuer = IssuerApp(
        lambda: gateway.loaded.config, lambda: gateway.keys, state, audit, limiter=gateway.limiter, jwks=gateway.jwks
    )
    gateway._closers.append(issuer.aclose)
    api = AdminApi(lambda: gateway.loaded.config, state, audit, holds.approvals)
    apps: dict[str, tuple[object, str]] = {
        "proxy": (proxy_app, config.proxy.listen),
        "issuer": (issuer, config.issuer.listen),
        "admin": (admin_app(await gateway.readiness(), gateway.degradable, api.routes), config.admin.listen),
    }
    servers: list[tuple[QuietServer, socket.socket]] = []
    for name in LISTENERS:
        if name in selected:
            app, listen = apps[name]
            sock = _bind(listen, reuse_port=reuse_port)
            # Requests the HTTP layer refuses at the proxy are crossings too: audit them.
            on_refuse = proxy_app.record_refusal if name == "proxy" else None
            uv_config = _uvicorn_config(app, graceful_seconds=graceful_seconds, proxy=config.proxy, on_refuse=on_refuse)
            servers.append((QuietServer(uv_config), sock))
            log.info("%s listening on %s", name, listen)

    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        # Only a second Ctrl-C forces: a repeated SIGTERM (a process group signalled twice, an impatient
        # script) must not cut off in-flight requests; orchestrators escalate with SIGKILL anyway.
        force = signum == signal.SIGINT and any(server.should_exit for server, _ in servers)
        log.info(
            "received %s: %s", signal.Signals(signum).name, "stopping now" if force else "finishing in-flight requests"
        )
        for server, _ in servers:
            server.force_exit = server.force_exit or force
            server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    watch_tasks = [
        asyncio.create_task(watcher.run(), name="config-watcher"),
        asyncio.create_task(gateway.watch_keys(reload_interval), name="keys-watcher"),
    ]
    parent = os.environ.get("TOLLBOOTH_PARENT_PID")
    if parent:
        watch_tasks.append(asyncio.create_task(_stop_when_orphaned(int(parent), stop), name="parent-watch"))
    serving = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    if ready is not None:
        # The sockets are bound and listening already: connections wait in the backlog until accepted.
        ready.set()
    try:
        await asyncio.gather(*serving)
    finally:
        for task in watch_tasks:
            task.cancel()
        try:
            # Handlers stay installed while the audit queue drains: a repeated SIGTERM (a supervisor forwarding
            # twice, a group-wide signal) must not kill the process with events still queued.
            await gateway.aclose()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("stopped")


async def _stop_when_orphaned(parent: int, stop: Callable[[int], None]) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) drains and exits instead of serving on, unsupervised."""
    # Polled: no portable event announces a parent's death (PR_SET_PDEATHSIG is Linux-only).
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    log.error("the supervising process %d is gone: stopping this worker", parent)
    stop(signal.SIGTERM)


def _listing(keys_dir: Path) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in keys_dir.iterdir() if p.suffix == ".pem"))
    except OSError:
        return ()


def run_workers(argv: list[str], workers: int) -> int:
    """Start `workers` copies of `tollbooth serve` sharing the ports (SO_REUSEPORT) and wait for them.

    The workers share a Prometheus multiprocess directory so that any of them answers /metrics for all.
    """
    metrics_dir = tempfile.mkdtemp(prefix="tollbooth-metrics-")
    env = dict(
        os.environ,
        TOLLBOOTH_REUSE_PORT="1",
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        TOLLBOOTH_PARENT_PID=str(os.getpid()),
    )
    children = [
        # A process group of their own: a terminal's Ctrl-C or systemd's group-wide SIGTERM reaches the workers
        # once, through us, rather than twice.
        subprocess.Popen(
            [sys.executable, "-m", "gateway", *argv, "--workers", "1"],
            env={**env, "TOLLBOOTH_WORKER_INDEX": str(index)},
            process_group=0,
        )
        for index in range(workers)
    ]

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        first, status = os.wait()
        codes = [os.waitstatus_to_exitcode(status)]
        if not stopping:
            # A worker died on its own: stop the rest and exit non-zero so the orchestrator restarts the pod
            # instead of it serving on with fewer workers than asked for.
            log.error("worker %d exited unexpectedly: stopping the other workers", first)
            forward(signal.SIGTERM, None)
            codes.append(1)
        codes += [child.wait() for child in children if child.pid != first]
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return max((abs(code) for code in codes), default=0)
