"""`make run`: the demo serves the example config and the lines it prints work as printed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import yaml
from mcp_support import sdk_session
from support import ROOT, free_port, wait_until


def demo_config(tmp: Path) -> Path:
    """config/example.yaml as shipped, moved to free ports and a temp state folder."""
    config = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    proxy = free_port()
    config["proxy"].update(listen=f"127.0.0.1:{proxy}", public_url=f"http://127.0.0.1:{proxy}")
    issuer = free_port()
    config["issuer"].update(listen=f"127.0.0.1:{issuer}", url=f"http://127.0.0.1:{issuer}", keys_dir=str(tmp / "keys"))
    config["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    config["audit"]["file"] = str(tmp / "audit.jsonl")
    upstream = f"http://127.0.0.1:{free_port()}"
    config["upstreams"]["crm"]["url"] = upstream
    for trusted in config.get("trusted_issuers") or []:  # the demo identity provider lives on the demo upstream
        for key in ("issuer", "jwks_uri"):
            trusted[key] = trusted[key].replace("http://127.0.0.1:9000", upstream)
        trusted["audiences"] = [config["issuer"]["url"]]
    (tmp / "routes.yaml").write_text((ROOT / "config" / "routes.yaml").read_text())
    path = tmp / "example.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# What a fresh shell has: none of the variables the example config reads.
DEMO_ENV = {k: v for k, v in os.environ.items() if k not in ("CRM_API_KEY", "REDIS_URL", "BILLING_BOT_SECRET_HASH")}


def start_demo(config: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--config", str(config)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=DEMO_ENV,
    )


def test_demo_prints_lines_that_work(tmp_path: Path):
    config = demo_config(tmp_path)
    env = DEMO_ENV
    process = start_demo(config, tmp_path)
    try:
        assert process.stdout is not None
        printed = ""
        while "tail -n 3" not in printed:
            line = process.stdout.readline()
            assert line, f"demo exited early: {printed}"
            printed += line
        token_line = next(line for line in printed.splitlines() if "TOKEN=$(" in line)
        minted = run_printed(re.search(r"TOKEN=\$\((.*)\)", token_line).group(1), tmp_path, env)
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        proxy = re.search(r"proxy (http://\S+),", printed).group(1)
        bearer = {"Authorization": f"Bearer {token}"}
        wait_until(lambda: httpx2.get(f"{proxy}/status").status_code == 200, what="demo upstream")
        allowed = httpx2.get(f"{proxy}/v1/customers/42", headers=bearer)
        assert allowed.status_code == 200
        assert allowed.json()["seen_by_upstream"]["x-tollbooth-agent"] == "billing-bot"
        denied = httpx2.post(f"{proxy}/v1/customers", headers=bearer, json={"name": "Alan"})
        assert denied.status_code == 403 and denied.json()["error"] == "insufficient_scope"
        assert httpx2.get(f"{proxy}/v1/customers/42").status_code == 401
        # 5. MCP through the example's crm-mcp route: a crm.read agent sees and calls only the read tools.
        tools = asyncio.run(mcp_tools(f"{proxy}/mcp", token))
        assert tools == ["get_customer", "search_customers"]
        while "--mcp-tool delete_customer" not in printed:
            printed += process.stdout.readline()
        for line in printed.splitlines()[-2:]:
            done = run_printed(line, tmp_path, env)
            if " mcp draft " in line:
                assert done.returncode == 0, done.stderr
                drafted = {rule["name"]: rule["scopes"] for rule in yaml.safe_load(done.stdout)["mcp"]["tools"]}
                assert drafted["delete_customer"] == ["crm.admin"] and drafted["get_customer"] == ["crm.read"]
            else:
                assert done.returncode == 1 and "no_matching_rule" in done.stdout, done.stdout
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def run_printed(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A `.venv/bin/tollbooth ...` line the demo printed, run with this interpreter."""
    command = shlex.split(line.strip())
    assert command[0] == ".venv/bin/tollbooth"
    return subprocess.run(
        [sys.executable, "-m", "gateway", *command[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


async def mcp_tools(url: str, token: str) -> list[str]:
    async with sdk_session(url, token) as session:
        return sorted(tool.name for tool in (await session.list_tools()).tools)


def _readme_block(marker: str, replacements: dict[str, str], doc: str = "README.md", kind: str = "walkthrough") -> str:
    """The fenced block after `<!-- {kind}: {marker} ... -->` in `doc`, moved to the test's ports."""
    readme = (ROOT / doc).read_text()
    start = readme.index(f"<!-- {kind}: {marker}")
    block = readme[readme.index("\n```", start) :].split("\n", 2)[2]
    block = block[: block.index("\n```")]
    for old, new in replacements.items():
        block = block.replace(old, new)
    return block


def test_readme_token_service_walkthrough_works_as_written(tmp_path: Path):
    config_path = demo_config(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the README's commands say .venv/bin/...
    env = DEMO_ENV
    process = start_demo(config_path, tmp_path)
    try:
        assert process.stdout is not None
        while "Try it" not in (line := process.stdout.readline()):
            assert line, "demo exited early"
        moves = {
            "http://127.0.0.1:8081": config["issuer"]["url"],
            "http://127.0.0.1:8080": config["proxy"]["public_url"],
            "http://127.0.0.1:9000": config["upstreams"]["crm"]["url"],
        }
        proxy = config["proxy"]["public_url"]
        wait_until(lambda: httpx2.get(f"{proxy}/status").status_code == 200, what="demo upstream")
        shell = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", _readme_block("token service", moves)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shell.returncode == 0, shell.stderr
        direct, delegated, revoked = shell.stdout.split("\n", 2)
        assert json.loads(direct)["seen_by_upstream"]["x-tollbooth-agent"] == "billing-bot"
        seen = json.loads(delegated)["seen_by_upstream"]
        assert seen["x-tollbooth-subject"] == "user:alice" and seen["x-tollbooth-delegation"] == "billing-bot"
        assert revoked.startswith("HTTP/1.1 401") and "has been revoked" in revoked

        authlib = subprocess.run(
            [sys.executable, "-c", _readme_block("authlib", moves)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert authlib.returncode == 0, authlib.stderr
        assert "Ada Lovelace" in authlib.stdout
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_agents_doc_examples_work_as_written(tmp_path: Path):
    """docs/agents.md: the complete agent, the private-key agent after `keys agent` and a config edit, and
    delegation, each run as printed against the demo."""
    config_path = demo_config(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    process = start_demo(config_path, tmp_path)
    moves = {
        "http://127.0.0.1:8081": config["issuer"]["url"],
        "http://127.0.0.1:8080": config["proxy"]["public_url"],
        "http://127.0.0.1:9000": config["upstreams"]["crm"]["url"],
    }

    def run(marker: str, *command: str) -> subprocess.CompletedProcess[str]:
        block = _readme_block(marker, moves, doc="docs/agents.md", kind="example")
        return subprocess.run([*command, block], cwd=tmp_path, env=DEMO_ENV, capture_output=True, text=True, timeout=60)

    try:
        assert process.stdout is not None
        while "Try it" not in (line := process.stdout.readline()):
            assert line, "demo exited early"
        proxy = config["proxy"]["public_url"]
        wait_until(lambda: httpx2.get(f"{proxy}/status").status_code == 200, what="demo upstream")

        agent = run("agent", sys.executable, "-c")
        assert agent.returncode == 0, agent.stderr
        assert "Ada Lovelace" in agent.stdout
        audit = tmp_path / "audit.jsonl"
        wait_until(lambda: '"token.revoked"' in audit.read_text(), what="the token revoked on leaving the block")

        keys = run("keys", "bash", "-e", "-c")
        assert keys.returncode == 0, keys.stderr
        printed = yaml.safe_load(keys.stdout)["agents"]["report-bot"]
        config["agents"]["report-bot"] = {**printed, "scopes": ["crm.read"]}  # "add what the agent may do"
        config_path.write_text(yaml.safe_dump(config))
        keyed = wait_until(
            lambda: (done := run("private key", sys.executable, "-c")).returncode == 0 and done,
            timeout=20,
            what="the reloaded config to accept report-bot",
        )
        assert "Ada Lovelace" in keyed.stdout

        delegation = run("delegation", sys.executable, "-c")
        assert delegation.returncode == 0, delegation.stderr
        assert "'x-tollbooth-subject': 'user:alice'" in delegation.stdout
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
