"""Helpers for the synchronous store tests (store.db, store.buffer): records,
commits with defaults, reading a store back, a fresh store fixture."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from store import buffer, db
from store.buffer import CommitResult, Trim
from store.paths import DB_NAME
from store.window import Record

PAGE = 4096  # SQLite's default page size


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
        removals(conn, deletes, inserts),
        trims,
        sync=sync,
        last_seq=top if last_seq is None else last_seq,
        recorded=recorded,
    )


def removals(
    conn: sqlite3.Connection, seqs: Iterable[int], inserts: Sequence[Record] = ()
) -> list[Record]:
    """The records with these sequences, stored or about to be (for
    ``buffer.commit``: the writer holds the records it confirms; a test names
    sequences)."""
    wanted = set(seqs)
    if not wanted:
        return []
    found = {r.seq: r for r in buffer.iter_stored(conn) if r.seq in wanted}
    found.update({r.seq: r for r in inserts if r.seq in wanted})
    return [found[s] for s in sorted(found)]


def rows_after(
    conn: sqlite3.Connection, after: int = 0, limit: int = 1 << 30
) -> list[tuple[int, int, int, bytes, bytes | None, bytes]]:
    """(seq, gid, ts, subject, hdr, data) of what is stored after *after*."""
    return [
        (r.seq, r.group, r.ts, r.subject, r.hdr, r.data)
        for r in buffer.read_after(conn, after, limit)
    ]


def seqs(conn: sqlite3.Connection) -> list[int]:
    return [rec.seq for rec in buffer.iter_stored(conn)]


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


def copy_store(src: Path, dst: Path) -> None:
    """Copy the store's files (database, WAL, shared memory) as they are now."""
    dst.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(src / DB_NAME) + suffix)
        if part.exists():
            shutil.copyfile(part, Path(str(dst / DB_NAME) + suffix))
