"""The admin listener: readiness follows what the gateway depends on."""

from __future__ import annotations

import httpx2
from support import RedisServer, Upstream, start_gateway, wait_until


def test_readyz_reports_redis_down_and_recovers(upstream: Upstream, redis_server: RedisServer, tmp_path):
    gw = start_gateway(tmp_path, upstream.url, extra={"redis": {"url": redis_server.url}})
    try:
        ready = httpx2.get(gw.admin_url + "/readyz").json()
        assert ready["status"] == "ready" and ready["checks"]["redis"] == "ok"
        redis_server.stop()
        down = httpx2.get(gw.admin_url + "/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["redis"].startswith("redis unreachable")
        assert httpx2.get(gw.admin_url + "/healthz").status_code == 200
        redis_server.start()
        wait_until(lambda: httpx2.get(gw.admin_url + "/readyz").status_code == 200, what="ready again")
    finally:
        gw.stop()


def test_metrics_are_prometheus_text(gateway):
    response = httpx2.get(gateway.admin_url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE tollbooth_requests_total counter" in response.text
    assert "tollbooth_requests_in_flight" in response.text
