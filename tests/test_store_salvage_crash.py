"""A crash while a damaged store is being set aside and salvaged (store/db.py).

Found with the power-cut tests' question "does the store always reopen with what
it acknowledged?": before the set-aside marker, a kill -9 after the damaged store
was renamed and before the salvage committed left a sound, empty fresh store;
on restart nothing was salvaged, no event recorded, and the gateway's sequences
started again at 1 (the hub's duplicate window would have dropped new messages
as old ones). Each state such a crash can leave is built here with the store's
own steps, then opened; and one real kill -9 during a salvage.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from store import db
from store.paths import DB_NAME
from tests.storedb import PAGE, commit, rec, seqs, set_asides

ROWS = 3000


def _damaged_store(directory: Path, rows: int = ROWS, *, wal_rows: int = 0) -> Path:
    """A store of ``rows`` messages (gateway "gw"), then ``wal_rows`` more left in
    its WAL, with one page near the end of the database file overwritten:
    quick_check fails, nearly every row is readable."""
    build = directory.with_name(directory.name + "-build")
    conn, _ = db.open_store(build, gateway_id="gw")
    gid = db.group_id(conn, "default")
    for start in range(1, rows + 1, 50):  # as the server writes: a row per commit
        batch = range(start, min(start + 50, rows + 1))
        commit(conn, [gid], [rec(s, 0, data=b"x" * 200) for s in batch])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    if wal_rows:
        batch = range(rows + 1, rows + wal_rows + 1)
        commit(conn, [gid], [rec(s, 0, data=b"x" * 200) for s in batch])
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        part = Path(str(build / DB_NAME) + suffix)
        if part.exists():
            shutil.copyfile(part, Path(str(directory / DB_NAME) + suffix))
    conn.close()
    path = directory / DB_NAME
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek((size // PAGE - 3) * PAGE)
        f.write(random.Random(5).randbytes(PAGE))
    return path


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".set-aside")


def _assert_resumed(directory: Path, *, rows: int = ROWS) -> db.OpenReport:
    conn, report = db.open_store(directory)  # no gateway id configured: read back
    with closing(conn):
        assert report.set_aside is not None and report.set_aside.exists()
        assert report.damage is not None
        assert 0.9 * rows < report.salvaged < rows
        assert seqs(conn) == list(range(1, report.salvaged + 1))
        assert report.gateway_id == "gw"
        assert report.next_seq > rows  # never a sequence the hub may have seen
        events = conn.execute("SELECT kind, detail FROM events").fetchall()
        assert [kind for kind, _ in events] == ["set_aside"]
    assert not _marker(directory / DB_NAME).exists()
    conn, again = db.open_store(directory)
    with closing(conn):
        assert again.set_aside is None and again.damage is None
        assert len(seqs(conn)) == report.salvaged
    return report


def test_a_crash_after_the_rename_is_resumed(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path)
    target = db._set_aside(path)  # ... and the process dies here
    assert _marker(path).read_text() == target.name
    assert not path.exists()
    report = _assert_resumed(tmp_path)
    assert report.set_aside == target
    assert set_asides(tmp_path) == [target]


def test_a_crash_after_the_fresh_store_was_created_is_resumed(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path)
    db._set_aside(path)
    conn = db.connect(path)
    db.migrate(conn)  # the fresh store, sound and empty ...
    conn.close()  # ... when the process dies
    _assert_resumed(tmp_path)


def test_a_crash_between_the_renames_takes_the_wal_along(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path, wal_rows=500)
    wal = Path(str(path) + "-wal")
    assert wal.exists() and wal.stat().st_size > 0
    target = path.with_name(DB_NAME + ".corrupt-20240101T000000Z")
    _marker(path).write_text(target.name)
    os.replace(path, target)  # the main file moved, its WAL not yet
    # Salvage stops at the damaged page, before the rows in the WAL; what matters
    # is that the old WAL went with its database and the fresh store is sound.
    _assert_resumed(tmp_path)
    assert Path(str(target) + "-wal").exists()


def test_a_crash_before_the_rename_sets_the_store_aside_again(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path)
    _marker(path).write_text(DB_NAME + ".corrupt-20240101T000000Z")  # never renamed
    conn, report = db.open_store(tmp_path)
    with closing(conn):
        assert report.set_aside is not None and report.salvaged > 0.9 * ROWS
        # Found damaged again by its own check (not taken for a resumed set-aside).
        damage = report.damage or ""
        assert damage and "interrupted" not in damage
        assert any(word in damage for word in ("malformed", "corrupt", "tree page", "invalid page"))
    assert not _marker(path).exists()
    assert len(set_asides(tmp_path)) == 1


def test_a_marker_naming_another_file_is_ignored(tmp_path: Path) -> None:
    conn, _ = db.open_store(tmp_path, gateway_id="gw")
    conn.close()
    (tmp_path / "precious").write_text("keep")
    _marker(tmp_path / DB_NAME).write_text("../precious")
    conn, report = db.open_store(tmp_path)
    with closing(conn):
        assert report.set_aside is None and report.damage is None
    assert (tmp_path / "precious").read_text() == "keep"
    assert not _marker(tmp_path / DB_NAME).exists()


_OPEN = (
    "import sys; from pathlib import Path; from store import db; db.open_store(Path(sys.argv[1]))"
)


@pytest.mark.slow
def test_kill_9_during_the_salvage_loses_no_readable_row(tmp_path: Path) -> None:
    rows = 150_000  # a salvage of a few hundred ms: the kill lands inside it
    path = _damaged_store(tmp_path, rows)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", _OPEN, str(tmp_path)], cwd=root)
    deadline = time.monotonic() + 30
    try:
        while not set_asides(tmp_path):
            assert proc.poll() is None and time.monotonic() < deadline, "no set-aside began"
            time.sleep(0.001)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert _marker(path).exists(), "the kill came after the salvage: nothing was tested"
    _assert_resumed(tmp_path, rows=rows)
