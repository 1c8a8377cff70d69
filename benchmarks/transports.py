"""Which upstream client should the forward step use? Measure each in the same minimal proxy.

    .venv/bin/python benchmarks/transports.py                     # every candidate this interpreter can run
    .venv/bin/python benchmarks/transports.py --only aiohttp,forwarder --duration 4
    .venv/bin/python benchmarks/transports.py --httpx-python /tmp/httpx028/bin/python   # adds httpx 0.28

Starts nginx (1 worker, fixed JSON answer) on a free loopback port, and for each candidate a one-process uvicorn
proxy (uvloop, httptools, access log off) from benchmarks/_transports_candidates.py; they sit idle until measured.
Then `wrk -t1 -c32` rounds and `wrk -t1 -c1` rounds: each round runs every candidate once (3 rounds, the median
kept), so drift on a shared 2-core box hits every candidate alike. Prints a line per run, then a markdown table
with ratios against nginx direct. Needs nginx and wrk (`make bench-tools`). Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CANDIDATES_FILE = HERE / "_transports_candidates.py"
ORDER = [
    "uvicorn-fixed",
    "httpx-0.28",
    "httpx2-default",
    "httpx2-tuned",
    "httpcore2",
    "aiohttp-default",
    "aiohttp-tuned",
    "handrolled",
    "forwarder",
]
PATH = "/v1/customers/42?fields=id%2Cname"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {tmp};
  proxy_temp_path {tmp};
  fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp};
  scgi_temp_path {tmp};
  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type application/json;
      return 200 '{body}';
    }}
  }}
}}
"""


# The same JSON answer as shared/bench-anchors/nginx.conf.
BODY = (
    '{"id":42,"name":"Ada Lovelace","email":"ada@example.com","plan":"enterprise","created":"2024-01-01T00:00:00Z",'
    '"tags":["vip","beta"],"owner":"sales-team-emea","balance":1234.56}'
)


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, deadline_s: float = 15.0) -> None:
    """Poll until the server at `port` answers a GET with 200, or fail."""
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                if data.startswith(b"HTTP/1.1 200"):
                    return
                last = data[:200].decode("latin-1")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not answer 200 in {deadline_s}s: {last}")


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[match.group(2)]


def wrk(url: str, connections: int, duration: int) -> Run:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Run(rps, p50, p99, errors)


class Candidate:
    """One proxy process (or nginx itself, for `nginx-direct`) and the wrk runs made against it."""

    def __init__(self, name: str, python: str | None, upstream: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[str] | None = None
        self.runs: dict[int, list[Run]] = {}
        if python is None:
            self.url = upstream + PATH
            return
        port = free_port()
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.proc = subprocess.Popen(
            [python, str(CANDIDATES_FILE), name, upstream, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_http(port)
        except Exception:
            self.stop()
            raise

    def run(self, connections: int, duration: int, label: str) -> None:
        run = wrk(self.url, connections, duration)
        self.runs.setdefault(connections, []).append(run)
        flag = f"  ERRORS {run.errors}" if run.errors else ""
        print(
            f"  {label} {self.name:<15} c{connections:<3}: {run.rps:>9.0f} req/s  "
            f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms{flag}",
            flush=True,
        )

    def median(self, connections: int) -> Run:
        """The run with the median req/s (its own latencies, not a mix of runs)."""
        runs = sorted(self.runs[connections], key=lambda r: r.rps)
        return runs[len(runs) // 2]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if err and err.strip():
            print(f"{self.name} stderr:\n{err}", file=sys.stderr)


def measure_all(candidates: list[Candidate], args: argparse.Namespace) -> None:
    """Round-robin: round i runs every candidate once, so slow drift on a shared box hits all of them alike."""
    for c in candidates:
        wrk(c.url, args.connections, 1)  # warm-up: connections made, code paths hot
    for connections, duration in ((args.connections, args.duration), (1, args.latency_duration)):
        for i in range(args.runs):
            for c in candidates:
                c.run(connections, duration, f"round {i + 1}/{args.runs}")


def table(candidates: list[Candidate], connections: int) -> str:
    direct = candidates[0].median(connections).rps
    lines = [
        f"| client | req/s c{connections} | vs direct | p50 c{connections} | p99 c{connections} "
        "| req/s c1 | p50 c1 | p99 c1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in candidates:
        hi, lo = c.median(connections), c.median(1)
        lines.append(
            f"| {c.name} | {hi.rps:,.0f} | {hi.rps / direct:.3f} | {hi.p50_ms:.2f} ms | {hi.p99_ms:.2f} ms "
            f"| {lo.rps:,.0f} | {lo.p50_ms:.3f} ms | {lo.p99_ms:.3f} ms |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated candidates (default: all this interpreter can run)")
    parser.add_argument("--httpx-python", help="an interpreter with httpx 0.28 + uvicorn[standard], to add httpx-0.28")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run at -c32 (default 8)")
    parser.add_argument("--latency-duration", type=int, default=5, help="seconds per wrk run at -c1 (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"missing {tool}: run `make bench-tools`", file=sys.stderr)
            return 2

    names = args.only.split(",") if args.only else [n for n in ORDER if n != "httpx-0.28" or args.httpx_python]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        print(f"unknown candidate(s) {unknown}; known: {', '.join(ORDER)}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="tollbooth-transports-") as tmp:
        nginx_port = free_port()
        conf = Path(tmp, "nginx.conf")
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, body=BODY))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = subprocess.Popen([nginx_bin, "-e", f"{tmp}/nginx-error.log", "-p", tmp, "-c", str(conf)])
        candidates: list[Candidate] = []
        try:
            upstream = f"http://127.0.0.1:{nginx_port}"
            wait_http(nginx_port)
            candidates.append(Candidate("nginx-direct", None, upstream))
            for name in names:
                python = args.httpx_python if name == "httpx-0.28" else sys.executable
                candidates.append(Candidate(name, python, upstream))
            print(
                f"nginx (1 worker) on {upstream}; {len(names)} proxies idle until measured; "
                f"wrk -t1 -c{args.connections} {args.duration}s then -c1 {args.latency_duration}s, "
                f"{args.runs} rounds each, median kept",
                flush=True,
            )
            measure_all(candidates, args)
        finally:
            for c in candidates:
                c.stop()
            nginx.terminate()
            nginx.wait(timeout=10)

    print()
    print(table(candidates, args.connections))
    print()
    direct = candidates[0].median(args.connections).rps
    for c in candidates[1:]:
        print(f"{c.name:<15} {c.median(args.connections).rps / direct:6.3f}x direct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
