"""`make bench-ratelimit`: what a route's `rate_limit` costs the proxy, counted in process memory and in Redis.

Starts nginx (the proxy benchmark's upstream), a redis-server of its own on a free port, and four gateways
(`--only proxy`): without Redis, a route without and with `rate_limit`; with `redis.url`, the same pair (the Redis
audit sink in both, so the pair differs only by the limiter). The limit is far above what wrk can send, so
every request is counted and none is refused. wrk at c=32, alternating runs, medians: prints limited / unlimited
for each store (target >= 0.9 in memory, >= 0.75 in Redis: one round trip per request).

    .venv/bin/python benchmarks/ratelimit_bench.py [--runs 3] [--duration 8]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench import start_redis  # noqa: E402
from proxy_bench import (  # noqa: E402
    PATH,
    check_ok,
    free_port,
    mint,
    start_gateway,
    start_nginx,
    write_gateway_config,
    wrk,
)

LIMIT = "10000000/minute"  # never reached: the benchmark measures the counting, not the refusals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    args = parser.parse_args()
    for tool in ("redis-server", "wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: apt-get install -y redis-server wrk nginx-light (make does)")
    tmp = Path(tempfile.mkdtemp(prefix="tollbooth-ratelimit-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_proc, redis_port = start_redis(tmp)
        procs.append(redis_proc)
        upstream = free_port()
        procs.append(start_nginx(tmp, upstream))
        targets: dict[str, str] = {}
        for store in ("memory", "redis"):
            for limited in (False, True):
                name = f"{store}-{'limited' if limited else 'unlimited'}"
                config, port = write_gateway_config(tmp, upstream, name)
                data = yaml.safe_load(config.read_text())
                if limited:
                    data["routes"][0]["rate_limit"] = LIMIT
                if store == "redis":
                    data["redis"] = {"url": f"redis://127.0.0.1:{redis_port}/0"}
                    spool = str(tmp / f"spool-{name}")
                    data["audit"] = {**data["audit"], "stream": f"bench:{name}", "spool_dir": spool}
                config.write_text(yaml.safe_dump(data))
                procs.append(start_gateway(config, port))
                targets[name] = f"http://127.0.0.1:{port}{PATH}"
        token = mint(config)
        for url in targets.values():
            check_ok(url, token)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for run in range(args.runs):
            for name, url in targets.items():  # alternating, so drift on a noisy box hits all alike
                rps = wrk(url, token, 32, args.duration)[0]
                print(f"  {name} run {run + 1}/{args.runs}: {rps:,.0f} req/s", file=sys.stderr, flush=True)
                rates[name].append(rps)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        for store, target in (("memory", 0.9), ("redis", 0.75)):
            on, off = medians[f"{store}-limited"], medians[f"{store}-unlimited"]
            print(
                f"rate limit counted in {store}: {on:,.0f} req/s with, {off:,.0f} without -> {on / off:.2f} "
                f"(target >= {target}), medians of {args.runs}"
            )
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
