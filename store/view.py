"""A message per row, for the operator commands (``leafgate store ...``).

The server stores many messages to a row (``store.rows``); the operator
commands select, count and aggregate messages with SQL. They read a temporary
table ``messages`` (one row per message still stored, with its place:
``batch``, ``idx``), filled from one read snapshot when the store is opened.
A schema-1 store (not yet opened by a newer server) has a real ``messages``
table, used as it is. Unqualified, ``messages`` names the temporary table
first, so the commands' queries are the same for both.
"""

from __future__ import annotations

import sqlite3

from store import buffer

_SIZE = "length(subject) + ifnull(length(hdr), 0) + length(data)"


def tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def is_rows(conn: sqlite3.Connection) -> bool:
    """True for a store of rows of messages (schema 2 and later)."""
    return "batches" in tables(conn)


def fill(conn: sqlite3.Connection) -> None:
    """Make ``temp.messages`` from the stored rows, inside the caller's
    transaction if it has one (else in a read transaction of its own)."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, grp INTEGER,"
        " ts INTEGER, subject BLOB, hdr BLOB, data BLOB, batch INTEGER, idx INTEGER)"
    )
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        conn.execute("DELETE FROM temp.messages")
        conn.executemany(
            "INSERT INTO temp.messages VALUES (?,?,?,?,?,?,?,?)",
            (
                (r.seq, r.group, r.ts, r.subject, r.hdr, r.data, r.batch, r.index)
                for r in buffer.iter_stored(conn)
            ),
        )
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")


def delete(conn: sqlite3.Connection, where: str, params: list[object]) -> int:
    """Remove the selected messages from the stored rows (and from the view),
    in the caller's transaction; returns the highest sequence a row still
    holds (a row stays until all its messages are gone)."""
    picks = conn.execute(f"SELECT batch, idx, {_SIZE} FROM temp.messages{where}", params)
    buffer.remove(conn, [(int(b), int(i), int(s)) for b, i, s in picks])
    conn.execute(f"DELETE FROM temp.messages{where}", params)
    return buffer.top_seq(conn)
