"""Synchronous operations on an open store, one transaction each.

The writer calls these from its worker thread (a limiter of 1: never two at
once). They know SQL and nothing of Trio, the uplink or the clock. Messages
are stored many to a row (``store.rows``): ``batches`` holds the rows,
``gone`` the bitmap of messages already removed from a row still held.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter

from store import rows
from store.window import Record, Run

_INSERT = (
    "INSERT INTO batches (first_seq, last_seq, grp, ts, ts_last, msgs, bytes, crc, body)"
    " VALUES (?,?,?,?,?,?,?,?,?)"
)
_ROW = (
    "SELECT b.grp, b.ts, b.msgs, b.body, g.bits FROM batches b"
    " LEFT JOIN gone g ON g.batch = b.first_seq WHERE b.first_seq = ?"
)
# (batch, index, size) of a message to remove
Removal = tuple[int, int, int]


@dataclass(frozen=True)
class Trim:
    """Oldest messages of one group to drop: at least *msgs* messages and *bytes* bytes."""

    gid: int
    msgs: int
    bytes: int


@dataclass(frozen=True)
class CommitResult:
    deleted: int  # confirmed messages removed
    trimmed: list[tuple[int, int]]  # (gid, size) of each message dropped by a trim
    wrote_last_seq: bool
    trimmed_seqs: tuple[int, ...] = ()  # their sequences


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged, inclusive ranges covering *seqs*."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def commit(
    conn: sqlite3.Connection,
    inserts: Sequence[Record | Run],
    gids: Sequence[int],
    deletes: Sequence[Record],
    trims: Sequence[Trim],
    *,
    sync: bool,
    last_seq: int,
    recorded: int,
) -> CommitResult:
    """Insert, delete and trim in one transaction (inserts first: a message
    confirmed before its batch was committed is deleted in the same step;
    deletes before trims: a trim takes what is still unconfirmed).

    *gids* maps a record's group index to its id in the store; the inserted
    records learn their row and place in it (``batch``, ``index``; a Run its
    ``places``). With
    *sync*, the commit waits for fsync (synchronous=FULL). *last_seq* is the
    highest sequence handed out, *recorded* the one last written to ``meta``:
    when no row holds *last_seq* (removed, or never stored), it is recorded,
    so the next start never reuses a sequence the hub has seen."""
    conn.execute("PRAGMA synchronous=FULL" if sync else "PRAGMA synchronous=NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if inserts:
            insert_rows(conn, rows.pack(inserts), gids)
        # After the inserts: a record learns its row there (one confirmed before
        # its batch was committed is deleted in the same step); a record with
        # no row (memory mode, or a commit that failed) has nothing to delete.
        deleted = remove(conn, [(r.batch, r.index, r.size) for r in deletes if r.batch])
        trimmed: list[tuple[int, int]] = []
        trimmed_seqs: list[int] = []
        for trim in trims:
            trimmed.extend(_trim(conn, trim, trimmed_seqs))
        wrote = _record_if_gone(conn, last_seq, recorded)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return CommitResult(deleted, trimmed, wrote, tuple(trimmed_seqs))


def insert_rows(conn: sqlite3.Connection, packed: Sequence[rows.Row], gids: Sequence[int]) -> None:
    conn.executemany(
        _INSERT,
        [
            (
                r.first_seq,
                r.last_seq,
                gids[r.group],
                r.ts,
                r.ts_last,
                r.msgs,
                r.size,
                r.crc,
                r.body,
            )
            for r in packed
        ],
    )


def insert_messages(
    conn: sqlite3.Connection,
    messages: Iterable[tuple[int, int, int, bytes, bytes | None, bytes]],
) -> int:
    """Store ``(seq, gid, ts, subject, hdr, data)`` messages (in the caller's
    transaction; a migration, a salvage); returns how many."""
    n = 0
    chunk: list[Record] = []
    for seq, gid, ts, subject, hdr, data in messages:
        chunk.append(Record(seq, gid, ts, subject, hdr, data))
        if len(chunk) >= rows.ROW_MSGS * 4:
            n += _insert_records(conn, chunk)
            chunk = []
    return n + (_insert_records(conn, chunk) if chunk else 0)


def _insert_records(conn: sqlite3.Connection, records: list[Record]) -> int:
    packed = rows.pack(records)
    top = max((r.group for r in packed), default=0)
    insert_rows(conn, packed, range(top + 1))  # group already holds the store's id
    return len(records)


def remove(conn: sqlite3.Connection, removals: Iterable[Removal]) -> int:
    """Mark messages gone; a row whose messages are all gone is deleted.
    Returns how many were removed now (a message gone already, or a row that
    no longer exists, counts nothing)."""
    by_batch: dict[int, list[tuple[int, int]]] = {}
    for batch, index, size in removals:
        by_batch.setdefault(batch, []).append((index, size))
    removed = 0
    for batch, picks in by_batch.items():
        removed += _remove_from(conn, batch, picks)
    return removed


def _remove_from(conn: sqlite3.Connection, batch: int, picks: list[tuple[int, int]]) -> int:
    row = conn.execute(
        "SELECT b.msgs, g.bits, g.msgs, g.bytes FROM batches b"
        " LEFT JOIN gone g ON g.batch = b.first_seq WHERE b.first_seq = ?",
        (batch,),
    ).fetchone()
    if row is None:
        return 0
    total, old, gone_msgs, gone_bytes = row
    gone_msgs, gone_bytes = gone_msgs or 0, gone_bytes or 0
    bits, removed, size = _marked(old or b"", total, picks)
    if not removed:
        return 0
    gone_msgs += removed
    gone_bytes += size
    if gone_msgs >= total:
        conn.execute("DELETE FROM batches WHERE first_seq = ?", (batch,))
        conn.execute("DELETE FROM gone WHERE batch = ?", (batch,))
    else:
        conn.execute(
            "INSERT OR REPLACE INTO gone (batch, bits, msgs, bytes) VALUES (?,?,?,?)",
            (batch, bits, gone_msgs, gone_bytes),
        )
    return removed


def _marked(old: bytes, total: int, picks: list[tuple[int, int]]) -> tuple[bytes, int, int]:
    """The gone bitmap *old* with *picks* (index, size) marked: the new bitmap,
    how many were not marked yet, and their sizes added up. Acks come in
    order, so the picks are mostly a run of indexes none of which is marked:
    one mask for all of them, not a bit at a time."""
    if not picks:
        return old, 0, 0
    lo, hi = picks[0][0], picks[-1][0]
    if 0 <= lo <= hi < total and list(map(itemgetter(0), picks)) == list(range(lo, hi + 1)):
        mask = ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)
        value = int.from_bytes(old, "little")
        if not value & mask:
            value |= mask
            size = sum(map(itemgetter(1), picks))
            return value.to_bytes(max(len(old), (hi >> 3) + 1), "little"), len(picks), size
    bits = bytearray(old)
    removed = size = 0
    for index, size_one in picks:
        if index < total and rows.mark(bits, index):
            removed += 1
            size += size_one
    return bytes(bits), removed, size


def top_seq(conn: sqlite3.Connection) -> int:
    """The highest sequence a row holds (or held: a row stays until all its
    messages are gone), 0 if none."""
    return int(conn.execute("SELECT max(last_seq) FROM batches").fetchone()[0] or 0)


def _record_if_gone(conn: sqlite3.Connection, last_seq: int, recorded: int) -> bool:
    """Record *last_seq* when no row holds it (in the caller's transaction);
    True if written."""
    if last_seq <= recorded or top_seq(conn) >= last_seq:
        return False
    # Never lower what is recorded (a reservation written by another operation
    # that ran between this one's snapshot of it and now).
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    if row is not None and str(row[0]).isdigit() and int(row[0]) >= last_seq:
        return False
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(last_seq),))
    return True


def _group_rows(conn: sqlite3.Connection, gid: int) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(first_seq, ts, body, gone bits) of group *gid*'s rows, oldest first,
    read one at a time (a trim or an expiry usually needs the first only)."""
    keys = [
        int(k)
        for (k,) in conn.execute(
            "SELECT first_seq FROM batches WHERE grp = ? ORDER BY first_seq", (gid,)
        )
    ]
    for key in keys:
        row = conn.execute(_ROW, (key,)).fetchone()
        if row is not None:
            yield key, int(row[1]), bytes(row[3]), bytes(row[4] or b"")


def _trim(conn: sqlite3.Connection, trim: Trim, seqs: list[int]) -> list[tuple[int, int]]:
    dropped: list[tuple[int, int]] = []
    freed = 0
    for batch, ts, body, bits in _group_rows(conn, trim.gid):
        if len(dropped) >= trim.msgs and freed >= trim.bytes:
            break
        picks: list[tuple[int, int]] = []
        for index, (seq, _, size) in enumerate(rows.heads(batch, ts, body)):
            if len(dropped) >= trim.msgs and freed >= trim.bytes:
                break
            if rows.is_gone(bits, index):
                continue
            picks.append((index, size))
            seqs.append(seq)
            freed += size
            dropped.append((trim.gid, size))
        _remove_from(conn, batch, picks)
    return dropped


def expire(
    conn: sqlite3.Connection,
    gid: int,
    before_ts: int,
    limit: int = 1000,
    seqs: list[int] | None = None,
    *,
    last_seq: int = 0,
    recorded: int = 0,
    wrote: list[bool] | None = None,
) -> list[int]:
    """Drop messages of group *gid* published before *before_ts* (ms), oldest
    first, up to *limit*; returns their sizes (and appends their sequences to
    *seqs*). Walks seq order and stops at the first message young enough
    (publish times follow sequence order). Like ``commit``, records *last_seq*
    when the highest row is gone (appending True to *wrote*)."""
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        sizes: list[int] = []
        young = False
        for batch, ts, body, bits in _group_rows(conn, gid):
            picks: list[tuple[int, int]] = []
            for index, (seq, msg_ts, size) in enumerate(rows.heads(batch, ts, body)):
                if len(sizes) >= limit or msg_ts >= before_ts:
                    young = True
                    break
                if rows.is_gone(bits, index):
                    continue
                picks.append((index, size))
                sizes.append(size)
                if seqs is not None:
                    seqs.append(seq)
            _remove_from(conn, batch, picks)
            if young:
                break
        if sizes and _record_if_gone(conn, last_seq, recorded) and wrote is not None:
            wrote.append(True)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return sizes


def read_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[Record]:
    """Up to *limit* stored messages after *seq*, in sequence order (their
    ``group`` is the store's group id; the caller maps it)."""
    out: list[Record] = []
    if limit <= 0:
        return out
    spans = conn.execute(
        "SELECT first_seq, last_seq FROM batches WHERE last_seq > ? ORDER BY first_seq", (seq,)
    ).fetchall()
    if all(a[1] < b[0] for a, b in pairwise(spans)):
        # Rows that do not interleave (one group, or groups taking turns a
        # commit at a time): read them in turn, without the merge's heap.
        for first, _last in spans:
            out += _row_records(conn, first, seq, limit - len(out))
            if len(out) >= limit:
                return out[:limit]
        return out
    for rec in iter_stored(conn, seq):
        out.append(rec)
        if len(out) >= limit:
            break
    return out


def iter_stored(conn: sqlite3.Connection, after: int = 0) -> Iterator[Record]:
    """Every message still stored with a sequence above *after*, in sequence
    order (rows of different groups interleave: they are merged), as Records
    whose ``group`` is the store's group id. Rows are read as the merge needs
    them, within the caller's read transaction if there is one."""
    keys = [
        int(k)
        for (k,) in conn.execute(
            "SELECT first_seq FROM batches WHERE last_seq > ? ORDER BY first_seq", (after,)
        )
    ]
    heap: list[tuple[int, int, Record, Iterator[Record]]] = []
    opened = 0
    while opened < len(keys) or heap:
        # Open every row that may hold the next message: those starting at or
        # before the lowest sequence waiting in the heap.
        while opened < len(keys) and (not heap or keys[opened] <= heap[0][0]):
            it = _row_records(conn, keys[opened], after)
            opened += 1
            first = next(it, None)
            if first is not None:
                heapq.heappush(heap, (first.seq, opened, first, it))
        if not heap:
            continue
        _, tie, rec, it = heap[0]
        following = next(it, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following.seq, tie, following, it))
        yield rec


def _row_records(
    conn: sqlite3.Connection, batch: int, after: int, limit: int | None = None
) -> Iterator[Record]:
    row = conn.execute(_ROW, (batch,)).fetchone()
    if row is None:
        return
    gid, ts, body, bits = int(row[0]), int(row[1]), bytes(row[3]), row[4] or b""
    try:
        yield from rows.records(batch, ts, body, gid, after, bits, limit)
    except ValueError as exc:
        raise sqlite3.DatabaseError(f"stored row {batch} does not decode: {exc}") from None


def totals(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """gid -> (messages, bytes) of what is stored."""
    held = {
        int(g): [int(n), int(b or 0)]
        for g, n, b in conn.execute("SELECT grp, sum(msgs), sum(bytes) FROM batches GROUP BY grp")
    }
    for g, n, b in conn.execute(
        "SELECT b.grp, sum(g.msgs), sum(g.bytes) FROM gone g"
        " JOIN batches b ON b.first_seq = g.batch GROUP BY b.grp"
    ):
        held[int(g)][0] -= int(n)
        held[int(g)][1] -= int(b or 0)
    return {g: (n, b) for g, (n, b) in held.items() if n > 0}


def oldest_ts(conn: sqlite3.Connection, gid: int) -> int | None:
    for batch, ts, body, bits in _group_rows(conn, gid):
        for index, (_, msg_ts, _) in enumerate(rows.heads(batch, ts, body)):
            if not rows.is_gone(bits, index):
                return msg_ts
    return None


def record_last_seq(conn: sqlite3.Connection, seq: int) -> None:
    """Record *seq* as the highest sequence handed out (at a clean stop: this
    replaces a reservation made ahead for memory-mode records)."""
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(seq),))


def checkpoint(conn: sqlite3.Connection) -> None:
    """Fold the WAL into the database and truncate it (at shutdown)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: SQLite ends some on its own
    (a full disk), and a failing ROLLBACK must not hide the error that matters."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
