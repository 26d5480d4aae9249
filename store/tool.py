"""``leafgate store``: operator commands for the store-and-forward buffer
(status, list/inspect, export, replay, purge; usage in store/README.md).

Reads open the database read-only (``mode=ro``): safe next to a running leafgate
(WAL readers never block its writer), and they can never create a store. Purge
writes: by default only when it has the store to itself, because a running
leafgate keeps its backlog counters in memory (limits, monitoring) and would go
on counting what was purged; ``--force`` purges anyway (SQLite serializes the two
writers) and says to restart the server. Plain ``sqlite3``: the queries are a few
aggregates, and sqlite-utils would add ~300 ms of import to every command.
Exit status: 0 ok, 1 error (one line naming the path or option), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from edge.subjects import is_literal, is_valid_subject, matches
from store import view
from store.paths import db_path, default_state_dir, store_dir
from store.progress import PROGRESS_EVERY, Progress

DEFAULT_PROG = "leafgate store"
DEFAULT_SERVER = "nats://127.0.0.1:4222"
SCHEMA_VERSION = 2  # the newest schema this tool writes (store.db.SCHEMA_VERSION)
# The size the group limits count (as store.buffer computes it).
_SIZE = "size"  # a column of the messages view (store.view)
_AGGREGATES = f"count(*), sum({_SIZE}), min(seq), max(seq), min(ts), max(ts)"
EXCLUSIVE_WAIT = 1.0  # seconds purge waits to have the store to itself
PROGRESS_HELP = "progress on stderr even when it is not a terminal (a line per update)"
PAYLOAD_SHOWN = 1024  # payload bytes `list --payload` shows per message
MSG_ID = "Nats-Msg-Id"


class ToolError(RuntimeError):
    """A failure reported as one line, exit status 1."""


class UsageError(ToolError):
    """Options that do not go together, exit status 2."""


@dataclass(frozen=True)
class Backlog:
    """What one group, one subject, or the whole store holds."""

    name: str
    messages: int
    bytes: int
    first_seq: int | None
    last_seq: int | None
    oldest_ts: int | None  # ms since the epoch
    newest_ts: int | None
    oldest_age: float | None  # seconds, when the status was taken
    newest_age: float | None


@dataclass(frozen=True)
class Event:
    ts: int
    time: str
    kind: str
    detail: str


@dataclass(frozen=True)
class StoreStatus:
    path: str
    gateway_id: str | None
    server_id: str | None
    next_seq: int
    files: dict[str, int]  # db, wal, shm: bytes on disk
    total: Backlog
    groups: tuple[Backlog, ...]
    subjects: tuple[Backlog, ...]  # the top ones by messages
    subjects_total: int  # distinct subjects stored
    events: tuple[Event, ...]  # the latest first


@dataclass(frozen=True)
class Message:
    seq: int
    group: str
    ts: int
    subject: bytes
    hdr: bytes | None  # the NATS header block, or None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.subject) + len(self.data) + (len(self.hdr) if self.hdr else 0)


@dataclass(frozen=True)
class PurgeResult:
    messages: int
    bytes: int
    next_seq: int  # the server's next sequence: purged ones are never reused
    freed: int  # bytes the file shrank by (--vacuum)
    shared: bool  # another connection (a running leafgate) had the store open


@dataclass(frozen=True)
class ReplayResult:
    sent: int
    bytes: int
    merged_headers: int  # messages whose repeated header keys went with one value


@dataclass(frozen=True)
class Selection:
    """Which messages a command works on; the empty selection is every message."""

    subjects: tuple[bytes, ...] = ()
    from_seq: int | None = None
    to_seq: int | None = None
    seqs: tuple[int, ...] = ()

    def picks(self, seq: int, subject: bytes) -> bool:
        """The same selection as ``where``, for one message."""
        if self.from_seq is not None and seq < self.from_seq:
            return False
        if self.to_seq is not None and seq > self.to_seq:
            return False
        if self.seqs and seq not in self.seqs:
            return False
        return not self.subjects or any(
            subject == f if is_literal(f) else matches(f, subject) for f in self.subjects
        )

    def where(self) -> tuple[str, list[object]]:
        """A WHERE clause and its parameters. Wildcard filters call the
        ``nats_match`` SQL function (see ``_connect``); literal ones compare bytes."""
        terms: list[str] = []
        params: list[object] = []
        if self.from_seq is not None:
            terms.append("seq >= ?")
            params.append(self.from_seq)
        if self.to_seq is not None:
            terms.append("seq <= ?")
            params.append(self.to_seq)
        if self.seqs:
            terms.append(f"seq IN ({', '.join('?' * len(self.seqs))})")
            params.extend(self.seqs)
        if self.subjects:
            alts = (
                "subject = ?" if is_literal(f) else "nats_match(?, subject)" for f in self.subjects
            )
            terms.append(f"({' OR '.join(alts)})")
            params.extend(self.subjects)
        return (" WHERE " + " AND ".join(terms)) if terms else "", params


def resolve_dir(store: str | None, config: str | None) -> Path:
    """``--store`` wins over ``-c``; neither: the default state directory."""
    if store:
        return Path(store)
    if not config:
        return default_state_dir()
    from edge.config import ConfigError
    from edge.config_load import load_config

    try:
        return store_dir(load_config(config).store)
    except ConfigError as exc:
        raise ToolError(f"-c {config}: {exc}") from None


def _connect(directory: Path, write: bool) -> tuple[sqlite3.Connection, Path]:
    """``mode=ro``/``rw``: SQLite refuses a missing file instead of creating one."""
    path = db_path(directory)
    if not path.is_file():
        raise ToolError(f"no store at {path}")
    try:
        uri = f"file:{path}?mode={'rw' if write else 'ro'}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ToolError(f"cannot open {path}: {exc}") from None
    conn.create_function("nats_match", 2, lambda f, s: matches(f, s), deterministic=True)
    return conn, path


def _open(directory: Path) -> tuple[sqlite3.Connection, Path]:
    """A read-only connection to the store in *directory*."""
    conn, path = _connect(directory, write=False)
    try:
        _check_schema(conn, path, write=False)
    except BaseException:
        conn.close()
        raise
    return conn, path


def _check_schema(conn: sqlite3.Connection, path: Path, write: bool) -> None:
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None
    held = "batches" if version >= 2 else "messages"
    if version < 1 or not {"meta", "groups", held, "events"} <= tables:
        raise ToolError(f"{path} is not a leafgate store")
    if write and version > SCHEMA_VERSION:
        raise ToolError(f"{path} was written by a newer leafgate (schema {version}); use that one")


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def _group_names(conn: sqlite3.Connection) -> dict[int, str]:
    return {int(i): str(n) for i, n in conn.execute("SELECT id, name FROM groups")}


def _backlog(name: str, row: Sequence[Any], now: int) -> Backlog:
    count, size, first, last, oldest, newest = row
    ages = [max(0.0, (now - ts) / 1000) if ts is not None else None for ts in (oldest, newest)]
    return Backlog(name, int(count), int(size or 0), first, last, oldest, newest, *ages)


def read_status(
    conn: sqlite3.Connection, path: Path, subjects: int = 10, events: int = 5
) -> StoreStatus:
    """The backlog in total, per group and for the *subjects* subjects holding
    most messages; the store's identity, files and latest *events*. Only reads:
    meant for monitoring as well."""
    now = time.time_ns() // 1_000_000
    names = _group_names(conn)
    view.ensure(conn)
    query = f"SELECT grp, {_AGGREGATES} FROM messages GROUP BY grp"
    rows = {int(r[0]): r[1:] for r in conn.execute(query)}
    empty = (0, 0, None, None, None, None)
    groups = [
        _backlog(names.get(g, f"#{g}"), rows.get(g, empty), now) for g in sorted({*names, *rows})
    ]
    total = _backlog("total", conn.execute(f"SELECT {_AGGREGATES} FROM messages").fetchone(), now)
    # count(*) OVER () after GROUP BY: the number of distinct subjects, in the same scan.
    query = f"SELECT subject, {_AGGREGATES}, count(*) OVER () FROM messages GROUP BY subject"
    query += " ORDER BY count(*) DESC, subject LIMIT ?"
    top = conn.execute(query, (max(subjects, 1),)).fetchall()
    meta = _meta(conn)
    recorded = int(meta["last_seq"]) if meta.get("last_seq", "").isdigit() else 0
    files = {k: Path(f"{path}{s}") for k, s in (("db", ""), ("wal", "-wal"), ("shm", "-shm"))}
    query = "SELECT ts, kind, detail FROM events ORDER BY rowid DESC LIMIT ?"
    return StoreStatus(
        path=str(path),
        gateway_id=meta.get("gateway_id"),
        server_id=meta.get("server_id"),
        next_seq=max(total.last_seq or 0, recorded, _rows_top(conn)) + 1,
        files={k: f.stat().st_size if f.exists() else 0 for k, f in files.items()},
        total=total,
        groups=tuple(groups),
        subjects=tuple(_backlog(_text(r[0]), r[1:7], now) for r in top[:subjects]),
        subjects_total=int(top[0][7]) if top else 0,
        events=tuple(Event(t, iso_time(t), k, d) for t, k, d in conn.execute(query, (events,))),
    )


def _rows_top(conn: sqlite3.Connection) -> int:
    """The highest sequence a row holds, gone or not (the server starts past it)."""
    if not view.is_rows(conn):
        return 0
    return int(conn.execute("SELECT max(last_seq) FROM main.batches").fetchone()[0] or 0)


def format_status(status: StoreStatus) -> list[str]:
    files = ", ".join(f"{k} {human_bytes(v)}" for k, v in status.files.items() if k != "shm")
    total = status.total
    backlog = "empty"
    if total.messages:
        backlog = (
            f"{total.messages} messages, {human_bytes(total.bytes)}, oldest "
            f"{human_age(total.oldest_age)} ago, seqs {total.first_seq}..{total.last_seq}"
        )
    lines = [
        f"store    {status.path} ({files})",
        f"gateway  {status.gateway_id or '(none yet)'}, next seq {status.next_seq}",
        f"backlog  {backlog}",
        "",
        *_table("group", [*status.groups, total]),
    ]
    if status.subjects:
        title = f"subject (top {len(status.subjects)} of {status.subjects_total})"
        lines += ["", *_table(title, list(status.subjects))]
    events = [f"  {e.time}  {e.kind}: {e.detail}" for e in status.events]
    return lines + (["", "latest events", *events] if events else [])


def _table(title: str, rows: list[Backlog]) -> list[str]:
    cells = [(title, "messages", "bytes", "oldest", "newest")]
    for b in rows:
        ages = human_age(b.oldest_age), human_age(b.newest_age)
        cells.append((b.name, str(b.messages), human_bytes(b.bytes), *ages))
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    return [
        "  ".join(c[i].rjust(w) if i else c[0].ljust(w) for i, w in enumerate(widths))
        for c in cells
    ]


def human_age(seconds: float | None) -> str:
    """``3h12m``: the largest unit and the next one, if not zero; "-" for none."""
    if seconds is None:
        return "-"
    left = max(0, int(seconds))
    for big, size, small, step in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if left >= size:
            rest = left % size // step
            return f"{left // size}{big}" + (f"{rest}{small}" if rest else "")
    return f"{left}s"


def human_bytes(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def iso_time(ts_ms: int) -> str:
    stamp = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _text(raw: bytes) -> str:
    return bytes(raw).decode(errors="replace")


def parse_headers(hdr: bytes | None) -> dict[str, list[str]]:
    """A NATS header block as ``{key: [values]}`` (nats.go's Header: keys repeat)."""
    out: dict[str, list[str]] = {}
    for line in (hdr or b"").split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip():
            out.setdefault(_text(key.strip()), []).append(_text(value.strip()))
    return out


def show_payload(data: bytes, limit: int | None) -> str:
    """Text (control characters escaped) if the payload is UTF-8, else base64."""
    cut = data if limit is None else data[:limit]
    try:
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut.decode())
    except UnicodeDecodeError:
        shown = "base64:" + base64.b64encode(cut).decode()
    if len(cut) < len(data):
        shown += f" ... (+{len(data) - len(cut)} bytes; inspect shows all)"
    return shown


def message_record(msg: Message, *, data: bool = True) -> dict[str, Any]:
    """One message as export writes it (a JSON line)."""
    record: dict[str, Any] = {
        "seq": msg.seq,
        "ts": msg.ts,
        "time": iso_time(msg.ts),
        "group": msg.group,
        "subject": _text(msg.subject),
        "size": msg.size,
        "headers": parse_headers(msg.hdr) if msg.hdr is not None else None,
    }
    if data:
        record["data"] = base64.b64encode(msg.data).decode()
    return record


def format_line(msg: Message) -> str:
    headers = "".join(f"  {k}: {v}" for k, vs in parse_headers(msg.hdr).items() for v in vs)
    where = f"{iso_time(msg.ts)}  {_text(msg.subject)}  [{msg.group}]"
    return f"{msg.seq:>8}  {where}  {human_bytes(msg.size)}{headers}"


def iter_messages(conn: sqlite3.Connection, sel: Selection, limit: int = 0) -> Iterator[Message]:
    """The selected messages in sequence order, streamed from one consistent
    snapshot of a store the server goes on writing."""
    names = _group_names(conn)
    for n, (seq, gid, ts, subject, hdr, data) in enumerate(view.payloads(conn, sel.picks), 1):
        yield Message(seq, names.get(gid, f"#{gid}"), ts, subject, hdr, bytes(data))
        if limit and n >= limit:
            return


def count_selected(conn: sqlite3.Connection, selection: Selection) -> tuple[int, int]:
    view.ensure(conn)
    where, params = selection.where()
    n, size = conn.execute(f"SELECT count(*), sum({_SIZE}) FROM messages{where}", params).fetchone()
    return int(n), int(size or 0)


def export(conn: sqlite3.Connection, selection: Selection, out: TextIO, progress: Progress) -> int:
    """Write the selected messages as JSON lines; returns their bytes."""
    size = 0
    for msg in iter_messages(conn, selection):
        out.write(json.dumps(message_record(msg), ensure_ascii=False, separators=(",", ":")) + "\n")
        size += msg.size
        progress.step()
    return size


@contextlib.contextmanager
def _output(name: str) -> Iterator[TextIO]:
    """stdout for "-", else a file written beside its final name and renamed at
    the end: an interrupted export never leaves a short file that looks complete."""
    if name == "-":
        yield sys.stdout
        return
    partial = Path(name + ".partial")
    try:
        f = open(partial, "w", encoding="utf-8")  # noqa: SIM115 (closed below, then renamed)
    except OSError as exc:
        raise ToolError(f"-o {name}: cannot write: {exc.strerror or exc}") from None
    try:
        with f:
            yield f
        os.replace(partial, name)
    finally:
        partial.unlink(missing_ok=True)


def purge(
    directory: Path, selection: Selection, *, force: bool, vacuum: bool, timeout: float
) -> PurgeResult:
    """Delete the selected messages in one transaction, recording the highest
    sequence deleted as ``last_seq`` so the server never reuses it (the hub's
    duplicate window and ledger have seen it), and a ``purge`` event."""
    conn, path, shared = _begin(directory, force, timeout)
    try:
        try:
            _check_schema(conn, path, write=True)
            view.fill(conn)  # in this write transaction: what it shows is what goes
            n, size, next_seq = _delete(conn, selection)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        before = path.stat().st_size
        if vacuum:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise ToolError(f"purge failed on {path}: {exc}") from None
    finally:
        conn.close()
    return PurgeResult(n, size, next_seq, max(0, before - path.stat().st_size), shared)


def _begin(directory: Path, force: bool, timeout: float) -> tuple[sqlite3.Connection, Path, bool]:
    """A connection in a write transaction, and whether another one has the store
    open. First in EXCLUSIVE locking mode: every open WAL connection (a running
    leafgate's too) holds a SHARED lock on the database file, so getting the
    exclusive lock proves nobody else has it open, and keeps it so until we close.
    With *force*, then as an ordinary writer (BEGIN IMMEDIATE)."""
    path = db_path(directory)
    for exclusive in (True, False) if force else (True,):
        conn, path = _connect(directory, write=True)
        try:
            wait = EXCLUSIVE_WAIT if exclusive else timeout
            conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            if exclusive:
                conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE" if exclusive else "BEGIN IMMEDIATE")
            return conn, path, not exclusive
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise ToolError(f"cannot write {path}: {exc}") from None
    if force:
        raise ToolError(f"{path} is locked by another writer for over {timeout:g}s; try again")
    raise ToolError(
        f"{path} is in use (is leafgate running?): stop it first, or pass --force to "
        "purge while it runs (then restart it: it keeps counting what was purged)"
    )


def _delete(conn: sqlite3.Connection, selection: Selection) -> tuple[int, int, int]:
    """Inside the caller's transaction: (messages, bytes, next sequence)."""
    n, size = count_selected(conn, selection)
    where, params = selection.where()
    top = conn.execute(f"SELECT max(seq) FROM messages{where}", params).fetchone()[0]
    if view.is_rows(conn):
        left = view.delete(conn, where, params)
    else:
        conn.execute(f"DELETE FROM main.messages{where}", params)
        left = conn.execute("SELECT max(seq) FROM main.messages").fetchone()[0] or 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    recorded = int(row[0]) if row and str(row[0]).isdigit() else 0
    if top is not None and top > max(left, recorded):  # the highest stored is gone
        recorded = int(top)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(recorded),))
    detail = f"{n} messages, {size} bytes removed by leafgate store purge"
    conn.execute("INSERT INTO events VALUES (?, 'purge', ?)", (time.time_ns() // 1_000_000, detail))
    return n, size, max(left, recorded) + 1


def replay_headers(hdr: bytes | None, msg_id: str) -> tuple[dict[str, str], bool]:
    """The headers to publish, with ``Nats-Msg-Id`` set to *msg_id* (replacing a
    publisher's own, as the forwarder does), and whether repeated keys had to be
    merged (nats-py sends one value per key: the last)."""
    parsed = parse_headers(hdr)
    headers = {k: vs[-1] for k, vs in parsed.items() if k.lower() != MSG_ID.lower()}
    headers[MSG_ID] = msg_id
    return headers, any(len(vs) > 1 for vs in parsed.values())


async def _connect_nats(nats: Any, args: argparse.Namespace) -> tuple[Any, list[Exception]]:
    """A connection, and the errors the server reports later. No reconnects: a
    one-shot tool should fail, not wait."""
    errors: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)

    auth: dict[str, Any] = {"user_credentials": args.creds} if args.creds else {}
    if args.user is not None:
        auth.update(user=args.user, password=args.password or "")
    connect = nats.connect(
        servers=[args.server],
        connect_timeout=args.timeout,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=error_cb,
        name="leafgate-store-replay",
        **auth,
    )
    try:
        return await asyncio.wait_for(connect, args.timeout + 1), errors
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        detail = "; ".join(dict.fromkeys(str(e) for e in errors)) or str(exc) or type(exc).__name__
        raise ToolError(f"--server {args.server}: cannot connect: {detail}") from None


def _refuse_self(nc: Any, args: argparse.Namespace, server_id: str | None) -> None:
    """Replaying into this gateway's own leafgate would store every message again
    under a new sequence (so a new Nats-Msg-Id), which no duplicate window catches."""
    info = getattr(nc, "_server_info", None) or {}  # nats-py has no public accessor
    if not args.force and server_id and info.get("server_id") == server_id:
        raise ToolError(
            f"--server {args.server} is this gateway's own leafgate (server id {server_id}): "
            "the messages would be stored and forwarded again under new sequences; "
            "replay to the hub, or pass --force"
        )


async def replay(
    conn: sqlite3.Connection, selection: Selection, args: argparse.Namespace, progress: Progress
) -> ReplayResult:
    """Publish the selected messages to ``args.server`` (they stay stored)."""
    try:
        import nats
        import nats.errors
    except ImportError:
        raise ToolError("replay needs the NATS client: pip install nats-py") from None
    nc, errors = await _connect_nats(nats, args)
    try:
        _refuse_self(nc, args, _meta(conn).get("server_id"))
        result = await _publish_all(nc, conn, selection, args, progress)
        await nc.flush(timeout=args.timeout)
        if errors:  # e.g. a permissions violation: the server dropped messages
            raise ToolError(f"--server {args.server} reported: {errors[0]}")
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        failed = f"{type(exc).__name__}: {exc}"
        raise ToolError(f"replay failed after {progress.count} messages: {failed}") from None
    finally:
        with contextlib.suppress(OSError, TimeoutError, nats.errors.Error):
            await asyncio.wait_for(nc.close(), args.timeout)
    return result


async def _publish_all(
    nc: Any, conn: sqlite3.Connection, sel: Selection, args: argparse.Namespace, progress: Progress
) -> ReplayResult:
    gateway = _meta(conn).get("gateway_id", "")
    size = merged = 0
    for msg in iter_messages(conn, sel):
        try:
            subject = msg.subject.decode()
        except UnicodeDecodeError:
            raise ToolError(f"seq {msg.seq}: subject not UTF-8, nats-py cannot send it") from None
        headers, lossy = replay_headers(msg.hdr, f"{gateway}:{msg.seq}")
        merged += lossy
        await nc.publish(subject, msg.data, headers=headers)
        size += msg.size
        progress.step()
        if progress.count % PROGRESS_EVERY == 0:
            await nc.flush(timeout=args.timeout)  # bounds nats-py's buffer; honest progress
    return ReplayResult(progress.count, size, merged)


def _selection(args: argparse.Namespace) -> Selection:
    subjects = tuple(s.encode() for s in args.subject or ())
    return Selection(subjects, args.from_seq, args.to_seq, tuple(getattr(args, "seq", ())))


def cmd_status(args: argparse.Namespace) -> int:
    conn, path = _open(resolve_dir(args.store, args.config))
    with contextlib.closing(conn):
        status = read_status(conn, path, args.subjects, args.events)
    print(json.dumps(asdict(status), indent=2) if args.json else "\n".join(format_status(status)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``list``, and ``inspect``: the same with whole payloads."""
    full = args.command == "inspect"
    conn, path = _open(resolve_dir(args.store, args.config))
    seen: list[int] = []
    with contextlib.closing(conn):
        # One more than the limit: to say whether there are more.
        for msg in iter_messages(conn, _selection(args), args.limit + 1 if args.limit else 0):
            if args.limit and len(seen) == args.limit:
                print(f"(first {len(seen)} shown; --limit 0 for all)", file=sys.stderr)
                break
            seen.append(msg.seq)
            if args.json:
                record = message_record(msg, data=args.payload or full)
                print(json.dumps(record, ensure_ascii=False))
                continue
            print(format_line(msg))
            if args.payload or full:
                print(f"{'':10}{show_payload(msg.data, None if full else PAYLOAD_SHOWN)}")
    missing = sorted(set(args.seq) - set(seen))
    if missing:
        raise ToolError(f"no message with seq {', '.join(map(str, missing))} in {path}")
    if not seen:
        print("no messages match", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    conn, _ = _open(resolve_dir(args.store, args.config))
    # Live progress only where it cannot land in the data (both on one terminal).
    live = args.progress or (
        sys.stderr.isatty() and not (args.output == "-" and sys.stdout.isatty())
    )
    total = count_selected(conn, _selection(args))[0] if live else None
    progress = Progress("exported", sys.stderr, total, live)
    with contextlib.closing(conn), _output(args.output) as out:
        size = export(conn, _selection(args), out, progress)
    where = "stdout" if args.output == "-" else args.output
    progress.done(f"exported {progress.count} messages ({human_bytes(size)}) to {where}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    if args.creds and args.user is not None:
        raise UsageError("--creds and --user are exclusive")
    conn, path = _open(resolve_dir(args.store, args.config))
    with contextlib.closing(conn):
        n, size = count_selected(conn, _selection(args))
        if args.dry_run:
            print(f"would replay {n} messages ({human_bytes(size)}) from {path} to {args.server}")
            return 0
        progress = Progress("replayed", sys.stderr, n, args.progress or sys.stderr.isatty())
        result = asyncio.run(replay(conn, _selection(args), args, progress))
    notes = ""
    if result.merged_headers:
        notes = f"; {result.merged_headers} had repeated header keys (sent with the last value)"
    sent = f"replayed {result.sent} messages ({human_bytes(result.bytes)})"
    progress.done(f"{sent} to {args.server}{notes}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    selection = _selection(args)
    if (selection == Selection()) != args.all:
        raise UsageError("purge needs --all, or --subject/--from-seq/--to-seq (not both)")
    conn, path = _open(resolve_dir(args.store, args.config))
    with contextlib.closing(conn):  # closed before purging: it would count as a user
        n, size = count_selected(conn, selection)
    if not args.yes:
        raise UsageError(f"would purge {n} messages ({human_bytes(size)}) from {path}; add --yes")
    options = {"force": args.force, "vacuum": args.vacuum, "timeout": args.timeout}
    result = purge(path.parent, selection, **options)
    print(f"purged {result.messages} messages ({human_bytes(result.bytes)}) from {path}")
    print(f"next sequence {result.next_seq} (purged ones are never reused)")
    if args.vacuum:
        print(f"vacuumed: the file shrank by {human_bytes(result.freed)}")
    if result.shared:
        print("note: the store was in use: restart leafgate, it keeps counting the purged messages")
    return 0


def _uint_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _subject_arg(text: str) -> str:
    if not is_valid_subject(text.encode()):
        raise argparse.ArgumentTypeError(f"not a valid subject filter: {text!r}")
    return text


def _read_commands(sub: Any) -> None:
    status = sub.add_parser("status", help="backlog per group and subject (the default)")
    status.add_argument("--subjects", type=_uint_arg, default=10, metavar="N", help="top N")
    status.add_argument("--events", type=_uint_arg, default=5, metavar="N", help="latest N events")
    status.add_argument("--json", action="store_true", help="JSON output")
    status.set_defaults(func=cmd_status)
    lst = sub.add_parser("list", aliases=["inspect"], help="list messages (inspect: in full)")
    lst.add_argument("seq", type=_uint_arg, nargs="*", metavar="SEQ", help="only these")
    lst.add_argument("--limit", type=_uint_arg, default=50, metavar="N", help="0: all (default 50)")
    lst.add_argument("--payload", action="store_true", help="show payloads (text, else base64)")
    lst.add_argument("--json", action="store_true", help="JSON lines, as export writes them")
    lst.set_defaults(func=cmd_list)
    exp = sub.add_parser("export", help="write messages as JSON lines")
    exp.add_argument("-o", "--output", default="-", metavar="FILE", help="default: stdout")
    exp.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    exp.set_defaults(func=cmd_export)


def _write_commands(sub: Any) -> None:
    rep = sub.add_parser("replay", help="publish messages again (they stay stored)")
    rep.add_argument("--server", default=DEFAULT_SERVER, metavar="URL", help=DEFAULT_SERVER)
    rep.add_argument("--user")
    rep.add_argument("--password")
    rep.add_argument("--creds", metavar="FILE", help="credentials (.creds) file")
    rep.add_argument("--timeout", type=float, default=5.0, metavar="S", help="default 5")
    rep.add_argument("--dry-run", action="store_true", help="only count")
    rep.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    rep.add_argument("--force", action="store_true", help="allow this gateway's own leafgate")
    rep.set_defaults(func=cmd_replay)
    pur = sub.add_parser("purge", help="delete messages")
    pur.add_argument("--all", action="store_true", help="every message")
    pur.add_argument("--yes", action="store_true", help="really delete")
    pur.add_argument("--force", action="store_true", help="even while leafgate has the store open")
    pur.add_argument("--vacuum", action="store_true", help="then shrink the file")
    pur.add_argument("--timeout", type=float, default=10.0, metavar="S", help="lock wait (--force)")
    pur.set_defaults(func=cmd_purge)


def build_parser(prog: str = DEFAULT_PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Inspect and operate leafgate's store-and-forward buffer.",
        epilog="exit status: 0 ok, 1 error, 2 usage",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _read_commands(sub)
    _write_commands(sub)
    for name, command in sub.choices.items():
        if name == "inspect":
            continue  # the same parser as list
        command.add_argument("--store", metavar="DIR", help="directory of the store")
        command.add_argument("-c", "--config", metavar="FILE", help="use FILE's [store] dir")
        if name == "status":
            continue
        filters = command.add_argument_group("filters (all must hold)")
        add = filters.add_argument
        add("--subject", action="append", type=_subject_arg, metavar="F", help="* and >; repeat")
        add("--from-seq", type=_uint_arg, metavar="N", help="inclusive")
        add("--to-seq", type=_uint_arg, metavar="N", help="inclusive")
    return parser


def main(argv: list[str], *, prog: str = DEFAULT_PROG) -> int:
    parser = build_parser(prog)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["status", *argv]  # the default command
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except ToolError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141
