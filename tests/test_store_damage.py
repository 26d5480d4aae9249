"""store.db: damaged stores set aside and salvaged, stores that must not be opened,
a full store (synchronous, on tmp_path)."""

from __future__ import annotations

import os
import random
import re
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from store import buffer, db
from store.buffer import Trim
from store.errors import StoreOpenError
from store.paths import DB_NAME
from store.window import Record
from tests.storedb import (
    PAGE,
    commit,
    copy_store,
    meta,
    rec,
    rows_after,
    seqs,
    set_asides,
)

# ---- damaged stores ----------------------------------------------------------------------

ROWS = 5000


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, list[Record]]:
    """A closed store holding ROWS messages of group "tele"; its gateway and server id."""
    directory = tmp_path_factory.mktemp("template")
    conn, report = db.open_store(directory, hostname="edge")
    records = [rec(s, subject=b"tele.%d" % s, data=b"%06d" % s * 16) for s in range(1, ROWS + 1)]
    with closing(conn):
        gid = db.group_id(conn, "tele")
        # As the server writes them: a row per commit, many commits.
        for start in range(0, ROWS, 100):
            commit(conn, [gid], records[start : start + 100], sync=False)
        buffer.checkpoint(conn)
    assert not Path(str(directory / DB_NAME) + "-wal").exists()
    return directory, report.gateway_id, report.server_id, records


def damaged(template: tuple[Path, str, str, list[Record]], dst: Path, how: str) -> Path:
    """A copy of the template store, damaged: "garbage" (4096 random bytes over
    the file), "truncated" (cut mid-file), "page" (one page in the middle overwritten)."""
    shutil.copytree(template[0], dst)
    path = dst / DB_NAME
    size = path.stat().st_size
    noise = random.Random(20240229).randbytes(PAGE)
    if how == "garbage":
        path.write_bytes(noise)
    elif how == "truncated":
        os.truncate(path, size // 2)
    elif how == "truncated_page":
        os.truncate(path, (size // PAGE // 2) * PAGE)
    elif how == "page":
        with open(path, "r+b") as f:
            f.seek((size // PAGE // 2) * PAGE)
            f.write(noise)
    else:
        raise ValueError(how)
    return dst


def assert_fresh_store_works(conn: sqlite3.Connection, first_seq: int) -> None:
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    gid = db.group_id(conn, "fresh")
    commit(conn, [gid], [rec(first_seq, data=b"new")], recorded=first_seq - 1)
    assert rows_after(conn, first_seq - 1, 10)[-1][0] == first_seq
    result = commit(conn, [gid], deletes=[first_seq], last_seq=first_seq, recorded=first_seq - 1)
    assert result.deleted == 1


def assert_salvaged_rows_intact(
    conn: sqlite3.Connection, records: list[Record], salvaged: int
) -> None:
    """Every row in the new store is one of the old store's, unchanged, in its
    group (which keeps its name)."""
    gid = db.group_id(conn, "tele")
    by_seq = {r.seq: r for r in records}
    rows = rows_after(conn, 0, ROWS + 1)
    assert len(rows) == salvaged
    for seq, grp, ts, subject, hdr, data in rows:
        r = by_seq[seq]
        assert (grp, ts, subject, hdr, data) == (gid, r.ts, r.subject, r.hdr, r.data)


def events(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [(str(k), str(d)) for k, d in conn.execute("SELECT kind, detail FROM events")]


@pytest.mark.parametrize("how", ["garbage", "truncated", "truncated_page", "page"])
def test_damaged_store_is_set_aside_and_replaced(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path, how: str
) -> None:
    directory = damaged(template, tmp_path / "state", how)
    original = (directory / DB_NAME).read_bytes()
    conn, report = db.open_store(directory, hostname="edge")
    with closing(conn):
        assert report.set_aside is not None
        assert report.set_aside.exists()
        assert re.fullmatch(re.escape(DB_NAME) + r"\.corrupt-\d{8}T\d{6}Z", report.set_aside.name)
        assert set_asides(directory) == [report.set_aside]
        assert report.set_aside.read_bytes() == original  # moved, not rewritten
        assert report.damage
        assert not report.created
        assert report.path == directory / DB_NAME
        kinds = events(conn)
        assert [k for k, _ in kinds] == ["set_aside"]
        assert report.set_aside.name in kinds[0][1]
        assert_fresh_store_works(conn, report.next_seq)


def test_garbage_store_salvages_nothing(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path
) -> None:
    directory = damaged(template, tmp_path / "state", "garbage")
    conn, report = db.open_store(directory, hostname="edge")
    with closing(conn):
        assert report.salvaged == 0
        assert seqs(conn) == []
        assert "not a database" in (report.damage or "")
        # The old meta is unreadable: a new identity, and sequences from 1.
        assert report.gateway_id != template[1]
        assert report.next_seq == 1


def test_garbage_store_with_a_configured_gateway_starts_past_old_sequences(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path
) -> None:
    directory = damaged(template, tmp_path / "state", "garbage")
    before = int(time.time() * 1000)
    conn, report = db.open_store(directory, gateway_id="gw-fixed")
    with closing(conn):
        assert report.gateway_id == "gw-fixed"
        assert report.next_seq >= before
        assert_fresh_store_works(conn, report.next_seq)


def test_damaged_store_takes_its_wal_along(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path
) -> None:
    """A kill -9 image (database, WAL, shared memory) whose database file is then
    overwritten: the old WAL and shared memory go with the damaged file, and are
    not replayed into the new store."""
    shutil.copytree(template[0], tmp_path / "live")
    conn, _ = db.open_store(tmp_path / "live")
    with closing(conn):
        gid = db.group_id(conn, "tele")
        commit(conn, [gid], [rec(s) for s in range(ROWS + 1, ROWS + 11)], recorded=ROWS)
        copy_store(tmp_path / "live", tmp_path / "image")
    directory = tmp_path / "image"
    old_wal = Path(str(directory / DB_NAME) + "-wal").read_bytes()
    assert old_wal
    (directory / DB_NAME).write_bytes(random.Random(7).randbytes(PAGE))
    conn, report = db.open_store(directory)
    with closing(conn):
        assert report.set_aside is not None
        assert Path(str(report.set_aside) + "-wal").read_bytes() == old_wal
        assert Path(str(report.set_aside) + "-shm").exists()
        assert len(seqs(conn)) == report.salvaged
        assert_fresh_store_works(conn, report.next_seq)


def test_corrupt_page_salvages_the_readable_rows(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path
) -> None:
    _, gateway, server, records = template
    directory = damaged(template, tmp_path / "state", "page")
    conn, report = db.open_store(directory, hostname="other")
    with closing(conn):
        assert report.set_aside is not None
        assert 0 < report.salvaged < ROWS
        # Salvage reads in sequence order and stops at the bad page: a prefix.
        assert seqs(conn) == list(range(1, report.salvaged + 1))
        assert_salvaged_rows_intact(conn, records, report.salvaged)
        # The old meta was readable: the same identity.
        assert report.gateway_id == gateway
        assert report.server_id == server
        assert f"salvaged {report.salvaged}" in events(conn)[0][1]
    # The salvaged store is sound: it opens cleanly, with the same rows.
    conn, again = db.open_store(directory)
    with closing(conn):
        assert again.damage is None and again.set_aside is None
        assert again.gateway_id == gateway
        assert len(seqs(conn)) == report.salvaged


@pytest.mark.parametrize("how", ["truncated", "truncated_page"])
def test_truncated_store_salvages_its_readable_pages(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path, how: str
) -> None:
    """Cut in half, the file still holds its meta page and the first half of the
    messages, intact; SQLite refuses the file as a whole only because its header
    counts more pages than there are. Those rows and the gateway id are readable
    (e.g. with ``PRAGMA writable_schema=ON`` on the read-only salvage connection)."""
    _, gateway, server, records = template
    directory = damaged(template, tmp_path / "state", how)
    conn, report = db.open_store(directory, hostname="other")
    with closing(conn):
        assert report.set_aside is not None
        assert report.gateway_id == gateway
        assert report.server_id == server
        assert 0 < report.salvaged < ROWS
        assert_salvaged_rows_intact(conn, records, report.salvaged)


@pytest.mark.parametrize(
    ("how", "configured"),
    [
        ("page", False),
        ("page", True),
        ("truncated", False),
        ("truncated", True),
        ("garbage", True),
    ],
)
def test_damaged_store_never_reuses_a_message_id(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path, how: str, configured: bool
) -> None:
    """The hub deduplicates on ``<gateway>:<seq>``: when the gateway id outlives
    the damaged store (configured, or read back from its meta), new sequences
    must start past every sequence the old store used (ROWS), or the hub drops
    new messages as duplicates of old ones, and the edge counts them confirmed."""
    _, gateway, _, _ = template
    directory = damaged(template, tmp_path / "state", how)
    conn, report = db.open_store(directory, gateway_id=gateway if configured else None)
    with closing(conn):
        assert report.set_aside is not None
        if report.gateway_id == gateway:
            assert report.next_seq > ROWS, (
                f"gateway {gateway} kept, {report.salvaged} rows salvaged, "
                f"next_seq {report.next_seq} <= {ROWS} (already used)"
            )


@pytest.mark.parametrize(("how", "configured"), [("garbage", True), ("page", False)])
def test_sequence_floor_after_damage_survives_a_restart(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path, how: str, configured: bool
) -> None:
    """Whatever start the damaged store's replacement gets, a restart before the
    first new message must not fall back below it (the floor is on disk)."""
    _, gateway, _, _ = template
    directory = damaged(template, tmp_path / "state", how)
    configured_id = gateway if configured else None
    conn, first = db.open_store(directory, gateway_id=configured_id)
    conn.close()
    conn, second = db.open_store(directory, gateway_id=configured_id)
    with closing(conn):
        assert second.damage is None
        assert second.gateway_id == first.gateway_id
        assert second.next_seq >= first.next_seq


def test_two_damages_in_one_second_keep_both_files(
    template: tuple[Path, str, str, list[Record]], tmp_path: Path
) -> None:
    directory = damaged(template, tmp_path / "state", "garbage")
    conn, first = db.open_store(directory)
    conn.close()
    (directory / DB_NAME).write_bytes(b"\x00garbage" * 512)
    conn, second = db.open_store(directory)
    with closing(conn):
        assert first.set_aside is not None and second.set_aside is not None
        assert first.set_aside != second.set_aside
        assert first.set_aside.exists() and second.set_aside.exists()
        assert len(set_asides(directory)) == 2


# ---- stores that must not be opened ------------------------------------------------------


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    conn, _ = db.open_store(directory)
    with closing(conn):
        gid = db.group_id(conn, "a")
        commit(conn, [gid], [rec(1)])
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreOpenError, match=r"newer leafgate \(schema 99, this one knows 2\)"):
        db.open_store(directory)
    # Refused, not set aside: the newer leafgate's data is untouched.
    assert set_asides(directory) == []
    with closing(sqlite3.connect(directory / DB_NAME)) as other:
        assert other.execute("PRAGMA user_version").fetchone()[0] == 99
        assert seqs(other) == [1]


def test_directory_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreOpenError, match="cannot create"):
        db.open_store(blocker / "state")
    with pytest.raises(StoreOpenError, match="cannot create"):
        db.open_store(blocker)
    assert blocker.read_text() == "not a directory"


def test_database_path_is_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    (directory / DB_NAME).mkdir(parents=True)
    with pytest.raises(StoreOpenError, match="cannot open"):
        db.open_store(directory)
    assert set_asides(directory) == []


# ---- a full store ------------------------------------------------------------------------


def _fill_until_full(
    conn: sqlite3.Connection, gid: int
) -> tuple[list[int], pytest.ExceptionInfo[sqlite3.OperationalError]]:
    """Five small rows, then a page limit, then a commit far too large for it
    (with deletes and a trim in the same transaction)."""
    commit(conn, [gid], [rec(s) for s in range(1, 6)])
    before = seqs(conn)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages + 2}")
    big = [rec(s, data=b"z" * 1000) for s in range(6, 300)]
    with pytest.raises(sqlite3.OperationalError) as info:
        commit(conn, [gid], big, deletes=[1, 2], trims=[Trim(gid, 1, 0)], recorded=5)
    return before, info


def test_full_store_raises_a_full_error(store: tuple[sqlite3.Connection, db.OpenReport]) -> None:
    """The writer tells a full disk from other errors by "full" in the message
    (its policy drops or retries accordingly): the error must say so. SQLite
    rolls a transaction back by itself on SQLITE_FULL, so an unconditional
    ROLLBACK in commit() would raise "cannot rollback - no transaction is active"
    and hide the real error."""
    conn, _ = store
    _, info = _fill_until_full(conn, db.group_id(conn, "a"))
    assert "full" in str(info.value)


def test_full_store_rolls_back_and_recovers(
    store: tuple[sqlite3.Connection, db.OpenReport],
) -> None:
    conn, _ = store
    gid = db.group_id(conn, "a")
    before, _ = _fill_until_full(conn, gid)
    assert not conn.in_transaction
    assert seqs(conn) == before  # nothing inserted, deleted or trimmed
    assert "last_seq" not in meta(conn)
    conn.execute("PRAGMA max_page_count=1073741823")
    big = [rec(s, data=b"z" * 1000) for s in range(6, 300)]
    result = commit(conn, [gid], big, deletes=[1, 2], recorded=5)
    assert result.deleted == 2
    assert seqs(conn) == [3, 4, 5, *range(6, 300)]
