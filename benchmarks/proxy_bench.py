"""`make bench`: Tollbooth's full pipeline against a direct call, a naive pass-through proxy and HAProxy+JWT.

Part 1 starts nginx (1 worker, a fixed JSON answer) on a free port and measures with wrk, median of 3:
direct to nginx, a naive pass-through proxy (the same upstream client, no identify/authorize/stamp/audit),
and `tollbooth serve --only proxy` with a valid ES256 token, at 32 connections and at 1 connection
(for the gateway-added p50 latency). Part 2 runs ../shared/bench-anchors/run.sh, which measures HAProxy
verifying the very same token with jwt_verify beside the gateway in one run: the headline figure is
Tollbooth / HAProxy+JWT.

    .venv/bin/python benchmarks/proxy_bench.py [--duration 8] [--connections 32] [--skip-anchors]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT.parent / "shared" / "bench-anchors"
NGINX_BODY = (
    '{"id":42,"name":"Ada Lovelace","email":"ada@example.com","plan":"enterprise","created":"2024-01-01T00:00:00Z",'
    '"tags":["vip","beta"],"owner":"sales-team-emea","balance":1234.56}'
)
PATH = "/v1/customers/1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{NGINX_BODY}'; }} }} }}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def write_gateway_config(tmp: Path, upstream_port: int, name: str) -> tuple[Path, int]:
    port = free_port()
    config = {
        "version": 1,
        "proxy": {"listen": f"127.0.0.1:{port}", "public_url": "http://bench.tollbooth"},
        "issuer": {
            "listen": f"127.0.0.1:{free_port()}",
            "url": "http://issuer.tollbooth",
            "keys_dir": str(tmp / "keys"),
        },
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "audit": {"file": str(tmp / f"audit-{name}.jsonl")},
        "upstreams": {
            "crm": {"url": f"http://127.0.0.1:{upstream_port}", "headers": {"Authorization": "Bearer upstream-key"}}
        },
        "agents": {"bench-agent": {"scopes": ["crm.read"], "max_token_ttl": "24h"}},
        "routes": [{"name": "get-customer", "methods": ["GET"], "path": "/v1/customers/{id}", "scopes": ["crm.read"]}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def start_gateway(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--only",
            "proxy",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


def mint(config: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "token",
            "--config",
            str(config),
            "--agent",
            "bench-agent",
            "--scope",
            "crm.read",
            "--ttl",
            "24h",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def export_public_pem(keys_dir: Path, dest: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from gateway.issuer.keystore import KeyStore

    key = KeyStore.load(keys_dir, "ES256", generate_if_empty=False).active
    dest.write_bytes(
        key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def wrk(url: str, token: str | None, connections: int, duration: int) -> tuple[float, float, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{url}: non-2xx answers during the benchmark:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored at line start: "+/- Stdev" columns like "89.50%" must not match the percentile table.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return rps, p50, p99


def measure(name: str, url: str, token: str | None, connections: int, duration: int, runs: int = 3) -> dict[str, float]:
    results = []
    for i in range(runs):
        print(f"  {name} c={connections} run {i + 1}/{runs} ...", file=sys.stderr, flush=True)
        results.append(wrk(url, token, connections, duration))
    return {
        "rps": statistics.median(r[0] for r in results),
        "p50": statistics.median(r[1] for r in results),
        "p99": statistics.median(r[2] for r in results),
    }


def check_ok(url: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx2.get(url, headers=headers)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}: {response.text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", type=int, default=32, help="connections for throughput (default 32)")
    parser.add_argument("--skip-anchors", action="store_true", help="skip the HAProxy comparison (run.sh)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: apt-get install -y wrk nginx-light haproxy (make bench does)")

    tmp = Path(tempfile.mkdtemp(prefix="tollbooth-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream_port = free_port()
        procs.append(start_nginx(tmp, upstream_port))
        config, gw_port = write_gateway_config(tmp, upstream_port, "gateway")
        token = mint(config)
        procs.append(start_gateway(config, gw_port))
        naive_port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "benchmarks" / "naive_proxy.py"),
                    str(naive_port),
                    f"http://127.0.0.1:{upstream_port}",
                ],
                cwd=ROOT,
            )
        )
        wait_port(naive_port)
        targets = {
            "direct": (f"http://127.0.0.1:{upstream_port}{PATH}", None),
            "naive-proxy": (f"http://127.0.0.1:{naive_port}{PATH}", None),
            "tollbooth": (f"http://127.0.0.1:{gw_port}{PATH}", token),
        }
        for url, tok in targets.values():
            check_ok(url, tok)
        results = {}
        for name, (url, tok) in targets.items():
            results[name] = measure(name, url, tok, args.connections, args.duration)
        latency = {
            name: measure(name, url, tok, 1, args.duration)
            for name, (url, tok) in targets.items()
            if name in ("direct", "tollbooth")
        }
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        procs.clear()

    direct = results["direct"]["rps"]
    print(f"\n{'target':<14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'x direct':>10}   (c={args.connections})")
    for name, r in results.items():
        print(f"{name:<14}{r['rps']:>10.0f}{r['p50']:>10.3f}{r['p99']:>10.3f}{r['rps'] / direct:>10.3f}")
    added = latency["tollbooth"]["p50"] - latency["direct"]["p50"]
    print(
        f"\np50 at 1 connection: direct {latency['direct']['p50']:.3f} ms, tollbooth {latency['tollbooth']['p50']:.3f} "
        f"ms -> gateway-added p50 {added:.3f} ms (target <= 1 ms)"
    )
    print(f"tollbooth / naive proxy: {results['tollbooth']['rps'] / results['naive-proxy']['rps']:.2f}x")

    if args.skip_anchors:
        return 0
    if not (ANCHORS / "run.sh").exists() or shutil.which("haproxy") is None:
        print("\nanchors skipped: ../shared/bench-anchors/run.sh or haproxy not found", file=sys.stderr)
        return 0
    print("\nHAProxy+JWT anchor (../shared/bench-anchors/run.sh, same token, same run):", flush=True)
    config, gw_port = write_gateway_config(tmp, 18000, "anchored")
    anchored = start_gateway(config, gw_port)
    try:
        export_public_pem(tmp / "keys", tmp / "pub.pem")
        subprocess.run(
            [
                "bash",
                str(ANCHORS / "run.sh"),
                "--token",
                token,
                "--pubkey",
                str(tmp / "pub.pem"),
                "--gateway",
                f"http://127.0.0.1:{gw_port}{PATH}",
                "--duration",
                str(args.duration),
                "--connections",
                str(args.connections),
            ],
            check=False,
            env=dict(os.environ),
        )
    finally:
        anchored.send_signal(signal.SIGTERM)
        anchored.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
