"""A gateway on Redis Sentinel and on Redis Cluster: tokens, refresh rotation, revocations that reach the proxy
through pub/sub, the CLI, and audit events in the stream. Real sentinels and cluster nodes of the tests' own."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from redis_topologies import RedisCluster, RedisSentinel, redis_cluster, redis_sentinel  # noqa: F401
from support import Gateway, Upstream, start_gateway, wait_until
from token_support import SecretAgent, TestIdP, assert_oauth_error, claims_of, proxy_get, refused_at_proxy, user_token

from gateway.cli import main

AGENT = SecretAgent("assistant", "assistant-s3cret")
STREAM = "tollbooth:audit"  # the default, kept on Cluster too (DESIGN.md)
PROPAGATION = 1.0  # seconds: a revocation elsewhere reaches the proxy through pub/sub, not the 30 s resync


def gateway_on(url: str, tmp: Path, upstream: Upstream, idp: TestIdP) -> Gateway:
    agent = AGENT.config(scopes=["crm.read", "crm.write"], may_act_for=["*"], refresh_tokens=True)
    return start_gateway(
        tmp,
        upstream.url,
        extra={"redis": {"url": url}, "agents": {AGENT.client_id: agent}, "trusted_issuers": [idp.trusted_issuer()]},
    )


def module_gateway(topology: str) -> Any:
    """A module-wide gateway on the `redis_<topology>` fixture's Redis."""

    @pytest.fixture(scope="module")
    def fixture(
        request: pytest.FixtureRequest, upstream: Upstream, idp: TestIdP, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Gateway]:
        url = request.getfixturevalue(f"redis_{topology}").url
        gw = gateway_on(url, tmp_path_factory.mktemp(f"on-{topology}"), upstream, idp)
        yield gw
        gw.stop()

    return fixture


on_sentinel = module_gateway("sentinel")
on_cluster = module_gateway("cluster")
Cli = Callable[..., str]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`cli(gw, *args)`: `tollbooth <args> --config <gw's config>` in the test's process (not the gateway's): its
    standard output."""
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "upstream-secret")  # the config names it, as start_gateway sets it

    def run(gw: Gateway, *args: str) -> str:
        capsys.readouterr()
        assert main([*args, "--config", str(gw.config_path)]) == 0
        return capsys.readouterr().out

    return run


def request_id() -> dict[str, str]:
    return {"X-Request-Id": f"topology-{secrets.token_hex(8)}"}


def stream_has(client: redis.Redis | redis.cluster.RedisCluster, request_id: str, event: str) -> dict[str, str] | None:
    return next(
        (f for _, f in client.xrange(STREAM) if f.get("request_id") == request_id and f.get("event") == event), None
    )


def revoked_elsewhere_reaches_the_proxy(gw: Gateway, cli: Cli) -> None:
    """A token revoked by `tollbooth revoke` (here, not in the gateway) is refused at the proxy within PROPAGATION."""
    token = AGENT.access_token(gw)
    assert proxy_get(gw, "/v1/customers/1", token).status_code == 200
    cli(gw, "revoke", f"--jti={claims_of(token)['jti']}")  # one argument: a jti may start with "-"
    wait_until(lambda: refused_at_proxy(gw, token), PROPAGATION, "the proxy to refuse the revoked token")


# --- Sentinel -------------------------------------------------------------------------------------------------


def test_on_sentinel_a_revocation_from_another_process_reaches_the_proxy(on_sentinel: Gateway, cli: Cli):
    revoked_elsewhere_reaches_the_proxy(on_sentinel, cli)


def test_on_sentinel_token_events_land_in_the_masters_stream(
    on_sentinel: Gateway,
    redis_sentinel: RedisSentinel,  # noqa: F811
):
    headers = request_id()
    token = AGENT.token(on_sentinel, headers=headers).json()["access_token"]
    assert AGENT.revoke(on_sentinel, token, headers=headers).status_code == 200
    with redis.Redis(port=redis_sentinel.master_port(), decode_responses=True) as master:
        issued = wait_until(lambda: stream_has(master, headers["X-Request-Id"], "token.issued"), what="token.issued")
        wait_until(lambda: stream_has(master, headers["X-Request-Id"], "token.revoked"), what="token.revoked")
    assert issued["jti"] == claims_of(token)["jti"] and issued["agent"] == AGENT.client_id


def test_after_the_master_fails_the_gateway_works_on_the_promoted_replica(
    upstream: Upstream, idp: TestIdP, tmp_path: Path, cli: Cli
):
    with RedisSentinel.start(tmp_path / "redis") as topology:
        (tmp_path / "gateway").mkdir()
        gw = gateway_on(topology.url, tmp_path / "gateway", upstream, idp)
        try:
            revoked_elsewhere_reaches_the_proxy(gw, cli)
            token = AGENT.access_token(gw)
            new_master = topology.fail_master()
            # Ready again: revocations reloaded and followed on the new master, audit writing there.
            wait_until(lambda: httpx2.get(f"{gw.admin_url}/readyz").status_code == 200, 20, "/readyz")
            headers = request_id()
            # The issuer's pooled connection to the old master fails once (503); the next asks the sentinel.
            wait_until(lambda: AGENT.revoke(gw, token, headers=headers).status_code == 200, 5, "a revocation")
            assert refused_at_proxy(gw, token)
            revoked_elsewhere_reaches_the_proxy(gw, cli)
            with redis.Redis(port=new_master, decode_responses=True) as master:
                wait_until(lambda: stream_has(master, headers["X-Request-Id"], "token.revoked"), what="the audit")
        finally:
            gw.stop()


# --- Cluster --------------------------------------------------------------------------------------------------


def test_on_cluster_a_revocation_from_another_process_reaches_the_proxy(on_cluster: Gateway, cli: Cli):
    revoked_elsewhere_reaches_the_proxy(on_cluster, cli)


def test_on_cluster_refresh_rotates_and_a_reuse_ends_the_family(on_cluster: Gateway, idp: TestIdP):
    first = AGENT.exchange(on_cluster, user_token(idp, on_cluster), scope="crm.read").json()
    rotated = AGENT.refresh(on_cluster, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert proxy_get(on_cluster, "/v1/customers/1", second["access_token"]).status_code == 200
    assert_oauth_error(AGENT.refresh(on_cluster, first["refresh_token"]), "invalid_grant")  # reused: family ended
    assert refused_at_proxy(on_cluster, second["access_token"])
    assert_oauth_error(AGENT.refresh(on_cluster, second["refresh_token"]), "invalid_grant")


def test_on_cluster_events_land_in_the_configured_stream(
    on_cluster: Gateway,
    redis_cluster: RedisCluster,  # noqa: F811
):
    headers = request_id()
    token = AGENT.token(on_cluster, headers=headers).json()["access_token"]
    assert httpx2.get(f"{on_cluster.proxy_url}/status", headers=headers).status_code == 200
    with redis_cluster.client() as client:
        issued = wait_until(lambda: stream_has(client, headers["X-Request-Id"], "token.issued"), what="token.issued")
        wait_until(lambda: stream_has(client, headers["X-Request-Id"], "access"), what="the access event")
    assert issued["jti"] == claims_of(token)["jti"]


# --- both -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gateway", ["on_sentinel", "on_cluster"])
def test_audit_tail_reads_the_stream_through_the_topology(gateway: str, request: pytest.FixtureRequest, cli: Cli):
    gw: Gateway = request.getfixturevalue(gateway)
    headers = request_id()
    assert AGENT.token(gw, headers=headers).status_code == 200

    def tailed() -> set[str]:
        lines = cli(gw, "audit", "tail", "--json", "--lines", "50").splitlines()
        return {e["event"] for e in map(json.loads, lines) if e.get("request_id") == headers["X-Request-Id"]}

    assert wait_until(tailed, what="the event in `tollbooth audit tail`") == {"token.issued"}


@pytest.mark.parametrize("gateway", ["on_sentinel", "on_cluster"])
def test_readyz_pings_redis_through_the_topology(gateway: str, request: pytest.FixtureRequest):
    gw: Gateway = request.getfixturevalue(gateway)
    ready = httpx2.get(f"{gw.admin_url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["redis"] == "ok" and ready.json()["checks"]["state"] == "ok"
