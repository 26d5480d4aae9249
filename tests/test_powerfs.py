"""The power-cut fixture itself (tests/powerfs): fsynced data survives a cut,
unsynced data does not; partial pages, truncation, metadata as documented in
tests/powerfs/fs.py; mmap and SQLite in WAL mode work on it.

The page model (tests/powerfs/overlay.py) is checked against a plain bytearray
with Hypothesis; the mounted file system with real files and real SQLite.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.powerfs.client import PowerFS, power_cut
from tests.powerfs.overlay import PAGE, Overlay

# ---------------------------------------------------------------------------
# The page model, against a bytearray
# ---------------------------------------------------------------------------


class Disk:
    """A bytearray standing in for the backing file."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)

    def pread(self, off: int, n: int) -> bytes:
        return bytes(self.data[off : off + n])

    def pwrite(self, off: int, data: bytes) -> None:
        if len(self.data) < off:
            self.data += bytes(off - len(self.data))
        self.data[off : off + len(data)] = data

    def ftruncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data += bytes(size - len(self.data))


_offsets = st.integers(min_value=0, max_value=5 * PAGE)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), _offsets, st.binary(min_size=1, max_size=2 * PAGE + 7)),
        st.tuples(st.just("truncate"), _offsets, st.just(b"")),
        st.tuples(st.just("flush"), st.just(0), st.just(b"")),
    ),
    max_size=25,
)


def _apply(model: bytearray, op: str, off: int, data: bytes) -> None:
    if op == "write":
        if len(model) < off:
            model += bytes(off - len(model))
        model[off : off + len(data)] = data
    elif op == "truncate":
        if off < len(model):
            del model[off:]
        else:
            model += bytes(off - len(model))


@settings(max_examples=300, deadline=None)
@given(initial=st.binary(max_size=3 * PAGE), ops=_ops)
def test_overlay_reads_what_was_written_and_a_cut_leaves_what_was_flushed(
    initial: bytes, ops: list[tuple[str, int, bytes]]
) -> None:
    disk = Disk(initial)
    overlay = Overlay(len(initial))
    current = bytearray(initial)  # what reads must return
    synced = bytes(initial)  # what a cut must leave
    for op, off, data in ops:
        if op == "flush":
            overlay.flush(disk.pwrite, disk.ftruncate)
            synced = bytes(current)
            assert not overlay.dirty
        elif op == "write":
            overlay.write(off, data, disk.pread)
        else:
            overlay.truncate(off)
        _apply(current, op, off, data)
        assert overlay.size == len(current)
        assert overlay.read(0, len(current) + PAGE, disk.pread) == bytes(current)
        assert bytes(disk.data) == synced  # nothing reaches the disk but a flush
    start = len(current) // 3
    assert overlay.read(start, 1000, disk.pread) == bytes(current[start : start + 1000])


@settings(max_examples=200, deadline=None)
@given(initial=st.binary(max_size=3 * PAGE), ops=_ops, seed=st.integers(0, 2**32))
@example(  # a truncation, then a page past it written back: the cut page ends in a hole
    initial=b"",
    ops=[
        ("write", 1, b"\x01"),
        ("flush", 0, b""),
        ("write", 0, b"\x00"),
        ("truncate", 1, b""),
        ("write", 4096, b"\x00"),
    ],
    seed=443,
)
def test_partial_writeback_leaves_each_page_old_or_new(
    initial: bytes, ops: list[tuple[str, int, bytes]], seed: int
) -> None:
    disk = Disk(initial)
    overlay = Overlay(len(initial))
    current = bytearray(initial)
    synced = bytes(initial)
    for op, off, data in ops:
        if op == "flush":
            overlay.flush(disk.pwrite, disk.ftruncate)
            synced = bytes(current)
        elif op == "write":
            overlay.write(off, data, disk.pread)
        else:
            overlay.truncate(off)
        _apply(current, op, off, data)
    rng = random.Random(seed)
    chosen = {i for i in overlay.pages if rng.random() < 0.5}
    truncated = overlay.floor < overlay.base
    floor = overlay.floor
    overlay.partial_writeback(chosen.__contains__, rng.random() < 0.5, disk.pwrite, disk.ftruncate)
    after = bytes(disk.data)
    for index in range(0, max(len(after), len(synced)) // PAGE + 1):
        lo, hi = index * PAGE, (index + 1) * PAGE
        got = after[lo:hi]
        if index in chosen:
            assert got == bytes(current[lo:hi]), index  # written back: the new page
        elif truncated and len(after) <= lo:
            continue  # truncated away
        else:
            old = synced[lo:hi]
            # An untouched page keeps its synced bytes; it may be cut short by the
            # pending truncation, and what follows the cut reads as the zeros of a
            # hole once a later page is written back (never below the cut).
            cut = max(0, min(len(old), floor - lo)) if truncated else len(old)
            hole = got[:cut] == old[:cut] and not got[cut:].strip(b"\0")
            assert hole or got[: len(old)] in (old[: len(got)], bytes(len(got))), index


def test_a_full_partial_writeback_is_a_flush() -> None:
    disk = Disk(b"a" * (3 * PAGE))
    overlay = Overlay(3 * PAGE)
    overlay.truncate(PAGE + 5)
    overlay.write(2 * PAGE, b"z" * 10, disk.pread)
    expect = overlay.read(0, 10 * PAGE, disk.pread)
    overlay.partial_writeback(lambda _i: True, True, disk.pwrite, disk.ftruncate)
    assert bytes(disk.data) == expect[: len(disk.data)]
    assert bytes(disk.data[PAGE + 5 : 2 * PAGE]) == bytes(PAGE - 5)  # no stale tail


# ---------------------------------------------------------------------------
# The mounted file system
# ---------------------------------------------------------------------------


@pytest.fixture
def pfs(tmp_path: Path) -> Iterator[PowerFS]:
    with PowerFS(tmp_path / "pfs") as fs:
        yield fs


def _write(path: Path, data: bytes, *, sync: bool, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def _cut(fs: PowerFS, keep: float = 0.0) -> dict[str, Any]:
    result = fs.cut(keep)
    fs.on()
    return result


def test_fsynced_data_survives_a_cut_and_unsynced_data_does_not(pfs: PowerFS) -> None:
    synced, unsynced = pfs.mount / "synced", pfs.mount / "unsynced"
    _write(synced, b"kept" * 5000, sync=True)
    _write(unsynced, b"lost" * 5000, sync=False)
    assert unsynced.read_bytes() == b"lost" * 5000  # readable before the cut
    assert (pfs.backing / "unsynced").read_bytes() == b""  # but not on disk
    result = _cut(pfs)
    assert result["files"] == 1 and result["lost_pages"] == 5
    assert synced.read_bytes() == b"kept" * 5000
    assert unsynced.exists() and unsynced.read_bytes() == b""  # created: durable, empty
    assert pfs.stats()["dirty_files"] == 0


def test_sync_writes_everything_back(pfs: PowerFS) -> None:
    _write(pfs.mount / "a", b"one", sync=False)
    _write(pfs.mount / "b", b"two", sync=False)
    assert pfs.sync() == 2
    _write(pfs.mount / "a", b"+", sync=False, mode="ab")
    _cut(pfs)
    assert (pfs.mount / "a").read_bytes() == b"one"
    assert (pfs.mount / "b").read_bytes() == b"two"


def test_only_writes_after_the_last_fsync_are_lost_page_by_page(pfs: PowerFS) -> None:
    path = pfs.mount / "f"
    _write(path, b"A" * (3 * PAGE), sync=True)
    with open(path, "r+b") as f:
        f.seek(PAGE + 100)
        f.write(b"B" * 50)  # part of one page
        f.seek(3 * PAGE - 10)
        f.write(b"C" * 20)  # across the end: grows the file
        f.flush()
        assert os.fstat(f.fileno()).st_size == 3 * PAGE + 10
        os.fsync(f.fileno())
        f.seek(10)
        f.write(b"D" * 5)
        f.flush()
    expect_after = bytearray(b"A" * (3 * PAGE))
    expect_after[PAGE + 100 : PAGE + 150] = b"B" * 50
    expect_after[3 * PAGE - 10 :] = b"C" * 20
    before = bytearray(expect_after)
    before[10:15] = b"D" * 5
    assert path.read_bytes() == bytes(before)
    _cut(pfs)
    assert path.read_bytes() == bytes(expect_after)


def test_unsynced_truncation_is_undone_by_a_cut_and_synced_truncation_stays(
    pfs: PowerFS,
) -> None:
    path = pfs.mount / "t"
    _write(path, b"x" * 10000, sync=True)
    with open(path, "r+b") as f:
        f.truncate(100)
        f.seek(5000)
        f.write(b"y")  # the hole reads as zeros, not as the old tail
        f.flush()
    assert path.read_bytes() == b"x" * 100 + bytes(4900) + b"y"
    _cut(pfs)
    assert path.read_bytes() == b"x" * 10000
    with open(path, "r+b") as f:
        f.truncate(100)
        os.fsync(f.fileno())
    _write(path, b"z", sync=False, mode="ab")
    _cut(pfs)
    assert path.read_bytes() == b"x" * 100
    # O_TRUNC is a truncation like any other: not durable without fsync.
    _write(path, b"new", sync=False)
    _cut(pfs)
    assert path.read_bytes() == b"x" * 100


def test_metadata_is_durable_at_once_as_documented(pfs: PowerFS) -> None:
    m = pfs.mount
    (m / "dir").mkdir()
    _write(m / "dir" / "a", b"synced", sync=True)
    _write(m / "b", b"unsynced", sync=False)
    os.rename(m / "dir" / "a", m / "a2")  # rename: durable, data goes with the file
    os.rename(m / "b", m / "b2")
    _write(m / "gone", b"data", sync=True)
    os.unlink(m / "gone")
    os.chmod(m / "a2", 0o600)
    _cut(pfs)
    assert sorted(os.listdir(m)) == ["a2", "b2", "dir"]
    assert (m / "a2").read_bytes() == b"synced"
    assert (m / "b2").read_bytes() == b""  # its data was never fsynced
    assert (m / "a2").stat().st_mode & 0o777 == 0o600
    assert os.listdir(m / "dir") == []
    # A directory rename moves what is below it, overlays included.
    _write(m / "dir" / "c", b"c-synced", sync=True)
    _write(m / "dir" / "c", b"+more", sync=False, mode="ab")
    os.rename(m / "dir", m / "dir2")
    assert (m / "dir2" / "c").read_bytes() == b"c-synced+more"
    fd = os.open(m / "dir2", os.O_RDONLY)
    try:
        os.fsync(fd)  # fsyncdir is accepted (and syncs no file data)
    finally:
        os.close(fd)
    _cut(pfs)
    assert (m / "dir2" / "c").read_bytes() == b"c-synced"
    assert pfs.stats()["fsyncdirs"] >= 1


def test_an_unlinked_open_file_keeps_working_and_leaves_nothing(pfs: PowerFS) -> None:
    path = pfs.mount / "tmp"
    with open(path, "w+b") as f:
        os.unlink(path)
        f.write(b"still here")
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read() == b"still here"
    _cut(pfs)
    assert os.listdir(pfs.mount) == []
    assert os.listdir(pfs.backing) == []


def test_while_the_power_is_off_everything_fails(pfs: PowerFS) -> None:
    path = pfs.mount / "f"
    _write(path, b"synced", sync=True)
    f = open(path, "r+b")  # noqa: SIM115 - held across the cut on purpose
    try:
        pfs.cut()
        with pytest.raises(OSError) as exc:
            os.pwrite(f.fileno(), b"late", 0)
        assert exc.value.errno == errno.EIO
        with pytest.raises(OSError):
            os.fsync(f.fileno())
        pfs.on()
        assert os.pread(f.fileno(), 100, 0) == b"synced"
    finally:
        f.close()
    assert pfs.stats()["refused"] >= 2


def test_a_cut_with_writeback_keeps_each_page_old_or_new(pfs: PowerFS) -> None:
    path = pfs.mount / "w"
    _write(path, b"o" * (8 * PAGE), sync=True)
    _write(path, b"n" * (8 * PAGE), sync=False, mode="r+b")
    result = _cut(pfs, keep=0.5)
    assert 0 < int(result["written_back"]) < 8  # seed 0: some pages, not all
    data = path.read_bytes()
    assert len(data) == 8 * PAGE
    pages = {data[i * PAGE : (i + 1) * PAGE] for i in range(8)}
    assert pages == {b"o" * PAGE, b"n" * PAGE}


def test_shared_mmap_works_and_is_durable_after_msync_and_fsync(pfs: PowerFS) -> None:
    path = pfs.mount / "shm"
    _write(path, bytes(2 * PAGE), sync=True)
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 2 * PAGE, mmap.MAP_SHARED)
        mm[0:5] = b"hello"
        with open(path, "rb") as other:
            assert other.read(5) == b"hello"  # one page cache for mmap and read
        mm.flush()  # msync(MS_SYNC) is an fsync of the range
        assert (pfs.backing / "shm").read_bytes()[:5] == b"hello"
        mm[PAGE : PAGE + 5] = b"later"
        mm.close()  # written back through us when the file is closed, not synced
    assert path.read_bytes()[PAGE : PAGE + 5] == b"later"
    assert pfs.stats()["dirty_files"] == 1
    _cut(pfs)
    data = path.read_bytes()
    assert data[:5] == b"hello" and data[PAGE : PAGE + 5] == bytes(5)


_SQLITE_WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("PRAGMA wal_autocheckpoint=50")
conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, pad BLOB)")
start = (conn.execute("SELECT max(id) FROM t").fetchone()[0] or 0) + 1
for i in range(start, start + 10**6):
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (?, randomblob(300))", (i,))
    conn.execute("COMMIT")
    sys.stdout.write(f"{i}\\n")
    sys.stdout.flush()
"""


def _run_writer_until_cut(
    db: Path, fs: PowerFS, rng: random.Random, script: str = _SQLITE_WRITER
) -> list[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    committed = [int(proc.stdout.readline())]  # it runs
    os.set_blocking(proc.stdout.fileno(), False)
    time.sleep(rng.uniform(0.1, 0.5))
    power_cut(proc, fs, keep=rng.choice([0.0, 0.3]), seed=rng.randrange(2**31))
    rest = proc.stdout.read() or b""
    committed += [int(x) for x in rest.split()]
    return committed


@pytest.mark.slow
def test_sqlite_wal_commits_with_synchronous_full_survive_cuts(pfs: PowerFS) -> None:
    db = pfs.mount / "store.db"
    rng = random.Random(7)
    acked: list[int] = []
    for _ in range(5):
        acked += _run_writer_until_cut(db, pfs, rng)
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            ids = {r[0] for r in conn.execute("SELECT id FROM t")}
        finally:
            conn.close()
        missing = [i for i in acked if i not in ids]
        assert not missing, f"{len(missing)} committed rows lost: {missing[:5]}"
    assert len(acked) > 100
    assert pfs.stats()["cuts"] == 5


_SQLITE_UNSYNCED = _SQLITE_WRITER.replace("synchronous=FULL", "synchronous=OFF")


@pytest.mark.slow
def test_sqlite_without_fsync_loses_commits_in_a_cut(pfs: PowerFS) -> None:
    """The fixture can fail a store: with synchronous=OFF nothing reaches the disk."""
    db = pfs.mount / "off.db"
    rng = random.Random(3)
    committed = _run_writer_until_cut(db, pfs, rng, _SQLITE_UNSYNCED)
    assert len(committed) > 10
    conn = sqlite3.connect(db)
    try:
        try:
            ids = {r[0] for r in conn.execute("SELECT id FROM t")}
        except sqlite3.OperationalError:
            ids = set()  # the table itself was never synced
    finally:
        conn.close()
    assert len(ids) < len(committed)
