"""The JSON-lines file sink: batched, ordered, never silently dropping, never holding a secret."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from gateway.audit.events import SCHEMA_VERSION, AuditEvent, config_event, rfc3339_ms
from gateway.audit.sinks import FileSink


def event(n: int, **fields: object) -> AuditEvent:
    return AuditEvent(event="access", ts=time.time(), request_id=f"req-{n}", **fields)  # type: ignore[arg-type]


def read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_to_fields_is_flat_strings_and_omits_empty_fields():
    fields = AuditEvent(event="access", ts=0.0, agent="bot", status=200, duration_ms=1.23456, bytes_in=0).to_fields()
    assert fields["v"] == SCHEMA_VERSION == "1"
    assert fields["ts"] == "1970-01-01T00:00:00.000Z"
    assert fields["status"] == "200" and fields["duration_ms"] == "1.235" and fields["bytes_in"] == "0"
    assert "subject" not in fields and "reason" not in fields
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["id"] and fields["instance"]


def test_rfc3339_has_milliseconds_and_z():
    assert rfc3339_ms(1764077295.1239) == "2025-11-25T13:28:15.123Z"


def test_config_events_name_the_file_and_reason():
    fields = config_event("config.rejected", reason="bad key", path="/etc/t.yaml").to_fields()
    assert (fields["event"], fields["path"], fields["reason"], fields["decision"]) == (
        "config.rejected",
        "/etc/t.yaml",
        "bad key",
        "deny",
    )


def test_events_are_written_in_order(tmp_path: Path):
    async def scenario() -> None:
        sink = FileSink(tmp_path / "audit" / "a.jsonl")
        await sink.start()
        for n in range(5000):
            assert sink.emit(event(n))
        await sink.aclose()

    asyncio.run(scenario())
    lines = read(tmp_path / "audit" / "a.jsonl")
    assert [line["request_id"] for line in lines] == [f"req-{n}" for n in range(5000)]
    assert oct(os.stat(tmp_path / "audit" / "a.jsonl").st_mode & 0o777) == "0o600"


def test_a_full_queue_refuses_instead_of_dropping_silently(tmp_path: Path):
    async def scenario() -> list[bool]:
        sink = FileSink(tmp_path / "a.jsonl", queue_size=3)
        await sink.start()
        # No await between emits: the writer cannot run, so the fourth finds the queue full.
        accepted = [sink.emit(event(n)) for n in range(4)]
        assert not sink.healthy
        await sink.aclose()
        return accepted

    assert asyncio.run(scenario()) == [True, True, True, False]
    assert len(read(tmp_path / "a.jsonl")) == 3


def test_unwritable_file_keeps_events_queued_and_reports_unhealthy(tmp_path: Path):
    async def scenario() -> None:
        sink = FileSink(tmp_path / "a.jsonl")
        await sink.start()
        real_fd = sink._fd
        sink._fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF
        assert sink.emit(event(1))
        deadline = time.monotonic() + 5
        while sink.healthy:
            assert time.monotonic() < deadline, "sink never reported the failing write"
            await asyncio.sleep(0.01)
        os.close(sink._fd)
        sink._fd = real_fd  # the disk is back: the queued event is written, not lost
        await sink.aclose()

    asyncio.run(scenario())
    assert [line["request_id"] for line in read(tmp_path / "a.jsonl")] == ["req-1"]


def test_an_unencodable_field_is_escaped_and_the_writer_lives_on(tmp_path: Path):
    async def scenario() -> bool:
        sink = FileSink(tmp_path / "a.jsonl")
        await sink.start()
        sink.emit(event(1, subject="user-\ud800"))
        sink.emit(event(2))
        await sink.aclose()
        return sink._task is not None and sink._task.exception() is None

    assert asyncio.run(scenario())
    lines = read(tmp_path / "a.jsonl")
    assert [line["request_id"] for line in lines] == ["req-1", "req-2"]
    assert lines[0]["subject"] == "user-\\ud800"


def test_a_sink_whose_writer_stopped_is_unhealthy(tmp_path: Path):
    async def scenario() -> bool:
        sink = FileSink(tmp_path / "a.jsonl")
        await sink.start()
        assert sink.healthy
        await sink.aclose()
        return sink.healthy

    assert asyncio.run(scenario()) is False


_PARTIAL_WRITE = r"""
import asyncio, resource, signal, sys, time
from pathlib import Path
from gateway.audit.events import AuditEvent
from gateway.audit.sinks import FileSink

path = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us


async def main() -> None:
    sink = FileSink(path, batch_size=20)
    await sink.start()
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, hard))  # a "full disk" in the middle of the batch
    for n in range(20):
        sink.emit(AuditEvent(event="access", ts=time.time(), request_id=f"req-{n}"))
    deadline = time.monotonic() + 10
    while sink.healthy and time.monotonic() < deadline:  # until the writer has hit the limit
        await asyncio.sleep(0.01)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
    await sink.aclose()


asyncio.run(main())
"""


def test_a_partly_written_batch_is_finished_not_written_again(tmp_path: Path):
    import subprocess
    import sys

    # In a process of its own: a file-size limit in the test process would also hit pytest's own files.
    path = tmp_path / "audit.jsonl"
    subprocess.run([sys.executable, "-c", _PARTIAL_WRITE, str(path)], check=True, timeout=30)
    events = read(path)
    assert [e["request_id"] for e in events] == [f"req-{n}" for n in range(20)]
