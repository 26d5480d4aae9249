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


def copy_store(src: Path, dst: Path) -> None:
    """Copy the store's files (database, WAL, shared memory) as they are now."""
    dst.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(src / DB_NAME) + suffix)
        if part.exists():
            shutil.copyfile(part, Path(str(dst / DB_NAME) + suffix))
