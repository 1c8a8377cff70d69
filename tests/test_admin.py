"""/readyz: every problem makes it 503; with `?degraded=ok` only the problems that stop the gateway serving do."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx2
import pytest

from gateway.admin import ReadinessCheck, admin_app
from gateway.config import Config
from gateway.serve import Gateway


def check(problem: str | None) -> ReadinessCheck:
    async def run() -> str | None:
        return problem

    return run


def readyz(problems: dict[str, str | None], degradable: frozenset[str], query: str = "") -> tuple[int, str]:
    app = admin_app({name: check(problem) for name, problem in problems.items()}, lambda: degradable)

    async def get() -> httpx2.Response:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://admin") as http:
            return await http.get("/readyz" + query)

    response = asyncio.run(get())
    return response.status_code, response.json()["status"]


@pytest.mark.parametrize(
    ("problems", "degradable", "plain", "tolerant"),
    [
        ({"keys": None, "state": None}, frozenset({"state"}), (200, "ready"), (200, "ready")),
        ({"keys": None, "state": "redis unreachable"}, frozenset({"state"}), (503, "degraded"), (200, "degraded")),
        # Strict mode: nothing is degradable, so the replica leaves the load balancer.
        ({"keys": None, "state": "redis unreachable"}, frozenset(), (503, "degraded"), (503, "degraded")),
        ({"keys": "no signing keys loaded", "state": None}, frozenset({"state"}), (503, "degraded"), (503, "degraded")),
        # A problem that says it is only a degradation (events spooled) never blocks the tolerant probe.
        ({"audit": "degraded: redis unreachable, events spooled"}, frozenset(), (503, "degraded"), (200, "degraded")),
        ({"audit": "cannot take events: spool failing"}, frozenset({"state"}), (503, "degraded"), (503, "degraded")),
    ],
)
def test_readiness_with_and_without_tolerating_degradation(
    problems: dict[str, str | None], degradable: frozenset[str], plain: tuple[int, str], tolerant: tuple[int, str]
):
    assert readyz(problems, degradable) == plain
    assert readyz(problems, degradable, "?degraded=ok") == tolerant


@pytest.mark.parametrize(
    ("on_failure", "degradable"),
    [("spool", {"state", "rate_limits", "redis", "audit"}), ("deny", set())],
)
def test_what_a_degraded_gateway_still_serves_depends_on_strict_mode(on_failure: str, degradable: set[str]):
    config = Config.model_validate({"audit": {"on_failure": on_failure}})
    assert Gateway.degradable(SimpleNamespace(loaded=SimpleNamespace(config=config))) == degradable  # type: ignore[arg-type]
