"""store.db and store.buffer on real SQLite files: opening and migrating the store,
the sequence and identity it keeps across restarts, one-transaction commits
(inserts, confirmed deletes, trims), expiry, and what opening does with a
damaged, truncated, foreign-version or full store. Synchronous; no Trio."""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store import buffer, db
from store.buffer import CommitResult, Trim
from store.paths import DB_NAME
from tests.storedb import (
    commit,
    copy_store,
    mem_store,
    meta,
    rec,
    rows_after,
    seqs,
    set_asides,
)

# ---- opening a new store -----------------------------------------------------------------


def test_open_creates_the_schema(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "state"
    conn, report = db.open_store(directory, hostname="edge")
    with closing(conn):
        assert report.created
        assert report.path == directory / DB_NAME
        assert report.next_seq == 1
        assert (report.set_aside, report.damage, report.salvaged) == (None, None, 0)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION == 2
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "groups", "batches", "gone", "events"} <= tables
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


def test_kill_image_keeps_every_committed_row(tmp_path: Path) -> None:
    conn, first = db.open_store(tmp_path / "live", hostname="edge")
    with closing(conn):
        gid = db.group_id(conn, "tele")
        commit(conn, [gid], [rec(s) for s in range(1, 11)])
        commit(conn, [gid], [rec(s) for s in range(11, 21)], deletes=[1, 2])
        assert Path(str(tmp_path / "live" / DB_NAME) + "-wal").stat().st_size > 0
        copy_store(tmp_path / "live", tmp_path / "image")
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
        copy_store(tmp_path / "live", tmp_path / "image")
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
    assert rows_after(conn, 0, 10) == [
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
    assert [r[0] for r in rows_after(conn, 0, 100)] == [1, 3, 5, 7, 9]
    assert [r[0] for r in rows_after(conn, 0, 2)] == [1, 3]
    assert [r[0] for r in rows_after(conn, 3, 2)] == [5, 7]
    assert [r[0] for r in rows_after(conn, 4, 100)] == [5, 7, 9]
    assert rows_after(conn, 9, 100) == []
    assert rows_after(conn, 0, 0) == []


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
            assert seqs(other) == [1, 2]
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
    """A row keeps its sequences until all its messages are gone (a restart
    starts past them); once the row holding the highest one goes, that
    sequence is recorded."""
    directory = tmp_path / "state"
    conn, _ = db.open_store(directory)
    with closing(conn):
        gid = db.group_id(conn, "a")
        result = commit(conn, [gid], [rec(s) for s in range(1, 6)], last_seq=5, recorded=0)
        assert not result.wrote_last_seq  # seq 5 is stored
        result = commit(conn, [gid], deletes=[1, 2, 3], last_seq=5, recorded=0)
        assert not result.wrote_last_seq  # the top row is still stored
        result = commit(conn, [gid], deletes=[5], last_seq=5, recorded=0)
        assert not result.wrote_last_seq  # its row still holds 4 (and stands for 5)
        assert "last_seq" not in meta(conn)
    conn, report = db.open_store(directory)
    with closing(conn):
        assert report.next_seq == 6
        assert seqs(conn) == [4]
        result = commit(conn, [gid], deletes=[4], last_seq=5, recorded=0)
        assert result.wrote_last_seq
        assert meta(conn)["last_seq"] == "5"
        assert seqs(conn) == []
        result = commit(conn, [gid], [rec(6)], deletes=[6], last_seq=6, recorded=5)
        assert result.wrote_last_seq and meta(conn)["last_seq"] == "6"
        result = commit(conn, [gid], last_seq=6, recorded=6)
        assert not result.wrote_last_seq  # already recorded
    conn, report = db.open_store(directory)
    with closing(conn):
        assert report.next_seq == 7  # never reuses 6, nor restarts at 1


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
