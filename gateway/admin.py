"""The admin listener: Prometheus metrics, liveness and readiness, and the admin API's routes (admin_api.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Collection, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

# A readiness check returns None when fine, else a short sentence saying what is wrong.
ReadinessCheck = Callable[[], Awaitable[str | None]]


def admin_app(
    checks: dict[str, ReadinessCheck],
    degradable: Callable[[], Collection[str]] = frozenset,
    api: Sequence[BaseRoute] = (),
) -> Starlette:
    """`degradable()`: the checks whose failure leaves the gateway serving (in a reduced way it reports). A check
    whose problem starts with "degraded:" is one too. `/readyz?degraded=ok` answers 200 while only those fail:
    the readiness probe a load balancer wants, so that a Redis outage does not take every replica out of service."""

    async def metrics(request: Request) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # `--workers N`: any worker may answer the scrape, so each one reports all workers' values.
            registry = CollectorRegistry()
            # prometheus_client leaves MultiProcessCollector.__init__ unannotated.
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        names = list(checks)
        results = await asyncio.gather(*(checks[name]() for name in names))
        problems = {name: result for name, result in zip(names, results, strict=True) if result is not None}
        body = {"status": "degraded" if problems else "ready", "checks": {n: problems.get(n, "ok") for n in names}}
        blocking = problems
        if request.query_params.get("degraded") == "ok":
            soft = degradable()
            blocking = {n: p for n, p in problems.items() if n not in soft and not p.startswith("degraded:")}
        return JSONResponse(body, status_code=503 if blocking else 200)

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            *api,
        ]
    )
