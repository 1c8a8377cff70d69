"""Shared state without Redis: the revocations file shared by a machine's processes, and in-memory families."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from support import ROOT

from gateway.principal import Principal
from gateway.state import LocalState, RefreshGrant, RefreshReused, StateUnavailable, open_state, refresh_token_hash
from gateway.state.journal import RevocationJournal

pytestmark = pytest.mark.anyio
Until = Callable[..., Awaitable[Any]]  # the `until` fixture of tests/state/conftest.py


def principal(jti: str = "j1", agent: str = "billing-bot", subject: str = "user:alice", iat: float = 0.0) -> Principal:
    now = time.time()
    return Principal(agent, subject, frozenset(), jti, "https://issuer.test", now + 300, iat or now - 10)


def state(path: Path, **kwargs: Any) -> LocalState:
    return LocalState(path, poll_interval=0.02, **kwargs)


# ---- the journal ---------------------------------------------------------------------------------------------------


def test_a_line_still_being_written_is_read_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"
    journal = RevocationJournal(path)
    path.write_bytes(b'{"jti":"a","exp":1}\n{"jti":"b",')
    assert journal.read_new() == [{"jti": "a", "exp": 1}]
    assert not journal.changed()
    with path.open("ab") as file:
        file.write(b'"exp":2}\n')
    assert journal.changed()
    assert journal.read_new() == [{"jti": "b", "exp": 2}]
    assert journal.read_new() == []


def test_malformed_lines_are_skipped_and_the_rest_read(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"
    path.write_bytes(b'{"jti":"a","exp":1}\n{"jti":"tru\n[1]\n\n{"agent":"x","before":2}\n')
    assert RevocationJournal(path).read_new() == [{"jti": "a", "exp": 1}, {"agent": "x", "before": 2}]


def test_a_replaced_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"
    journal = RevocationJournal(path)
    journal.append([{"jti": "a", "exp": 1}, {"jti": "b", "exp": 2}])
    assert len(journal.read_new()) == 2
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(b'{"jti":"c","exp":3}\n')
    replacement.replace(path)
    assert journal.read_new() == [{"jti": "c", "exp": 3}]


def test_appends_from_many_processes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"
    writer = (
        "import sys; from pathlib import Path; from gateway.state.journal import RevocationJournal\n"
        "journal = RevocationJournal(Path(sys.argv[1]))\n"
        "for n in range(200): journal.append([{'jti': f'{sys.argv[2]}-{n}-' + 'x' * 300, 'exp': n}])\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", writer, str(path), str(w)], cwd=ROOT) for w in range(4)]
    assert [w.wait(timeout=30) for w in writers] == [0, 0, 0, 0]
    records = RevocationJournal(path).read_new()
    assert len(records) == 800 and len({r["jti"] for r in records}) == 800


# ---- LocalState ----------------------------------------------------------------------------------------------------


async def test_the_file_is_private_and_its_directory_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "revocations.jsonl"
    local = state(path)
    await local.revoke_jti("j1", time.time() + 60)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert local.revocations.is_revoked(principal("j1"))  # at once, in the writer


async def test_two_processes_on_one_file_see_each_others_revocations(tmp_path: Path, until: Until) -> None:
    path = tmp_path / "revocations.jsonl"
    first, second = state(path), state(path)
    await first.start()
    await second.start()
    try:
        await first.revoke_jti("j1", time.time() + 60)
        await second.revoke_agent_before("other-bot", time.time())
        await second.revoke_subject_before("user:carol", time.time())
        await until(lambda: second.revocations.is_revoked(principal("j1")), "the jti in the other process", 1.0)
        await until(lambda: first.revocations.is_revoked(principal("j2", agent="other-bot")), "the agent cut-off", 1.0)
        await until(lambda: first.revocations.is_revoked(principal("j3", subject="user:carol")), "the subject", 1.0)
        assert not first.revocations.is_revoked(principal("j4"))
        assert first.problem() is None and second.problem() is None
    finally:
        await first.aclose()
        await second.aclose()


async def test_revocations_survive_a_restart_and_expired_ones_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"
    before = state(path, retention=30)
    await before.revoke_jti("live", time.time() + 60)
    await before.revoke_jti("expired", time.time() - 31)
    await before.revoke_agent_before("billing-bot", time.time() - 100)
    after = state(path, retention=30)
    await after.start()
    try:
        assert after.revocations.is_revoked(principal("live"))
        assert not after.revocations.is_revoked(principal("expired"))
        assert after.revocations.is_cut_off("billing-bot", "user:alice", time.time() - 101)
        assert REGISTRY.get_sample_value("tollbooth_state_up", {"backend": "file"}) == 1
    finally:
        await after.aclose()


async def test_the_cli_revokes_without_starting(tmp_path: Path, until: Until) -> None:
    path = tmp_path / "revocations.jsonl"
    proxy = state(path)
    await proxy.start()
    try:
        cli = open_state("", revocations_file=path)
        await cli.revoke_subject_before("user:alice", time.time())
        await cli.aclose()
        await until(lambda: proxy.revocations.is_revoked(principal("j1")), "the CLI's revocation")
    finally:
        await proxy.aclose()


async def test_an_unwritable_file_is_state_unavailable(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    local = state(tmp_path / "not-a-dir" / "revocations.jsonl")
    with pytest.raises(StateUnavailable, match="not writable"):
        await local.revoke_jti("j1", time.time() + 60)


async def test_an_unreadable_file_degrades_readiness_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "revocations.jsonl"
    path.mkdir()  # a directory where the file should be
    local = state(path)
    await local.start()
    try:
        problem = local.problem()
        assert problem is not None and "unreachable since" in problem and "no revocations loaded yet" in problem
        assert REGISTRY.get_sample_value("tollbooth_state_up", {"backend": "file"}) == 0
    finally:
        await local.aclose()
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


async def test_reuse_revokes_the_family_and_its_access_tokens_everywhere(tmp_path: Path, until: Until) -> None:
    path = tmp_path / "revocations.jsonl"
    issuer, proxy = state(path), state(path)
    await proxy.start()
    h0, h1, h2 = (refresh_token_hash(f"t{i}") for i in range(3))
    grant = RefreshGrant("f1", "billing-bot", "user:alice", ("crm.read",), None, time.time(), time.time() + 3600)
    try:
        await issuer.store_refresh(h0, grant)
        assert await issuer.rotate_refresh(h0, h1, time.time()) == grant
        assert await issuer.record_family_token("f1", "at-1", time.time() + 300)
        with pytest.raises(RefreshReused):
            await issuer.rotate_refresh(h0, h2, time.time())
        assert await issuer.rotate_refresh(h1, h2, time.time()) is None
        await until(lambda: proxy.revocations.is_revoked(principal("at-1")), "the family's access token revoked")
        assert not await issuer.record_family_token("f1", "at-2", time.time() + 300)
        assert issuer.revocations.is_revoked(principal("at-2"))
    finally:
        await proxy.aclose()


async def test_assertion_jtis_are_single_use_per_client(tmp_path: Path) -> None:
    local = state(tmp_path / "revocations.jsonl")
    assert await local.use_assertion_jti("bot", "j1", time.time() + 60)
    assert not await local.use_assertion_jti("bot", "j1", time.time() + 60)
    assert await local.use_assertion_jti("other-bot", "j1", time.time() + 60)
