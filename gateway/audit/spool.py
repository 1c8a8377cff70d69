"""The audit spool: where events wait on local disk while Redis cannot take them, in their original order.

Layout of `audit.spool_dir`, one set of files per sink (that is, per gateway process):

    <name>.lock           flock(LOCK_EX) by the live owner for its whole life
    <name>.<n:06d>.seg    segments: one event per line, as JSON (the audit file's format), appended and
                          fsync'd a batch at a time, a new segment every SEGMENT_BYTES

`<name>` is `<start time in ns, 20 digits>-<event id prefix>`, so sorting names sorts owners by start: a
restarted gateway replays its predecessor's events before its own. The kernel releases a dead process's
flock, so the next sink that scans the directory can take the lock, replay those segments in order and
delete them; two live processes never hold the same lock, so never replay the same segment.

All methods do blocking file I/O: the sink calls them in a worker thread, never on the event loop.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tollbooth.audit")

SEGMENT_BYTES = 8 * 1024 * 1024
_READ_BYTES = 1024 * 1024
_SEGMENT = re.compile(r"^(\d{20}-[0-9a-f]+)\.(\d{6})\.seg$")


@dataclass(frozen=True, slots=True)
class Chunk:
    """Lines read from the replay cursor; `commit(chunk)` moves the cursor past them once they are in Redis."""

    lines: list[bytes]
    segment: int
    end: int
    # A last line without its newline in a segment nobody appends to any more: its writer died mid-write.
    torn: bytes = b""


class Spool:
    """One owner's segments: appended by the owner only, replayed by whoever holds the lock."""

    def __init__(self, directory: Path, name: str, lock_fd: int, segments: list[int], *, adopted: bool) -> None:
        self.directory = directory
        self.name = name
        self.adopted = adopted
        self._lock_fd = lock_fd
        self._segments = segments  # not yet fully replayed, oldest first
        self._offset = 0  # the replay cursor, in self._segments[0]
        self._append_fd: int | None = None
        self._append_size = 0
        self.pending_bytes = sum(self._path(n).stat().st_size for n in segments)

    @classmethod
    def create(cls, directory: Path, prefix: str) -> Spool:
        """This process's own, empty spool, locked for as long as the process lives."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{prefix}"
        # Locked before it has its final name, so a scanning process never sees the lock file unlocked.
        tmp = directory / f"{name}.lock.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, directory / f"{name}.lock")
        return cls(directory, name, fd, [], adopted=False)

    @classmethod
    def adopt_orphans(cls, directory: Path, known: set[str]) -> list[Spool]:
        """Take over the segments of processes that are gone (their lock is free), oldest owner first."""
        try:
            names = sorted({m.group(1) for p in directory.iterdir() if (m := _SEGMENT.match(p.name))} - known)
        except FileNotFoundError:
            return []
        adopted = []
        for name in names:
            fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its owner is alive and replays its own segments
                os.close(fd)
                continue
            # Listed again under the lock: a previous adopter may have replayed and deleted them meanwhile.
            segments = sorted(
                int(m.group(2)) for p in directory.iterdir() if (m := _SEGMENT.match(p.name)) and m.group(1) == name
            )
            spool = cls(directory, name, fd, segments, adopted=True)
            if segments:
                adopted.append(spool)
            else:
                spool.close()
        cls._remove_stale_locks(directory, known | set(names))
        return adopted

    @staticmethod
    def _remove_stale_locks(directory: Path, spools: set[str]) -> None:
        """Lock files of processes that died with nothing spooled (SIGKILL, OOM): free, so nobody's, so removed;
        without this every crashed process would leave one behind for ever."""
        for path in directory.glob("*.lock"):
            if path.name[: -len(".lock")] in spools:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # removed by another process's scan meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process's
                continue
            else:
                # Segments may have appeared since the scan (the owner died just after writing one): keep those.
                if not any(directory.glob(f"{path.name[: -len('.lock')]}.*.seg")):
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    @property
    def empty(self) -> bool:
        return self.pending_bytes == 0

    def _path(self, segment: int) -> Path:
        return self.directory / f"{self.name}.{segment:06d}.seg"

    def append(self, data: bytes) -> None:
        """Append whole lines and fsync them; on failure nothing is left half-written (the caller retries)."""
        assert not self.adopted, "only the owner appends"
        if self._append_fd is None or self._append_size >= SEGMENT_BYTES:
            self._roll()
        assert self._append_fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._append_fd, view) :]
            os.fsync(self._append_fd)
        except OSError:
            # Cut a partial batch off, so the retry does not follow a torn line (best effort: the disk is failing).
            try:
                os.ftruncate(self._append_fd, self._append_size)
            except OSError:
                pass
            raise
        self._append_size += len(data)
        self.pending_bytes += len(data)

    def _roll(self) -> None:
        segment = self._segments[-1] + 1 if self._segments else 0
        fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        # The new file's directory entry must be durable too, or a crash could lose a whole fsync'd segment.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if self._append_fd is not None:
            os.close(self._append_fd)
        self._append_fd, self._append_size = fd, 0
        self._segments.append(segment)

    def read(self, max_lines: int) -> Chunk | None:
        """Up to `max_lines` lines from the replay cursor (one segment at a time); None when all is replayed."""
        while self._segments:
            segment = self._segments[0]
            try:
                with open(self._path(segment), "rb") as file:
                    file.seek(self._offset)
                    block = file.read(_READ_BYTES)
            except FileNotFoundError:
                self._segment_vanished(segment)
                continue
            complete = block[: block.rfind(b"\n") + 1]
            if complete:
                # The last piece is either the empty string after the final newline or the lines left for later.
                lines = complete.split(b"\n", max_lines)[:-1]
                end = self._offset + sum(len(line) + 1 for line in lines)
                return Chunk(lines, segment, end)
            if self._is_appending(segment):
                return None
            if block:
                return Chunk([], segment, self._offset + len(block), torn=block)
            self._drop_first_segment()
        return None

    def commit(self, chunk: Chunk) -> None:
        """The chunk's events are in Redis: move past them, deleting segments left behind."""
        assert self._segments and self._segments[0] == chunk.segment
        self.pending_bytes -= chunk.end - self._offset
        self._offset = chunk.end
        if not self._is_appending(chunk.segment) and self._offset >= self._path(chunk.segment).stat().st_size:
            self._drop_first_segment()
        elif self.pending_bytes == 0:
            # Everything replayed, the segment being appended included: start afresh rather than grow it forever.
            self._drop_first_segment()

    def _segment_vanished(self, segment: int) -> None:
        # Deleted under us (an operator, a tmp cleaner): its events are gone, but the ones after it are not, and the
        # writer must go on rather than fail on the same missing file for ever.
        log.error("audit: spool segment %s vanished before it was replayed; its events are lost", self._path(segment))
        if self._is_appending(segment):
            assert self._append_fd is not None
            os.close(self._append_fd)  # appending to an unlinked file would lose every later event too
            self._append_fd = None
        self._segments.pop(0)
        self._offset = 0
        self.pending_bytes = sum(self._size(s) for s in self._segments)

    def _size(self, segment: int) -> int:
        try:
            return self._path(segment).stat().st_size
        except FileNotFoundError:
            return 0

    def _is_appending(self, segment: int) -> bool:
        return self._append_fd is not None and segment == self._segments[-1]

    def _drop_first_segment(self) -> None:
        segment = self._segments.pop(0)
        if self._append_fd is not None and not self._segments:
            os.close(self._append_fd)
            self._append_fd = None
        self._path(segment).unlink(missing_ok=True)
        self._offset = 0

    def close(self) -> None:
        """Release the lock; segments still unreplayed stay for the next process to adopt."""
        if self._append_fd is not None:
            os.close(self._append_fd)
            self._append_fd = None
        if not self._segments:
            (self.directory / f"{self.name}.lock").unlink(missing_ok=True)
        elif not self.adopted:
            log.warning(
                "audit: %d bytes of spooled events left in %s for the next start", self.pending_bytes, self.directory
            )
        os.close(self._lock_fd)
