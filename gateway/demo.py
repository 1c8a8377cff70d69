"""`make run`: a fake CRM API as the upstream (with an MCP server at /mcp, built with the official `mcp` SDK), the
gateway on the example config, and lines to try."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import time
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import uvicorn
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from gateway.config import LoadedConfig
from gateway.serve import QuietServer, run_gateway
from gateway.tokens.jwk import public_members, thumbprint

_CUSTOMERS = {
    "42": {"id": "42", "name": "Ada Lovelace", "email": "ada@example.com", "plan": "enterprise"},
    "43": {"id": "43", "name": "Grace Hopper", "email": "grace@example.com", "plan": "team"},
}


def _seen(request: Request) -> dict[str, str]:
    """What the gateway stamped, echoed back so a demo user can see it (a real API would not do this)."""
    return {
        k: v for k, v in request.headers.items() if k.startswith("x-tollbooth-") or k in ("traceparent", "x-request-id")
    }


DEMO_AGENT = "billing-bot"
DEMO_SECRET_FILE = Path(".tollbooth/demo/billing-bot.secret")
# The demo person who signs in with an MCP client (config/example.yaml's login.users.alice).
DEMO_PERSON = "alice"
DEMO_PASSWORD_FILE = Path(".tollbooth/demo/alice.password")
# Where config/example.yaml reads each demo secret's argon2id hash from (variable names, not secrets).
_DEMO_SECRETS = {
    DEMO_SECRET_FILE: "BILLING_BOT_SECRET_HASH",
    DEMO_PASSWORD_FILE: "ALICE_PASSWORD_HASH",
}
_DEMO_USER = re.compile(r"^[a-z0-9_-]{1,32}$")


def prepare_demo_secret(env: MutableMapping[str, str]) -> None:
    """Give the example's agent a secret and its demo person a password: each generated once into its file (0600),
    its argon2id hash put where config/example.yaml reads it. A value already in the environment (yours) is left
    alone."""
    for path, variable in _DEMO_SECRETS.items():
        if env.get(variable):
            continue
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(18))
        env[variable] = PasswordHasher().hash(path.read_text().strip())


class DemoIdentityProvider:
    """A stand-in for your users' identity provider: signs a user's access token on request, no login.

    Its tokens are subject tokens for token exchange (config `trusted_issuers`), so the demo can show delegation
    without an IdP of your own. Never run it outside the demo: anyone who can reach it can become any user.
    """

    def __init__(self, issuer: str, audience: str):
        self.issuer = issuer
        self.audience = audience
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._jwk = {**public_members(self._key.public_key()), "alg": "ES256", "use": "sig"}
        self._jwk["kid"] = thumbprint(public_members(self._key.public_key()))

    def routes(self, prefix: str) -> list[Route]:
        async def jwks(request: Request) -> Response:
            return JSONResponse({"keys": [self._jwk]})

        async def token(request: Request) -> Response:
            user = request.query_params.get("user", "alice")
            if not _DEMO_USER.match(user):
                return PlainTextResponse("user: 1-32 of a-z 0-9 _ -", status_code=400)
            now = int(time.time())
            claims = {
                "iss": self.issuer,
                "sub": f"user:{user}",
                "aud": self.audience,
                "iat": now,
                "exp": now + 600,
                "jti": secrets.token_urlsafe(12),
                "scope": request.query_params.get("scope", "crm.read"),
            }
            signed = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._jwk["kid"], "typ": "JWT"})
            return PlainTextResponse(signed)

        return [Route(f"{prefix}/jwks.json", jwks, methods=["GET"]), Route(f"{prefix}/token", token, methods=["GET"])]


def demo_identity_provider(loaded: LoadedConfig, upstream_url: str) -> DemoIdentityProvider | None:
    """The trusted issuer that lives on the demo server, when the config names one there."""
    for trusted in loaded.config.trusted_issuers:
        if trusted.issuer.startswith(upstream_url.rstrip("/") + "/"):
            return DemoIdentityProvider(trusted.issuer, (trusted.audiences or [loaded.config.issuer.url])[0])
    return None


def demo_mcp_server() -> Any:
    """The CRM as an MCP server: read tools, a write tool, a destructive one (no example rule allows it), a
    resource template and a prompt. Annotations let `tollbooth mcp draft` suggest scopes."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    server = MCPServer("tollbooth-demo-crm")
    read, destructive = ToolAnnotations(read_only_hint=True), ToolAnnotations(destructive_hint=True)

    @server.tool(annotations=read)
    def search_customers(query: str = "") -> list[dict[str, str]]:
        """Customers whose name contains the query."""
        return [c for c in _CUSTOMERS.values() if query.lower() in c["name"].lower()]

    @server.tool(annotations=read)
    def get_customer(customer_id: str) -> dict[str, str]:
        """One customer by id."""
        return _CUSTOMERS.get(customer_id, {})

    @server.tool()
    def create_customer(name: str, email: str) -> dict[str, str]:
        """Adds a customer."""
        new_id = str(40 + len(_CUSTOMERS) + 3)
        _CUSTOMERS[new_id] = {"id": new_id, "name": name, "email": email, "plan": "team"}
        return _CUSTOMERS[new_id]

    @server.tool(annotations=destructive)
    def delete_customer(customer_id: str) -> str:
        """Deletes a customer for good."""
        return "deleted" if _CUSTOMERS.pop(customer_id, None) else "no such customer"

    @server.resource("crm://customers/{customer_id}")
    def customer(customer_id: str) -> str:
        return json.dumps(_CUSTOMERS.get(customer_id, {}))

    @server.prompt()
    def summarize_customer(customer_id: str) -> str:
        return f"Summarize the account of customer {customer_id} in three sentences."

    return server


def crm_app(idp: DemoIdentityProvider | None = None) -> Starlette:
    async def list_customers(request: Request) -> Response:
        return JSONResponse({"customers": list(_CUSTOMERS.values()), "seen_by_upstream": _seen(request)})

    async def get_customer(request: Request) -> Response:
        customer = _CUSTOMERS.get(request.path_params["id"])
        if customer is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse({**customer, "seen_by_upstream": _seen(request)})

    async def create_customer(request: Request) -> Response:
        body = await request.json()
        new_id = str(40 + len(_CUSTOMERS) + 3)
        _CUSTOMERS[new_id] = {"id": new_id, **{k: str(v) for k, v in body.items() if k in ("name", "email", "plan")}}
        return JSONResponse(_CUSTOMERS[new_id], status_code=201)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            for n in range(3):
                yield f"event: update\ndata: {json.dumps({'n': n})}\n\n"
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def status(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    mcp_http = demo_mcp_server().streamable_http_app(streamable_http_path="/mcp")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with mcp_http.router.lifespan_context(app):  # the MCP server's session manager
            yield

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/v1/customers", list_customers, methods=["GET", "HEAD"]),
            Route("/v1/customers", create_customer, methods=["POST"]),
            Route("/v1/customers/{id}", get_customer, methods=["GET", "HEAD"]),
            Route("/v1/events", events, methods=["GET"]),
            Route("/status", status, methods=["GET", "HEAD"]),
            *(idp.routes(urlsplit(idp.issuer).path) if idp else []),
            Mount("", app=mcp_http),
        ],
    )


def try_lines(loaded: LoadedConfig, config_path: str) -> str:
    proxy = loaded.config.proxy.public_url
    cfg = shlex.quote(config_path)
    return f"""
Tollbooth is running: proxy {proxy}, metrics http://{loaded.config.admin.listen}/metrics

Try it (in another terminal):

  # 1. get a token (minted locally with the dev key; scopes must be within the agent's allowance)
  TOKEN=$(.venv/bin/tollbooth token --config {cfg} --agent billing-bot --scope crm.read)

  # 2. an allowed call: the upstream sees X-Tollbooth-* identity headers, never your token
  curl -s -H "Authorization: Bearer $TOKEN" {proxy}/v1/customers/42

  # 3. a denied call: creating a customer needs crm.write -> 403 insufficient_scope
  curl -si -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \\
       -d '{{"name": "Alan"}}' {proxy}/v1/customers

  # 4. no token -> 401 with the RFC 6750 challenge; the audit trail is in {loaded.config.audit.file}
  curl -si {proxy}/v1/customers/42
  tail -n 3 {loaded.config.audit.file}

  # 5. MCP: the demo CRM's MCP server is at {proxy}/mcp behind per-tool rules (docs/mcp.md). What it offers,
  #    as a draft of rules, and what one call would get:
  .venv/bin/tollbooth mcp draft --config {cfg} --route crm-mcp --scope-prefix crm
  .venv/bin/tollbooth explain --config {cfg} POST /mcp --scope crm.read --mcp-tool delete_customer

  # 6. A person's MCP client (MCP Inspector, an IDE): point it at {proxy}/mcp; it finds the sign-in page
  #    itself (docs/people.md). Sign in as {DEMO_PERSON} with the password in {DEMO_PASSWORD_FILE}:
  cat {DEMO_PASSWORD_FILE}
"""


async def run_demo(loaded: LoadedConfig, *, config_path: str) -> None:
    upstream_url = next(iter(loaded.config.upstreams.values())).url
    parts = urlsplit(upstream_url)
    # The gateway handles SIGINT/SIGTERM; the demo upstream stops when the gateway does.
    server = QuietServer(
        uvicorn.Config(
            crm_app(demo_identity_provider(loaded, upstream_url)),
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 80,
            log_level="warning",
            lifespan="on",
            loop="none",
        )
    )
    upstream = asyncio.create_task(server.serve())
    ready = asyncio.Event()
    gateway = asyncio.create_task(run_gateway(loaded, ready=ready))
    done, _ = await asyncio.wait({gateway, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if gateway not in done:
        print(try_lines(loaded, config_path), flush=True)
    try:
        await gateway
    finally:
        server.should_exit = True
        await upstream
