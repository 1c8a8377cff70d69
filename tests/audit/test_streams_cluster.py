"""The Redis Streams sink on Redis Cluster: its script's two keys (the stream, the replay mark) in one slot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis_topologies import RedisCluster, redis_cluster  # noqa: F401

from gateway.audit.events import AuditEvent, encode_event
from gateway.audit.streams import RedisStreamSink, mark_key_prefix
from gateway.redis.slots import key_slot


@pytest.mark.parametrize(
    ("stream", "cluster", "prefix"),
    [
        ("tollbooth:audit", False, ""),  # one server or Sentinel: the names stay as they always were
        ("{tollbooth}:audit", True, ""),  # the stream's own hash tag already takes the mark along
        ("tollbooth:audit", True, None),  # a tag of the stream's slot goes in front
        ("audit-{}", True, None),  # an empty {} is no hash tag
    ],
)
def test_the_replay_mark_shares_the_streams_slot(stream: str, cluster: bool, prefix: str | None) -> None:
    found = mark_key_prefix(stream, cluster=cluster)
    if prefix is not None:
        assert found == prefix
    else:
        assert found.startswith("{") and found.endswith("}")
    if cluster:
        assert key_slot(f"{found}{stream}:written:0a1b2c") == key_slot(stream)


def events(count: int) -> list[AuditEvent]:
    return [
        AuditEvent(event="access", ts=time.time(), request_id=f"req-{n}", agent="bot", decision="allow")
        for n in range(count)
    ]


@pytest.mark.parametrize("stream", ["tollbooth:audit", "{tollbooth}:audit-tagged"])
def test_a_replay_on_cluster_skips_what_the_stream_already_has(
    redis_cluster: RedisCluster,  # noqa: F811
    tmp_path: Path,
    stream: str,
) -> None:
    """200 events written, then a spool holding the last 100 of them and 100 more replayed: each lands once."""
    batch = events(300)

    def sink(spool: Path) -> RedisStreamSink:
        return RedisStreamSink(redis_cluster.url, stream=stream, max_len=1_000_000, spool_dir=spool)

    async def write_then_replay() -> None:
        first = sink(tmp_path / "first")
        await first.start()
        for e in batch[:200]:
            assert first.emit(e)
        for e in batch[200:]:
            e.id = first._ids.next()  # numbered by the same writer, after the first 200
        await first.aclose()
        spool = tmp_path / "spool"
        spool.mkdir()
        prefix = batch[0].id.rpartition("-")[0]
        (spool / f"{1:020d}-{prefix}.000000.seg").write_bytes(b"".join(encode_event(e) for e in batch[100:]))
        second = sink(spool)
        await second.start()
        deadline = time.monotonic() + 10
        while second.problem is not None:
            assert time.monotonic() < deadline, f"the spool was not replayed: {second.problem}"
            await asyncio.sleep(0.02)
        await second.aclose()

    duplicates = REGISTRY.get_sample_value("tollbooth_audit_events_total", {"sink": "redis", "outcome": "duplicate"})
    asyncio.run(write_then_replay())
    with redis_cluster.client() as client:
        written = [fields["request_id"] for _, fields in client.xrange(stream)]
    assert written == [f"req-{n}" for n in range(300)]
    after = REGISTRY.get_sample_value("tollbooth_audit_events_total", {"sink": "redis", "outcome": "duplicate"})
    assert (after or 0) - (duplicates or 0) == 100
