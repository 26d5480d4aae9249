"""Synchronous operations on an open store, one transaction each.

The writer calls these from its worker thread (a limiter of 1: never two at
once). They know SQL and nothing of Trio, the uplink or the clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from store.window import Record

_SIZE = "length(subject) + ifnull(length(hdr), 0) + length(data)"
_INSERT = "INSERT OR REPLACE INTO messages (seq, grp, ts, subject, hdr, data) VALUES (?,?,?,?,?,?)"
Row = tuple[int, int, int, bytes, bytes | None, bytes]


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
    inserts: Sequence[Record],
    gids: Sequence[int],
    deletes: Iterable[int],
    trims: Sequence[Trim],
    *,
    sync: bool,
    last_seq: int,
    recorded: int,
) -> CommitResult:
    """Insert, delete and trim in one transaction (inserts first: a message
    confirmed before its batch was committed is deleted in the same step;
    deletes before trims: a trim takes what is still unconfirmed).

    *gids* maps a record's group index to its id in the store. With *sync*, the
    commit waits for fsync (synchronous=FULL). *last_seq* is the highest
    sequence handed out, *recorded* the one last written to ``meta``: when the
    table no longer holds *last_seq* (deleted, trimmed, or never stored), it is
    recorded, so the next start never reuses a sequence the hub has seen."""
    conn.execute("PRAGMA synchronous=FULL" if sync else "PRAGMA synchronous=NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if inserts:
            conn.executemany(
                _INSERT,
                [(r.seq, gids[r.group], r.ts, r.subject, r.hdr, r.data) for r in inserts],
            )
        # Ranges, no RETURNING: the caller accounts for what it confirmed (a
        # row per message back into Python would double the cost of a delete).
        # Before the trims: a trim must take unconfirmed rows, not confirmed ones.
        deleted = 0
        for low, high in ranges(deletes):
            deleted += conn.execute(
                "DELETE FROM messages WHERE seq BETWEEN ? AND ?", (low, high)
            ).rowcount
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


def _record_if_gone(conn: sqlite3.Connection, last_seq: int, recorded: int) -> bool:
    """Record *last_seq* when the table no longer holds it (in the caller's
    transaction); True if written."""
    if last_seq <= recorded:
        return False
    top = conn.execute("SELECT max(seq) FROM messages").fetchone()[0] or 0
    if top >= last_seq:
        return False
    # Never lower what is recorded (a reservation written by another operation
    # that ran between this one's snapshot of it and now).
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    if row is not None and str(row[0]).isdigit() and int(row[0]) >= last_seq:
        return False
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(last_seq),))
    return True


def _trim(conn: sqlite3.Connection, trim: Trim, seqs: list[int]) -> list[tuple[int, int]]:
    dropped: list[tuple[int, int]] = []
    freed = 0
    while len(dropped) < trim.msgs or freed < trim.bytes:
        want = max(trim.msgs - len(dropped), 1 if freed < trim.bytes else 0, 64)
        rows = conn.execute(
            f"SELECT seq, {_SIZE} FROM messages WHERE grp = ? ORDER BY seq LIMIT ?",
            (trim.gid, want),
        ).fetchall()
        if not rows:
            break
        take: list[int] = []
        for seq, size in rows:
            if len(dropped) + len(take) >= trim.msgs and freed >= trim.bytes:
                break
            take.append(int(seq))
            freed += int(size)
            dropped.append((trim.gid, int(size)))
        seqs.extend(take)
        for low, high in ranges(take):
            conn.execute(
                "DELETE FROM messages WHERE seq BETWEEN ? AND ? AND grp = ?", (low, high, trim.gid)
            )
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
        rows = conn.execute(
            f"SELECT seq, ts, {_SIZE} FROM messages WHERE grp = ? ORDER BY seq LIMIT ?",
            (gid, limit),
        ).fetchall()
        old = []
        for seq, ts, size in rows:
            if ts >= before_ts:
                break
            old.append((int(seq), int(size)))
        if seqs is not None:
            seqs.extend(seq for seq, _ in old)
        for low, high in ranges(s for s, _ in old):
            conn.execute(
                "DELETE FROM messages WHERE seq BETWEEN ? AND ? AND grp = ?", (low, high, gid)
            )
        if old and _record_if_gone(conn, last_seq, recorded) and wrote is not None:
            wrote.append(True)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return [size for _, size in old]


def read_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[Row]:
    """Up to *limit* stored messages after *seq*, in sequence order."""
    return conn.execute(
        "SELECT seq, grp, ts, subject, hdr, data FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit),
    ).fetchall()


def totals(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """gid -> (messages, bytes) of what is stored."""
    return {
        int(g): (int(n), int(b or 0))
        for g, n, b in conn.execute(
            f"SELECT grp, count(*), sum({_SIZE}) FROM messages GROUP BY grp"
        )
    }


def oldest_ts(conn: sqlite3.Connection, gid: int) -> int | None:
    row = conn.execute(
        "SELECT ts FROM messages WHERE grp = ? ORDER BY seq LIMIT 1", (gid,)
    ).fetchone()
    return int(row[0]) if row else None


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
