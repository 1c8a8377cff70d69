"""`make run`: a fake CRM API as the upstream, the gateway on the example config, and lines to try."""

from __future__ import annotations

import asyncio
import json
import shlex
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.config import LoadedConfig
from gateway.serve import QuietServer, run_gateway

_CUSTOMERS = {
    "42": {"id": "42", "name": "Ada Lovelace", "email": "ada@example.com", "plan": "enterprise"},
    "43": {"id": "43", "name": "Grace Hopper", "email": "grace@example.com", "plan": "team"},
}


def _seen(request: Request) -> dict[str, str]:
    """What the gateway stamped, echoed back so a demo user can see it (a real API would not do this)."""
    return {
        k: v for k, v in request.headers.items() if k.startswith("x-tollbooth-") or k in ("traceparent", "x-request-id")
    }


def crm_app() -> Starlette:
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
        async def stream():  # type: ignore[no-untyped-def]
            for n in range(3):
                yield f"event: update\ndata: {json.dumps({'n': n})}\n\n"
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def status(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/customers", list_customers, methods=["GET", "HEAD"]),
            Route("/v1/customers", create_customer, methods=["POST"]),
            Route("/v1/customers/{id}", get_customer, methods=["GET", "HEAD"]),
            Route("/v1/events", events, methods=["GET"]),
            Route("/status", status, methods=["GET", "HEAD"]),
        ]
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
"""


async def run_demo(loaded: LoadedConfig, *, config_path: str) -> None:
    upstream_url = next(iter(loaded.config.upstreams.values())).url
    parts = urlsplit(upstream_url)
    # The gateway handles SIGINT/SIGTERM; the demo upstream stops when the gateway does.
    server = QuietServer(
        uvicorn.Config(
            crm_app(),
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 80,
            log_level="warning",
            lifespan="off",
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
