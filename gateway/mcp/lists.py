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


class ListFilter:
    """Filters the answer to one list request (`request_id`) for one principal."""

    __slots__ = ("method", "request_id", "rules", "principal", "_pending")

    def __init__(self, method: str, request_id: Any, rules: McpRules, principal: Principal) -> None:
        self.method = method
        self.request_id = request_id
        self.rules = rules
        self.principal = principal
        self._pending = b""

    def message(self, data: bytes) -> bytes:
        """One JSON-RPC message from the server, filtered when it answers our list request."""
        try:
            value = parse_json(data)
        except MessageRefused:
            return self._unreadable()
        if isinstance(value, list):  # a batch (older protocol versions): each answer in it is filtered
            return b"[" + b",".join(self.message(orjson.dumps(item)) for item in value) + b"]"
        # Ids compared as text: a client that matches "7" to 7 must not get an unfiltered list.
        answers_us = isinstance(value, dict) and str(value.get("id")) == str(self.request_id)
        if not (answers_us and "result" in value):
            return data  # a notification, a server request, or an error: not a list
        result = value["result"]
        kind, array, field = LIST_METHODS[self.method]
        entries = result.get(array) if isinstance(result, dict) else None
        if not isinstance(entries, list):
            return self._unreadable()
        kept = [
            entry
            for entry in entries
            if isinstance(entry, dict)
            and isinstance(entry.get(field), str)
            and self.rules.allows(kind, entry[field], self.principal)
        ]
        return orjson.dumps({**value, "result": {**result, array: kept}})

    def _unreadable(self) -> bytes:
        error = {"code": UNREADABLE, "message": f"the MCP server's {self.method} answer could not be read"}
        return orjson.dumps({"jsonrpc": "2.0", "id": self.request_id, "error": error})

    def sse(self, chunk: bytes) -> bytes:
        """Whole SSE events out of the stream so far, each `data:` filtered; a partial event waits for the rest."""
        buffer = (self._pending + chunk).replace(b"\r\n", b"\n")
        complete, separator, self._pending = buffer.rpartition(b"\n\n")
        if not separator:
            return b""  # rpartition left the whole buffer pending
        return b"".join(self._event(event) + b"\n\n" for event in complete.split(b"\n\n"))

    def sse_end(self) -> bytes:
        """What is left when the stream ends (an event without its final blank line)."""
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest.strip() else b""

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return event
        filtered = self.message(b"\n".join(data))
        others = [line for line in lines if not line.startswith(b"data:")]
        return b"\n".join([*others, b"data: " + filtered])
