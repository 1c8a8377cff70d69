"""`make profile`: where the proxy's time goes, under the same load as `make bench`.

Starts nginx and `tollbooth serve --only proxy` as proxy_bench.py does, drives it with wrk (32 connections) and
samples the gateway process with py-spy, the thread holding the GIL only (what costs CPU): a flame graph at
benchmarks/out/profile.svg, and the collapsed stacks at benchmarks/out/profile.txt, from which the functions with
the most samples (self and total) are printed.

    .venv/bin/python benchmarks/profile.py [--duration 10] [--rate 1000]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_bench import PATH, check_ok, free_port, mint, start_gateway, start_nginx, write_gateway_config  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def record(pid: int, fmt: str, dest: Path, duration: int, rate: int, url: str, token: str) -> None:
    """py-spy on `pid` for `duration` seconds while wrk loads `url`."""
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--format",
            fmt,
            "--output",
            str(dest),
            "--nonblocking",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    load = threading.Thread(
        target=subprocess.run,
        args=(["wrk", "-t1", "-c32", f"-d{duration + 1}s", "-H", f"Authorization: Bearer {token}", url],),
        kwargs={"capture_output": True},
    )
    load.start()
    _, err = spy.communicate()
    load.join()
    if spy.returncode != 0:
        raise SystemExit(f"py-spy failed: {err}")


def top(collapsed: Path, count: int = 25) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """The frames with the most samples: by self time (the leaf) and by total time (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        samples += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            total[frame] += int(n)
    return own.most_common(count), total.most_common(count), samples


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)": keep the function and the file's last parts.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _ = where.rpartition(":")
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})" if parts else name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of sampling (default 10)")
    parser.add_argument("--rate", type=int, default=1000, help="samples per second (default 1000)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "py-spy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: make profile installs it")
    OUT.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tollbooth-profile-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream = free_port()
        procs.append(start_nginx(tmp, upstream))
        config, port = write_gateway_config(tmp, upstream, "gateway")
        token = mint(config)
        gateway = start_gateway(config, port)
        procs.append(gateway)
        url = f"http://127.0.0.1:{port}{PATH}"
        check_ok(url, token)
        print(f"sampling the gateway (pid {gateway.pid}) for {args.duration} s, twice ...", file=sys.stderr)
        record(gateway.pid, "flamegraph", OUT / "profile.svg", args.duration, args.rate, url, token)
        record(gateway.pid, "raw", OUT / "profile.txt", args.duration, args.rate, url, token)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    own, total, samples = top(OUT / "profile.txt")
    print(f"\n{samples} samples; flame graph: {OUT / 'profile.svg'}\n\nself time (leaf frames):")
    for frame, n in own:
        print(f"  {100 * n / samples:5.1f}%  {frame}")
    print("\ntotal time (on the stack):")
    for frame, n in total:
        print(f"  {100 * n / samples:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
