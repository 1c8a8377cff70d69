"""`--workers N`: several processes share the ports, agree on metrics, and stop together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx2
from support import Upstream, wait_answering, wait_until, write_public_route_config


def test_two_workers_serve_share_metrics_and_stop_on_sigterm(upstream: Upstream, tmp_path):
    _, proxy, admin = write_public_route_config(
        tmp_path, {"url": upstream.url}, {"name": "health", "path": "/status", "methods": ["GET"]}
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "t.yaml"), "--workers", "2"],
        cwd=tmp_path,
        stderr=open(tmp_path / "log", "wb"),  # noqa: SIM115
    )
    try:
        wait_answering(f"http://127.0.0.1:{admin}/readyz", "workers ready")
        # Fresh connections are spread over the workers by the kernel; every one must be answered.
        for _ in range(40):
            assert httpx2.get(f"http://127.0.0.1:{proxy}/status").status_code == 200
        logs = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines() if line.startswith("{")]
        assert len({entry["pid"] for entry in logs if entry["msg"].startswith("proxy listening")}) == 2
        # Without Redis the token service's memory (refresh families, the assertion replay cache) is one process's:
        # only the first worker serves it, so a replayed client assertion cannot land on another worker.
        assert len({entry["pid"] for entry in logs if entry["msg"].startswith("issuer listening")}) == 1
        # Any worker answers the scrape with the sum over both.
        text = httpx2.get(f"http://127.0.0.1:{admin}/metrics").text
        line = next(
            row for row in text.splitlines() if row.startswith("tollbooth_requests_total{") and 'route="health"' in row
        )
        assert float(line.rsplit(" ", 1)[1]) == 40.0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    # Both workers append to one audit file; after the graceful stop every crossing is in it.
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len([e for e in events if e.get("route") == "health"]) == 40


def test_workers_stop_when_their_supervisor_is_killed(upstream: Upstream, tmp_path):
    write_public_route_config(
        tmp_path, {"url": upstream.url}, {"name": "health", "path": "/status", "methods": ["GET"]}
    )
    log = tmp_path / "log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "t.yaml"), "--workers", "2"],
        cwd=tmp_path,
        stderr=open(log, "wb"),  # noqa: SIM115
    )

    def worker_pids() -> set[int]:
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return {e["pid"] for e in entries if e["msg"].startswith("proxy listening")}

    pids = wait_until(lambda: len(worker_pids()) == 2 and worker_pids(), timeout=20, what="two workers")
    process.kill()
    process.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return open(f"/proc/{pid}/stat").read().split()[2] == "Z"

    wait_until(lambda: all(gone(pid) for pid in pids), timeout=15, what="orphaned workers to stop")
