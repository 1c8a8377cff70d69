"""`make bench-mcp`: what MCP inspection costs. A tools/call of about 2 KiB POSTed through an `mcp:` route (body
read whole, parsed strictly, decided by a tool rule, forwarded) beside the same POST through a plain route, and
direct to nginx (the proxy benchmark's upstream) for scale.

wrk at 32 connections (throughput) and 1 connection (p50), runs alternating, medians of --runs. Targets (issue
17): the mcp route keeps >= 85% of the plain route's throughput and adds <= 0.3 ms p50 at concurrency 1.

    .venv/bin/python benchmarks/mcp_bench.py [--runs 3] [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_bench import _ms, free_port, mint, start_gateway, start_nginx, write_gateway_config  # noqa: E402


def tool_call() -> bytes:
    """A tools/call with realistic arguments, padded to about 2 KiB."""
    notes = "Customer asked about the enterprise plan renewal and the invoices of the last two quarters. " * 21
    arguments = {"query": "renewal enterprise emea", "limit": 25, "fields": ["name", "email", "plan"], "notes": notes}
    body = {
        "jsonrpc": "2.0",
        "id": 17,
        "method": "tools/call",
        "params": {"name": "search_customers", "arguments": arguments},
    }
    return json.dumps(body).encode()


def lua_script(tmp: Path, body: bytes, token: str) -> Path:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Accept"] = "application/json, text/event-stream"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return script


def wrk(url: str, script: Path, connections: int, duration: int) -> tuple[float, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{url}: non-2xx answers during the benchmark:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return rps, p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: apt-get install -y wrk nginx-light (make bench-tools does)")
    tmp = Path(tempfile.mkdtemp(prefix="tollbooth-mcp-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream = free_port()
        procs.append(start_nginx(tmp, upstream))
        config, port = write_gateway_config(tmp, upstream, "mcp")
        data = yaml.safe_load(config.read_text())
        data["routes"] = [
            {"name": "plain", "methods": ["POST"], "path": "/plain", "scopes": ["crm.read"]},
            {
                "name": "mcp",
                "methods": ["POST"],
                "path": "/mcp",
                "scopes": ["crm.read"],
                "mcp": {"tools": [{"name": "search_*", "scopes": ["crm.read"]}]},
            },
        ]
        config.write_text(yaml.safe_dump(data))
        procs.append(start_gateway(config, port))
        script = lua_script(tmp, tool_call(), mint(config))
        targets = {
            "direct": f"http://127.0.0.1:{upstream}/plain",
            "plain": f"http://127.0.0.1:{port}/plain",
            "mcp": f"http://127.0.0.1:{port}/mcp",
        }
        print(f"a {len(tool_call())}-byte tools/call; {args.runs} alternating runs of {args.duration}s", flush=True)
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for run in range(args.runs):
            for connections in (32, 1):
                for name, url in targets.items():
                    print(f"  {name} c={connections} run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
                    results.setdefault((name, connections), []).append(wrk(url, script, connections, args.duration))
        rps = {name: statistics.median(r[0] for r in results[(name, 32)]) for name in targets}
        p50 = {name: statistics.median(r[1] for r in results[(name, 1)]) for name in targets}
        for name in targets:
            print(f"{name:7} {rps[name]:9.0f} req/s at c=32   p50 {p50[name]:.3f} ms at c=1")
        print(f"mcp / plain throughput: {rps['mcp'] / rps['plain']:.3f} (target >= 0.85)")
        print(f"mcp - plain p50 at c=1: {p50['mcp'] - p50['plain']:+.3f} ms (target <= +0.3 ms)")
        print(f"plain / direct throughput: {rps['plain'] / rps['direct']:.3f}")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
