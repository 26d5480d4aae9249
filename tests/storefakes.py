"""Store-and-forward in process, for adversarial tests: a real Store on SQLite
in tmp_path, the real Forwarder, and a fake hub behind the LinkPort protocol
(store.forward.LinkPort) whose acks, PONGs and lookup answers a test controls.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import trio

from edge.config import ForwardGroup, StoreConfig
from edge.proto.leafproto import LeafParser, LMsg
from store import buffer
from store.forward import Forwarder
from store.paths import DB_NAME
from store.writer import Store

INBOX = b"_INBOX.audit."
PUBACK = b'{"stream":"TELEMETRY","seq":1}'


# ---- harness -------------------------------------------------------------------------


def group(subjects: str = "telemetry.>", **kw: Any) -> ForwardGroup:
    kw.setdefault("name", "default")
    return ForwardGroup(subjects=tuple(subjects.split(",")), **kw)


def make_store(tmp_path: Path, *groups: ForwardGroup, **cfg: Any) -> Store:
    cfg.setdefault("min_free_disk", 0)
    cfg.setdefault("gateway_id", "gw")
    config = StoreConfig(dir=str(tmp_path / "store"), groups=groups or (group(),), **cfg)
    return Store(config)


@asynccontextmanager
async def running(store: Store) -> AsyncIterator[trio.Nursery]:
    """The store running in a nursery of its own; closed (gracefully) on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield nursery
        nursery.cancel_scope.cancel()


def accept(store: Store, subject: str, data: bytes = b"x", reply: bytes = b"") -> None:
    s = subject.encode()
    store.accept(object(), store.classify(s), s, reply, 0, data)


def rows(store: Store) -> list[tuple[int, str]]:
    conn = sqlite3.connect(store.directory / DB_NAME)
    with closing(conn):
        return [(rec.seq, rec.subject.decode()) for rec in buffer.iter_stored(conn)]


def held(store: Store) -> dict[str, tuple[int, int]]:
    """Group name -> (messages, bytes) as the store's counters say."""
    return {s.spec.name: (s.count, s.bytes) for s in store.groups.states}


def on_disk_totals(store: Store) -> dict[str, tuple[int, int]]:
    conn = sqlite3.connect(store.directory / DB_NAME)
    with closing(conn):
        names = dict(conn.execute("SELECT id, name FROM groups").fetchall())
        got = {str(name): (0, 0) for name in names.values()}
        for gid, (n, b) in buffer.totals(conn).items():
            got[str(names[gid])] = (n, b)
    return got


def kill_image(store: Store, target: Path) -> Path:
    """The store's files as a kill -9 would leave them (copied while it runs)."""
    target.mkdir(parents=True)
    src = store.directory / DB_NAME
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(src) + suffix)
        if part.exists():
            shutil.copyfile(part, Path(str(target / DB_NAME) + suffix))
    return target


async def wait_for(cond: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.005)


class FakeHub:
    """The hub as the forwarder sees it, across link sessions.

    ``streams``: stream name -> subject filters (a JetStream hub); a message on a
    stream subject is stored once per Nats-Msg-Id (the duplicate window) and
    PubAck'ed after ``ack_delay``; every message is also "delivered" (what the
    hub's core subscribers would see). PINGs are answered after ``pong_delay``.
    """

    def __init__(
        self,
        *,
        jetstream: bool = True,
        streams: dict[str, tuple[str, ...]] | None = None,
        ack_delay: float = 0.0,
        pong_delay: float = 0.0,
        lookup_delay: float = 0.0,
        ack: bool = True,
    ) -> None:
        self.jetstream = jetstream
        self.streams = {"TELEMETRY": ("telemetry.>",)} if streams is None else streams
        self.ack_delay = ack_delay
        self.pong_delay = pong_delay
        self.lookup_delay = lookup_delay
        self.ack = ack
        self.delivered: list[tuple[str, int]] = []  # (subject, gateway seq), arrival order
        self.stored: list[tuple[str, int]] = []  # the stream: first copy of each msg id
        self._ids: set[int] = set()
        self.lookups: list[str] = []

    def in_stream(self, subject: str) -> bool:
        from edge.subjects import matches

        return any(
            matches(f.encode(), subject.encode()) for fs in self.streams.values() for f in fs
        )

    def streams_for(self, flt: str) -> list[str]:
        from edge.subjects import matches

        out = []
        for name, fs in self.streams.items():
            # STREAM.NAMES with a subject filter: streams whose subjects collide.
            if any(
                matches(f.encode(), flt.encode()) or matches(flt.encode(), f.encode()) for f in fs
            ):
                out.append(name)
        return out


class FakeLink:
    """One link session to a FakeHub (store.forward.LinkPort)."""

    def __init__(self, hub: FakeHub, fwd: Forwarder, nursery: trio.Nursery) -> None:
        self.hub = hub
        self.fwd = fwd
        self.nursery = nursery
        self.out = bytearray()
        self.up = True
        self.parser = LeafParser(64 * 1024 * 1024)
        self.sent: list[tuple[str, int]] = []
        self.pings: list[int] = []
        self.allowed: Callable[[bytes], bool] = lambda _s: True

    # LinkPort
    def send(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if type(event) is LMsg:
                self._on_msg(event)

    def send_marked_ping(self, mark: int) -> None:
        self.pings.append(mark)
        self.nursery.start_soon(self._later, self.hub.pong_delay, self.fwd.on_pong, mark)

    def route(self, subject: bytes) -> tuple[bytes, ...] | None:
        return ()

    def may_send(self, subject: bytes) -> bool:
        return self.allowed(subject)

    def hub_jetstream(self) -> tuple[bool, str | None]:
        return self.hub.jetstream, None

    async def wait_up(self) -> None:
        return

    async def wait_drained(self) -> None:
        await trio.sleep(0)

    # the hub's side
    def _on_msg(self, msg: LMsg) -> None:
        subject = msg.subject.decode()
        if subject.endswith(".STREAM.NAMES"):
            import json

            flt = json.loads(msg.data)["subject"]
            self.hub.lookups.append(flt)
            answer = json.dumps({"streams": self.hub.streams_for(flt) or None}).encode()
            self.nursery.start_soon(
                self._later, self.hub.lookup_delay, self.fwd.on_reply, msg.reply, answer
            )
            return
        seq = int(msg.reply.rpartition(b".")[2])
        self.sent.append((subject, seq))
        self.hub.delivered.append((subject, seq))
        if self.hub.jetstream and self.hub.in_stream(subject):
            if seq not in self.hub._ids:
                self.hub._ids.add(seq)
                self.hub.stored.append((subject, seq))
            if self.hub.ack:
                self.nursery.start_soon(
                    self._later, self.hub.ack_delay, self.fwd.on_reply, msg.reply, PUBACK
                )

    async def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        if delay:
            await trio.sleep(delay)
        else:
            await trio.sleep(0)
        fn(*args)


class Session:
    """Runs the forwarder over one FakeLink until ``cut()``."""

    def __init__(self, hub: FakeHub, fwd: Forwarder) -> None:
        self.hub = hub
        self.fwd = fwd
        self.link: FakeLink | None = None
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self.link = FakeLink(self.hub, self.fwd, nursery)
                task_status.started()
                await self.fwd.run(self.link)
        finally:
            self._done.set()

    async def cut(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._done.wait()


async def session(nursery: trio.Nursery, hub: FakeHub, fwd: Forwarder) -> Session:
    s = Session(hub, fwd)
    await nursery.start(s._run)
    return s


def forwarder(store: Store) -> Forwarder:
    return Forwarder(store, INBOX)


def bare_uplink() -> Any:
    """An Uplink on a stand-in server, for tests of its synchronous parts."""
    from types import SimpleNamespace

    from edge.config import RemoteConfig
    from edge.uplink import Uplink

    server: Any = SimpleNamespace(
        router=SimpleNamespace(links=[]),
        server_id="NTEST",
        config=SimpleNamespace(server_name="edge", max_payload=1024 * 1024),
        version="0",
        store=None,
    )
    return Uplink(server, RemoteConfig(urls=("nats-leaf://127.0.0.1:7422",)))
