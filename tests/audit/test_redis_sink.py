"""The Redis Streams sink against a real redis-server: order, outages, slowness, restarts, and never a duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from support import RedisServer

from gateway.audit.events import AuditEvent, encode_event
from gateway.audit.streams import RedisStreamSink

STREAM = "audit-test"


def event(n: int) -> AuditEvent:
    return AuditEvent(event="access", ts=time.time(), request_id=f"req-{n}", agent="bot", decision="allow")


def request_ids(server: RedisServer) -> list[str]:
    client = redis.Redis(port=server.port, decode_responses=True)
    return [fields["request_id"] for _, fields in client.xrange(STREAM)]


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("tollbooth_audit_events_total", {"sink": "redis", "outcome": outcome}) or 0.0


def sink_for(server: RedisServer, spool: Path, **options: object) -> RedisStreamSink:
    return RedisStreamSink(server.url, stream=STREAM, max_len=1_000_000, spool_dir=spool, **options)  # type: ignore[arg-type]


async def until(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


@contextlib.contextmanager
def hung(server: RedisServer) -> Iterator[None]:
    """Redis frozen (SIGSTOP): connections and commands wait unanswered, as behind a stalled network or disk."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_events_reach_the_stream_in_order_with_stable_ids(redis_server: RedisServer, tmp_path: Path):
    async def scenario() -> None:
        sink = sink_for(redis_server, tmp_path / "spool")
        await sink.start()
        for n in range(3000):
            assert sink.emit(event(n))
        await sink.aclose()

    run(scenario)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(3000)]
    entries = redis.Redis(port=redis_server.port, decode_responses=True).xrange(STREAM, count=2)
    first, second = (fields for _, fields in entries)
    assert list(first)[:4] == ["v", "ts", "event", "instance"] and first["id"] != second["id"]
    assert not list((tmp_path / "spool").iterdir()), "a clean stop leaves no spool files"


def test_max_len_trims_the_stream_approximately(redis_server: RedisServer, tmp_path: Path):
    async def scenario() -> None:
        sink = RedisStreamSink(redis_server.url, stream=STREAM, max_len=100, spool_dir=tmp_path)
        await sink.start()
        for n in range(2000):
            sink.emit(event(n))
        await sink.aclose()

    run(scenario)
    assert 100 <= redis.Redis(port=redis_server.port).xlen(STREAM) < 400


def test_events_spooled_during_an_outage_are_replayed_in_order(redis_server: RedisServer, tmp_path: Path):
    spooled, replayed = count("spooled"), count("replayed")

    async def scenario() -> None:
        sink = sink_for(redis_server, tmp_path)
        await sink.start()
        sink.emit(event(0))
        await until(lambda: request_ids(redis_server), "the first event")
        redis_server.stop()
        for n in range(1, 500):
            assert sink.emit(event(n))
        await until(lambda: count("spooled") - spooled >= 499, "events spooled")
        assert sink.healthy and (sink.problem or "").startswith("degraded: redis unreachable")
        assert REGISTRY.get_sample_value("tollbooth_audit_spool_bytes") > 0
        redis_server.start()  # empty: only what came after the outage can arrive
        sink.emit(event(500))
        await until(lambda: sink.problem is None, "the spool replayed")
        assert REGISTRY.get_sample_value("tollbooth_audit_spool_bytes") == 0
        assert REGISTRY.get_sample_value("tollbooth_audit_spool_oldest_event_age_seconds") == 0
        await sink.aclose()

    run(scenario)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(1, 501)]
    # Event 500 came after Redis did: written directly or, when a backlog was still there, replayed behind it.
    assert count("replayed") - replayed >= 499


def test_replay_skips_what_redis_had_already_taken(redis_server: RedisServer, tmp_path: Path):
    """A process whose batch Redis took but whose acknowledgement never came spooled it anyway, then died."""
    events = [event(n) for n in range(300)]
    duplicates = count("duplicate")

    async def write_first_200() -> None:
        sink = sink_for(redis_server, tmp_path / "elsewhere")
        await sink.start()
        for e in events[:200]:
            sink.emit(e)
        for e in events[200:]:
            e.id = sink._ids.next()  # numbered by the same writer, after the first 200
        await sink.aclose()

    run(write_first_200)
    prefix = events[0].id.rpartition("-")[0]
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{1:020d}-{prefix}.000000.seg").write_bytes(b"".join(encode_event(e) for e in events[100:]))

    async def replay_at_start() -> None:
        sink = sink_for(redis_server, spool)
        await sink.start()
        await until(lambda: sink.problem is None, "the orphaned spool replayed")
        await sink.aclose()

    run(replay_at_start)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(300)]
    assert count("duplicate") - duplicates == 100
    assert not list(spool.iterdir())


def test_a_write_abandoned_on_a_hung_redis_lands_once(redis_server: RedisServer, tmp_path: Path):
    """The batch times out and is spooled, but Redis runs it when it wakes up: the replay must then skip it."""
    duplicates = count("duplicate")

    async def scenario() -> None:
        sink = sink_for(redis_server, tmp_path, write_timeout=0.2)
        await sink.start()
        sink.emit(event(0))
        await until(lambda: request_ids(redis_server), "the first event (connected before the hang)")
        with hung(redis_server):
            for n in range(1, 201):
                sink.emit(event(n))
            await until(lambda: (sink.problem or "").startswith("degraded: redis unreachable"), "the timeout")
        await until(lambda: sink.problem is None, "the spool replayed")
        await sink.aclose()

    run(scenario)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(201)]
    assert count("duplicate") - duplicates == 200, "the abandoned write should have landed before the replay"


def test_a_queue_filling_behind_a_slow_redis_goes_to_the_spool_instead_of_refusing(
    redis_server: RedisServer, tmp_path: Path
):
    async def scenario() -> None:
        # A long write_timeout: only the queue's pressure can make the sink stop waiting.
        sink = sink_for(redis_server, tmp_path, queue_size=600, write_timeout=30)
        await sink.start()
        sink.emit(event(0))
        await until(lambda: request_ids(redis_server), "the first event")
        with hung(redis_server):
            for n in range(1, 1001, 20):
                assert all(sink.emit(event(i)) for i in range(n, n + 20))
                await asyncio.sleep(0.005)
            assert sink.healthy
            assert REGISTRY.get_sample_value("tollbooth_audit_spool_bytes") > 0
        await until(lambda: sink.problem is None, "the spool replayed")
        await sink.aclose()

    run(scenario)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(1001)]


def test_with_neither_redis_nor_spool_the_sink_is_unhealthy_and_refuses_when_full(
    redis_server: RedisServer, tmp_path: Path
):
    (tmp_path / "not-a-dir").write_text("")

    async def scenario() -> None:
        sink = sink_for(redis_server, tmp_path / "not-a-dir" / "spool", queue_size=50)
        await sink.start()
        assert sink.healthy and (sink.problem or "").startswith("degraded: spool")
        redis_server.stop()
        assert sink.emit(event(0))
        await until(lambda: not sink.healthy, "the sink to notice")
        assert (sink.problem or "").startswith("cannot take events")
        accepted = [sink.emit(event(n)) for n in range(1, 60)]
        assert accepted == [True] * 49 + [False] * 10
        redis_server.start()
        await until(lambda: sink.healthy and len(request_ids(redis_server)) == 50, "the held events written")
        await sink.aclose()

    run(scenario)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(50)]


def test_a_stop_during_an_outage_spools_and_the_next_start_replays_first(redis_server: RedisServer, tmp_path: Path):
    redis_server.stop()

    async def first_process() -> None:
        sink = sink_for(redis_server, tmp_path)
        await sink.start()
        for n in range(100):
            sink.emit(event(n))
        await sink.aclose()

    run(first_process)
    assert any(tmp_path.glob("*.seg")) and any(tmp_path.glob("*.lock"))
    redis_server.start()

    async def second_process() -> None:
        sink = sink_for(redis_server, tmp_path)
        await sink.start()
        for n in range(100, 150):
            sink.emit(event(n))
        await until(lambda: sink.problem is None, "the first process's spool replayed")
        await sink.aclose()

    run(second_process)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(150)]
    assert not list(tmp_path.iterdir())


def test_redis_errors_are_not_logged_once_per_event(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    redis_server.stop()

    async def scenario() -> None:
        sink = sink_for(redis_server, tmp_path)
        await sink.start()
        for n in range(2000):
            sink.emit(event(n))
            if n % 100 == 0:
                await asyncio.sleep(0.02)
        await sink.aclose()

    with caplog.at_level(logging.ERROR, logger="tollbooth.audit"):
        run(scenario)
    assert 1 <= len(caplog.records) <= 3


def test_a_stop_during_a_long_replay_does_not_wait_for_the_whole_spool(redis_server: RedisServer, tmp_path: Path):
    spool = tmp_path / "spool"

    async def fill() -> None:  # an outage long enough to spool a backlog
        redis_server.stop()
        sink = sink_for(redis_server, spool, batch_size=50)
        await sink.start()
        for n in range(20_000):
            sink.emit(event(n))
        await sink.aclose()

    async def stop_while_replaying() -> float:
        redis_server.start()
        sink = sink_for(redis_server, spool, batch_size=50)
        await sink.start()
        await until(lambda: count("replayed") > replayed_before, "the replay to begin")
        started = time.monotonic()
        await sink.aclose()
        return time.monotonic() - started

    run(fill)
    replayed_before = count("replayed")
    stopped_in = asyncio.run(stop_while_replaying())
    written = len(request_ids(redis_server))
    assert 0 < written < 20_000, "the stop interrupted the replay"
    assert stopped_in < 2.0

    async def finish() -> None:  # the next start replays the rest, exactly once and in order
        sink = sink_for(redis_server, spool)
        await sink.start()
        stream = redis.Redis(port=redis_server.port)  # XLEN: cheap to poll from the sink's own event loop
        await until(lambda: stream.xlen(STREAM) >= 20_000, "the rest of the spool")
        await sink.aclose()

    run(finish)
    assert request_ids(redis_server) == [f"req-{n}" for n in range(20_000)]
