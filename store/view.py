"""A message per row, for the operator commands (``leafgate store ...``).

The server stores many messages to a row (``store.rows``); the operator
commands select, count and aggregate messages with SQL. They read ``messages``,
a temporary table of one row per message still stored (``seq, grp, ts,
subject, size`` and its place, ``batch, idx``; no payloads: it is as small as
it can be on a device), filled from one read snapshot when the store is
opened. Payloads are read from the rows themselves (``payloads``). A schema-1
store (not yet opened by a newer server) gets a temporary view of the same
columns over its real ``messages`` table, so the commands' queries are the
same for both; unqualified, ``messages`` names the temporary one first.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator

from store import buffer

_SIZE = "length(subject) + ifnull(length(hdr), 0) + length(data)"


def tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def is_rows(conn: sqlite3.Connection) -> bool:
    """True for a store of rows of messages (schema 2 and later)."""
    return "batches" in tables(conn)


def fill(conn: sqlite3.Connection) -> None:
    """Make ``temp.messages``, inside the caller's transaction if it has one
    (else in a read transaction of its own)."""
    if not is_rows(conn):
        conn.execute(
            "CREATE TEMP VIEW IF NOT EXISTS messages AS SELECT seq, grp, ts, subject,"
            f" {_SIZE} AS size, 0 AS batch, 0 AS idx FROM main.messages"
        )
        return
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, grp INTEGER,"
        " ts INTEGER, subject BLOB, size INTEGER, batch INTEGER, idx INTEGER)"
    )
    with _snapshot(conn):
        conn.execute("DELETE FROM temp.messages")
        conn.executemany(
            "INSERT INTO temp.messages VALUES (?,?,?,?,?,?,?)",
            (
                (r.seq, r.group, r.ts, r.subject, r.size, r.batch, r.index)
                for r in buffer.iter_stored(conn)
            ),
        )


def ensure(conn: sqlite3.Connection) -> None:
    """Fill ``temp.messages`` unless it is there (only the commands that count
    or aggregate need it: listing reads the rows themselves)."""
    if conn.execute("SELECT 1 FROM sqlite_temp_master WHERE name = 'messages'").fetchone() is None:
        fill(conn)


def payloads(
    conn: sqlite3.Connection, wanted: Callable[[int, bytes], bool]
) -> Iterator[tuple[int, int, int, bytes, bytes | None, bytes]]:
    """``(seq, gid, ts, subject, hdr, data)`` of the stored messages *wanted*
    (by sequence and subject) picks, in sequence order, from one snapshot."""
    if not is_rows(conn):
        query = "SELECT seq, grp, ts, subject, hdr, data FROM main.messages ORDER BY seq"
        for seq, gid, ts, subject, hdr, data in conn.execute(query):
            if wanted(seq, bytes(subject)):
                yield seq, gid, ts, bytes(subject), bytes(hdr) if hdr is not None else None, data
        return
    with _snapshot(conn):
        for r in buffer.iter_stored(conn):
            if wanted(r.seq, r.subject):
                yield r.seq, r.group, r.ts, r.subject, r.hdr, r.data


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Within the caller's transaction if it has one, else one of our own:
    every read inside sees one state of a store the server goes on writing."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        yield
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")


def delete(conn: sqlite3.Connection, where: str, params: list[object]) -> int:
    """Remove the selected messages from the stored rows (and from the view),
    in the caller's transaction; returns the highest sequence a row still
    holds (a row stays until all its messages are gone)."""
    picks = conn.execute(f"SELECT batch, idx, size FROM temp.messages{where}", params)
    buffer.remove(conn, [(int(b), int(i), int(s)) for b, i, s in picks])
    conn.execute(f"DELETE FROM temp.messages{where}", params)
    return buffer.top_seq(conn)
