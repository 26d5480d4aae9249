"""store.rows (messages many to a row) and schema 2: round trips, the gone
bitmap, rows of interleaved groups read back in sequence order, and the
migration of a schema-1 store (a row per message) with its backlog."""

from __future__ import annotations

import itertools
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store import buffer, db, rows
from store.paths import DB_NAME
from store.window import Record, Run, expand
from tests.storedb import commit, rec, rows_after, seqs

subjects = st.binary(min_size=1, max_size=40).filter(lambda b: b" " not in b)
headers = st.one_of(st.none(), st.binary(max_size=60))
payloads = st.binary(max_size=300)


@st.composite
def record_lists(draw: st.DrawFn) -> list[Record]:
    n = draw(st.integers(0, 60))
    gaps = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    out: list[Record] = []
    seq = draw(st.integers(1, 10**9))
    ts = draw(st.integers(0, 2**41))
    for gap in gaps:
        seq += gap
        ts += draw(st.integers(-5, 1000))  # a clock may step back a little
        out.append(
            Record(seq, draw(st.integers(0, 2)), ts, draw(subjects), draw(headers), draw(payloads))
        )
    return out


@settings(max_examples=200, deadline=None)
@given(record_lists())
def test_pack_then_read_back_is_exact(records: list[Record]) -> None:
    packed = rows.pack(records)
    seen: dict[int, tuple[int, int, bytes, bytes | None, bytes, int, int]] = {}
    for row in packed:
        assert row.msgs <= rows.ROW_MSGS
        got = list(rows.records(row.first_seq, row.ts, row.body, row.group))
        assert len(got) == row.msgs and got[0].seq == row.first_seq and got[-1].seq == row.last_seq
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        assert sum(e.size for e in got) == row.size
        assert rows.heads(row.first_seq, row.ts, row.body) == [(e.seq, e.ts, e.size) for e in got]
        for e in got:
            seen[e.seq] = (row.group, e.ts, e.subject, e.hdr, e.data, e.index, row.first_seq)
    assert sorted(seen) == sorted(r.seq for r in records)
    for r in records:
        group, ts, subject, hdr, data, index, batch = seen[r.seq]
        # b"" and None stay apart: a header block of no bytes is not "no header".
        assert (group, ts, subject, hdr, data) == (r.group, r.ts, r.subject, r.hdr, r.data)
        assert (r.batch, r.index) == (batch, index)  # where the record learnt it is


@st.composite
def plain_record_lists(draw: st.DrawFn) -> list[Record]:
    """Records without headers (rows in column layout): consecutive or sparse
    sequences, one subject or several, one time or many."""
    n = draw(st.integers(1, 80))
    pool = draw(st.lists(subjects, min_size=1, max_size=3))
    sparse, moving = draw(st.booleans()), draw(st.booleans())
    seq, ts = draw(st.integers(1, 10**9)), draw(st.integers(0, 2**41))
    out: list[Record] = []
    for _ in range(n):
        seq += draw(st.integers(1, 4)) if sparse else 1
        ts += draw(st.integers(-5, 1000)) if moving else 0
        out.append(Record(seq, 0, ts, draw(st.sampled_from(pool)), None, draw(payloads)))
    return out


@settings(max_examples=200, deadline=None)
@given(plain_record_lists())
def test_rows_without_headers_are_columns_and_read_back_exactly(records: list[Record]) -> None:
    packed = rows.pack(records)
    got = []
    for row in packed:
        assert row.body[0] == rows.COLUMNS
        got += list(rows.records(row.first_seq, row.ts, row.body, row.group))
        assert rows.heads(row.first_seq, row.ts, row.body) == [
            (e.seq, e.ts, e.size) for e in got[-row.msgs :]
        ]
    assert [(e.seq, e.ts, e.subject, e.hdr, e.data) for e in got] == [
        (r.seq, r.ts, r.subject, r.hdr, r.data) for r in records
    ]
    assert [(e.batch, e.index) for e in got] == [(r.batch, r.index) for r in records]
    # Skipping (after a sequence, gone bits) works on columns as on entries.
    row = packed[0]
    bits = bytearray()
    rows.mark(bits, 0)
    kept = list(rows.records(row.first_seq, row.ts, row.body, 0, records[0].seq, bytes(bits)))
    assert [e.seq for e in kept] == [r.seq for r in records[1 : row.msgs]]


def test_a_row_with_a_header_keeps_the_entry_layout() -> None:
    (row,) = rows.pack([Record(1, 0, 5, b"a", None, b"x"), Record(2, 0, 5, b"a", b"", b"y")])
    assert row.body[0] == 0  # the first entry's sequence offset
    (row,) = rows.pack([Record(1, 0, 5, b"a", None, b"x"), Record(2, 0, 5, b"a", None, b"y")])
    assert row.body[0] == rows.COLUMNS


@pytest.mark.parametrize("cut", [1, 5, 17, 30])
def test_a_damaged_column_body_does_not_decode(cut: int) -> None:
    (row,) = rows.pack([Record(s, 0, 5 + s, b"subj%d" % s, None, b"data" * 3) for s in (1, 3, 4)])
    assert row.body[0] == rows.COLUMNS
    for body in (row.body[:-cut], row.body + b"\0" * cut, row.body[:1] + b"\xff" + row.body[2:]):
        with pytest.raises(ValueError):
            list(rows.records(row.first_seq, row.ts, body, 0))
        with pytest.raises(ValueError):
            rows.heads(row.first_seq, row.ts, body)


def test_rows_are_cut_at_their_limits() -> None:
    records = [Record(s, 0, 1000, b"a", None, b"x" * 10) for s in range(1, rows.ROW_MSGS * 2 + 2)]
    packed = rows.pack(records)
    assert [r.msgs for r in packed] == [rows.ROW_MSGS, rows.ROW_MSGS, 1]
    big = [Record(s, 0, 1000, b"a", None, b"x" * 300_000) for s in range(1, 9)]
    assert [r.msgs for r in rows.pack(big)] == [4, 4]  # past ROW_BYTES after the 4th
    jump = [Record(1, 0, 0, b"a", None, b""), Record(2, 0, 2**32, b"a", None, b"")]
    assert [r.msgs for r in rows.pack(jump)] == [1, 1]  # a clock jump of weeks


@pytest.mark.parametrize("cut", [1, 5, 17])
def test_a_damaged_body_does_not_decode(cut: int) -> None:
    (row,) = rows.pack([Record(s, 0, 5, b"subj", b"hdr", b"data" * 3) for s in (1, 2, 3)])
    with pytest.raises(ValueError):
        list(rows.records(row.first_seq, row.ts, row.body[:-cut], 0))
    with pytest.raises(ValueError):
        rows.heads(row.first_seq, row.ts, row.body[:-cut])
    assert rows.checksum(row.body) != rows.checksum(row.body[:-cut] + b"\0" * cut)


@given(st.sets(st.integers(0, 5000), max_size=200))
def test_gone_bitmap(marked: set[int]) -> None:
    bits = bytearray()
    for i in marked:
        assert rows.mark(bits, i)
        assert not rows.mark(bits, i)  # a second time changes nothing
    assert rows.count_gone(bytes(bits)) == len(marked)
    for i in range(0, 5001, 7):
        assert rows.is_gone(bytes(bits), i) == (i in marked)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.sets(st.integers(0, 45), max_size=45),
    st.one_of(
        st.tuples(st.integers(0, 44), st.integers(0, 12)).map(
            lambda t: list(range(t[0], t[0] + t[1] + 1))  # a run of indexes, as acks come
        ),
        st.lists(st.integers(0, 45), max_size=12),  # any order, repeats, past the row
    ),
    st.integers(1, 500),
)
def test_marking_picks_gone_equals_bit_by_bit(
    total: int, already: set[int], indexes: list[int], size: int
) -> None:
    """buffer._marked (one mask for a run of indexes) against rows.mark one at a time."""
    old = bytearray()
    for i in already:
        if i < total:
            rows.mark(old, i)
    picks = [(i, size + i) for i in indexes]
    bits, removed, removed_size = bytearray(old), 0, 0
    for i, s in picks:
        if i < total and rows.mark(bits, i):
            removed, removed_size = removed + 1, removed_size + s
    got_bits, got_removed, got_size = buffer._marked(bytes(old), total, picks)
    assert (got_removed, got_size) == (removed, removed_size)
    assert int.from_bytes(got_bits, "little") == int.from_bytes(bits, "little")


@pytest.fixture
def store(tmp_path: Path) -> sqlite3.Connection:
    conn, _ = db.open_store(tmp_path / "state")
    return conn


def test_interleaved_groups_read_back_in_sequence_order(store: sqlite3.Connection) -> None:
    with closing(store) as conn:
        ga, gb = db.group_id(conn, "a"), db.group_id(conn, "b")
        # Two commits, each a row per group; the groups' sequences interleave.
        commit(conn, [ga, gb], [rec(s, s % 2) for s in range(1, 11)])
        commit(conn, [ga, gb], [rec(s, s % 2) for s in range(11, 21)])
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 4
        assert seqs(conn) == list(range(1, 21))
        assert [r[0] for r in rows_after(conn, 4, 5)] == [5, 6, 7, 8, 9]
        # Confirm every other one: the rows stay, with what is gone marked.
        commit(conn, [ga, gb], deletes=range(1, 21, 2))
        assert seqs(conn) == list(range(2, 21, 2))
        assert buffer.totals(conn) == {ga: (10, 10 * rec(2).size)}  # group b: all gone
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 2
        commit(conn, [ga, gb], deletes=range(2, 21, 2))
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM gone").fetchone()[0] == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=30), min_size=1, max_size=6),
    st.sets(st.integers(1, 200), max_size=60),
    st.integers(0, 200),
    st.integers(1, 80),
    st.booleans(),
)
def test_read_after_equals_the_merged_read(
    tmp_path_factory: pytest.TempPathFactory,
    commits: list[list[int]],
    gone: set[int],
    after: int,
    limit: int,
    headers: bool,
) -> None:
    """buffer.read_after (rows read in turn when they do not interleave, the
    merge when they do; column rows built whole or from a sequence, with gone
    messages) gives what iter_stored, the general merge, gives, cut at the limit."""
    conn, _ = db.open_store(tmp_path_factory.mktemp("read") / "state")
    with closing(conn):
        gids = [db.group_id(conn, "a"), db.group_id(conn, "b")]
        seq = 0
        for groups in commits:  # each commit: a row per group it touches
            batch = []
            for group in groups:
                seq += 1
                batch.append(rec(seq, group, hdr=b"h" if headers and seq % 7 == 0 else None))
            commit(conn, gids, batch)
        commit(conn, gids, deletes=[s for s in gone if s <= seq])
        merged = list(itertools.islice(buffer.iter_stored(conn, after), limit))
        got = buffer.read_after(conn, after, limit)
        assert [(r.seq, r.group, r.data, r.batch, r.index) for r in got] == [
            (r.seq, r.group, r.data, r.batch, r.index) for r in merged
        ]
        assert [r.seq for r in got] == sorted(set(range(after + 1, seq + 1)) - gone)[:limit]


def test_removing_twice_counts_once(store: sqlite3.Connection) -> None:
    with closing(store) as conn:
        gid = db.group_id(conn, "a")
        records = [rec(s) for s in range(1, 6)]
        commit(conn, [gid], records)
        removal = [(records[1].batch, records[1].index, records[1].size)]
        conn.execute("BEGIN")
        assert buffer.remove(conn, removal) == 1
        assert buffer.remove(conn, removal) == 0
        assert buffer.remove(conn, [(999_999, 0, 5)]) == 0  # no such row
        conn.execute("COMMIT")
        assert buffer.totals(conn) == {gid: (4, 4 * records[0].size)}


def _v1_store(path: Path) -> None:
    """A store as schema 1 wrote it: a row per message, two groups, a recorded
    last sequence above the highest row."""
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path, isolation_level=None)
    with closing(conn):
        conn.execute("PRAGMA journal_mode=WAL")
        step = db._MIGRATIONS[1]
        assert isinstance(step, tuple)
        for statement in step:
            conn.execute(statement)
        conn.execute("PRAGMA user_version=1")
        conn.execute("INSERT INTO groups (id, name) VALUES (1, 'tele'), (2, 'events')")
        conn.execute("INSERT INTO meta VALUES ('gateway_id', 'gw-old'), ('server_id', 'NSRV')")
        conn.executemany(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    s,
                    1 + s % 2,
                    1000 + s,
                    b"t.%d" % s,
                    b"NATS/1.0\r\n\r\n" if s % 3 else None,
                    b"%d" % s,
                )
                for s in range(3, 5003)
            ],
        )


def test_a_schema_1_store_is_migrated_with_its_backlog(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    _v1_store(directory / DB_NAME)
    conn, report = db.open_store(directory)
    with closing(conn):
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "messages" not in tables and {"batches", "gone"} <= tables
        assert report.gateway_id == "gw-old" and report.server_id == "NSRV"
        assert report.next_seq == 5003
        got = rows_after(conn)
        assert [r[0] for r in got] == list(range(3, 5003))
        for seq, gid, ts, subject, hdr, data in got:
            assert (gid, ts, subject, data) == (1 + seq % 2, 1000 + seq, b"t.%d" % seq, b"%d" % seq)
            assert hdr == (b"NATS/1.0\r\n\r\n" if seq % 3 else None)
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_the_operator_tool_reads_a_schema_1_store_unmigrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.cli import main

    directory = tmp_path / "state"
    _v1_store(directory / DB_NAME)
    assert main(["store", "list", "--store", str(directory), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "t.3" in out and "t.4" in out
    conn = sqlite3.connect(directory / DB_NAME)
    with closing(conn):
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # only read


def test_the_operator_tool_purges_a_schema_1_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.cli import main

    directory = tmp_path / "state"
    _v1_store(directory / DB_NAME)
    args = ["store", "purge", "--store", str(directory), "--to-seq", "102", "--yes"]
    assert main(args) == 0
    assert "purged 100 messages" in capsys.readouterr().out
    conn = sqlite3.connect(directory / DB_NAME)
    with closing(conn):
        assert conn.execute("SELECT min(seq), count(*) FROM messages").fetchone() == (103, 4900)
    conn, report = db.open_store(directory)  # and the server converts what is left
    with closing(conn):
        assert seqs(conn) == list(range(103, 5003)) and report.next_seq == 5003


# ---- Runs (store.window.Run): packed without a Record per message ----------------------


@st.composite
def item_lists(draw: st.DrawFn) -> list[Record | Run]:
    """Records and Runs of one or two groups, sequences rising without overlap."""
    items: list[Record | Run] = []
    seq = draw(st.integers(1, 10**6))
    ts = draw(st.integers(0, 2**41))
    for _ in range(draw(st.integers(1, 12))):
        seq += draw(st.integers(1, 3))
        ts += draw(st.integers(0, 50))
        group = draw(st.integers(0, 1))
        subject = draw(st.sampled_from([b"t.a", b"t.bb", b"t.a.long.subject"]))
        if draw(st.booleans()):
            n = draw(st.sampled_from([1, 2, 7, rows.ROW_MSGS - 1, rows.ROW_MSGS + 3]))
            times = draw(st.integers(0, 3))
            payloads = [b"%d" % (seq + i) * ((i + times) % 4) for i in range(n)]
            size = len(subject) * n + sum(map(len, payloads))
            items.append(Run(seq, group, ts, subject, payloads, size))
            seq += n - 1
        else:
            hdr = draw(st.one_of(st.none(), st.just(b"NATS/1.0\r\n\r\n")))
            items.append(Record(seq, group, ts, subject, hdr, draw(st.binary(max_size=20))))
    return items


@settings(max_examples=40, deadline=None)
@given(item_lists())
def test_runs_pack_as_their_records_do(items: list[Record | Run]) -> None:
    """Packing Records and Runs gives the rows their Records alone would give,
    and each Run's Records are placed where those Records went."""
    as_records = expand(items)  # unplaced: packed below for the reference
    expected = rows.pack(as_records)
    got = rows.pack(items)
    assert got == expected
    placed = [(r.seq, r.batch, r.index) for r in expand(items)]
    assert placed == [(r.seq, r.batch, r.index) for r in as_records]
    assert all(batch > 0 for _seq, batch, _index in placed)


def test_a_run_spanning_rows_is_placed_in_each() -> None:
    payloads = [b"p"] * (rows.ROW_MSGS + 10)
    run = Run(100, 0, 5, b"t", payloads, 2 * len(payloads))
    packed = rows.pack([Record(99, 0, 5, b"t", None, b"x"), run])
    assert [r.msgs for r in packed] == [rows.ROW_MSGS, 11]
    assert run.places == [(99, 1, rows.ROW_MSGS - 1), (99 + rows.ROW_MSGS, 0, 11)]
    back = [
        (r.seq, r.batch, r.index)
        for row in packed
        for r in rows.records(row.first_seq, row.ts, row.body, 0)
    ]
    assert back[1:] == [(r.seq, r.batch, r.index) for r in run.records()]
