"""The revocations file: an append-only JSON-lines journal of revocation records, one machine's shared state.

Every process of one machine (`--workers N`, `tollbooth revoke`) appends to it and follows it. Each append is one
`write` on an O_APPEND descriptor, which Linux applies whole on a local filesystem, so concurrent appenders never
interleave lines (not so on NFS: keep the file on a local disk). A reader only consumes complete lines: a last line
without its newline is still being written and is read once it is complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("tollbooth.state")


class RevocationJournal:
    def __init__(self, path: Path):
        self.path = path
        self._inode: int | None = None
        self._offset = 0  # bytes of `_inode` already consumed: always the end of a complete line
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) when last read

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records; blocking (run it in a thread). OSError when the file cannot be written."""
        data = b"".join(json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in records)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):  # a full disk: the partial line is skipped by readers as malformed
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")

    def changed(self) -> bool:
        """Whether the file may hold records not yet read: one stat, cheap enough to call on the event loop."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_ino, st.st_size, st.st_mtime_ns) != self._seen

    def read_new(self) -> list[dict[str, Any]]:
        """The records appended since the last call (all of them the first time); blocking (run it in a thread).
        A replaced or truncated file is read again from its start: records are idempotent."""
        try:
            file = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with file:
            st = os.fstat(file.fileno())
            if st.st_ino != self._inode or st.st_size < self._offset:
                self._inode, self._offset = st.st_ino, 0
            file.seek(self._offset)
            data = file.read()
        self._seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        records = []
        position = self._offset
        for line in data.split(b"\n")[:-1]:  # the last piece is "" or a line still being written
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    records.append(record)
                else:
                    log.warning("revocations file %s: skipping the malformed line at byte %d", self.path, position)
            position += len(line) + 1
        self._offset = position
        return records
