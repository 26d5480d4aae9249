"""store.db and store.buffer on real SQLite files: opening and migrating the store,
the sequence and identity it keeps across restarts, one-transaction commits
(inserts, confirmed deletes, trims), expiry, and what opening does with a
damaged, truncated, foreign-version or full store. Synchronous; no Trio."""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store import buffer, db
from store.buffer import CommitResult, Trim
from store.errors import StoreOpenError
from store.paths import DB_NAME
from store.window import Record

PAGE = 4096  # SQLite's default page size

# ---- helpers -----------------------------------------------------------------------------


def rec(
    seq: int,
    group: int = 0,
    *,
    ts: int | None = None,
    subject: bytes = b"tele.a",
    hdr: bytes | None = None,
    data: bytes = b"payload",
) -> Record:
    return Record(seq, group, 1_000 + seq if ts is None else ts, subject, hdr, data)


def commit(
    conn: sqlite3.Connection,
    gids: Sequence[int],
    inserts: Sequence[Record] = (),
    deletes: Iterable[int] = (),
    trims: Sequence[Trim] = (),
    *,
    sync: bool = True,
    last_seq: int | None = None,
    recorded: int = 0,
) -> CommitResult:
    top = max((r.seq for r in inserts), default=0)
    return buffer.commit(
        conn,
        inserts,
        gids,
        deletes,
        trims,
        sync=sync,
        last_seq=top if last_seq is None else last_seq,
        recorded=recorded,
    )


def seqs(conn: sqlite3.Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT seq FROM messages ORDER BY seq")]


def meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def set_asides(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith(DB_NAME + ".corrupt-") and not p.name.endswith(("-wal", "-shm"))
    )


def mem_store() -> sqlite3.Connection:
    """The store's schema in memory, for fast property tests of buffer.*."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    db.migrate(conn)
    return conn


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, db.OpenReport]]:
    conn, report = db.open_store(tmp_path / "state", hostname="edge")
    with closing(conn):
        yield conn, report


# ---- opening a new store -----------------------------------------------------------------


def test_open_creates_the_schema(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "state"
    conn, report = db.open_store(directory, hostname="edge")
    with closing(conn):
        assert report.created
        assert report.path == directory / DB_NAME
        assert report.next_seq == 1
        assert (report.set_aside, report.damage, report.salvaged) == (None, None, 0)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "groups", "messages", "events"} <= tables
        assert meta(conn) == {"gateway_id": report.gateway_id, "server_id": report.server_id}
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    # WAL is a property of the file: another connection sees it too.
    with closing(sqlite3.connect(directory / DB_NAME)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_gateway_id_from_the_host_name() -> None:
    assert re.fullmatch(r"edge-box-local-[a-z0-9]{8}", db.new_gateway_id("edge box.local"))
    assert re.fullmatch(r"gateway-[a-z0-9]{8}", db.new_gateway_id(""))
    assert re.fullmatch(r"gateway-[a-z0-9]{8}", db.new_gateway_id("...."))
    assert re.fullmatch(r"x{32}-[a-z0-9]{8}", db.new_gateway_id("x" * 80))
    assert re.fullmatch(r"caf-[a-z0-9]{8}", db.new_gateway_id("caf\u00e9"))
    assert db.new_gateway_id("edge") != db.new_gateway_id("edge")
    assert re.fullmatch(r"[A-Za-z0-9_-]+-[a-z0-9]{8}", db.new_gateway_id())


def test_reopen_keeps_identity_and_sequence(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    conn, first = db.open_store(directory, hostname="edge")
    with closing(conn):
        assert first.gateway_id.startswith("edge-")
        gid = db.group_id(conn, "tele")
        commit(conn, [gid], [rec(s) for s in range(1, 11)])
    conn, second = db.open_store(directory, hostname="other")
    with closing(conn):
        assert not second.created
        assert second.gateway_id == first.gateway_id
        assert second.server_id == first.server_id
        assert second.next_seq == 11
        assert second.damage is None
        commit(conn, [gid], [rec(s) for s in range(11, 21)])
    conn, third = db.open_store(directory)
    with closing(conn):
        assert third.next_seq == 21
        assert (third.gateway_id, third.server_id) == (first.gateway_id, first.server_id)


def test_configured_gateway_id_is_kept(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    for configured, expected in [
        ("gw-a", "gw-a"),
        (None, "gw-a"),
        ("gw-b", "gw-b"),
        (None, "gw-b"),
    ]:
        conn, report = db.open_store(directory, gateway_id=configured)
        with closing(conn):
            assert report.gateway_id == expected
            assert meta(conn)["gateway_id"] == expected


def test_group_ids(store: tuple[sqlite3.Connection, db.OpenReport]) -> None:
    conn, _ = store
    ids = db.group_ids(conn, ["a", "b"])
    assert set(ids) == {"a", "b"}
    assert db.group_id(conn, "a") == ids["a"]
    old = db.group_id(conn, "old")
    again = db.group_ids(conn, ["b", "c"])
    assert again["b"] == ids["b"]
    assert again["old"] == old  # a group still in the store is listed
    assert len(set(again.values())) == len(again) == 4


# ---- crash images: the files as a kill -9 leaves them ------------------------------------


def _copy_store(src: Path, dst: Path) -> None:
    """Copy the store's files (database, WAL, shared memory) as they are now."""
    dst.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(src / DB_NAME) + suffix)
        if part.exists():
            shutil.copyfile(part, Path(str(dst / DB_NAME) + suffix))


def test_kill_image_keeps_every_committed_row(tmp_path: Path) -> None:
    conn, first = db.open_store(tmp_path / "live", hostname="edge")
    with closing(conn):
        gid = db.group_id(conn, "tele")
        commit(conn, [gid], [rec(s) for s in range(1, 11)])
        commit(conn, [gid], [rec(s) for s in range(11, 21)], deletes=[1, 2])
        assert Path(str(tmp_path / "live" / DB_NAME) + "-wal").stat().st_size > 0
        _copy_store(tmp_path / "live", tmp_path / "image")
    conn, report = db.open_store(tmp_path / "image")
    with closing(conn):
        assert report.damage is None
        assert report.set_aside is None
        assert seqs(conn) == list(range(3, 21))
        assert report.next_seq == 21
        assert report.gateway_id == first.gateway_id


def test_torn_wal_tail_loses_only_the_unfinished_commit(tmp_path: Path) -> None:
    conn, _ = db.open_store(tmp_path / "live", hostname="edge")
    with closing(conn):
        gid = db.group_id(conn, "tele")
        commit(conn, [gid], [rec(s) for s in range(1, 11)])
        commit(conn, [gid], [rec(s) for s in range(11, 21)])
        _copy_store(tmp_path / "live", tmp_path / "image")
    wal = Path(str(tmp_path / "image" / DB_NAME) + "-wal")
    os.truncate(wal, wal.stat().st_size - 100)  # the last frame half written
    conn, report = db.open_store(tmp_path / "image")
    with closing(conn):
        assert report.damage is None
        assert set_asides(tmp_path / "image") == []
        assert seqs(conn) == list(range(1, 11))
        assert report.next_seq == 11


# ---- commit: inserts, deletes, trims -----------------------------------------------------


def test_inserts_read_back_exactly(store: tuple[sqlite3.Connection, db.OpenReport]) -> None:
    conn, _ = store
    ga, gb = db.group_id(conn, "a"), db.group_id(conn, "b")
    hdr = b"NATS/1.0\r\nA: 1\r\n\r\n"
    records = [
        rec(1, 0, ts=100, subject=b"a.1", data=b"one"),
        rec(2, 1, ts=101, subject=b"b.2", hdr=hdr, data=b""),
        rec(3, 0, ts=102, subject=b"a.3", hdr=b"", data=b"\x00\xff"),
    ]
    result = commit(conn, [ga, gb], records)
    assert result == CommitResult(0, [], False)
    assert buffer.read_after(conn, 0, 10) == [
        (1, ga, 100, b"a.1", None, b"one"),
        (2, gb, 101, b"b.2", hdr, b""),
        (3, ga, 102, b"a.3", b"", b"\x00\xff"),
    ]
    sizes = {r.seq: r.size for r in records}
    assert buffer.totals(conn) == {ga: (2, sizes[1] + sizes[3]), gb: (1, sizes[2])}


def test_read_after_order_and_limit(store: tuple[sqlite3.Connection, db.OpenReport]) -> None:
    conn, _ = store
    gid = db.group_id(conn, "a")
    commit(conn, [gid], [rec(s) for s in (9, 3, 7, 1, 5)])
    assert [r[0] for r in buffer.read_after(conn, 0, 100)] == [1, 3, 5, 7, 9]
    assert [r[0] for r in buffer.read_after(conn, 0, 2)] == [1, 3]
    assert [r[0] for r in buffer.read_after(conn, 3, 2)] == [5, 7]
    assert [r[0] for r in buffer.read_after(conn, 4, 100)] == [5, 7, 9]
    assert buffer.read_after(conn, 9, 100) == []
    assert buffer.read_after(conn, 0, 0) == []


def test_deletes_report_only_rows_deleted(store: tuple[sqlite3.Connection, db.OpenReport]) -> None:
    conn, _ = store
    ga, gb = db.group_id(conn, "a"), db.group_id(conn, "b")
    records = [rec(s, s % 2, data=b"x" * s) for s in range(1, 11)]
    commit(conn, [ga, gb], records)

    result = commit(conn, [ga, gb], deletes=[2, 3, 4, 8, 50, 51], last_seq=10, recorded=10)
    assert result.deleted == 4  # rows actually removed (50, 51 were never there)
    assert result.trimmed == []
    assert seqs(conn) == [1, 5, 6, 7, 9, 10]
    again = commit(conn, [ga, gb], deletes=[2, 3, 4, 8], last_seq=10, recorded=10)
    assert again.deleted == 0  # deleting twice removes nothing the second time
    assert commit(conn, [ga, gb], deletes=[], last_seq=10, recorded=10).deleted == 0
    assert seqs(conn) == [1, 5, 6, 7, 9, 10]


def test_insert_and_delete_in_one_commit(store: tuple[sqlite3.Connection, db.OpenReport]) -> None:
    """A message confirmed before its batch was committed goes in the same step."""
    conn, _ = store
    gid = db.group_id(conn, "a")
    records = [rec(1), rec(2, data=b"xyz")]
    result = commit(conn, [gid], records, deletes=[2])
    assert result.deleted == 1
    assert seqs(conn) == [1]


@pytest.mark.parametrize("sync", [True, False])
def test_commit_with_and_without_fsync(tmp_path: Path, sync: bool) -> None:
    conn, _ = db.open_store(tmp_path / "state")
    with closing(conn):
        gid = db.group_id(conn, "a")
        commit(conn, [gid], [rec(1), rec(2)], sync=sync)
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == (2 if sync else 1)
        assert not conn.in_transaction
        with closing(sqlite3.connect(tmp_path / "state" / DB_NAME)) as other:
            assert [r[0] for r in other.execute("SELECT seq FROM messages")] == [1, 2]
        commit(conn, [gid], deletes=[1], sync=not sync, last_seq=2, recorded=0)
        assert seqs(conn) == [2]


def test_trim_oldest_first_and_only_that_group(
    store: tuple[sqlite3.Connection, db.OpenReport],
) -> None:
    conn, _ = store
    ga, gb = db.group_id(conn, "a"), db.group_id(conn, "b")
    # a: 1, 3, 5, ... (100 bytes each); b: 2, 4, 6, ...
    records = [rec(s, int(s % 2 == 0), subject=b"s", data=b"x" * 99) for s in range(1, 21)]
    commit(conn, [ga, gb], records)
    result = commit(conn, [ga, gb], trims=[Trim(ga, 2, 0)], last_seq=20, recorded=20)
    assert result.trimmed == [(ga, 100), (ga, 100)]
    assert result.deleted == 0
    assert seqs(conn) == [2, 4, *range(5, 21)]

    result = commit(conn, [ga, gb], trims=[Trim(gb, 0, 250)], last_seq=20, recorded=20)
    assert result.trimmed == [(gb, 100)] * 3  # at least 250 bytes: three messages
    assert seqs(conn) == [5, 7, 8, *range(9, 21)]

    result = commit(conn, [ga, gb], trims=[Trim(ga, 1, 150)], last_seq=20, recorded=20)
    assert result.trimmed == [(ga, 100)] * 2  # one message is not 150 bytes
    assert buffer.totals(conn) == {ga: (6, 600), gb: (7, 700)}

    result = commit(conn, [ga, gb], trims=[Trim(ga, 0, 0)], last_seq=20, recorded=20)
    assert result.trimmed == []
    result = commit(conn, [ga, gb], trims=[Trim(ga, 50, 0)], last_seq=20, recorded=20)
    assert result.trimmed == [(ga, 100)] * 6  # all there is
    assert buffer.totals(conn) == {gb: (7, 700)}
    assert seqs(conn) == [8, 10, 12, 14, 16, 18, 20]


def test_trim_takes_what_the_same_commit_inserted(
    store: tuple[sqlite3.Connection, db.OpenReport],
) -> None:
    conn, _ = store
    gid = db.group_id(conn, "a")
    commit(conn, [gid], [rec(1)])
    result = commit(conn, [gid], [rec(2), rec(3)], trims=[Trim(gid, 2, 0)])
    assert result.trimmed == [(gid, rec(1).size), (gid, rec(2).size)]
    assert seqs(conn) == [3]


@given(
    rows=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 300)), max_size=120),
    trims=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 80), st.integers(0, 12_000)),
        max_size=3,
        unique_by=lambda t: t[0],
    ),
)
@settings(max_examples=120, deadline=None)
def test_trim_against_a_model(
    rows: list[tuple[int, int]], trims: list[tuple[int, int, int]]
) -> None:
    with closing(mem_store()) as conn:
        gids = [db.group_id(conn, name) for name in ("a", "b", "c")]
        records = [
            rec(seq, g, subject=b"s", data=b"x" * (size - 1))
            for seq, (g, size) in enumerate(rows, start=1)
        ]
        commit(conn, gids, records)
        result = commit(
            conn,
            gids,
            trims=[Trim(gids[g], msgs, size) for g, msgs, size in trims],
            last_seq=len(rows),
            recorded=len(rows),
        )
        expected: list[tuple[int, int]] = []
        gone: set[int] = set()
        for g, msgs, want in trims:
            n = freed = 0
            for r in records:
                if r.group != g:
                    continue
                if n >= msgs and freed >= want:
                    break
                n += 1
                freed += r.size
                gone.add(r.seq)
                expected.append((gids[g], r.size))
        assert result.trimmed == expected
        assert seqs(conn) == [r.seq for r in records if r.seq not in gone]


# ---- the highest sequence survives a drained store ---------------------------------------


def test_last_seq_is_recorded_only_when_the_top_row_is_gone(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    conn, _ = db.open_store(directory)
    with closing(conn):
        gid = db.group_id(conn, "a")
        result = commit(conn, [gid], [rec(s) for s in range(1, 6)], last_seq=5, recorded=0)
        assert not result.wrote_last_seq  # seq 5 is stored
        result = commit(conn, [gid], deletes=[1, 2, 3], last_seq=5, recorded=0)
        assert not result.wrote_last_seq  # the top row is still stored
        assert "last_seq" not in meta(conn)
        result = commit(conn, [gid], deletes=[5], last_seq=5, recorded=0)
        assert result.wrote_last_seq
        assert meta(conn)["last_seq"] == "5"
        result = commit(conn, [gid], deletes=[4], last_seq=5, recorded=5)
        assert not result.wrote_last_seq  # already recorded
        assert seqs(conn) == []
    conn, report = db.open_store(directory)
    with closing(conn):
        assert report.next_seq == 6  # never reuses 5, nor restarts at 1


def test_drained_store_never_reuses_a_sequence(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    recorded = 0
    for round_ in range(3):
        conn, report = db.open_store(directory)
        with closing(conn):
            gid = db.group_id(conn, "a")
            first = report.next_seq
            assert first == 1 + 10 * round_
            batch = [rec(s) for s in range(first, first + 10)]
            commit(conn, [gid], batch, recorded=recorded)
            top = first + 9
            result = commit(
                conn, [gid], deletes=[r.seq for r in batch], last_seq=top, recorded=recorded
            )
            assert result.wrote_last_seq
            recorded = top


def test_last_seq_for_sequences_never_stored(tmp_path: Path) -> None:
    """Memory-mode records get sequences that never reach the table."""
    directory = tmp_path / "state"
    conn, _ = db.open_store(directory)
    with closing(conn):
        gid = db.group_id(conn, "a")
        assert not commit(conn, [gid], [rec(1), rec(2)], last_seq=2).wrote_last_seq
        assert commit(conn, [gid], last_seq=20, recorded=0).wrote_last_seq
        assert meta(conn)["last_seq"] == "20"
        assert seqs(conn) == [1, 2]
    conn, report = db.open_store(directory)
    with closing(conn):
        assert report.next_seq == 21


def test_last_seq_after_trimming_the_top_row(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    conn, _ = db.open_store(directory)
    with closing(conn):
        gid = db.group_id(conn, "a")
        commit(conn, [gid], [rec(1), rec(2), rec(3)])
        result = commit(conn, [gid], trims=[Trim(gid, 3, 0)], last_seq=3, recorded=0)
        assert len(result.trimmed) == 3
        assert result.wrote_last_seq
    conn, report = db.open_store(directory)
    with closing(conn):
        assert report.next_seq == 4


# ---- expiry, totals, ranges --------------------------------------------------------------


def test_expire_drops_old_rows_oldest_first(
    store: tuple[sqlite3.Connection, db.OpenReport],
) -> None:
    conn, _ = store
    ga, gb = db.group_id(conn, "a"), db.group_id(conn, "b")
    records = [
        rec(1, 0, ts=100, data=b"1"),
        rec(2, 1, ts=100, data=b"22"),  # other group
        rec(3, 0, ts=200, data=b"333"),
        rec(4, 0, ts=300, data=b"4444"),
        rec(5, 0, ts=150, data=b"55555"),  # old, but behind a young one
        rec(6, 0, ts=400, data=b"666666"),
    ]
    size = {r.seq: r.size for r in records}
    commit(conn, [ga, gb], records)
    assert buffer.oldest_ts(conn, ga) == 100
    assert buffer.expire(conn, ga, 100) == []  # strictly older than the cutoff
    assert buffer.expire(conn, ga, 251) == [size[1], size[3]]
    assert seqs(conn) == [2, 4, 5, 6]  # 5 is old, but the walk stopped at 4
    assert not conn.in_transaction
    assert buffer.oldest_ts(conn, ga) == 300
    assert buffer.expire(conn, ga, 301) == [size[4], size[5]]
    assert buffer.oldest_ts(conn, ga) == 400
    assert buffer.expire(conn, ga, 10**15, limit=0) == []
    assert buffer.expire(conn, gb, 10**15) == [size[2]]
    assert seqs(conn) == [6]
    assert buffer.oldest_ts(conn, gb) is None


def test_expire_limit(store: tuple[sqlite3.Connection, db.OpenReport]) -> None:
    conn, _ = store
    gid = db.group_id(conn, "a")
    commit(conn, [gid], [rec(s, ts=s) for s in range(1, 21)])
    assert len(buffer.expire(conn, gid, 1000, limit=7)) == 7
    assert seqs(conn) == list(range(8, 21))
    assert len(buffer.expire(conn, gid, 1000)) == 13
    assert seqs(conn) == []


def test_totals_and_checkpoint(tmp_path: Path) -> None:
    conn, _ = db.open_store(tmp_path / "state")
    with closing(conn):
        assert buffer.totals(conn) == {}
        ga, gb = db.group_id(conn, "a"), db.group_id(conn, "b")
        records = [rec(s, s % 2, data=b"y" * s, hdr=b"H" if s > 5 else None) for s in range(1, 9)]
        commit(conn, [ga, gb], records)
        want: dict[int, tuple[int, int]] = {}
        for r in records:
            g = (ga, gb)[r.group]
            n, b = want.get(g, (0, 0))
            want[g] = (n + 1, b + r.size)
        assert buffer.totals(conn) == want
        wal = Path(str(tmp_path / "state" / DB_NAME) + "-wal")
        assert wal.stat().st_size > 0
        buffer.checkpoint(conn)
        assert wal.stat().st_size == 0
        assert buffer.totals(conn) == want


@pytest.mark.parametrize(
    ("given_seqs", "expected"),
    [
        ([], []),
        ([5], [(5, 5)]),
        ([1, 2, 3], [(1, 3)]),
        ([3, 1, 2, 2, 3], [(1, 3)]),
        ([1, 3, 5], [(1, 1), (3, 3), (5, 5)]),
        ([10, 11, 13, 14, 15, 20], [(10, 11), (13, 15), (20, 20)]),
    ],
)
def test_ranges(given_seqs: list[int], expected: list[tuple[int, int]]) -> None:
    assert buffer.ranges(given_seqs) == expected
    assert buffer.ranges(iter(given_seqs)) == expected  # any iterable, once


@given(st.lists(st.integers(0, 200) | st.integers(0, 2**63 - 1), max_size=80))
def test_ranges_cover_exactly_the_input(values: list[int]) -> None:
    out = buffer.ranges(values)
    assert all(low <= high for low, high in out)
    assert sum(high - low + 1 for low, high in out) == len(set(values))
    assert {s for low, high in out for s in range(low, high + 1)} == set(values)
    for (_l1, h1), (l2, _h2) in itertools.pairwise(out):
        assert l2 > h1 + 1  # sorted, disjoint and not adjacent


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
        commit(conn, [gid], records, sync=False)
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
    assert buffer.read_after(conn, first_seq - 1, 10)[-1][0] == first_seq
    result = commit(conn, [gid], deletes=[first_seq], last_seq=first_seq, recorded=first_seq - 1)
    assert result.deleted == 1


def assert_salvaged_rows_intact(
    conn: sqlite3.Connection, records: list[Record], salvaged: int
) -> None:
    """Every row in the new store is one of the old store's, unchanged, in its
    group (which keeps its name)."""
    gid = db.group_id(conn, "tele")
    by_seq = {r.seq: r for r in records}
    rows = buffer.read_after(conn, 0, ROWS + 1)
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
        _copy_store(tmp_path / "live", tmp_path / "image")
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
    with pytest.raises(StoreOpenError, match=r"newer leafgate \(schema 99, this one knows 1\)"):
        db.open_store(directory)
    # Refused, not set aside: the newer leafgate's data is untouched.
    assert set_asides(directory) == []
    with closing(sqlite3.connect(directory / DB_NAME)) as other:
        assert other.execute("PRAGMA user_version").fetchone()[0] == 99
        assert [r[0] for r in other.execute("SELECT seq FROM messages")] == [1]


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
