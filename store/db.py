"""Opening the store: pragmas, migrations, the integrity check, setting a damaged
store aside. Synchronous; the writer runs it in its thread.

Crash-only: opening must cope with whatever a kill -9 or a power cut left. SQLite
in WAL mode recovers a half-written WAL by itself (an uncommitted tail is
ignored). A file that is not a database, or that fails ``PRAGMA quick_check``,
is renamed ``leafgate.db.corrupt-<UTC time>`` (with its -wal and -shm), a fresh
store is created in its place, and whatever rows can still be read from the old
one are copied into it (best effort). The caller reports it loudly. A marker
file, durable before the rename and removed after the salvage commit, makes a
crash in between resumable (see ``_set_aside``).

Migrations are plain SQL keyed by ``PRAGMA user_version`` (sqlite-utils takes
about 300 ms to import on a small device; it is used by the operator tools,
not at start-up).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import secrets
import shutil
import sqlite3
import string
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.proto.ids import new_server_id
from store import buffer, rows
from store.buffer import _rollback
from store.errors import StoreOpenError
from store.paths import db_path

SCHEMA_VERSION = 2
_TOP_SEQ = "top_seq"  # salvage only: the damaged store's highest sequence (not stored)

# Schema 2 stores messages many to a row (see store.rows for why and how).
# first_seq is the rowid: inserts append to the end of the table's b-tree and
# deletes take rows from its start, the cheapest pattern for SQLite (and for
# flash). The index on last_seq finds the rows a read after a sequence needs;
# the one on (grp, first_seq) a group's oldest rows (trims, expiry).
_BATCHES = (
    """CREATE TABLE batches (
        first_seq INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        grp INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        ts_last INTEGER NOT NULL,
        msgs INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        crc INTEGER NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE INDEX batches_last ON batches (last_seq)",
    "CREATE INDEX batches_grp ON batches (grp, first_seq)",
    """CREATE TABLE gone (
        batch INTEGER PRIMARY KEY,
        bits BLOB NOT NULL,
        msgs INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )""",
)
_MESSAGES_V1 = """CREATE TABLE messages (
            seq INTEGER PRIMARY KEY,
            grp INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            subject BLOB NOT NULL,
            hdr BLOB,
            data BLOB NOT NULL
        )"""


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Schema 1 held a row per message: move them into rows of messages."""
    for statement in _BATCHES:
        conn.execute(statement)
    buffer.insert_messages(
        conn, conn.execute("SELECT seq, grp, ts, subject, hdr, data FROM messages ORDER BY seq")
    )
    top = conn.execute("SELECT max(seq) FROM messages").fetchone()[0] or 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    recorded = int(row[0]) if row and str(row[0]).isdigit() else 0
    if top > recorded:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(top),))
    conn.execute("DROP TABLE messages")


Migration = tuple[str, ...] | Callable[[sqlite3.Connection], None]
_MIGRATIONS: dict[int, Migration] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        _MESSAGES_V1,
        "CREATE TABLE events (ts INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL)",
    ),
    2: _v1_to_v2,
}


@dataclass(frozen=True)
class OpenReport:
    path: Path
    created: bool
    gateway_id: str
    next_seq: int
    server_id: str
    set_aside: Path | None = None  # where a damaged store was moved
    damage: str | None = None  # what was wrong with it
    salvaged: int = 0  # rows copied from the damaged store


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the store's pragmas. ``check_same_thread=False``: the
    writer uses it from worker threads, one at a time (a limiter of 1)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.DatabaseError(f"cannot use WAL mode (journal_mode={mode})")
    conn.execute("PRAGMA synchronous=FULL")
    # Keep the WAL from growing without bound after a long backlog drains.
    conn.execute("PRAGMA journal_size_limit=67108864")
    conn.execute("PRAGMA cache_size=-8192")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreOpenError(
            f"the store was written by a newer leafgate (schema {version}, this one knows "
            f"{SCHEMA_VERSION}); upgrade leafgate or move the store away"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            step = _MIGRATIONS[target]
            if callable(step):
                step(conn)
            else:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise


def check(conn: sqlite3.Connection) -> str | None:
    """None if the store is sound, else what is wrong."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if rows != ["ok"]:
        return "; ".join(str(r) for r in rows)
    return None


def new_gateway_id(hostname: str | None = None) -> str:
    """``<host>-<8 random characters>``: readable, and unique even where every
    device keeps the image's host name."""
    host = hostname if hostname is not None else platform.node()
    allowed = set(string.ascii_letters + string.digits + "-_")
    clean = "".join(c if c in allowed else "-" for c in host).strip("-")[:32] or "gateway"
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    return f"{clean}-{suffix}"


def open_store(
    directory: Path, gateway_id: str | None = None, hostname: str | None = None
) -> tuple[sqlite3.Connection, OpenReport]:
    """Open (or create) the store in *directory*; set a damaged one aside."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreOpenError(f"cannot create {directory}: {exc.strerror or exc}") from None
    path = db_path(directory)
    set_aside = _interrupted_set_aside(path)
    created = not path.exists()
    damage: str | None = None
    conn: sqlite3.Connection | None = None
    if set_aside is not None:
        # A crash came between setting a damaged store aside and finishing the
        # salvage: the store in place is the fresh one, perhaps without the rows
        # or the sequence floor yet. Do the salvage again (it is idempotent).
        damage = "setting the damaged store aside was interrupted by a crash; resumed"
        conn = connect(path)
        migrate(conn)
    else:
        try:
            conn = connect(path)
            damage = check(conn)
            if damage is None:
                try:
                    migrate(conn)
                except StoreOpenError:
                    conn.close()
                    raise
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_environmental(exc):
                raise StoreOpenError(f"cannot open {path}: {exc}") from None
            conn = None
            damage = str(exc)
    if conn is None or (set_aside is None and damage is not None):
        if conn is not None:
            conn.close()
        set_aside = _set_aside(path)
        conn = connect(path)
        migrate(conn)
    salvaged, old_meta = _salvage(set_aside, conn) if set_aside else (0, {})
    gateway = _gateway(conn, gateway_id, old_meta.get("gateway_id"), hostname)
    next_seq = _next_seq(conn, old_meta)
    if set_aside is not None and (gateway_id is not None or "gateway_id" in old_meta):
        # The gateway id outlives the damaged store (configured, or read back
        # from its meta) but how far its sequences went may not be readable
        # (salvage stops at the first bad page). The hub must never take a new
        # message for a duplicate of an old one: start past anything it can
        # have used, and record that at once, for a restart.
        top = old_meta.get(_TOP_SEQ, "")
        old_top = int(top) if top.isdigit() and int(top) < 2**62 else 0
        if old_top and "gateway_id" in old_meta:
            # Both the highest stored sequence and the recorded last one were
            # readable: continue right after them (no gap in the ledger).
            next_seq = max(next_seq, old_top + 1)
        else:
            next_seq = max(next_seq, old_top + 1, int(time.time() * 1000))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(next_seq - 1),))
    if set_aside is not None:
        _record_event(
            conn, "set_aside", f"{damage}; moved to {set_aside.name}; salvaged {salvaged}"
        )
        # Done: the salvage, the identity and the sequence floor are committed
        # (a crash before this line repeats them, and may record the event twice).
        _remove_marker(path)
    server_id = _meta_value(conn, "server_id", old_meta.get("server_id") or new_server_id())
    report = OpenReport(path, created, gateway, next_seq, server_id, set_aside, damage, salvaged)
    return conn, report


def _is_environmental(exc: sqlite3.OperationalError) -> bool:
    """Errors about the surroundings (permissions, space, locks), not the file's
    content: setting the store aside would not help."""
    text = str(exc).lower()
    return any(
        word in text
        for word in (
            "unable to open",
            "readonly",
            "read-only",
            "locked",
            "disk is full",
            "disk i/o",
        )
    )


def _set_aside(path: Path) -> Path:
    """Rename the damaged store. A marker (``leafgate.db.set-aside``, naming the
    target) is made durable first and removed once the salvage is committed, so
    that a crash in between is resumed (:func:`_interrupted_set_aside`) instead of
    leaving a fresh empty store whose readable rows, gateway id and sequence floor
    stay behind in the set-aside file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    marker = _marker(path)
    with open(marker, "w") as f:
        f.write(target.name)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)
    _move_parts(path, target, ("", "-wal", "-shm"))
    _fsync_dir(path.parent)
    return target


def _move_parts(path: Path, target: Path, suffixes: tuple[str, ...]) -> None:
    for suffix in suffixes:
        part = Path(str(path) + suffix)
        if part.exists():
            os.replace(part, Path(str(target) + suffix))


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".set-aside")


def _interrupted_set_aside(path: Path) -> Path | None:
    """The set-aside file of a set-aside a crash interrupted, else None.

    The marker names it. If it does not exist the rename never happened: the
    damaged store is still in place and is found damaged again (the marker goes).
    If the store itself is missing, the crash came in the middle of the renames:
    its -wal and -shm, still in place, belong to the damaged store and follow it."""
    marker = _marker(path)
    try:
        name = marker.read_text().strip()
    except FileNotFoundError:
        return None
    if not name.startswith(path.name + ".corrupt-") or os.sep in name:
        _remove_marker(path)  # not one of ours
        return None
    target = path.with_name(name)
    if not target.exists():
        _remove_marker(path)
        return None
    if not path.exists():
        _move_parts(path, target, ("-wal", "-shm"))
    return target


def _remove_marker(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_marker(path))
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make renames and removals in *directory* durable (best effort: not every
    file system lets a directory be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _salvage(old: Path, conn: sqlite3.Connection) -> tuple[int, dict[str, str]]:
    """Copy what can be read from a damaged store; stop at the first unreadable page."""
    meta: dict[str, str] = {}
    copied = 0
    source, scratch = _whole_pages(old)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        _remove_store_files(scratch)
        return 0, meta
    try:
        with contextlib.suppress(sqlite3.Error):
            # A cut file (its header counts more pages than it holds) is refused
            # as a whole unless the schema is "writable"; on this read-only
            # connection that only lets SQLite read the pages that are there.
            src.execute("PRAGMA writable_schema=ON")
        try:
            meta = {str(k): str(v) for k, v in src.execute("SELECT key, value FROM meta")}
        except sqlite3.Error:
            meta = {}
        tables = _tables(src)
        v2 = "batches" in tables
        try:
            # The right-most path of the table's b-tree: often readable when a
            # page in the middle is not (schema 2: the last_seq index's).
            query = "SELECT max(last_seq) FROM batches" if v2 else "SELECT max(seq) FROM messages"
            top = src.execute(query).fetchone()[0]
            if isinstance(top, int):
                meta[_TOP_SEQ] = str(top)
        except sqlite3.Error:
            pass
        try:
            names = dict(src.execute("SELECT id, name FROM groups").fetchall())
        except sqlite3.Error:
            names = {}
        conn.execute("BEGIN IMMEDIATE")
        gid_of = functools.partial(_salvaged_gid, conn, names, {})
        counted: list[int] = []
        with contextlib.suppress(sqlite3.Error):  # the rest is unreadable; keep what was copied
            (_copy_rows if v2 else _copy_messages)(src, conn, gid_of, counted)
        copied = sum(counted)
        for key in ("gateway_id", "last_seq", "server_id"):
            if key in meta:
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, meta[key]))
        conn.execute("COMMIT")
    finally:
        src.close()
        _remove_store_files(scratch)
    return copied, meta


def _tables(src: sqlite3.Connection) -> set[str]:
    try:
        return {str(r[0]) for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error:
        return set()


def _salvaged_gid(
    conn: sqlite3.Connection, names: dict[object, object], known: dict[object, int], grp: object
) -> int:
    if grp not in known:
        known[grp] = group_id(conn, str(names.get(grp, f"salvaged-{grp}")))
    return known[grp]


def _copy_messages(
    src: sqlite3.Connection,
    conn: sqlite3.Connection,
    gid_of: Callable[[object], int],
    counted: list[int],
) -> None:
    """From a schema-1 store: a row per message, into rows of messages."""
    good: list[tuple[int, int, int, bytes, bytes | None, bytes]] = []
    try:
        for seq, grp, ts, subject, hdr, data in src.execute(
            "SELECT seq, grp, ts, subject, hdr, data FROM messages ORDER BY seq"
        ):
            if not _row_ok(seq, grp, ts, subject, hdr, data):
                break  # a damaged cell: what follows is not to be trusted either
            good.append((seq, gid_of(grp), ts, subject, hdr, data))
    finally:
        if conn.execute("SELECT 1 FROM batches LIMIT 1").fetchone():
            good = [m for m in good if not _held(conn, m[0])]  # resumed: copy nothing twice
        counted.append(buffer.insert_messages(conn, good))


def _held(conn: sqlite3.Connection, seq: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM batches WHERE first_seq <= ? AND last_seq >= ? LIMIT 1", (seq, seq)
    ).fetchone()
    return row is not None


def _copy_rows(
    src: sqlite3.Connection,
    conn: sqlite3.Connection,
    gid_of: Callable[[object], int],
    counted: list[int],
) -> None:
    """From a schema-2 store: the rows whose bodies decode, with what is gone of them."""
    # One statement in rowid order, consumed as it goes: the rows before a
    # damaged page are copied, the error at it ends the salvage.
    for row in src.execute(
        "SELECT first_seq, last_seq, grp, ts, ts_last, msgs, bytes, crc, body FROM batches"
        " ORDER BY first_seq"
    ):
        if not _batch_ok(row):
            break  # a damaged row: what follows is not to be trusted either
        first, last, grp, ts, ts_last, msgs, size, crc, body = row
        cursor = conn.execute(
            "INSERT OR IGNORE INTO batches (first_seq, last_seq, grp, ts, ts_last, msgs, bytes,"
            " crc, body) VALUES (?,?,?,?,?,?,?,?,?)",
            (first, last, gid_of(grp), ts, ts_last, msgs, size, crc, body),
        )
        if cursor.rowcount <= 0:
            continue
        gone = None
        with contextlib.suppress(sqlite3.Error):
            gone = src.execute(
                "SELECT bits, msgs, bytes FROM gone WHERE batch = ?", (first,)
            ).fetchone()
        left = msgs
        if gone is not None and isinstance(gone[0], bytes) and isinstance(gone[1], int):
            conn.execute(
                "INSERT OR REPLACE INTO gone (batch, bits, msgs, bytes) VALUES (?,?,?,?)",
                (first, gone[0], gone[1], gone[2]),
            )
            left -= gone[1]
        counted.append(max(left, 0))


def _batch_ok(row: tuple[object, ...]) -> bool:
    first, last, grp, ts, ts_last, msgs, size, crc, body = row
    if not (
        isinstance(first, int)
        and isinstance(ts, int)
        and all(isinstance(v, int) for v in (last, grp, ts_last, msgs, size))
        and isinstance(body, bytes)
        and crc == rows.checksum(body)
    ):
        return False
    try:
        heads = rows.heads(first, ts, body)
    except (ValueError, struct.error):
        return False
    return len(heads) == msgs and bool(heads) and heads[-1][0] == last


def _row_ok(
    seq: object, grp: object, ts: object, subject: object, hdr: object, data: object
) -> bool:
    return (
        isinstance(seq, int)
        and seq > 0
        and isinstance(grp, int)
        and isinstance(ts, int)
        and isinstance(subject, bytes)
        and bool(subject)
        and (hdr is None or isinstance(hdr, bytes))
        and isinstance(data, bytes)
    )


def _whole_pages(old: Path) -> tuple[Path, Path | None]:
    """*old*, or (when it ends in a partial page, which SQLite would read padded
    with zeros) a scratch copy cut to whole pages, and the scratch to remove."""
    try:
        with open(old, "rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return old, None
    page = int.from_bytes(header[16:18], "big") if len(header) == 100 else 0
    page = 65536 if page == 1 else page
    if not header.startswith(b"SQLite format 3\x00") or page < 512 or size % page == 0:
        return old, None
    scratch = old.with_name(old.name + ".salvage")
    try:
        with open(old, "rb") as f, open(scratch, "wb") as out:
            remaining = size - size % page
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                out.write(chunk)
                remaining -= len(chunk)
        wal = Path(str(old) + "-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(str(scratch) + "-wal"))
    except OSError:
        _remove_store_files(scratch)
        return old, None
    return scratch, scratch


def _remove_store_files(path: Path | None) -> None:
    if path is None:
        return
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(str(path) + suffix)


def group_id(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM groups WHERE name = ?", (name,)).fetchone()
    if row is not None:
        return int(row[0])
    cursor = conn.execute("INSERT INTO groups (name) VALUES (?)", (name,))
    return int(cursor.lastrowid or 0)


def _gateway(
    conn: sqlite3.Connection, configured: str | None, previous: str | None, hostname: str | None
) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = 'gateway_id'").fetchone()
    stored = str(row[0]) if row else previous
    gateway = configured or stored or new_gateway_id(hostname)
    if gateway != (str(row[0]) if row else None):
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('gateway_id', ?)", (gateway,))
    return gateway


def _meta_value(conn: sqlite3.Connection, key: str, default: str) -> str:
    """The stored value of *key*; *default* is stored first if there is none."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is not None:
        return str(row[0])
    conn.execute("INSERT INTO meta VALUES (?, ?)", (key, default))
    return default


def _next_seq(conn: sqlite3.Connection, old_meta: dict[str, str]) -> int:
    """One past the highest sequence ever used: the largest stored, or the one
    recorded when the store was last emptied (so a drained store never reuses a
    sequence the hub's duplicate window or ledger has seen)."""
    top = buffer.top_seq(conn)
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    recorded = int(row[0]) if row and str(row[0]).isdigit() else 0
    previous = old_meta.get("last_seq", "0")
    old = int(previous) if previous.isdigit() else 0
    return max(int(top), recorded, old) + 1


def _record_event(conn: sqlite3.Connection, kind: str, detail: str) -> None:
    conn.execute("INSERT INTO events VALUES (?, ?, ?)", (int(time.time() * 1000), kind, detail))


def group_ids(conn: sqlite3.Connection, names: list[str]) -> dict[str, int]:
    """Ids of the configured groups (created as needed), and of every group
    that still has stored messages."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        ids = {name: group_id(conn, name) for name in names}
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    for gid, name in conn.execute("SELECT id, name FROM groups"):
        ids.setdefault(str(name), int(gid))
    return ids
