"""Properties of the store-and-forward path that hold, checked in process
(tests.storefakes) when a suspicion was ruled out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from store import db
from store.forward import Forwarder
from store.writer import Store
from tests.storefakes import (
    INBOX,
    PUBACK,
    FakeHub,
    Session,
    accept,
    bare_uplink,
    forwarder,
    group,
    held,
    kill_image,
    make_store,
    rows,
    running,
    session,
    wait_for,
)

# ---- properties that hold (suspicions checked and ruled out) ----------------------------------


def _assert_once_in_order(hub: FakeHub, n: int) -> None:
    seqs = [q for _, q in hub.stored]
    assert sorted(seqs) == list(range(1, n + 1)), "the stream does not hold each message once"
    per_subject: dict[str, list[int]] = {}
    for subject, q in hub.stored:
        per_subject.setdefault(subject, []).append(q)
    for subject, qs in per_subject.items():
        assert qs == sorted(qs), f"order not kept on {subject}"


async def test_random_link_cuts_with_disk_and_memory_groups_lose_and_duplicate_nothing(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Link cuts at random moments (mid read-back, mid barrier, with acks in
    flight), a small window and a small feed (so ``behind`` flips under load),
    fsync and memory groups: the stream holds every message once, in order per
    subject, and the store ends empty with its counters at zero."""
    import random

    import store.writer as writer_mod

    monkeypatch.setattr(writer_mod, "FEED_MAX", 4000)
    rng = random.Random(7)
    store = make_store(
        tmp_path,
        group("telemetry.disk.>", name="disk"),
        group("telemetry.mem.>", name="mem", durability="memory"),
        max_inflight=16,
    )
    hub = FakeHub(ack_delay=0.002)
    n = 0
    async with running(store) as nursery:
        fwd = forwarder(store)
        stop = trio.Event()

        async def publisher() -> None:
            nonlocal n
            while not stop.is_set():
                for _ in range(rng.randint(1, 40)):
                    kind = "mem" if rng.random() < 0.5 else "disk"
                    subject = f"telemetry.{kind}.{rng.randint(0, 3)}"
                    accept(store, subject, b"p" * rng.randint(1, 200))
                    n += 1
                await trio.sleep(rng.uniform(0, 0.01))

        nursery.start_soon(publisher)
        for _ in range(12):
            s = await session(nursery, hub, fwd)
            await trio.sleep(rng.uniform(0.0, 0.12))
            await s.cut()
            await trio.sleep(rng.uniform(0.0, 0.03))
        stop.set()
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: len(hub.stored) == n and not len(fwd.window), timeout=10)
        await wait_for(lambda: rows(store) == [] and not store._deletes, timeout=5)
        counted = held(store)
        await s.cut()
    _assert_once_in_order(hub, n)
    assert counted == {"disk": (0, 0), "mem": (0, 0)}
    assert sum(g.confirmed for g in store.groups.states) == n  # none confirmed twice


async def _sent_unacked(
    nursery: trio.Nursery, store: Store, hub: FakeHub, n: int
) -> tuple[Forwarder, Session]:
    """*n* messages accepted, and a link session that has sent them all (the
    hub does not ack on its own)."""
    for i in range(n):
        accept(store, f"telemetry.{i}")
    fwd = forwarder(store)
    s = await session(nursery, hub, fwd)
    await wait_for(lambda: len(fwd.window) == n)
    return fwd, s


async def test_late_pub_acks_of_a_previous_link_confirm_on_the_next(tmp_path: Path) -> None:
    """The inbox is the same on every link: a PubAck the hub sends after the link
    it came for is gone can arrive on the next one. It names a gateway sequence
    the hub holds, so confirming it there (if that record is in flight again) is
    right, and ignoring it (if not) costs only a resend."""
    store = make_store(tmp_path)
    hub = FakeHub(ack=False)
    async with running(store) as nursery:
        fwd, s1 = await _sent_unacked(nursery, store, hub, 10)
        await s1.cut()  # the PubAcks for 1..10 are still on their way
        s2 = await session(nursery, hub, fwd)
        await wait_for(lambda: len(fwd.window) == 10)
        for seq in (3, 1, 2, 3, 10, 10):  # late, out of order, twice
            fwd.on_reply(INBOX + b"%d" % seq, PUBACK)
        assert sorted(r.seq for r in fwd.window.records()) == [4, 5, 6, 7, 8, 9]
        for seq in range(4, 10):  # this link's own PubAcks
            fwd.on_reply(INBOX + b"%d" % seq, PUBACK)
        await wait_for(lambda: rows(store) == [])
        await s2.cut()
    assert held(store) == {"default": (0, 0)}
    assert store.groups.states[0].confirmed == 10


async def test_a_graceful_stop_writes_memory_records_wherever_they_are(tmp_path: Path) -> None:
    """Memory-mode records in the window (sent, unconfirmed), in the feed and in
    ``pending`` at a stop: the forwarder hands the window back, the close spills
    the feed and commits pending. All are on disk, in order, and the recorded
    last sequence is exact (no gap, no reuse)."""
    store = make_store(tmp_path, group(durability="memory"), max_inflight=5)
    hub = FakeHub(ack=False)
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up and not store.behind)
        for i in range(12):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: len(fwd.window) == 5 and len(store.feed) == 7)
        for i in range(12, 15):
            accept(store, f"telemetry.{i}")  # pending at the stop
        await s.cut()
    assert [seq for seq, _ in rows(store)] == list(range(1, 16))
    conn, report = db.open_store(store.directory)
    conn.close()
    assert report.next_seq == 16


async def test_a_kill_image_never_restarts_below_a_memory_record_sent(tmp_path: Path) -> None:
    """Memory-mode records go up without being written; the sequences reserved
    ahead for them (with the commit of their batch) put a restart after a kill
    -9 past every one the hub may have seen."""
    store = make_store(tmp_path, group(durability="memory"))
    hub = FakeHub(ack=False)
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up and not store.behind)
        for i in range(20):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: len(hub.delivered) == 20)
        assert rows(store) == []
        image = kill_image(store, tmp_path / "image")
        await s.cut()
    conn, report = db.open_store(image)
    conn.close()
    assert report.next_seq > 20


async def test_a_stop_right_after_a_burst_commits_it_at_close(tmp_path: Path) -> None:
    """The store is cancelled while batches are pending and one may be waiting
    for the worker thread: everything accepted is written at close."""
    store = make_store(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(2000):
            accept(store, f"telemetry.{i % 7}")
            if i % 100 == 0:
                await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert [seq for seq, _ in rows(store)] == list(range(1, 2001))


async def test_a_subject_in_two_groups_belongs_to_the_first_and_is_counted_there(
    tmp_path: Path,
) -> None:
    """Overlapping groups with different confirm modes: a subject is stored,
    counted and confirmed in the first group that matches it only."""
    store = make_store(
        tmp_path,
        group("telemetry.a.>", name="a", confirm="link"),
        group("telemetry.>", name="b", confirm="jetstream"),
    )
    hub = FakeHub(pong_delay=0.005)
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up)
        for i in range(10):
            accept(store, "telemetry.a.x" if i % 2 else "telemetry.b.x")
        assert held(store)["a"][0] == 5 and held(store)["b"][0] == 5
        await wait_for(lambda: held(store) == {"a": (0, 0), "b": (0, 0)} and not len(fwd.window))
        await s.cut()
    assert s.link is not None and s.link.pings  # a's were confirmed by PING/PONG
    assert [g.confirmed for g in store.groups.states] == [5, 5]


def test_marked_pings_and_keepalives_stay_aligned_with_their_pongs() -> None:
    """Keep-alive PINGs (-1) and the forwarder's marked PINGs share one deque in
    the order they are written; each PONG pops the oldest, so a mark is only
    ever confirmed by the PONG of its own PING."""
    from edge.proto.events import Pong

    uplink = bare_uplink()
    got: list[int] = []
    uplink.forwarder = type("F", (), {"on_pong": lambda self, mark: got.append(mark)})()
    uplink.up = True
    uplink._ping_marks.clear()
    uplink._ping_marks.append(-1)  # the opening burst's PING
    uplink.send_marked_ping(5)
    uplink._ping_marks.append(-1)  # a keep-alive, as _pinger writes it
    uplink._send(b"PING\r\n")
    uplink.send_marked_ping(9)
    assert bytes(uplink.out).count(b"PING\r\n") == 3
    uplink._on_control(Pong())
    assert got == []
    uplink._on_control(Pong())
    assert got == [5]
    uplink._on_control(Pong())
    assert got == [5]
    uplink._on_control(Pong())
    assert got == [5, 9]
    uplink._on_control(Pong())  # an unexpected PONG confirms nothing
    assert got == [5, 9]


async def test_a_read_of_replies_confirms_the_same_in_bulk_or_mixed(tmp_path: Path) -> None:
    """on_replies: a read of PubAcks only (checked in bulk) and a read mixing
    them with an error reply, a stray subject and a late ack (each in turn)
    confirm exactly the PubAcked records in flight, nothing else."""
    store = make_store(tmp_path)
    hub = FakeHub(ack=False)
    async with running(store) as nursery:
        fwd, s = await _sent_unacked(nursery, store, hub, 12)
        fwd.on_replies([(INBOX + b"%d" % seq, PUBACK) for seq in (1, 2, 3)])
        assert sorted(r.seq for r in fwd.window.records()) == list(range(4, 13))
        error = b'{"error":{"code":503,"description":"no responders"}}'
        fwd.on_replies(
            [
                (INBOX + b"4", PUBACK),
                (INBOX + b"5", error),  # refused: stays in flight
                (INBOX + b"x6", PUBACK),  # not an ack subject
                (INBOX + b"2", PUBACK),  # late: already confirmed
                (INBOX + b"6", PUBACK),
            ]
        )
        assert sorted(r.seq for r in fwd.window.records()) == [5, *range(7, 13)]
        assert fwd.nacked == 1
        dup = b'{"stream":"TELEMETRY","seq":9,"duplicate":true}'
        odd = b'{"stream":"TELEMETRY","seq":7,"extra":1}'  # not a PubAck's end: one by one
        fwd.on_replies([(INBOX + b"8", PUBACK), (INBOX + b"7", odd), (INBOX + b"9", dup)])
        assert sorted(r.seq for r in fwd.window.records()) == [5, 10, 11, 12]
        fwd.on_replies([(INBOX + b"%d" % seq, PUBACK) for seq in (5, 10)] + [(INBOX + b"11", dup)])
        assert sorted(r.seq for r in fwd.window.records()) == [12]
        fwd.on_replies([(INBOX + b"12", PUBACK)])
        await wait_for(lambda: rows(store) == [])
        await s.cut()
    assert store.groups.states[0].confirmed == 12
