"""`make bench-audit`: the Redis Streams audit sink's throughput, and what it costs the proxy.

Part 1 starts a redis-server of its own on a free port and pushes events through `RedisStreamSink` from one
process: events/s from the first `emit` until the last event is in the stream (target >= 30,000). Part 2
runs the proxy benchmark's setup (nginx upstream, wrk, c=32, a valid ES256 token) against the gateway with
the Redis sink on and with it off (the JSON-lines file sink), alternating runs: target on/off >= 0.9.

    .venv/bin/python benchmarks/audit_bench.py [--events 300000] [--runs 3] [--duration 8] [--skip-proxy]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_bench import (  # noqa: E402
    PATH,
    check_ok,
    free_port,
    mint,
    start_gateway,
    start_nginx,
    wait_port,
    write_gateway_config,
    wrk,
)

from gateway.audit.events import AuditEvent  # noqa: E402
from gateway.audit.streams import RedisStreamSink  # noqa: E402

STREAM = "bench:audit"


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def access_event(n: int) -> AuditEvent:
    """A typical allowed, delegated request: every field the proxy fills in."""
    return AuditEvent(
        event="access",
        ts=time.time(),
        request_id=f"5d0c1e2f3a4b5c6d7e8f9a0b1c2d{n:08d}",
        trace_id="8f3a9b2c4d5e6f708192a3b4c5d6e7f8",
        agent="billing-bot",
        subject="user:alice",
        delegation="billing-bot",
        client_ip="127.0.0.1",
        method="GET",
        path=f"/v1/customers/{n}",
        route="get-customer",
        upstream="crm",
        decision="allow",
        reason="allowed",
        required_scopes="crm.read",
        granted_scopes="crm.read crm.write",
        status=200,
        duration_ms=1.204,
        upstream_ms=0.811,
        bytes_in=0,
        bytes_out=96,
        jti="b3c1f0e2-7a9d-4e5f-8a6b-1c2d3e4f5a6b",
    )


async def sink_run(url: str, spool: Path, events: int) -> float:
    # A queue larger than the run: this measures the writer, not the spool it would spill to.
    sink = RedisStreamSink(url, stream=STREAM, max_len=1_000_000, spool_dir=spool, queue_size=events * 2 + 1)
    await sink.start()
    started = time.perf_counter()
    for burst in range(0, events, 1000):
        for n in range(burst, burst + 1000):
            sink.emit(access_event(n))  # a new event each time, as the proxy makes one per request
        await asyncio.sleep(0)  # the writer runs between bursts, as it does between requests
    await sink.aclose()  # returns once every queued event is in the stream
    return events / (time.perf_counter() - started)


def bench_sink(tmp: Path, events: int, runs: int) -> float:
    proc, port = start_redis(tmp)
    try:
        client = redis.Redis(port=port)
        rates = []
        for run in range(runs):
            client.delete(STREAM)
            rate = asyncio.run(sink_run(f"redis://127.0.0.1:{port}/0", tmp / f"spool-{run}", events))
            written = client.xlen(STREAM)
            if written != events:
                raise SystemExit(f"the stream holds {written} events, not {events}")
            print(f"  sink run {run + 1}/{runs}: {rate:,.0f} events/s", file=sys.stderr, flush=True)
            rates.append(rate)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return statistics.median(rates)


def bench_proxy(tmp: Path, duration: int, runs: int) -> dict[str, float]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_proc, redis_port = start_redis(tmp)
        procs.append(redis_proc)
        upstream = free_port()
        procs.append(start_nginx(tmp, upstream))
        targets = {}
        for name in ("sink-off", "sink-on"):
            config, port = write_gateway_config(tmp, upstream, name)
            if name == "sink-on":
                data = yaml.safe_load(config.read_text())
                data["redis"] = {"url": f"redis://127.0.0.1:{redis_port}/0"}
                data["audit"] = {**data["audit"], "stream": STREAM, "spool_dir": str(tmp / "spool-proxy")}
                config.write_text(yaml.safe_dump(data))
            procs.append(start_gateway(config, port))
            targets[name] = f"http://127.0.0.1:{port}{PATH}"
        token = mint(config)
        for url in targets.values():
            check_ok(url, token)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for run in range(runs):
            for name, url in targets.items():  # alternating, so drift on a noisy box hits both alike
                rps = wrk(url, token, 32, duration)[0]
                print(f"  {name} run {run + 1}/{runs}: {rps:,.0f} req/s", file=sys.stderr, flush=True)
                rates[name].append(rps)
        if redis.Redis(port=redis_port).xlen(STREAM) == 0:
            raise SystemExit("the sink-on gateway wrote nothing to the stream")
        return {name: statistics.median(values) for name, values in rates.items()}
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="events per sink run, a multiple of 1000")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--skip-proxy", action="store_true", help="only the sink benchmark (no wrk/nginx needed)")
    args = parser.parse_args()
    needed = ["redis-server"] + ([] if args.skip_proxy else ["wrk", "nginx"])
    for tool in needed:
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: apt-get install -y redis-server wrk nginx-light (make bench-audit does)")
    tmp = Path(tempfile.mkdtemp(prefix="tollbooth-audit-bench-"))
    try:
        rate = bench_sink(tmp, args.events, args.runs)
        print(f"\nsink: {rate:,.0f} events/s into Redis, median of {args.runs} (target >= 30,000)")
        if not args.skip_proxy:
            rps = bench_proxy(tmp, args.duration, args.runs)
            ratio = rps["sink-on"] / rps["sink-off"]
            print(
                f"proxy c=32: Redis sink on {rps['sink-on']:,.0f} req/s, off (file sink) {rps['sink-off']:,.0f} req/s "
                f"-> on/off {ratio:.2f} (target >= 0.9), medians of {args.runs}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
