"""A delegated token falls with what it came from: the token it was exchanged from, any agent in its chain, the
subject's cut-off, and the config it was granted under (findings of an adversarial review, each as a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml
from support import Gateway, Upstream, start_gateway, wait_until
from token_support import SecretAgent, TestIdP, claims_of, exchanged, refused_at_proxy, unsigned_jwt

FIRST = SecretAgent("first", "first-secret")
SECOND = SecretAgent("second", "second-secret")
EVERYONE = {"scopes": ["crm.read", "crm.write"], "may_act_for": ["*"], "refresh_tokens": True}


@pytest.fixture(scope="module")
def gw(idp: TestIdP, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("lineage"),
        upstream.url,
        extra={
            "agents": {FIRST.client_id: FIRST.config(**EVERYONE), SECOND.client_id: SECOND.config(**EVERYONE)},
            "trusted_issuers": [idp.trusted_issuer()],
        },
    )
    yield gateway
    gateway.stop()


def revoke_cli(gw: Gateway, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "revoke", "--config", str(gw.config_path), *args],
        cwd=cwd or gw.dir,
        capture_output=True,
        text=True,
        env={**os.environ, "TEST_UPSTREAM_KEY": "upstream-secret"},
    )


def test_revoking_a_token_revokes_the_tokens_exchanged_from_it(gw: Gateway, idp: TestIdP) -> None:
    user = idp.token("user:ann", gw.issuer_url)
    hop1 = exchanged(FIRST, gw, user)
    hop2 = exchanged(SECOND, gw, hop1["access_token"])
    assert claims_of(hop2["access_token"])["ancestor_jtis"] == [claims_of(hop1["access_token"])["jti"]]
    assert FIRST.revoke(gw, hop1["access_token"]).status_code == 200
    wait_until(lambda: refused_at_proxy(gw, hop2["access_token"]), what="the derived token refused")
    refreshed = SECOND.refresh(gw, hop2["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


def test_revoking_an_agent_revokes_tokens_with_it_in_their_chain(gw: Gateway, idp: TestIdP) -> None:
    user = idp.token("user:bea", gw.issuer_url)
    hop1 = exchanged(FIRST, gw, user)
    hop2 = exchanged(SECOND, gw, hop1["access_token"])
    assert revoke_cli(gw, "--agent", FIRST.client_id).returncode == 0
    wait_until(lambda: refused_at_proxy(gw, hop2["access_token"]), what="a chain through the revoked agent refused")
    assert SECOND.refresh(gw, hop2["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_subject_cut_off_also_refuses_the_users_old_identity_provider_token(gw: Gateway, idp: TestIdP) -> None:
    user = idp.token("user:cid", gw.issuer_url)
    first = exchanged(SECOND, gw, user)
    assert revoke_cli(gw, "--subject", "user:cid").returncode == 0
    wait_until(lambda: refused_at_proxy(gw, first["access_token"]), what="the delegated token refused")
    again = SECOND.exchange(gw, user)
    assert again.status_code == 400 and "revoked" in again.json()["error_description"]
    fresh = SECOND.exchange(gw, idp.token("user:cid", gw.issuer_url, iat=None))  # no iat: every cut-off applies
    assert fresh.status_code == 400


def test_a_refresh_family_never_outlives_its_subject_token(gw: Gateway, idp: TestIdP) -> None:
    user = idp.token("user:dee", gw.issuer_url, ttl=120)
    grant = exchanged(SECOND, gw, user)
    refreshed = SECOND.refresh(gw, grant["refresh_token"])
    assert refreshed.status_code == 200
    assert claims_of(refreshed.json()["access_token"])["exp"] <= claims_of(user)["exp"]


def test_an_identity_providers_act_chain_is_reduced_to_its_actors(gw: Gateway, idp: TestIdP) -> None:
    user = idp.token("user:eve", gw.issuer_url, act={"sub": "portal", "extra": {"role": "admin"}})
    act = claims_of(exchanged(SECOND, gw, user)["access_token"])["act"]
    assert act == {"sub": SECOND.client_id, "act": {"sub": "portal"}}


def test_refresh_follows_the_agents_current_config(gw: Gateway, idp: TestIdP) -> None:
    grant = exchanged(FIRST, gw, idp.token("user:fay", gw.issuer_url), scope="crm.read crm.write")
    config = yaml.safe_load(gw.config_path.read_text())
    narrowed = {**config["agents"][FIRST.client_id], "scopes": ["crm.read"]}
    try:
        write_config(gw, {**config, "agents": {**config["agents"], FIRST.client_id: narrowed}})
        wait_until(lambda: FIRST.token(gw, scope="crm.write").status_code == 400, what="the narrowed config")
        refreshed = FIRST.refresh(gw, grant["refresh_token"])
        assert refreshed.status_code == 200 and refreshed.json()["scope"] == "crm.read"

        stopped = {**narrowed, "may_act_for": ["user:nobody"]}
        write_config(gw, {**config, "agents": {**config["agents"], FIRST.client_id: stopped}})
        wait_until(lambda: FIRST.exchange(gw, idp.token("user:fay", gw.issuer_url)).status_code == 400, what="reload")
        refused = FIRST.refresh(gw, refreshed.json()["refresh_token"])
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    finally:
        write_config(gw, config)
        wait_until(lambda: FIRST.token(gw, scope="crm.write").status_code == 200, what="the original config")


def write_config(gw: Gateway, config: dict[str, object]) -> None:
    temporary = gw.config_path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(config))
    temporary.replace(gw.config_path)


def test_an_oversized_body_is_refused_before_it_is_read(gw: Gateway) -> None:
    declared = httpx2.post(
        f"{gw.issuer_url}/oauth/token",
        content=b"x" * 100_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert declared.status_code == 400 and "larger than" in declared.json()["error_description"]

    def chunked() -> Iterator[bytes]:
        yield from (b"a=" + b"x" * 30_000 for _ in range(5))

    streamed = httpx2.post(
        f"{gw.issuer_url}/oauth/token", content=chunked(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert streamed.status_code == 400 and "larger than" in streamed.json()["error_description"]


@pytest.mark.parametrize("kid", [["x"], {"a": 1}, 7])
def test_a_token_with_a_strange_kid_is_inactive_and_revocable(gw: Gateway, kid: object) -> None:
    token = unsigned_jwt({"alg": "ES256", "kid": kid, "typ": "at+jwt"}, {"iss": gw.issuer_url}, b"sig")
    assert FIRST.introspect(gw, token).json() == {"active": False}
    assert FIRST.revoke(gw, token).status_code == 200


def test_revoke_from_elsewhere_refuses_instead_of_revoking_nothing(gw: Gateway, tmp_path: Path) -> None:
    result = revoke_cli(gw, "--jti", "some-id", cwd=tmp_path)
    assert result.returncode == 1
    assert "no revocations file" in result.stderr and str(tmp_path) in result.stderr
    assert not (tmp_path / ".tollbooth").exists()


def test_strict_mode_refuses_before_revoking_when_the_audit_cannot_record_it(upstream: Upstream, tmp_path: Path):
    # /dev/full: every write fails with ENOSPC, a disk that is full for the whole test.
    config = {"audit": {"file": "/dev/full", "on_failure": "deny"}, "agents": {FIRST.client_id: FIRST.config()}}
    gateway = start_gateway(tmp_path, upstream.url, extra=config, ready=False)
    try:
        token = gateway.mint("crm.read", agent=FIRST.client_id)
        httpx2.get(f"{gateway.proxy_url}/status")  # its audit event meets the full disk
        wait_until(
            lambda: httpx2.get(f"{gateway.admin_url}/readyz").json()["checks"]["audit"] != "ok",
            what="the audit sink to report the failure",
        )
        refused = FIRST.revoke(gateway, token)
        assert refused.status_code == 503 and refused.json()["error"] == "temporarily_unavailable"
        journal = tmp_path / ".tollbooth" / "revocations.jsonl"
        assert claims_of(token)["jti"] not in (journal.read_text() if journal.exists() else "")
    finally:
        gateway.stop()
