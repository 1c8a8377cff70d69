"""Filtered lists without sockets: JSON answers and SSE streams cut at any byte, other messages left alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import McpConfig
from gateway.mcp.lists import UNREADABLE, ListFilter
from gateway.mcp.rules import McpRules
from gateway.principal import Principal

RULES = McpRules.from_config(
    McpConfig.model_validate({"tools": [{"name": "read_*"}, {"name": "drop", "scopes": ["admin"]}]})
)
READER = Principal(
    agent="a", subject="a", scopes=frozenset({"mcp"}), jti="j", issuer="i", expires_at=2e9, issued_at=1e9
)


def answer(*names: str, request_id: Any = 5, **result: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {"tools": [{"name": n, "inputSchema": {}} for n in names], **result},
    }


def tools_list() -> ListFilter:
    return ListFilter("tools/list", 5, RULES, READER)


def names(data: bytes) -> list[str]:
    return [tool["name"] for tool in json.loads(data)["result"]["tools"]]


def test_a_json_answer_keeps_what_the_rules_allow_and_the_cursor():
    filtered = json.loads(tools_list().message(json.dumps(answer("read_a", "drop", "other", nextCursor="c2")).encode()))
    assert [t["name"] for t in filtered["result"]["tools"]] == ["read_a"]
    assert filtered["result"]["nextCursor"] == "c2" and filtered["id"] == 5


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
        {"jsonrpc": "2.0", "id": 5, "error": {"code": -32601, "message": "no"}},
    ],
)
def test_other_messages_pass_unchanged(message: dict[str, Any]):
    data = json.dumps(message).encode()
    assert tools_list().message(data) == data


@pytest.mark.parametrize(
    "data", [b"{not json", b'{"jsonrpc":"2.0","id":5,"result":{"tools":"all"}}', b'{"id":5,"id":5,"result":{}}']
)
def test_an_unreadable_answer_shows_nothing_of_it(data: bytes):
    out = json.loads(tools_list().message(data))
    assert out == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": UNREADABLE, "message": "the MCP server's tools/list answer could not be read"},
    }


def test_entries_without_a_string_name_are_dropped():
    data = json.dumps(
        {"jsonrpc": "2.0", "id": 5, "result": {"tools": [{"name": 3}, "read_x", {"name": "read_y"}]}}
    ).encode()
    assert names(tools_list().message(data)) == ["read_y"]


def sse_stream() -> bytes:
    notice = json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}})
    return (
        b"event: message\nid: 1\ndata: " + notice.encode() + b"\n\n"
        b"event: message\r\nid: 2\r\ndata: " + json.dumps(answer("drop", "read_a")).encode() + b"\r\n\r\n"
    )


@pytest.mark.parametrize("cut", [1, 7, 40, 100, 10_000])
def test_an_sse_stream_is_filtered_event_by_event_wherever_it_is_cut(cut: int):
    stream = sse_stream()
    lists = tools_list()
    out = b"".join(lists.sse(stream[i : i + cut]) for i in range(0, len(stream), cut)) + lists.sse_end()
    events = [event for event in out.split(b"\n\n") if event]
    assert len(events) == 2
    assert b"notifications/message" in events[0] and events[0].startswith(b"event: message\nid: 1\n")
    second = events[1].split(b"\n")
    assert second[:2] == [b"event: message", b"id: 2"]
    assert names(second[2].removeprefix(b"data: ")) == ["read_a"]


def test_an_event_missing_its_final_blank_line_is_still_filtered_at_the_end():
    lists = tools_list()
    assert lists.sse(b"data: " + json.dumps(answer("drop", "read_b")).encode()) == b""
    assert names(lists.sse_end().removeprefix(b"data: ")) == ["read_b"]


def test_a_multi_line_data_field_is_one_message():
    body = json.dumps(answer("drop", "read_c"), indent=1).encode().split(b"\n")
    event = b"\n".join(b"data: " + line for line in body) + b"\n\n"
    (out,) = [e for e in tools_list().sse(event).split(b"\n\n") if e]
    assert names(out.removeprefix(b"data: ")) == ["read_c"]


def test_an_answer_whose_id_differs_only_in_type_is_filtered_too():
    assert names(tools_list().message(json.dumps(answer("drop", "read_a", request_id="5")).encode())) == ["read_a"]


def test_answers_in_a_batch_are_filtered_each():
    batch = [answer("drop", "read_a"), {"jsonrpc": "2.0", "method": "notifications/progress"}]
    out = json.loads(tools_list().message(json.dumps(batch).encode()))
    assert [t["name"] for t in out[0]["result"]["tools"]] == ["read_a"] and out[1]["method"] == "notifications/progress"


def test_any_list_in_any_answer_is_filtered_as_a_get_stream_replays_them():
    # Last-Event-ID on the GET stream replays stored answers to list requests this stream never saw.
    replay = ListFilter(None, None, RULES, READER)
    assert names(replay.message(json.dumps(answer("drop", "read_a", request_id=99)).encode())) == ["read_a"]
    assert names(tools_list().message(json.dumps(answer("drop", "read_b", request_id=6)).encode())) == ["read_b"]
    plain = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "hi"}]}}).encode()
    assert replay.message(plain) == plain


def test_the_sdks_empty_priming_event_and_comments_pass_unchanged():
    stream = b"id: 0\nretry: 3000\ndata: \n\n: keep-alive\n\n"
    assert tools_list().sse(stream) == stream


@pytest.mark.parametrize("cut", [1, 2, 5, 1000])
def test_bare_cr_line_ends_and_a_leading_bom_are_read_as_sse_clients_read_them(cut: int):
    event = b"event: message\rdata: " + json.dumps(answer("drop", "read_a")).encode() + b"\r\r"
    stream = b"\xef\xbb\xbf" + event + b"data: " + json.dumps(answer("drop", "read_b")).encode() + b"\r\n\r\n"
    lists = tools_list()
    out = b"".join(lists.sse(stream[i : i + cut]) for i in range(0, len(stream), cut)) + lists.sse_end()
    events = [e for e in out.split(b"\n\n") if e]
    assert len(events) == 2 and b"drop" not in out
    assert names(events[0].split(b"\n")[1].removeprefix(b"data: ")) == ["read_a"]


def test_an_answer_too_large_to_hold_becomes_an_error_not_memory(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("gateway.mcp.lists.MAX_ANSWER_BYTES", 64)
    lists = tools_list()
    before = b"data: " + json.dumps(answer("drop", "read_a")).encode() + b"\n\n"
    out = lists.sse(before + b"data: " + b"x" * 100)
    first, second = [e for e in out.split(b"\n\n") if e]
    assert names(first.removeprefix(b"data: ")) == ["read_a"], "complete events are still filtered"
    assert json.loads(second.removeprefix(b"data: "))["error"]["code"] == UNREADABLE
    assert lists.sse_end() == b""
