"""`tollbooth audit tail`: read the audit trail back, from the Redis stream or (without Redis) the JSON-lines file.

Events are printed oldest first: the newest `limit` that match, or all since `--since`; `--follow` then
prints new ones as they arrive. A table on a terminal, JSON lines (the event's own fields) otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO, cast

import orjson

from gateway.audit.events import parse_rfc3339
from gateway.config import Config
from gateway.redis.connect import SyncClient, sync_client

_PAGE = 500
# A stream entry as the client below (decode_responses=True, RESP2) returns it: redis-py's annotations also cover
# bytes, RESP3's dict replies and the None of XREADGROUP's deleted entries, none of which XRANGE/XREAD give here.
_Entry = tuple[str, dict[str, str]]
_FILE_BLOCK = 64 * 1024
_POLL_SECONDS = 0.2
# The table's columns and their widths; the last column takes the rest of the line.
_COLUMNS = (
    ("ts", 24),
    ("event", 15),
    ("decision", 8),
    ("status", 6),
    ("agent", 18),
    ("subject", 18),
    ("delegation", 14),
    ("method", 7),
    ("path", 28),
    ("route", 18),
    ("reason", 0),
)


@dataclass(frozen=True, slots=True)
class TailFilter:
    agent: str | None = None
    subject: str | None = None
    decision: str | None = None
    since: float | None = None  # Unix time

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (
            (self.agent is None or fields.get("agent") == self.agent)
            and (self.subject is None or fields.get("subject") == self.subject)
            and (self.decision is None or fields.get("decision") == self.decision)
        )


class Source(Protocol):
    def history(self, flt: TailFilter, limit: int | None) -> list[dict[str, str]]:
        """The newest `limit` matching events (all since `flt.since` when None), oldest first."""
        ...

    def follow(self) -> Iterator[dict[str, str]]:
        """Every event written after those `history` saw, as it arrives; never ends."""
        ...


def stream_id_at(epoch: float) -> str:
    """The first stream entry id at or after a Unix time (stream ids are Redis's clock in ms)."""
    return f"{int(epoch * 1000)}-0"


class StreamSource:
    """XREVRANGE pages backwards for the history, then XREAD BLOCK from the newest entry seen."""

    def __init__(self, client: SyncClient, stream: str) -> None:
        self._client = client
        self._stream = stream
        self._last_id = "0-0"

    def history(self, flt: TailFilter, limit: int | None) -> list[dict[str, str]]:
        low = "-" if flt.since is None else stream_id_at(flt.since)
        high = "+"
        found: list[dict[str, str]] = []
        newest = cast(list[_Entry], self._client.xrevrange(self._stream, count=1))
        if newest:
            self._last_id = newest[0][0]
        while limit is None or len(found) < limit:
            page = cast(list[_Entry], self._client.xrevrange(self._stream, max=high, min=low, count=_PAGE))
            found += [fields for _, fields in page if flt.matches(fields)]
            if len(page) < _PAGE:
                break
            high = f"({page[-1][0]}"
        return found[:limit][::-1]

    def follow(self) -> Iterator[dict[str, str]]:
        while True:
            reply = self._client.xread({self._stream: self._last_id}, count=_PAGE, block=1000)
            for _, entries in cast(list[tuple[str, list[_Entry]]] | None, reply) or []:
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    yield fields


class FileSource:
    """Reads the JSON-lines file backwards for the history, then polls it for appended lines (like `tail -F`)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._inode: int | None = None

    def history(self, flt: TailFilter, limit: int | None) -> list[dict[str, str]]:
        try:
            with open(self._path, "rb") as file:
                stat = os.fstat(file.fileno())
                self._offset, self._inode = stat.st_size, stat.st_ino
                return self._matches_backwards(file, stat.st_size, flt, limit)[::-1]
        except FileNotFoundError:
            return []

    @staticmethod
    def _matches_backwards(file: BinaryIO, size: int, flt: TailFilter, limit: int | None) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        for line in _lines_backwards(file, size):
            fields = _parse_line(line)
            if fields is None:
                continue
            if flt.since is not None and _event_time(fields) < flt.since:
                break  # the file is in write order, which is time order
            if flt.matches(fields):
                found.append(fields)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def follow(self) -> Iterator[dict[str, str]]:
        pending = b""
        while True:
            try:
                stat = self._path.stat()
            except FileNotFoundError:
                time.sleep(_POLL_SECONDS)
                continue
            if stat.st_ino != self._inode or stat.st_size < self._offset:
                # Rotated or truncated: the new file is read from its start.
                self._inode, self._offset, pending = stat.st_ino, 0, b""
            if stat.st_size == self._offset:
                time.sleep(_POLL_SECONDS)
                continue
            with open(self._path, "rb") as file:
                file.seek(self._offset)
                data = pending + file.read(stat.st_size - self._offset)
            self._offset = stat.st_size
            *lines, pending = data.split(b"\n")
            for line in lines:
                fields = _parse_line(line)
                if fields is not None:
                    yield fields


def _lines_backwards(file: BinaryIO, size: int) -> Iterator[bytes]:
    """The file's lines, last first, read in blocks from the end: the history needs only the tail of a big file."""
    position, rest = size, b""
    while position > 0:
        step = min(_FILE_BLOCK, position)
        position -= step
        file.seek(position)
        lines = (file.read(step) + rest).split(b"\n")
        # The first piece may be the end of a line that starts in the block before: keep it for that block.
        rest = lines.pop(0) if position > 0 else b""
        for line in reversed(lines):
            if line:
                yield line


def _parse_line(line: bytes) -> dict[str, str] | None:
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a line being written as we read, or not an event
    return fields if isinstance(fields, dict) else None


def _event_time(fields: Mapping[str, str]) -> float:
    try:
        return parse_rfc3339(fields.get("ts", ""))
    except ValueError:
        return 0.0


def table_header() -> str:
    return _row({name: name.upper() for name, _ in _COLUMNS})


def _row(fields: Mapping[str, str]) -> str:
    cells = []
    for name, width in _COLUMNS:
        # Escaped, not printed: a subject or path with terminal control, bidi or zero-width characters (from a
        # trusted IdP's token, say) must not rewrite or reorder the operator's table.
        value = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in str(fields.get(name, ""))) or "-"
        if width:
            value = value if len(value) <= width else value[: width - 1] + "…"
            cells.append(value.ljust(width))
        else:
            cells.append(value)
    return " ".join(cells).rstrip()


def format_event(fields: Mapping[str, str], *, as_json: bool) -> str:
    return orjson.dumps(fields).decode() if as_json else _row(fields)


def open_source(config: Config) -> Source:
    """The stream when Redis is configured (as `serve` writes it), else the JSON-lines file."""
    if config.redis.url:
        client = sync_client(config.redis.url, decode_responses=True, socket_connect_timeout=5)
        return StreamSource(client, config.audit.stream)
    return FileSource(Path(config.audit.file))


def tail(source: Source, flt: TailFilter, out: TextIO, *, limit: int | None, follow: bool, as_json: bool) -> None:
    if not as_json:
        print(table_header(), file=out)
    for fields in source.history(flt, limit):
        print(format_event(fields, as_json=as_json), file=out)
    out.flush()
    if not follow:
        return
    for fields in source.follow():
        if flt.matches(fields):
            print(format_event(fields, as_json=as_json), file=out, flush=True)
