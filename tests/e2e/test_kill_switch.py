"""The kill switch from the command line, on the embedded defaults (no Redis: the revocations file every process
follows): `tollbooth block` stops an agent at the running gateway within a second, `--list` shows it, and
`unblock` lets it through again; blocks are audited."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx2
from support import Gateway, wait_until

AGENT = "billing-bot"


def cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(gw.config_path)],
        cwd=gw.dir,
        env={**os.environ, "TEST_UPSTREAM_KEY": "upstream-secret"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def status(gw: Gateway, token: str) -> int:
    return httpx2.get(f"{gw.proxy_url}/v1/customers/1", headers={"Authorization": f"Bearer {token}"}).status_code


def test_block_stops_an_agent_within_a_second_and_unblock_lets_it_through(gateway: Gateway) -> None:
    token = gateway.mint("crm.read", agent=AGENT)
    assert status(gateway, token) == 200
    done = cli(gateway, "block", "--agent", AGENT, "--reason", "runaway loop")
    assert done.returncode == 0, done.stderr
    try:
        wait_until(lambda: status(gateway, token) == 403, 2.0, "the block at the running gateway")
        answer = httpx2.get(f"{gateway.proxy_url}/v1/customers/1", headers={"Authorization": f"Bearer {token}"})
        assert answer.json()["error"] == "access_denied" and "runaway loop" in answer.json()["error_description"]
        # A token minted after the block is refused too: this is not a revocation.
        assert status(gateway, gateway.mint("crm.read", agent=AGENT)) == 403
        listed = cli(gateway, "block", "--list")
        assert listed.returncode == 0 and AGENT in listed.stdout and "runaway loop" in listed.stdout
        event = gateway.wait_audit(lambda e: e["event"] == "agent.blocked")
        assert (event["agent"], event["by"], event["reason"]) == (AGENT, "cli", "runaway loop")
    finally:
        assert cli(gateway, "unblock", "--agent", AGENT).returncode == 0
    wait_until(lambda: status(gateway, token) == 200, 2.0, "the unblock at the running gateway")
    assert "no blocks in force" in cli(gateway, "block", "--list").stdout
    gateway.wait_audit(lambda e: e["event"] == "agent.unblocked")
