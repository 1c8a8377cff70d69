"""While Redis is down the proxy serves on its last known revocations and says so; strict mode refuses instead."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from support import RedisServer, Upstream, start_gateway, wait_until


@pytest.mark.parametrize("on_failure", ["spool", "deny"])
def test_redis_outage_is_reported_and_strict_mode_refuses(
    tmp_path: Path, upstream: Upstream, redis_server: RedisServer, on_failure: str
) -> None:
    gateway = start_gateway(
        tmp_path,
        upstream.url,
        extra={"redis": {"url": redis_server.url}, "audit": {"on_failure": on_failure}},
    )
    try:
        bearer = {"Authorization": f"Bearer {gateway.mint('crm.read')}"}
        url = f"{gateway.proxy_url}/v1/customers/1"
        assert httpx2.get(url, headers=bearer).status_code == 200

        redis_server.stop()
        readiness = wait_until(
            lambda: (r := httpx2.get(f"{gateway.admin_url}/readyz")).status_code == 503 and r.json(),
            what="readiness to report the outage",
        )
        assert "unreachable" in readiness["checks"]["state"]
        assert "tollbooth_state_up" in gateway.metrics()
        answer = httpx2.get(url, headers=bearer)
        # The load balancer's probe: is this replica still serving? In strict mode it is not.
        serving = httpx2.get(f"{gateway.admin_url}/readyz", params={"degraded": "ok"})
        assert serving.json()["status"] == "degraded"
        if on_failure == "deny":
            assert answer.status_code == 503 and answer.json()["error"] == "revocations_unavailable"
            assert serving.status_code == 503
        else:
            assert answer.status_code == 200  # serving on the last known revocation set
            assert serving.status_code == 200

        redis_server.start()  # a fresh, empty Redis on the same port
        wait_until(lambda: httpx2.get(f"{gateway.admin_url}/readyz").status_code == 200, what="recovery", timeout=20)
        assert httpx2.get(url, headers=bearer).status_code == 200
    finally:
        gateway.stop()
