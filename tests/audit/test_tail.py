"""`tollbooth audit tail`: filters, --since, --follow, over the Redis stream and the JSON-lines file."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml
from support import RedisServer

from gateway.audit import tail as tail_module
from gateway.audit.tail import FileSource, StreamSource, TailFilter, stream_id_at, tail

ROOT = Path(__file__).resolve().parents[2]
STREAM = "tollbooth:audit"

EVENTS = [
    {"v": "1", "ts": "2026-01-01T00:00:00.000Z", "event": "access", "agent": "a", "subject": "u1", "decision": "allow"},
    {"v": "1", "ts": "2026-01-01T00:00:01.000Z", "event": "access", "agent": "b", "subject": "u1", "decision": "deny"},
    {"v": "1", "ts": "2026-01-01T00:00:02.000Z", "event": "access", "agent": "a", "subject": "u2", "decision": "deny"},
    {"v": "1", "ts": "2026-01-01T00:00:03.000Z", "event": "access", "agent": "a", "subject": "u1", "decision": "allow"},
]
AT = 1767225600.0  # 2026-01-01T00:00:00Z


def file_source(tmp_path: Path, events: list[dict[str, str]] = EVENTS) -> FileSource:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return FileSource(path)


def stream_source(server: RedisServer) -> StreamSource:
    client = redis.Redis(port=server.port, decode_responses=True)
    for n, fields in enumerate(EVENTS):
        client.xadd(STREAM, fields, id=stream_id_at(AT + n))
    return StreamSource(client, STREAM)


@pytest.mark.parametrize(
    ("flt", "limit", "expected"),
    [
        (TailFilter(), None, [0, 1, 2, 3]),
        (TailFilter(), 2, [2, 3]),
        (TailFilter(agent="a"), None, [0, 2, 3]),
        (TailFilter(agent="a", decision="deny"), None, [2]),
        (TailFilter(subject="u1"), 2, [1, 3]),
        (TailFilter(decision="allow"), 1, [3]),
        (TailFilter(since=AT + 1.5), None, [2, 3]),
        (TailFilter(since=AT + 1, agent="b"), None, [1]),
    ],
)
def test_filters_over_the_file_and_the_stream_agree(
    tmp_path: Path, redis_server: RedisServer, flt: TailFilter, limit: int | None, expected: list[int]
):
    want = [EVENTS[n] for n in expected]
    assert file_source(tmp_path).history(flt, limit) == want
    assert stream_source(redis_server).history(flt, limit) == want


def test_history_pages_backwards_through_a_long_stream_and_file(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(tail_module, "_PAGE", 3)
    monkeypatch.setattr(tail_module, "_FILE_BLOCK", 50)
    many = [{**EVENTS[n % 4], "request_id": f"r{n}"} for n in range(50)]
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    for fields in many:
        client.xadd(STREAM, fields)
    want = [e for e in many if e["agent"] == "a"][-10:]
    assert StreamSource(client, STREAM).history(TailFilter(agent="a"), 10) == want
    assert file_source(tmp_path, many).history(TailFilter(agent="a"), 10) == want


def test_follow_prints_new_matching_events(tmp_path: Path, redis_server: RedisServer):
    source = stream_source(redis_server)
    source.history(TailFilter(), 1)
    follow = source.follow()
    redis.Redis(port=redis_server.port).xadd(STREAM, {"agent": "late", "decision": "allow"})
    assert next(follow)["agent"] == "late"

    files = file_source(tmp_path)
    files.history(TailFilter(), 1)
    follow = files.follow()
    with (tmp_path / "audit.jsonl").open("a") as out:
        out.write(json.dumps({"agent": "late-too"}) + "\n")
    assert next(follow)["agent"] == "late-too"


def test_table_on_a_terminal_json_lines_otherwise(tmp_path: Path):
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump({"audit": {"file": str(tmp_path / "audit.jsonl")}}))
    file_source(tmp_path)
    command = [sys.executable, "-m", "gateway", "audit", "tail", "--config", str(config), "--decision", "deny"]
    piped = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [json.loads(line) for line in piped.splitlines()] == [EVENTS[1], EVENTS[2]]

    primary, replica = pty.openpty()
    subprocess.run([*command, "--agent", "b"], cwd=ROOT, stdout=replica, check=True)
    os.close(replica)
    table = os.read(primary, 65536).decode().splitlines()
    os.close(primary)
    assert table[0].split()[:4] == ["TS", "EVENT", "DECISION", "STATUS"]
    assert len(table) == 2 and table[1].split()[:5] == ["2026-01-01T00:00:01.000Z", "access", "deny", "-", "b"]


def test_tail_command_reads_the_stream_when_redis_is_configured(tmp_path: Path, redis_server: RedisServer):
    stream_source(redis_server)
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": redis_server.url}}))
    command = [sys.executable, "-m", "gateway", "audit", "tail", "--config", str(config), "--subject", "u1", "-n", "2"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [json.loads(line) for line in out.splitlines()] == [EVENTS[1], EVENTS[3]]


def test_since_is_relative_to_now(tmp_path: Path):
    recent = {**EVENTS[0], "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
    out = io.StringIO()
    tail(
        file_source(tmp_path, [*EVENTS, recent]),
        TailFilter(since=time.time() - 600),
        out,
        limit=None,
        follow=False,
        as_json=True,
    )
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [recent]


def test_the_table_escapes_control_bidi_and_zero_width_characters():
    row = tail_module.format_event(
        {"event": "access", "subject": "u:\u202eev\u200b", "path": "/a\x1b[2Jb", "decision": "allow"},
        as_json=False,
    )
    assert "\u202e" not in row and "\u200b" not in row and "\x1b" not in row
    assert "u:\\u202eev\\u200b" in row and "/a\\u001b[2Jb" in row
