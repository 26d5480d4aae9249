"""Adversarial tests of the store-and-forward path (tests.storefakes): each one
failed before the fix it came with. The promise under test: every accepted
message reaches the hub once and in order per subject, the group counts match
what is held, and nothing hangs, whatever happens to the link.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from store import buffer, db
from store import forward as forward_mod
from store.groups import REASON_MAX_MSGS
from store.window import Confirm
from store.writer import Store
from tests.storefakes import (
    INBOX,
    PUBACK,
    FakeHub,
    accept,
    bare_uplink,
    forwarder,
    group,
    held,
    kill_image,
    make_store,
    on_disk_totals,
    rows,
    running,
    session,
    wait_for,
)

# ---- baseline: the harness works ------------------------------------------------------


async def test_baseline_backlog_then_live_reaches_the_hub_once_in_order(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    hub = FakeHub()
    async with running(store) as nursery:
        for i in range(50):
            accept(store, f"telemetry.{i % 3}")
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        for i in range(50, 100):
            accept(store, f"telemetry.{i % 3}")
            if i % 7 == 0:
                await trio.sleep(0.001)
        await wait_for(lambda: len(hub.stored) == 100 and not len(fwd.window))
        await wait_for(lambda: rows(store) == [])
        await s.cut()
    assert [seq for _, seq in hub.stored] == list(range(1, 101))
    assert Counter(seq for _, seq in hub.delivered) == Counter(range(1, 101))
    assert held(store) == {"default": (0, 0)}


# ---- the writer's barrier under steady traffic ------------------------------------------


async def test_backlog_drains_while_publishers_keep_the_writer_busy(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Reconnect with a backlog while traffic keeps coming: the forwarder reads the
    backlog back (``read_after`` -> ``barrier``). The barrier waits for
    ``_committed``, which the commit loop sets only when it finds nothing to do.
    A commit slower than the gap between messages (an fsync on flash takes
    milliseconds) means the writer never idles, so the forwarder sends nothing
    for as long as the traffic lasts (after a FEED_MAX overflow too)."""
    real_commit = buffer.commit

    def flash_commit(*args: Any, **kw: Any) -> buffer.CommitResult:
        time.sleep(0.004)  # an fsync on an SD card
        return real_commit(*args, **kw)

    monkeypatch.setattr(buffer, "commit", flash_commit)
    store = make_store(tmp_path)
    hub = FakeHub()
    async with running(store) as nursery:
        for i in range(20):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: len(rows(store)) == 20)
        stop = trio.Event()

        async def publisher() -> None:  # 2000 messages a second
            i = 0
            while not stop.is_set():
                for _ in range(2):
                    accept(store, f"telemetry.live.{i % 5}")
                    i += 1
                await trio.sleep(0.001)

        nursery.start_soon(publisher)
        await trio.sleep(0.05)
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        try:
            # 1 s of traffic: the 20 stored messages must be at the hub by then.
            with trio.move_on_after(1.0):
                await wait_for(lambda: len(hub.stored) >= 20, timeout=2)
            at_hub = len(hub.stored)
        finally:
            stop.set()
        await s.cut()
    assert at_hub >= 20, f"only {at_hub} of the 20 stored messages went up under traffic"


# ---- accounting: trims and expiry of rows already confirmed -------------------------------


async def test_a_trim_does_not_count_confirmed_rows_a_second_time(tmp_path: Path) -> None:
    """A full drop_oldest group drains after an outage while new messages arrive:
    the hub's confirmations (rows waiting for their delete) and the trim for the
    new messages land in one commit. ``buffer.commit`` trims before it deletes,
    so the trim takes the oldest rows, the ones already confirmed: counted out a
    second time (and as drops), while the unconfirmed rows it should have
    dropped stay. The group then holds more than max_msgs and its count is low."""
    store = make_store(tmp_path, group(max_msgs=10, policy="drop_oldest"))
    hub = FakeHub(ack=False)
    async with running(store) as nursery:
        for i in range(10):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: len(rows(store)) == 10)
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: len(fwd.window) == 10)
        # The hub confirms 1..5, and 6 new messages arrive before the next commit.
        for seq in range(1, 6):
            fwd.on_reply(INBOX + b"%d" % seq, PUBACK)
        for i in range(10, 16):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: store.committed_seq == 16 and not store._deletes)
        await trio.sleep(0.05)
        counted = held(store)
        actual = on_disk_totals(store)
        dropped = dict(store.groups.states[0].dropped)
        await s.cut()
    assert counted == actual, f"counters {counted}, store {actual}"
    assert actual["default"][0] == 10, "the group holds more than max_msgs"
    assert dropped == {REASON_MAX_MSGS: 1}


async def test_a_confirmation_during_the_commit_that_trims_it_is_counted_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The trim of an in-flight record and the hub's PubAck for it cross: the ack
    is handled while the commit that trimmed the row is still in its thread.
    ``confirmed`` counts it out (it is not yet known as dropped in flight), then
    ``_after_commit`` counts the trimmed row out again."""
    import threading

    real_commit = buffer.commit
    in_thread = threading.Event()
    release = threading.Event()

    def slow_commit(
        conn: sqlite3.Connection, inserts: Any, gids: Any, deletes: Any, trims: Any, **kw: Any
    ) -> buffer.CommitResult:
        result = real_commit(conn, inserts, gids, deletes, trims, **kw)
        if trims:
            in_thread.set()
            release.wait(5)
        return result

    store = make_store(tmp_path, group(max_msgs=10, policy="drop_oldest"))
    hub = FakeHub(ack=False)
    async with running(store) as nursery:
        for i in range(10):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: len(rows(store)) == 10)
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: len(fwd.window) == 10)
        monkeypatch.setattr(buffer, "commit", slow_commit)
        accept(store, "telemetry.new")  # 11 held: the commit trims seq 1 (in flight)
        await wait_for(in_thread.is_set)
        fwd.on_reply(INBOX + b"1", PUBACK)  # the hub had it: confirmed meanwhile
        release.set()
        await wait_for(lambda: store.committed_seq == 11 and not store._deletes)
        await trio.sleep(0.05)
        counted = held(store)
        actual = on_disk_totals(store)
        await s.cut()
    assert counted == actual, f"counters {counted}, store {actual}"


async def test_expiry_does_not_count_confirmed_rows_a_second_time(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The hub confirms old messages; before the commit that deletes their rows,
    the housekeeping's max_age sweep deletes them as expired and counts them out
    again (``_expire`` knows only the in-flight drops, not confirmed rows)."""
    import store.writer as writer_mod

    store = make_store(tmp_path, group(max_age=60.0))
    hub = FakeHub(ack=False)
    old = writer_mod._now_ms() - 120_000
    async with running(store) as nursery:
        monkeypatch.setattr(writer_mod, "_now_ms", lambda: old)
        for i in range(10):
            accept(store, f"telemetry.old.{i}")
        monkeypatch.undo()
        for i in range(10):
            accept(store, f"telemetry.new.{i}")
        await wait_for(lambda: len(rows(store)) == 20)
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: len(fwd.window) == 20)
        for seq in range(1, 6):
            fwd.on_reply(INBOX + b"%d" % seq, PUBACK)
        # The once-a-second sweep, here before the commit loop runs the deletes.
        await store._expire(store.groups.states[0])
        await wait_for(lambda: not store._deletes)
        await trio.sleep(0.05)
        counted = held(store)
        actual = on_disk_totals(store)
        await s.cut()
    assert counted == actual, f"counters {counted}, store {actual}"


# ---- a new link session reads back rows the hub already confirmed ---------------------------


async def test_a_reconnect_does_not_send_again_what_the_hub_confirmed(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Records confirmed by PONG (confirm = "link": no duplicate window at the
    hub) wait in ``_deletes`` for the next commit. The link drops and comes back
    at once; ``read_after``'s barrier waits for pending records and spills, not
    for confirmed deletes, so the new session reads those rows back and the hub
    delivers them a second time (and the group counts them out twice)."""
    import threading

    real_commit = buffer.commit
    in_thread = threading.Event()

    def slow_commit(
        conn: sqlite3.Connection, inserts: Any, gids: Any, deletes: Any, trims: Any, **kw: Any
    ) -> buffer.CommitResult:
        if deletes and not in_thread.is_set():
            in_thread.set()
            time.sleep(0.3)  # a slow fsync
        return real_commit(conn, inserts, gids, deletes, trims, **kw)

    store = make_store(tmp_path, group(confirm="link"))
    hub = FakeHub(jetstream=False, pong_delay=60)
    async with running(store) as nursery:
        for i in range(10):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: len(rows(store)) == 10)
        monkeypatch.setattr(buffer, "commit", slow_commit)
        fwd = forwarder(store)
        s1 = await session(nursery, hub, fwd)
        await wait_for(lambda: len(fwd.window) == 10)
        fwd.on_pong(5)  # 1..5 confirmed: their delete is committed (slowly)
        await wait_for(in_thread.is_set)
        fwd.on_pong(10)  # 6..10 confirmed while that commit runs
        await s1.cut()
        hub.pong_delay = 0
        s2 = await session(nursery, hub, fwd)
        await wait_for(lambda: rows(store) == [] and not len(fwd.window), timeout=5)
        await trio.sleep(0.1)
        await s2.cut()
    twice = sorted(seq for seq, n in Counter(q for _, q in hub.delivered).items() if n > 1)
    assert twice == [], f"delivered twice at the hub: {twice}"
    assert store.groups.states[0].confirmed == 10


# ---- go back N: what is sent again, and when ---------------------------------------------


async def test_records_read_slowly_are_not_stamped_as_sent_before_the_read(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """``_step`` takes ``now`` before ``_next_records`` awaits ``read_after``
    (barrier + database read) and stamps the records it then sends with it. A
    read slower than ack_timeout makes them overdue the moment they are sent:
    the whole window goes again before the hub could answer (PubAcks 50 ms
    away here; with PING/PONG confirmation the copies reach the hub's
    subscribers twice)."""
    real_read = buffer.read_after
    slow = [True]

    def slow_read(conn: sqlite3.Connection, seq: int, limit: int) -> list[buffer.Row]:
        if slow[0]:
            slow[0] = False
            time.sleep(0.4)  # a busy writer or a slow card: the read waits
        return real_read(conn, seq, limit)

    store = make_store(tmp_path, ack_timeout=0.3)
    hub = FakeHub(ack_delay=0.05)
    async with running(store) as nursery:
        for i in range(10):
            accept(store, f"telemetry.{i}")
        await wait_for(lambda: len(rows(store)) == 10)
        monkeypatch.setattr(buffer, "read_after", slow_read)
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: rows(store) == [] and not len(fwd.window), timeout=5)
        await s.cut()
    assert fwd.resent == 0
    assert Counter(q for _, q in hub.delivered) == Counter(range(1, 11))


async def test_an_overdue_pub_ack_does_not_resend_records_awaiting_their_pong(
    tmp_path: Path,
) -> None:
    """Two groups, one confirmed by PubAck, one by PING/PONG. A PubAck that does
    not come (a refused or slow stream) makes the window overdue; go back N
    takes *everything* back, including PING-confirmed records whose PONG is on
    its way: they are sent again, and with no duplicate window for them the
    hub's subscribers get them twice. (The groups' subjects are disjoint, so
    leaving them in flight would not reorder anything.)"""
    store = make_store(
        tmp_path,
        group("js.>", name="js", confirm="jetstream"),
        group("link.>", name="link", confirm="link"),
        ack_timeout=0.2,
    )
    hub = FakeHub(streams={"JS": ("js.>",)}, ack=False, pong_delay=0.03)
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up)
        accept(store, "js.1")  # never acknowledged
        for i in range(60):
            accept(store, f"link.{i}")
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        await s.cut()
    link_seqs = Counter(q for subj, q in hub.delivered if subj.startswith("link."))
    twice = sorted(q for q, n in link_seqs.items() if n > 1)
    assert fwd.resent > 0  # the js record did go again (go back N happened)
    assert twice == [], f"PING-confirmed records delivered twice: {twice}"


# ---- how the hub confirms: the stream lookup -------------------------------------------------


async def test_a_late_lookup_answer_is_not_taken_for_another_groups(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Every group's first subject is looked up on the same reply subject
    (``<inbox>lookup0``; ``i`` counts a group's subjects only). The answer about
    group A that came after A's lookup timed out is taken as B's answer: B is
    confirmed by PubAck though no stream holds its subjects, so its messages
    are never confirmed and go again every ack_timeout."""
    monkeypatch.setattr(forward_mod, "LOOKUP_TIMEOUT", 0.1)
    store = make_store(
        tmp_path, group("telemetry.>", name="a"), group("other.>", name="b"), ack_timeout=0.3
    )
    hub = FakeHub(lookup_delay=0.15)  # a slow JetStream API: A's answer comes late
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up)
        await s.cut()
    assert hub.lookups == ["telemetry.>", "other.>"]
    assert fwd.modes[1] is Confirm.LINK, "B holds no stream's subjects, yet waits for PubAcks"


async def test_an_orphan_groups_messages_are_confirmed(tmp_path: Path) -> None:
    """A group removed from the config while it still holds messages is kept as
    an orphan with ``subjects = (">",)`` and ``confirm = "auto"``: its lookup asks
    for streams colliding with ">" (every stream), so with any stream at the hub
    it waits for PubAcks. Messages of a group no stream held (confirmed by
    PING/PONG before) are then never confirmed: resent every ack_timeout (each
    time delivered again to the hub's subscribers) and never deleted."""
    first = make_store(tmp_path, group("telemetry.>", name="a"), group("other.>", name="b"))
    async with running(first):
        for i in range(3):
            accept(first, f"other.{i}")
        await wait_for(lambda: len(rows(first)) == 3)
    store = make_store(tmp_path, group("telemetry.>", name="a"), ack_timeout=0.2)
    hub = FakeHub()  # JetStream, with a stream for telemetry.> only
    async with running(store) as nursery:
        assert [s.spec.name for s in store.groups.states] == ["a", "b"]
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        with trio.move_on_after(1.0):
            await wait_for(lambda: rows(store) == [], timeout=2)
        await s.cut()
    assert Counter(q for _, q in hub.delivered) == Counter([1, 2, 3])
    assert rows(store) == []


# ---- a full store with memory-mode records to spill -------------------------------------------


async def _fill_until_full(store: Store, prefix: str, size: int = 1000) -> int:
    """Accept messages on *prefix* until a commit fails for lack of space."""
    n = 0
    with trio.fail_after(10):
        while not store.disk_full:
            accept(store, f"{prefix}.{n}", b"d" * size)
            n += 1
            if n % 8 == 0:
                await wait_for(lambda: not store.pending)
    await wait_for(lambda: not store.pending)
    return n


async def test_a_spill_that_does_not_fit_does_not_stop_forwarding(tmp_path: Path) -> None:
    """Memory-mode records in flight when the link drops are spilled; the store
    is full, so the spill fails and is kept (``_commit_failed``). On the next link
    ``read_after``'s barrier waits for ``_spill`` to be empty, which cannot
    happen: the forwarder sends nothing, so the hub confirms nothing, so no row
    is deleted (the pending deletes are retried in the same failing transaction
    as the spill), and the store stays full: forwarding is stuck for good."""
    store = make_store(
        tmp_path,
        group("disk.>", name="disk", policy="reject"),
        group("mem.>", name="mem", durability="memory", policy="reject"),
        max_file_size=128 * 1024,
    )
    hub = FakeHub(streams={"ALL": ("disk.>", "mem.>")}, ack=False)
    async with running(store) as nursery:
        fwd = forwarder(store)
        s1 = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up and not store.behind)
        for i in range(10):
            accept(store, f"mem.{i}", b"m" * 1000)  # held in memory, sent
        await wait_for(lambda: len(fwd.window) == 10)
        await _fill_until_full(store, "disk")  # the hub confirms nothing meanwhile
        stored = len(rows(store))
        await wait_for(lambda: len(fwd.window) == stored + 10)
        await s1.cut()  # the 10 memory records are spilled: no room for them
        await wait_for(lambda: store.disk_full and bool(store._spill))
        hub.ack = True
        s2 = await session(nursery, hub, fwd)
        assert s2.link is not None
        with trio.move_on_after(2.0):
            await wait_for(lambda: held(store) == {"disk": (0, 0), "mem": (0, 0)}, timeout=3)
        resent = len(s2.link.sent)
        await s2.cut()
    assert resent == stored + 10, f"{resent} of {stored + 10} sent again after the reconnect"
    assert held(store) == {"disk": (0, 0), "mem": (0, 0)}


async def test_a_memory_record_sent_after_a_failed_commit_has_its_sequence_reserved(
    tmp_path: Path,
) -> None:
    """A batch holding a memory-mode record and a record to write fails for lack
    of space: the written one is dropped, the memory one goes on "as if
    committed" and up to the hub, but the reservation of its sequence
    (``last_seq`` = seq + MEMORY_RESERVE) was in the transaction that failed. A
    kill -9 before the next successful commit restarts below that sequence:
    the next message gets a Nats-Msg-Id the hub has already seen (and drops as
    a duplicate inside its duplicate window)."""
    store = make_store(
        tmp_path,
        group("disk.>", name="disk", policy="reject"),
        group("mem.>", name="mem", durability="memory", policy="reject"),
        max_file_size=128 * 1024,
    )
    hub = FakeHub(streams={"ALL": ("disk.>", "mem.>")}, ack=False)
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up and not store.behind)
        await _fill_until_full(store, "disk")
        await wait_for(lambda: not store.disk_full, timeout=3)  # tried again after a second
        accept(store, "mem.a", b"m" * 100)
        accept(store, "disk.b", b"d" * 40_000)  # one batch: the commit fails, disk.b dropped
        await wait_for(lambda: any(subj == "mem.a" for subj, _ in hub.delivered))
        mem_seq = next(q for subj, q in hub.delivered if subj == "mem.a")
        image = kill_image(store, tmp_path / "image")
        await s.cut()
    conn, report = db.open_store(image)
    conn.close()
    assert report.next_seq > mem_seq, (
        f"restart would reuse sequence {report.next_seq}; the hub has seen up to {mem_seq}"
    )


# ---- sequences are never reused -------------------------------------------------------------


async def test_expiring_the_newest_rows_records_the_last_sequence(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Messages went up (the hub holds them; the link dropped before their
    PubAcks), then the link stayed down until max_age expired all of them.
    ``buffer.expire`` deletes the top row without recording ``last_seq`` (only
    ``buffer.commit`` does), and with no new traffic no commit follows: a
    kill -9 now restarts at sequence 1 again, under Nats-Msg-Ids the hub has."""
    import store.writer as writer_mod

    store = make_store(tmp_path, group(max_age=60.0))
    hub = FakeHub(ack=False)
    old = writer_mod._now_ms() - 120_000
    async with running(store) as nursery:
        monkeypatch.setattr(writer_mod, "_now_ms", lambda: old)
        for i in range(5):
            accept(store, f"telemetry.{i}")
        monkeypatch.undo()
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: len(hub.stored) == 5)
        await s.cut()
        await store._expire(store.groups.states[0])  # the housekeeping's max_age sweep
        assert rows(store) == []
        image = kill_image(store, tmp_path / "image")
    conn, report = db.open_store(image)
    conn.close()
    assert report.next_seq == 6, f"a restart would hand out {report.next_seq} again"


# ---- a subject the hub does not let us publish ---------------------------------------------


async def test_a_memory_record_the_hub_denies_is_kept_not_lost(tmp_path: Path) -> None:
    """``_send`` skips a record the link may not send (the hub's permissions) but
    moves the cursor past it and keeps it nowhere: a memory-mode record is then
    neither in the window, the feed nor the database. It is never sent (not
    even once the hub allows the subject), a graceful stop does not write it,
    and its group counts it as held for ever (the limits see a phantom)."""
    store = make_store(tmp_path, group(durability="memory"))
    hub = FakeHub(ack=False)
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        assert s.link is not None
        s.link.allowed = lambda subject: not subject.endswith(b".secret")
        await wait_for(lambda: store.link_up and not store.behind)
        accept(store, "telemetry.secret")  # PubAck'ed as held in memory
        accept(store, "telemetry.open")
        await wait_for(lambda: len(fwd.window) >= 1 and fwd.cursor == 2)
        await s.cut()
    # A graceful stop writes everything held in memory.
    assert [subj for _, subj in rows(store)] == ["telemetry.secret", "telemetry.open"]


# ---- the uplink's output buffer: the forwarder's flow control ----------------------------------


class _SlowStream:
    """A link that takes 5 ms per send (a slow radio link)."""

    def __init__(self) -> None:
        self.bytes = 0

    async def send_all(self, data: bytes) -> None:
        await trio.sleep(0.005)
        self.bytes += len(data)


async def test_the_forwarder_is_not_held_back_for_ever_by_live_traffic() -> None:
    """The forwarder waits (``wait_drained``) when the uplink's buffer is past
    OUT_HIGH, until ``_drained``, which the writer sets only when the buffer is
    *empty* right after a send. Live traffic to the hub on other subjects that
    keeps adding to the buffer during each send means it is never empty then:
    the store's forwarding stops while the live traffic lasts."""
    uplink = bare_uplink()
    stream = _SlowStream()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uplink._writer, stream)

        async def live() -> None:
            while not stop.is_set():
                uplink._send(b"LMSG live.x 2\r\nhi\r\n")
                await trio.sleep(0.001)

        nursery.start_soon(live)
        await trio.sleep(0.02)
        uplink._send(b"x" * (forward_mod.OUT_HIGH + 1))  # the forwarder's burst
        waited = True
        with trio.move_on_after(1.0):
            await uplink.wait_drained()
            waited = False
        stop.set()
        nursery.cancel_scope.cancel()
    assert stream.bytes > forward_mod.OUT_HIGH  # its burst did go out
    assert not waited, "wait_drained did not return within 1 s although the burst was sent"


# ---- behind: when the forwarder has caught up ---------------------------------------------------


async def test_the_forwarder_catches_up_when_the_newest_committed_rows_are_gone(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """``read_after`` clears ``behind`` only when the last row it read is at least
    ``committed_seq``. When the newest committed rows are gone (expired, trimmed,
    or a batch dropped for a full disk, which also raises committed_seq), a
    complete read never qualifies: the store stays "behind" with the link up,
    and memory-mode records are written to disk (on a full disk: dropped) instead
    of being held in memory, until a later batch is committed and read back."""
    import store.writer as writer_mod

    store = make_store(tmp_path, group(durability="memory", max_age=60.0))
    hub = FakeHub(ack=False)
    old = writer_mod._now_ms() - 120_000
    async with running(store) as nursery:
        monkeypatch.setattr(writer_mod, "_now_ms", lambda: old)
        for i in range(5):
            accept(store, f"telemetry.{i}")  # link down: written
        monkeypatch.undo()
        await wait_for(lambda: len(rows(store)) == 5)
        await store._expire(store.groups.states[0])  # all expire
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: store.link_up)
        await trio.sleep(0.05)
        behind = store.behind
        accept(store, "telemetry.live")
        await wait_for(lambda: len(fwd.window) == 1)
        written = rows(store)
        await s.cut()
    assert not behind, "caught up (nothing stored) but still behind"
    assert written == [], f"a memory-mode record was written with the link up: {written}"


# ---- the router: store-and-forward subjects while the uplink is gone -------------------------


def test_a_store_subject_published_while_no_uplink_is_registered_is_stored() -> None:
    """At a graceful stop the uplinks are cancelled first and each removes itself
    from ``router.links``; the clients are closed after that and their readers
    go on handling what they had read. ``Router.publish`` offers a message to
    ``_forward`` (hence to the store) only ``if self.links``: a message on a
    store-and-forward subject published then is dropped silently, although the
    store is open until the very end to commit exactly those."""
    from types import SimpleNamespace

    from edge.router import Router

    taken: list[bytes] = []
    router = Router()
    router.store = SimpleNamespace(
        classify=lambda subject: 0 if subject.startswith(b"telemetry.") else -1,
        accept=lambda origin, grp, subject, reply, hdr, data: taken.append(subject),
    )
    origin: Any = SimpleNamespace(echo=True)
    router.publish(origin, b"telemetry.late", b"", 0, b"x")
    assert taken == [b"telemetry.late"]


async def test_a_full_disk_shows_in_last_error(tmp_path: Path) -> None:
    """``_commit_failed`` sets ``last_error`` for a full disk, then calls
    ``_after_commit`` for the batch's memory-mode records, which clears it:
    /storez never shows why messages are being dropped."""
    store = make_store(tmp_path, group(policy="reject"), max_file_size=128 * 1024)
    async with running(store):
        await _fill_until_full(store, "telemetry")
        error = store.stats().last_error
    assert error is not None and "full" in error


async def test_a_batch_bigger_than_the_room_left_is_kept_in_part(tmp_path: Path) -> None:
    """A whole burst committed as one batch into a store with room for part of
    it: the batch is tried again in halves, so the oldest messages that fit are
    stored and only the rest is dropped (drop_newest), each counted."""
    store = make_store(tmp_path, group(policy="drop_newest"), max_file_size=256 * 1024)
    async with running(store):
        await store._limiter.acquire()  # hold the writer: the burst becomes one batch
        try:
            for i in range(3000):
                accept(store, f"telemetry.dev{i % 3}", b"%05d" % i + b"p" * 195)
        finally:
            store._limiter.release()
        await wait_for(lambda: not store.pending and store.disk_full, 10, "the batch settled")
        stored = [seq for seq, _ in rows(store)]
        state = store.groups.states[0]
    assert 0 < len(stored) < 3000
    assert stored == list(range(1, len(stored) + 1))  # the oldest, in order, no gap
    assert state.dropped.get("disk_full", 0) == 3000 - len(stored)
    assert held(store)["default"][0] == len(stored)


# ---- Runs: messages accepted together (store.window.Run) ---------------------------------


def _accept_runs(store: Store, runs: int, per_run: int, *, singles: bool = True) -> int:
    """Runs on one subject, with a single message between them (the first of a
    subject and a read's cut-off frame take the one-by-one path)."""
    n = 0
    for _ in range(runs):
        assert store.takes_run(0)
        store.accept_run(0, b"telemetry.run", [b"%07d" % (n + i) for i in range(per_run)])
        n += per_run
        if singles:
            accept(store, "telemetry.run", b"%07d" % n)
            n += 1
    return n


async def test_runs_are_stored_forwarded_and_confirmed_once_in_order(tmp_path: Path) -> None:
    """Runs and single messages, with the forwarder caught up (their Records
    made from the Runs for the feed) and behind (read back from the rows): the
    hub gets every message once, in order, and the rows are all deleted."""
    store = make_store(tmp_path)
    hub = FakeHub()
    async with running(store) as nursery:
        n = _accept_runs(store, 5, 300)  # committed before the link: read back
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        await wait_for(lambda: len(hub.stored) == n, 10, "the backlog at the hub")
        await wait_for(lambda: store.link_up and not store.behind)
        m = _accept_runs(store, 5, 300)  # fed from memory
        await wait_for(lambda: len(hub.stored) == n + m, 10, "the live runs at the hub")
        await wait_for(lambda: rows(store) == [], 10, "the rows deleted")
        await s.cut()
    assert [seq for _subject, seq in hub.stored] == list(range(1, n + m + 1))
    assert store.groups.states[0].confirmed == n + m
    assert held(store) == {"default": (0, 0)}


async def test_a_run_that_does_not_fit_the_disk_is_kept_in_part(tmp_path: Path) -> None:
    """A burst of runs as one batch into a store with room for part of it: the
    batch is halved message by message, not run by run, so the oldest that fit
    are stored and each dropped message is counted."""
    store = make_store(tmp_path, group(policy="drop_newest"), max_file_size=256 * 1024)
    async with running(store):
        await store._limiter.acquire()  # hold the writer: the burst becomes one batch
        try:
            for i in range(3):
                store.accept_run(
                    0,
                    b"telemetry.big",
                    [b"%05d" % (i * 1000 + j) + b"p" * 195 for j in range(1000)],
                )
        finally:
            store._limiter.release()
        await wait_for(lambda: not store.pending and store.disk_full, 10, "the batch settled")
        stored = [seq for seq, _ in rows(store)]
        state = store.groups.states[0]
    assert 1000 < len(stored) < 3000  # more than one run's worth: split inside the runs
    assert stored == list(range(1, len(stored) + 1))
    assert state.dropped.get("disk_full", 0) == 3000 - len(stored)
    assert held(store)["default"][0] == len(stored)


async def test_a_subject_the_hub_denies_is_held_back_and_the_rest_goes_up(tmp_path: Path) -> None:
    """The link may not publish one stored subject (the hub's permissions for
    this leaf): its messages stay unsent (kept for the next link), the other
    subjects of the same reads still go up in order, and the refusal is said."""
    store = make_store(tmp_path)
    hub = FakeHub()
    async with running(store) as nursery:
        fwd = forwarder(store)
        s = await session(nursery, hub, fwd)
        assert s.link is not None
        s.link.allowed = lambda subject: subject != b"telemetry.secret"
        await wait_for(lambda: store.link_up)
        for i in range(30):
            accept(store, "telemetry.secret" if i % 3 == 0 else f"telemetry.ok{i % 2}")
        await wait_for(lambda: len(hub.stored) == 20, 5, "the allowed ones at the hub")
        await wait_for(lambda: len(fwd.denied) == 10, 5, "the denied ones held")
        await s.cut()
    assert [seq for _subject, seq in hub.stored] == [s for s in range(1, 31) if (s - 1) % 3]
    assert all(subject != "telemetry.secret" for subject, _seq in hub.delivered)
    assert held(store)["default"][0] == 10  # still stored, for a link that may send them
