"""Filtered lists: the answer to tools/list, resources/list, resources/templates/list or prompts/list keeps only the
entries the agent's rules let it use; the rest are removed, not marked. JSON answers are filtered whole, SSE
streams event by event (still streamed), `nextCursor` and everything else kept as the server sent it.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.mcp.message import MessageRefused, parse_json
from gateway.mcp.rules import Kind, McpRules
from gateway.principal import Principal

# The list method → (rule kind, the result's array, the entry field a rule's pattern is matched against).
LIST_METHODS: dict[str, tuple[Kind, str, str]] = {
    "tools/list": ("tools", "tools", "name"),
    "resources/list": ("resources", "resources", "uri"),
    "resources/templates/list": ("resources", "resourceTemplates", "uriTemplate"),
    "prompts/list": ("prompts", "prompts", "name"),
}
UNREADABLE = -32603  # JSON-RPC internal error: the server's answer could not be read, so nothing of it is shown
# The most of one answer (a JSON body, or one SSE event) held to filter it: past it, a hostile or broken server
# gets an error shown instead of the gateway's memory.
MAX_ANSWER_BYTES = 32 * 1024 * 1024


class ListFilter:
    """Filters what one MCP response stream carries for one principal.

    With `method` (a list request on a POST), the answer to `request_id` must be that list, or it is replaced by an
    error. On every stream, any answer that holds a tools, resources, resource templates or prompts list is
    filtered whatever its id: a GET stream replays stored answers (`Last-Event-ID`) that no POST saw.
    """

    __slots__ = ("method", "request_id", "rules", "principal", "_pending", "_started")

    def __init__(self, method: str | None, request_id: Any, rules: McpRules, principal: Principal) -> None:
        self.method = method
        self.request_id = request_id
        self.rules = rules
        self.principal = principal
        self._pending = b""
        self._started = False

    def message(self, data: bytes) -> bytes:
        """One JSON-RPC message (or batch) from the server, with every list in an answer filtered."""
        try:
            value = parse_json(data)
        except MessageRefused:
            return self.unreadable()
        if isinstance(value, list):  # a batch (older protocol versions): each answer in it is filtered
            return b"[" + b",".join(self.message(orjson.dumps(item)) for item in value) + b"]"
        if not isinstance(value, dict) or "result" not in value:
            return data  # a notification, a server request, or an error: no list in it
        result = value["result"]
        # Ids compared as text: a client that matches "7" to 7 must not get an unfiltered list.
        answers_us = self.method is not None and str(value.get("id")) == str(self.request_id)
        expected = LIST_METHODS[self.method][1] if self.method is not None else ""
        if answers_us and not (isinstance(result, dict) and isinstance(result.get(expected), list)):
            return self.unreadable()
        if not isinstance(result, dict):
            return data
        filtered = dict(result)
        changed = answers_us
        for kind, array, field in LIST_METHODS.values():
            entries = result.get(array)
            if isinstance(entries, list):
                changed = True
                filtered[array] = [
                    entry
                    for entry in entries
                    if isinstance(entry, dict)
                    and isinstance(entry.get(field), str)
                    and self.rules.allows(kind, entry[field], self.principal)
                ]
        if not changed:
            return data
        return orjson.dumps({**value, "result": filtered})

    def unreadable(self) -> bytes:
        what = f"{self.method} answer" if self.method else "answer"
        error = {"code": UNREADABLE, "message": f"the MCP server's {what} could not be read"}
        return orjson.dumps({"jsonrpc": "2.0", "id": self.request_id, "error": error})

    def sse(self, chunk: bytes) -> bytes:
        """Whole SSE events out of the stream so far, each `data:` filtered; a partial event waits for the rest.

        Lines end in CRLF, LF or a bare CR (the SSE grammar); a CR at the end of a chunk waits, since an LF may
        follow. A byte order mark opening the stream goes, as SSE clients drop it.
        """
        buffer = self._pending + chunk
        if not self._started and buffer:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._pending = buffer
                return b""
            self._started = True
            buffer = buffer.removeprefix(b"\xef\xbb\xbf")
        held = b"\r" if buffer.endswith(b"\r") else b""
        text = buffer[: len(buffer) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        complete, separator, rest = text.rpartition(b"\n\n")
        self._pending = rest + held
        out = b"".join(self._event(event) + b"\n\n" for event in complete.split(b"\n\n")) if separator else b""
        if len(self._pending) > MAX_ANSWER_BYTES:
            # One event that never ends: an error in its place, and what was held is dropped.
            self._pending = b""
            out += b"data: " + self.unreadable() + b"\n\n"
        return out

    def sse_end(self) -> bytes:
        """What is left when the stream ends (an event without its final blank line)."""
        rest, self._pending = self._pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), b""
        return self._event(rest) if rest.strip() else b""

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data or not b"".join(data).strip():
            return event  # no message in it (a comment, a retry, the SDK's empty priming event)
        filtered = self.message(b"\n".join(data))
        others = [line for line in lines if not line.startswith(b"data:")]
        return b"\n".join([*others, b"data: " + filtered])
