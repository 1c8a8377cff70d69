"""Shared fixtures: a real upstream HTTP server and a real gateway process, both on free loopback ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Clock:
    """A clock the test moves by hand (`clock.now += 61`), for code that takes `clock=`."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_answering(url: str, what: str, timeout: float = 20.0) -> None:
    """Poll GET `url` until it answers 200 (a /healthz or /readyz of a process still starting)."""

    def answering() -> bool:
        try:
            return httpx2.get(url, timeout=1).status_code == 200
        except httpx2.TransportError:
            return False

    wait_until(answering, timeout=timeout, what=what)


@dataclass
class Seen:
    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k == key]


@dataclass
class Upstream:
    """A recording upstream. Paths: /sse (two events, the second after `release` is set), /slow (waits for
    `release`), /big (1 MiB), /status/<code> (401 and 403 with the upstream's own Bearer challenge, as an API that
    checks its own credential answers); anything else echoes a small JSON body."""

    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    disconnects: list[str] = field(default_factory=list)

    def last(self) -> Seen:
        return self.seen[-1]


async def read_asgi_body(receive: Callable[..., Any]) -> bytes:
    """A test server's whole request body, from its ASGI receive."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _upstream_app(up: Upstream) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        body = await read_asgi_body(receive)
        path: str = scope["path"]
        up.seen.append(
            Seen(
                scope["method"],
                scope.get("raw_path") or path.encode(),
                scope["query_string"],
                list(scope["headers"]),
                body,
            )
        )
        if path == "/sse":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
            await asyncio.get_running_loop().run_in_executor(None, up.release.wait, 10)
            await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": False})
            return
        if path == "/slow":
            released = await asyncio.get_running_loop().run_in_executor(None, up.release.wait, 10)
            if not released:
                up.disconnects.append("slow")
        if path == "/big":
            payload = b"x" * (1024 * 1024)
        elif path.startswith("/status/"):
            payload = b""
        else:
            payload = json.dumps({"ok": True, "path": path}).encode()
        status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        challenges = {
            401: [(b"www-authenticate", b'Bearer error="invalid_token"')],
            403: [(b"www-authenticate", b'Bearer error="insufficient_scope", scope="upstream:admin"')],
        }
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *challenges.get(status, []),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"keep-alive, x-upstream-private"),
                    (b"x-upstream-private", b"1"),
                    (b"set-cookie", b"a=1"),
                    (b"set-cookie", b"b=2"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def serve_in_thread(server: uvicorn.Server, what: str) -> Callable[[], None]:
    """Run a uvicorn server (on 127.0.0.1) in a daemon thread until it has started; returns what stops it."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what=f"{what} start")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return stop


def start_upstream() -> tuple[Upstream, Callable[[], None]]:
    """Start a recording upstream on a free port; returns it and a function that stops it."""
    port = free_port()
    up = Upstream(url=f"http://127.0.0.1:{port}", port=port)
    server = uvicorn.Server(
        uvicorn.Config(
            _upstream_app(up), host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False
        )
    )
    stop_server = serve_in_thread(server, "upstream")

    def stop() -> None:
        up.release.set()
        stop_server()

    return up, stop


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up, stop = start_upstream()
    yield up
    stop()


@dataclass
class Gateway:
    """A `tollbooth serve` process with its own config, keys and audit file in a temp dir."""

    dir: Path
    config_path: Path
    routes_path: Path
    proxy_url: str
    issuer_url: str
    admin_url: str
    process: subprocess.Popen[bytes]
    config: dict[str, Any]

    def mint(
        self,
        scopes: str | list[str] = "crm.read",
        *,
        agent: str = "billing-bot",
        subject: str | None = None,
        act: dict[str, Any] | None = None,
        ttl: float = 300,
        **extra: Any,
    ) -> str:
        from gateway.issuer.keystore import KeyStore
        from gateway.tokens.access_token import mint_access_token

        keys = KeyStore.load(self.dir / "keys", "ES256", generate_if_empty=False)
        token, _ = mint_access_token(
            keys.active,
            issuer=self.issuer_url,
            audience=self.proxy_url,
            subject=subject or agent,
            client_id=agent,
            scopes=scopes.split() if isinstance(scopes, str) else scopes,
            ttl=ttl,
            act=act,
            extra_claims=extra or None,
        )
        return token

    def audit_events(self) -> list[dict[str, str]]:
        path = self.dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_audit(self, predicate: Callable[[dict[str, str]], bool], what: str = "audit event") -> dict[str, str]:
        return wait_until(lambda: next((e for e in self.audit_events() if predicate(e)), None), what=what)

    def write_routes(self, routes: list[dict[str, Any]] | str) -> None:
        text = routes if isinstance(routes, str) else yaml.safe_dump({"routes": routes})
        tmp = self.routes_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.routes_path)

    def metrics(self) -> str:
        return httpx2.get(f"{self.admin_url}/metrics").text

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


DEFAULT_ROUTES: list[dict[str, Any]] = [
    {"name": "get-customer", "methods": ["GET", "HEAD"], "path": "/v1/customers/{id}", "scopes": ["crm.read"]},
    {"name": "create-customer", "methods": ["POST"], "path": "/v1/customers", "scopes": ["crm.write"]},
    {"name": "files", "path": "/files/{rest:path}", "scopes": ["crm.read"]},
    {"name": "delegated-only", "path": "/v1/on-behalf", "scopes": ["crm.read"], "delegation": "required"},
    {"name": "direct-only", "path": "/v1/direct", "scopes": ["crm.read"], "delegation": "forbidden"},
    {"name": "sse", "methods": ["GET"], "path": "/sse", "scopes": ["crm.read"]},
    {"name": "slow", "path": "/slow", "scopes": ["crm.read"]},
    {"name": "big", "path": "/big", "scopes": ["crm.read"]},
    {"name": "upload", "methods": ["POST", "PUT"], "path": "/upload", "scopes": ["crm.write"]},
    {"name": "status-codes", "path": "/status/{code}", "scopes": ["crm.read"]},
    {"name": "health", "methods": ["GET"], "path": "/status", "public": True},
]


def start_gateway(
    tmp: Path,
    upstream_url: str,
    *,
    routes: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    ready: bool = True,
) -> Gateway:
    """`ready=False`: wait until the gateway is up (/healthz), not ready (/readyz), for tests of a broken setup."""
    for _ in range(2):
        try:
            return _start_gateway(tmp, upstream_url, routes=routes, extra=extra, env=env, ready=ready)
        except AssertionError as exc:
            # A port free_port saw free can be taken before the gateway binds it (the machine's other services
            # open connections from the same ephemeral range): fresh ports, once more.
            if "Errno 98" not in str(exc):
                raise
    return _start_gateway(tmp, upstream_url, routes=routes, extra=extra, env=env, ready=ready)


def _start_gateway(
    tmp: Path,
    upstream_url: str,
    *,
    routes: list[dict[str, Any]] | None,
    extra: dict[str, Any] | None,
    env: dict[str, str] | None,
    ready: bool,
) -> Gateway:
    proxy_port, issuer_port, admin_port = free_port(), free_port(), free_port()
    config: dict[str, Any] = {
        "version": 1,
        "proxy": {
            "listen": f"127.0.0.1:{proxy_port}",
            "public_url": f"http://127.0.0.1:{proxy_port}",
            "max_body_bytes": 65536,
            # The Host names the raw-socket tests send (`Host: x`, test_attacks' `tollbooth.test`): the gateway
            # answers only for the names it is told are its own (gateway/hosts.py).
            "allowed_hosts": ["x", "tollbooth.test"],
        },
        "issuer": {
            "listen": f"127.0.0.1:{issuer_port}",
            "url": f"http://127.0.0.1:{issuer_port}",
            "keys_dir": str(tmp / "keys"),
        },
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "audit": {"file": str(tmp / "audit.jsonl"), "spool_dir": str(tmp / "spool")},
        "upstreams": {
            "crm": {
                "url": upstream_url,
                "timeout": "2s",
                "connect_timeout": "2s",
                "headers": {"Authorization": "Bearer ${TEST_UPSTREAM_KEY}"},
            }
        },
        "agents": {"billing-bot": {"scopes": ["crm.read", "crm.write"]}},
        "routes_file": "routes.yaml",
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    config_path = tmp / "tollbooth.yaml"
    routes_path = tmp / "routes.yaml"
    config_path.write_text(yaml.safe_dump(config))
    routes_path.write_text(yaml.safe_dump({"routes": DEFAULT_ROUTES if routes is None else routes}))
    process_env = {**os.environ, "TEST_UPSTREAM_KEY": "upstream-secret", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--log-format", "json"],
        cwd=tmp,
        env=process_env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "gateway.log", "wb"),  # noqa: SIM115
    )
    gw = Gateway(
        tmp,
        config_path,
        routes_path,
        f"http://127.0.0.1:{proxy_port}",
        f"http://127.0.0.1:{issuer_port}",
        f"http://127.0.0.1:{admin_port}",
        process,
        config,
    )

    probe = "/readyz" if ready else "/healthz"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited: {(tmp / 'gateway.log').read_text()}")
        try:
            return httpx2.get(f"{gw.admin_url}{probe}", timeout=1).status_code == 200
        except httpx2.TransportError:
            return False

    wait_until(up, timeout=20, what=f"gateway {probe}")
    return gw


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), upstream.url)
    yield gw
    gw.stop()


@dataclass
class RedisServer:
    """A redis-server of the test's own on a free port (never the shared one on 6379)."""

    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(pong, what=f"redis-server on {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def write_public_route_config(tmp: Path, upstream: dict[str, Any], route: dict[str, Any]) -> tuple[Path, int, int]:
    """A config with one public route, for tests that run `serve` themselves; returns (path, proxy, admin) ports."""
    proxy, admin = free_port(), free_port()
    config = {
        "proxy": {"listen": f"127.0.0.1:{proxy}", "public_url": f"http://127.0.0.1:{proxy}"},
        "issuer": {"listen": f"127.0.0.1:{free_port()}", "keys_dir": str(tmp / "keys")},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "audit": {"file": str(tmp / "audit.jsonl")},
        "upstreams": {"crm": upstream},
        "routes": [{**route, "public": True}],
    }
    path = tmp / "t.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, proxy, admin
