"""The strict reading of one MCP POST body: every parser-differential trick is refused before any rule looks at
the message, and the Mcp-Method/Mcp-Name headers must agree with the body."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mcp.message import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_DEPTH,
    PARSE_ERROR,
    MessageRefused,
    check_content_type,
    check_headers,
    parse_message,
)


def call(name: Any = "search_customers", **extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": {}}, **extra}


def refused(body: bytes) -> MessageRefused:
    with pytest.raises(MessageRefused) as caught:
        parse_message(body)
    return caught.value


def test_a_tools_call_is_read_with_its_name_and_arguments():
    message = parse_message(
        json.dumps(call(arguments=None) | {"params": {"name": "t", "arguments": {"a": 1}}}).encode()
    )
    assert (message.kind, message.method, message.id, message.name, message.arguments) == (
        "request",
        "tools/call",
        7,
        "t",
        {"a": 1},
    )


@pytest.mark.parametrize(
    ("body", "kind", "name"),
    [
        (
            {"jsonrpc": "2.0", "id": "a", "method": "resources/read", "params": {"uri": "crm://c/1"}},
            "request",
            "crm://c/1",
        ),
        ({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "p"}}, "request", "p"),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, "request", None),
        ({"jsonrpc": "2.0", "method": "notifications/initialized"}, "notification", None),
        ({"jsonrpc": "2.0", "id": 3, "result": {"content": []}}, "response", None),
        ({"jsonrpc": "2.0", "id": 3, "error": {"code": -1, "message": "no"}}, "response", None),
    ],
)
def test_requests_notifications_and_responses(body: dict[str, Any], kind: str, name: str | None):
    message = parse_message(json.dumps(body).encode())
    assert (message.kind, message.name) == (kind, name)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","name":"delete_all"}}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}', PARSE_ERROR),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"r":"eu","r":"us"}}}',
            PARSE_ERROR,
        ),
        # A duplicate hidden behind an escaped ':' that would balance the colon count: caught key by key.
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","name":"x\\u003a"}}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a:b","name":{"c:d":"e:f"}}}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call"} {"x":1}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}garbage', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":Infinity}}', PARSE_ERROR),
        (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}', PARSE_ERROR),
        ('{"jsonrpc":"2.0","id":1,"method":"ping"}'.encode("utf-16"), PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff"}}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}', PARSE_ERROR),
        (b"", PARSE_ERROR),
        (b"[" * 100_000, PARSE_ERROR),
        (json.dumps([call()]).encode(), INVALID_REQUEST),
        (b'"tools/call"', INVALID_REQUEST),
        (json.dumps({"id": 1, "method": "tools/call", "params": {"name": "t"}}).encode(), INVALID_REQUEST),
        (json.dumps(call(jsonrpc="1.0")).encode(), INVALID_REQUEST),
        (json.dumps(call(method=["tools/call"])).encode(), INVALID_REQUEST),
        (json.dumps(call(id=None)).encode(), INVALID_REQUEST),
        (json.dumps(call(id=True)).encode(), INVALID_REQUEST),
        (json.dumps(call(id=1.5)).encode(), INVALID_REQUEST),
        (json.dumps(call(result={})).encode(), INVALID_REQUEST),
        (json.dumps({"jsonrpc": "2.0", "id": 1}).encode(), INVALID_REQUEST),
        (json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}).encode(), INVALID_REQUEST),
        (json.dumps(call(params="tools")).encode(), INVALID_REQUEST),
        (json.dumps(call(name=["delete_customer"])).encode(), INVALID_PARAMS),
        (json.dumps(call(name={"name": "x"})).encode(), INVALID_PARAMS),
        (json.dumps(call(name=None)).encode(), INVALID_PARAMS),
        (json.dumps(call(params={"arguments": {}})).encode(), INVALID_PARAMS),
        (json.dumps(call(params={"name": "t", "arguments": [1]})).encode(), INVALID_PARAMS),
        (
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": 5}}).encode(),
            INVALID_PARAMS,
        ),
        # A named call without an id would be a notification, which no rule decides: refused.
        (json.dumps({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "x"}}).encode(), INVALID_REQUEST),
        (json.dumps({"jsonrpc": "2.0", "method": "prompts/get", "params": {"name": "p"}}).encode(), INVALID_REQUEST),
        # Resource URIs a normalizing server would read as another resource than the rules matched.
        *(
            (
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": u}}).encode(),
                INVALID_PARAMS,
            )
            for u in ("file:///public/../secret", "crm://c/%2e%2e/x", "crm://c/./x", "crm://c/a%2Fb", "crm://c\\x")
        ),
    ],
    ids=lambda v: v[:48].decode("latin-1") if isinstance(v, bytes) else str(v),
)
def test_ambiguous_or_malformed_bodies_are_refused(body: bytes, code: int):
    refusal = refused(body)
    assert refusal.status == 400 and refusal.code == code, refusal.description


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a:b","arguments":{"url":"https://x:1/"}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"k":"\\u003a"}}}',
        b'{ "jsonrpc" : "2.0" , "id" : 1 , "method" : "tools/call" , "params" : { "name" : "t:" } }',
    ],
)
def test_colons_in_strings_escapes_and_spacing_are_not_duplicates(body: bytes):
    assert parse_message(body).method == "tools/call"


def test_nesting_is_bounded_but_ordinary_depth_is_fine():
    deep = {"a": 1}
    for _ in range(MAX_DEPTH - 10):
        deep = {"a": deep}
    assert parse_message(json.dumps(call() | {"params": {"name": "t", "arguments": deep}}).encode()).name == "t"
    for _ in range(20):
        deep = {"a": deep}
    assert (
        "nested deeper"
        in refused(json.dumps(call() | {"params": {"name": "t", "arguments": deep}}).encode()).description
    )


def test_a_refusal_carries_the_request_id_when_there_is_one():
    assert refused(json.dumps(call(name=5)).encode()).request_id == 7
    assert refused(json.dumps(call(jsonrpc="1.0", id="abc")).encode()).request_id == "abc"


@pytest.mark.parametrize(
    "value", [b"application/json", b"Application/JSON; charset=utf-8", b'application/json;charset="UTF-8"']
)
def test_json_content_types_are_read(value: bytes):
    check_content_type(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"text/plain",
        b"application/json-patch+json",
        b"application/json; charset=utf-16",
        b"multipart/form-data",
    ],
)
def test_other_content_types_get_415(value: bytes | None):
    with pytest.raises(MessageRefused) as caught:
        check_content_type(value)
    assert caught.value.status == 415


def b64(text: str) -> bytes:
    return b"=?base64?" + base64.b64encode(text.encode()) + b"?="


@pytest.mark.parametrize(
    ("method", "name", "fine"),
    [
        ([], [], True),
        ([b"tools/call"], [b"search_customers"], True),
        ([b"tools/call"], [b64("search_customers")], True),
        ([b"tools/list"], [], False),
        ([], [b"delete_customer"], False),
        ([], [b64("delete_customer")], False),
        ([], [b"=?base64?!!!?="], False),
        ([b"tools/call", b"tools/call"], [], False),
    ],
)
def test_mcp_headers_must_say_what_the_body_says(method: list[bytes], name: list[bytes], fine: bool):
    message = parse_message(json.dumps(call()).encode())
    if fine:
        check_headers(message, method, name)
        return
    with pytest.raises(MessageRefused) as caught:
        check_headers(message, method, name)
    assert (caught.value.status, caught.value.code, caught.value.request_id) == (400, HEADER_MISMATCH, 7)


# Objects written by hand, so that a key may repeat: raw JSON strings made of pieces that hold ':' plainly, as the
# escape \u003a, or next to an escaped quote, to attack the colon count from every side.
_STRING = st.lists(st.sampled_from(["a", ":", "\\u003a", '\\"', "é"]), max_size=4).map(
    lambda parts: '"' + "".join(parts) + '"'
)
_KEY = st.sampled_from(['"a"', '"b"', '"a:b"', '"\\u003a"'])
_VALUE = st.recursive(
    st.one_of(st.integers().map(str), _STRING),
    lambda inner: st.lists(st.tuples(_KEY, inner), max_size=4).map(
        lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    ),
    max_leaves=12,
)


def _has_duplicates(text: str) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return found


@given(_VALUE.filter(lambda v: v.startswith("{")))
def test_duplicate_keys_are_refused_exactly_when_present(value: str):
    body = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":' + value + "}}").encode()
    if _has_duplicates(value):
        with pytest.raises(MessageRefused):
            parse_message(body)
    else:
        assert parse_message(body).arguments == json.loads(value)
