"""The spool's files: order across segments, locks between processes, and what a crash leaves behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit import spool as spool_module
from gateway.audit.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def drain(spool: Spool, batch: int = 7) -> list[bytes]:
    lines = []
    while (chunk := spool.read(batch)) is not None:
        lines += chunk.lines
        spool.commit(chunk)
    return lines


def test_lines_come_back_in_order_across_segments_and_replayed_segments_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 100)
    spool = Spool.create(tmp_path, "abc")
    lines = [b'{"n": %d}' % n for n in range(40)]
    for n in range(0, 40, 4):
        spool.append(b"".join(line + b"\n" for line in lines[n : n + 4]))
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert drain(spool) == lines
    assert spool.empty and not list(tmp_path.glob("*.seg"))
    spool.close()
    assert not list(tmp_path.iterdir()), "an empty spool leaves no lock file behind"


def test_a_live_owners_spool_is_never_adopted(tmp_path: Path):
    owner = Spool.create(tmp_path, "abc")
    owner.append(b'{"n": 1}\n')
    assert Spool.adopt_orphans(tmp_path, known=set()) == []
    owner.close()
    (adopted,) = Spool.adopt_orphans(tmp_path, known=set())
    assert adopted.adopted and drain(adopted) == [b'{"n": 1}']
    adopted.close()
    assert not list(tmp_path.iterdir())


def test_a_crashed_processs_segments_are_adopted_by_one_process_only(tmp_path: Path):
    crash = (
        "import os, sys; from pathlib import Path; from gateway.audit.spool import Spool; "
        "s = Spool.create(Path(sys.argv[1]), 'dead'); s.append(b'{\"n\": 1}\\n{\"n\": 2}\\n'); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", crash, str(tmp_path)], cwd=ROOT).returncode == 9
    first = Spool.adopt_orphans(tmp_path, known=set())
    assert [s.name.endswith("-dead") for s in first] == [True]
    assert Spool.adopt_orphans(tmp_path, known=set()) == [], "the lock is held by the first adopter"
    assert drain(first[0]) == [b'{"n": 1}', b'{"n": 2}']
    first[0].close()


def test_a_torn_last_line_is_reported_not_replayed(tmp_path: Path):
    owner = Spool.create(tmp_path, "abc")
    owner.append(b'{"n": 1}\n')
    owner.close()
    segment = next(tmp_path.glob("*.seg"))
    with segment.open("ab") as file:
        file.write(b'{"n": 2, "trunc')  # the writer died in the middle of this line
    (adopted,) = Spool.adopt_orphans(tmp_path, known=set())
    first = adopted.read(10)
    assert first is not None and first.lines == [b'{"n": 1}']
    adopted.commit(first)
    torn = adopted.read(10)
    assert torn is not None and torn.lines == [] and torn.torn == b'{"n": 2, "trunc'
    adopted.commit(torn)
    assert adopted.read(10) is None and adopted.empty
    adopted.close()


def test_a_vanished_segment_is_skipped_and_the_rest_still_replays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 100)
    spool = Spool.create(tmp_path, "abc")
    lines = [b'{"n": %d}' % n for n in range(40)]
    for n in range(0, 40, 4):
        spool.append(b"".join(line + b"\n" for line in lines[n : n + 4]))
    first = min(tmp_path.glob("*.seg"))
    lost = first.read_bytes().splitlines()
    first.unlink()  # an operator or a tmp cleaner, before the replay
    assert drain(spool) == lines[len(lost) :]
    spool.append(b'{"n": 40}\n')  # and appending goes on, into a file that exists
    assert drain(spool) == [b'{"n": 40}']
    spool.close()


def test_a_crashed_processs_empty_lock_is_cleaned_up_and_a_live_ones_is_not(tmp_path: Path):
    crashed = subprocess.run(  # creates its spool and dies holding nothing spooled, as on SIGKILL
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from gateway.audit.spool import Spool; "
            f"Spool.create(Path({str(tmp_path)!r}), 'dead')",
        ],
        cwd=ROOT,
        check=True,
    )
    assert crashed.returncode == 0 and len(list(tmp_path.glob("*.lock"))) == 1
    live = Spool.create(tmp_path, "live")
    assert Spool.adopt_orphans(tmp_path, {live.name}) == []
    assert [p.name for p in tmp_path.glob("*.lock")] == [f"{live.name}.lock"]
    live.close()
