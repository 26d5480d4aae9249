"""The store's Trio shell: the one writer, the feed the uplink reads, the limits.

Task tree (owned by the server's nursery, started before the uplinks)::

    Store.run              opens the store in its thread, then the commit loop
      housekeeping         max_age sweeps and the free-disk check, once a second

Theory of operation
-------------------
``accept`` is called by the router, synchronously, for every local message on
a store-and-forward subject. It checks the group's limits (exact in-memory
counters), gives the message the next sequence and appends it to ``pending``.
Nothing waits there for long: the commit loop takes everything pending as one
batch and commits it in one transaction in the worker thread (group commit: a
batch is whatever arrived while the previous commit ran). ``pending`` is
bounded: past ``PENDING_HOLD`` bytes the connections hold their publishers
back (``congested``), past ``PENDING_MAX`` new messages are refused by policy.

After a commit, the batch is *committed*: the publishers' PubAcks go out and
the records join ``feed``, from which the uplink's forwarder sends them
without reading them back. When the feed is not complete (``behind``: the
link is down, or the forwarder fell more than ``FEED_MAX`` bytes behind) the
writer stops feeding and the forwarder reads from the database until it has
caught up. Memory-mode records reach the disk only then: while behind, they
are inserted like the others ("spilled"), and those the feed or the window
held are spilled when the link goes down.

The forwarder reports what the hub confirmed (``confirmed``); the writer
deletes those rows in its next transaction.

Every drop is counted per group and reason and logged at most once per period
per group and reason, with the number suppressed.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import TypeVar

import trio

from edge.config import ForwardGroup, StoreConfig
from edge.log import RateLimitedWarning, get_logger
from store import buffer, db, failures, housekeeping
from store.acks import ErrorSender, PublisherAcks, ReplySender
from store.buffer import Trim
from store.dedup import msg_id_of
from store.groups import (
    REASON_DISK_FLOOR,
    REASON_DISK_FULL,
    GroupState,
    GroupTable,
    Verdict,
    overflow_verdict,
    plain_groups,
    trims_due,
)
from store.paths import store_dir
from store.stats import GroupStats, LatencyHistogram, StoreStats, snapshot
from store.window import Record, Run, expand, last_seq_of

log = get_logger("store")
_T = TypeVar("_T")

PENDING_HOLD = 4 * 1024 * 1024  # publishers are held back past this much pending
PENDING_MAX = 32 * 1024 * 1024  # and refused by policy past this
FEED_MAX = 32 * 1024 * 1024  # committed records kept in memory for the uplink
HOLD_MAX = 1.0  # longest a publisher is held per read
UNAVAILABLE_AFTER = 3  # failed commits in a row before new messages are refused
REASON_UNAVAILABLE = "store_unavailable"
DROP_LOG_PERIOD = 10.0
# Sequences reserved ahead for memory-mode records (their rows may never be
# written): a crash then skips to past the reservation instead of reusing a
# sequence the hub has already seen.
MEMORY_RESERVE = 100_000
DROPPED_MEMORY = 100_000  # dropped sequences remembered while the link is up


class Store:
    def __init__(self, config: StoreConfig, *, hostname: str | None = None) -> None:
        self.config = config
        self.directory = store_dir(config)
        self.groups = GroupTable(config.groups)
        # Per group: no count or size limit, so a message needs no verdict
        # while the disk is fine and the writer keeps up (the common case).
        self._unlimited = [state.unlimited for state in self.groups.states]
        # Per group: the duplicate window in ms (0: no deduplication), and
        # whether publishers' PONGs wait for their messages' commit.
        self._dedup_ms = [int(s.spec.duplicate_window * 1000) for s in self.groups.states]
        self._durable_flush = [s.spec.durable_flush for s in self.groups.states]
        self._plain = plain_groups(self.groups.states)
        self.acks = PublisherAcks(self.groups)
        self.hostname = hostname
        self.gateway_id = config.gateway_id or ""
        self.server_id = ""
        self.next_seq = 1
        self.conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._gids: list[int] = []  # group index -> id in the store
        self._index_of: dict[int, int] = {}  # id in the store -> group index
        self.pending: list[Record | Run] = []  # Runs: see store.window.Run
        self.pending_bytes = 0
        self.congested = False
        self.feed: deque[Record] = deque()
        self.feed_bytes = 0
        self.behind = True
        self.link_up = False
        self.committed_seq = 0
        self._spill: list[Record] = []
        self._deletes: list[Record] = []  # confirmed, to remove at the next commit
        # Sequences the hub confirmed whose rows are not deleted yet (in
        # _deletes, or in the commit running now): counted out already, so a
        # trim or max_age must not count them again, nor a read send them again.
        self._confirming: set[int] = set()
        # Bytes to free per group (policy drop_oldest) because the disk is low
        # or full rather than because a group limit was reached.
        self._free_bytes: dict[int, int] = {}
        # Sequences dropped by a policy while the link was up (they may be in
        # flight); emptied when the link changes (the window is emptied then).
        self._dropped_in_flight: set[int] = set()
        self._work_pending = False
        self._full_retry = False
        # A batch that did not fit a full store is tried again in halves (this
        # many records at most), so what fits is kept and only the newest go;
        # -1 once not even one fitted: batches go whole until there is room.
        self._split = 0
        # A full store could not take the spill: the forwarder sends it from
        # memory meanwhile (read_after), and confirmed deletes are committed on
        # their own first (they make the room).
        self._spill_stuck = False
        self._split_deletes = False
        self._trim_reason: dict[int, str] = {}  # group index -> why this round trims it
        self._recorded_seq = 0
        self._memory_seq = 0  # highest sequence given to a memory-mode record
        self._work = trio.Event()
        self._room = trio.Event()
        self._committed = trio.Event()  # set after each commit round
        self.data_ready = trio.Event()  # set when the feed grows or the store gets rows
        self.low_disk = False  # free space below min_free_disk
        # The last commit failed for lack of space (a full file system, or the
        # max_file_size cap); cleared once rows are deleted, or a second later.
        self.disk_full = False
        self.last_error: str | None = None
        # Commits failed in a row for another reason than a full disk (an I/O
        # error, a damaged file): past UNAVAILABLE_AFTER the store refuses new
        # messages, so publishers hear it instead of waiting for an ack.
        self.commit_failures = 0
        self.commits = 0
        self.commit_seconds = 0.0
        self.commit_latency = LatencyHistogram()
        self.bytes_committed = 0
        self._drop_log = RateLimitedWarning(DROP_LOG_PERIOD)

    # How the server answers a publisher (set by the server): a message to a
    # reply subject, an error to a connection. They are the acks' (store.acks).

    @property
    def send_reply(self) -> ReplySender:
        return self.acks.send_reply

    @send_reply.setter
    def send_reply(self, sender: ReplySender) -> None:
        self.acks.send_reply = sender

    @property
    def send_error(self) -> ErrorSender:
        return self.acks.send_error

    @send_error.setter
    def send_error(self, sender: ErrorSender) -> None:
        self.acks.send_error = sender

    def reconfigure(self, groups: tuple[ForwardGroup, ...]) -> None:
        """New limits and behaviour for the same groups (a reload; edge.reload
        checked that names, subjects and durability are unchanged)."""
        for state, spec in zip(self.groups.states, groups, strict=False):
            state.spec = spec
        states = self.groups.states
        self._unlimited = [state.unlimited for state in states]
        self._dedup_ms = [int(s.spec.duplicate_window * 1000) for s in states]
        self._durable_flush = [s.spec.durable_flush for s in states]
        self._plain = plain_groups(states)
        self._wake_writer()  # a lower limit trims at the next commit

    # ---- called by the router, synchronously -------------------------------------

    def classify(self, subject: bytes) -> int:
        return self.groups.classify(subject)

    def accept(
        self, origin: object, group: int, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        """Take one local message for the hub (or refuse it by its group's policy)."""
        if not hdr and self.takes_run(group):
            # The common case, kept short (once per message): no header (so no
            # Nats-Msg-Id), no limit to check, written to disk, PONGs not held.
            seq = self.next_seq
            self.next_seq = seq + 1
            record = Record(seq, group, _now_ms(), subject, None, data, True, reply)
            self._enqueue(record, self.groups.states[group])
            return
        self._accept(origin, group, subject, reply, hdr, data)

    def takes_run(self, group: int) -> bool:
        """Whether header-less messages of *group* need nothing but storing now:
        no limit to check, written to disk, no PONG held (the short path)."""
        return self._plain[group] and not (
            self.pending_bytes > PENDING_MAX
            or self.low_disk
            or self.disk_full
            or self.commit_failures
        )

    def accept_run(self, group: int, subject: bytes, payloads: list[bytes]) -> None:
        """Take messages without reply or headers on one subject of a group that
        ``takes_run``, as ``accept`` would one by one."""
        seq = self.next_seq
        self.next_seq = seq + len(payloads)
        size = len(subject) * len(payloads) + sum(map(len, payloads))
        self.groups.states[group].add(size, len(payloads))
        self.pending.append(Run(seq, group, _now_ms(), subject, payloads, size))
        self._pending_added(size)

    def _accept(
        self, origin: object, group: int, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        state = self.groups.states[group]
        header = data[:hdr] if hdr else None
        payload = data[hdr:] if hdr else data
        size = len(subject) + len(data)
        now = _now_ms()
        msg_id = msg_id_of(header) if header and self._dedup_ms[group] else None
        if msg_id is not None:
            first = self.acks.window.check(group, msg_id, now, self._dedup_ms[group])
            if first:
                self.acks.duplicate(group, first, reply, self.committed_seq)
                return
        if not (
            self._unlimited[group]
            and self.pending_bytes <= PENDING_MAX
            and not self.low_disk
            and not self.disk_full
            and not self.commit_failures
        ) and not self._admit(state, origin, subject, reply, size):
            return
        seq = self.next_seq
        self.next_seq = seq + 1
        if msg_id is not None:
            self.acks.window.add(group, msg_id, seq, now)
        if self._durable_flush[group]:
            origin.flush_seq = seq  # type: ignore[attr-defined]
        memory = state.spec.durability == "memory"
        if memory:
            self._memory_seq = seq
        self._enqueue(Record(seq, group, now, subject, header, payload, not memory, reply), state)

    def _enqueue(self, record: Record, state: GroupState) -> None:
        """Count an accepted record in and hand it to the commit loop."""
        state.add(record.size)
        self.pending.append(record)
        self._pending_added(record.size)

    def _pending_added(self, size: int) -> None:
        self.pending_bytes += size
        if self.pending_bytes > PENDING_HOLD:
            self.congested = True
        if not self._work_pending:
            self._wake_writer()

    def _admit(
        self, state: GroupState, origin: object, subject: bytes, reply: bytes, size: int
    ) -> bool:
        """Apply the group's limits and policy to a new message: True to store it."""
        if self.commit_failures >= UNAVAILABLE_AFTER:
            self._refuse(state, Verdict.REJECT, REASON_UNAVAILABLE, origin, subject, reply)
            return False
        verdict, reason = state.verdict(size, self.low_disk or self.disk_full)
        if reason == REASON_DISK_FLOOR and self.disk_full:
            reason = REASON_DISK_FULL
        if verdict is Verdict.ACCEPT and self.pending_bytes > PENDING_MAX:
            verdict, reason = overflow_verdict(state), "writer_behind"
        if verdict is Verdict.DROP_NEWEST or verdict is Verdict.REJECT:
            self._refuse(state, verdict, reason or "", origin, subject, reply)
            return False
        if verdict is Verdict.DROP_OLDEST and reason == REASON_DISK_FLOOR:
            self._free_bytes[state.index] = self._free_bytes.get(state.index, 0) + size
        return True

    def _refuse(
        self,
        state: GroupState,
        verdict: Verdict,
        reason: str,
        origin: object,
        subject: bytes,
        reply: bytes,
    ) -> None:
        if verdict is Verdict.REJECT:
            state.rejected += 1
            if reason == REASON_UNAVAILABLE:
                text = f"store unavailable ({self.last_error})"
            else:
                text = f"store-and-forward limit reached ({reason})"
            self.acks.refuse(origin, subject, reply, text)
        else:
            state.note_drop(reason)
            self.acks.fail(reply, f"message dropped ({reason})")
        self._log_drop(state, reason, "rejected" if verdict is Verdict.REJECT else "dropped")

    def _log_drop(self, state: GroupState, reason: str, what: str, n: int = 1) -> None:
        decision = self._drop_log.check((state.spec.name, reason, what), trio.current_time())
        if decision.log:
            log.warning(
                f"store_{what}",
                group=state.spec.name,
                reason=reason,
                messages=n,
                suppressed=decision.suppressed,
                held=state.count,
                held_bytes=state.bytes,
            )

    async def wait_room(self) -> None:
        """Hold a publisher (bounded) while the writer catches up."""
        with trio.move_on_after(HOLD_MAX):
            while self.congested:
                await self._room.wait()

    # ---- called by the forwarder -------------------------------------------------

    def confirmed(self, records: list[Record]) -> None:
        """The hub confirmed these: forget them (their rows go in the next commit).

        A record a policy dropped while it was in flight (trimmed, expired) was
        counted out then; it is not counted out twice."""
        dropped = self._dropped_in_flight
        one_by_one = records
        if records and not dropped and all(map(_on_disk_of, records)) and _one_group(records):
            # The common case, without a loop in bytecode: one group's messages,
            # all on disk, none dropped while in flight.
            state = self.groups.states[records[0].group]
            state.confirmed += len(records)
            state.remove(sum(map(_size_of, records)), len(records))
            self._deletes += records
            self._confirming.update(map(_seq_of, records))
            one_by_one = []
        for rec in one_by_one:
            state = self.groups.states[rec.group]
            state.confirmed += 1
            if dropped and rec.seq in dropped:
                dropped.discard(rec.seq)
            else:
                state.remove(rec.size)
            if rec.on_disk:
                self._deletes.append(rec)
                self._confirming.add(rec.seq)
        if self._spill_stuck and self._spill:
            done = {rec.seq for rec in records}
            self._spill = [r for r in self._spill if r.seq not in done]
        if self._deletes:
            self._wake_writer()

    def _wake_writer(self) -> None:
        self._work_pending = True
        self._work.set()

    def take_feed(self, after: int, limit: int) -> list[Record]:
        """Up to *limit* committed records after sequence *after*, from memory."""
        out: list[Record] = []
        feed = self.feed
        while feed and len(out) < limit:
            rec = feed.popleft()
            self.feed_bytes -= rec.size
            if rec.seq > after:
                out.append(rec)
        return out

    async def read_after(self, after: int, limit: int) -> list[Record]:
        """Up to *limit* stored records after *after*, read back from the
        database once everything accepted so far is committed. Clears ``behind``
        when the reader has caught up with the writer."""
        await self.barrier()
        rows = await self._in_thread(buffer.read_after, after, limit)
        confirming = self._confirming
        index_of = self._index_of
        records = []
        for rec in rows:
            if rec.seq not in confirming:
                rec.group = index_of.get(rec.group, 0)
                records.append(rec)
        complete = len(rows) < limit
        if self._spill_stuck and self._spill:
            # Spilled records a full store could not take: sent from memory, in
            # sequence order with the rows (they are written once there is room).
            top = rows[-1].seq if not complete else None
            extra = [
                r
                for r in self._spill
                if r.seq > after and r.seq not in confirming and (top is None or r.seq < top)
            ]
            if extra:
                records = sorted(records + extra, key=_seq)
                if len(records) > limit:
                    records = records[:limit]
                    complete = False
        # A short read saw every committed row (the barrier committed what was
        # accepted before it; later commits wait for the limiter, and their
        # records are fed from now on), even when the newest committed rows
        # are gone (expired, trimmed, dropped for a full disk).
        if complete and self.link_up:
            self.behind = False
        return records

    def link_changed(self, up: bool, unconfirmed: list[Record]) -> None:
        """The link came up or went down; *unconfirmed* is what the forwarder
        held (window and resend queue) when it went down."""
        self.link_up = up
        self._dropped_in_flight.clear()
        if up:
            return
        self.behind = True
        self._spill.extend(r for r in unconfirmed if not r.on_disk)
        self._drop_feed()

    def _drop_feed(self) -> None:
        self._spill.extend(r for r in self.feed if not r.on_disk)
        self.feed.clear()
        self.feed_bytes = 0
        if self._spill:
            self._work.set()

    async def barrier(self) -> None:
        """Return once everything accepted before the call is committed."""
        target = self.next_seq - 1
        while self.committed_seq < target or (self._spill and not self._spill_stuck):
            self._work.set()
            await self._committed.wait()

    # ---- running -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        await self._open()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._housekeeping)
                task_status.started(self)
                await self._commit_loop()
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def _open(self) -> None:
        conn, report = await trio.to_thread.run_sync(
            db.open_store, self.directory, self.config.gateway_id, self.hostname
        )
        self.conn = conn
        if self.config.max_file_size:
            pages = max(16, self.config.max_file_size // 4096)
            conn.execute(f"PRAGMA max_page_count={pages}")
        self.gateway_id = report.gateway_id
        self.server_id = report.server_id
        self.next_seq = report.next_seq
        self.committed_seq = report.next_seq - 1
        self._recorded_seq = report.next_seq - 1
        names = [s.spec.name for s in self.groups.states]
        ids = await self._in_thread(db.group_ids, names)
        for name, gid in ids.items():
            state = self.groups.by_name(name) or self.groups.add_orphan(name)
            self._index_of[gid] = state.index
        self._gids = [ids[s.spec.name] for s in self.groups.states]
        totals = await self._in_thread(buffer.totals)
        for gid, (count, size) in totals.items():
            state = self.groups.states[self._index_of[gid]]
            state.count, state.bytes = count, size
        if report.set_aside is not None:
            log.error(
                "store_set_aside",
                path=str(report.path),
                moved_to=str(report.set_aside),
                damage=report.damage,
                salvaged=report.salvaged,
                detail="the store failed its integrity check; a fresh one was created",
            )
        log.info(
            "store_opened",
            path=str(report.path),
            created=report.created,
            gateway_id=self.gateway_id,
            next_seq=self.next_seq,
            backlog=sum(s.count for s in self.groups.states),
        )
        self._check_disk()

    async def _close(self) -> None:
        """Commit what is left (memory-mode records included), checkpoint, close."""
        if self.conn is None:
            return
        self.link_up = False
        self.behind = True
        self._drop_feed()
        with trio.move_on_after(5):
            if self.pending or self._spill or self._deletes:
                await self._commit_round()
            if not self.pending and not self._spill:
                # Everything is on disk: the exact last sequence replaces any
                # reservation, so the next start leaves no gap.
                await self._in_thread(buffer.record_last_seq, self.next_seq - 1)
            await self._in_thread(buffer.checkpoint)
        conn, self.conn = self.conn, None
        conn.close()
        log.info("store_closed", next_seq=self.next_seq)

    async def _in_thread(self, fn: Callable[..., _T], *args: object) -> _T:
        assert self.conn is not None
        return await trio.to_thread.run_sync(fn, self.conn, *args, limiter=self._limiter)

    async def _commit_loop(self) -> None:
        while True:
            if not (self.pending or self._spill or self._deletes):
                self._committed.set()
                self._committed = trio.Event()
                await self._work.wait()
                self._work = trio.Event()
                self._work_pending = False
                continue
            ok = await self._commit_round()
            # Wake barrier() after every round, not only when idle: a writer
            # that always finds a new batch never idles.
            self._committed.set()
            self._committed = trio.Event()
            self.commit_failures = 0 if ok or self.disk_full else self.commit_failures + 1
            halving = self.disk_full and self._split > 0  # try the smaller batch at once
            if not ok and not halving:
                await trio.sleep(min(2.0, 0.05 * 2 ** max(1, self.commit_failures)))

    async def _commit_round(self) -> bool:
        """Commit one batch. False if the store failed (the batch is kept)."""
        if self._split_deletes and self._deletes:
            await self._commit_deletes()
        if self._split > 0 and len(self.pending) > self._split:
            batch, self.pending = self.pending[: self._split], self.pending[self._split :]
            self.pending_bytes = sum(r.size for r in self.pending)
        else:
            batch, self.pending = self.pending, []
            self.pending_bytes = 0
        spilling = self.behind
        for rec in batch:
            if spilling and not rec.on_disk:
                rec.on_disk = True
        spill, self._spill = self._spill, []
        for rec in spill:
            rec.on_disk = True
        inserts = [r for r in batch if r.on_disk] + spill
        deletes, self._deletes = self._deletes, []
        reserving = self._memory_seq > self._recorded_seq
        last_seq = self._last_seq()
        # A new reservation is fsynced (once per MEMORY_RESERVE memory-mode
        # messages): lost in a power cut, the next start would reuse sequences
        # the hub has seen, and the hub would drop new messages as duplicates.
        sync = reserving or any(
            self.groups.states[r.group].spec.durability == "fsync" for r in inserts
        )
        started = time.perf_counter()
        result: buffer.CommitResult | None = None
        failed = False
        try:
            result = await self._commit(
                inserts, deletes, self._trims(), sync=sync, last_seq=last_seq
            )
        except sqlite3.Error as exc:
            failed = True
            _unplace(inserts)
            return failures.commit_failed(self, exc, batch, spill, deletes)
        finally:
            if result is None and not failed:
                # Cancelled before the worker thread took the batch (a stop):
                # put it back, so the final commit at close writes it.
                _unplace(inserts)
                self._put_back(batch, spill, deletes)
        elapsed = time.perf_counter() - started
        self.commits += 1
        self.commit_seconds += elapsed
        self.commit_latency.observe(elapsed)
        self.bytes_committed += sum(r.size for r in inserts)
        assert isinstance(result, buffer.CommitResult)
        self._spill_stuck = False
        self._after_commit(batch, result, last_seq, deletes)
        return True

    async def _commit_deletes(self) -> None:
        """Confirmed deletes on their own (after a commit failed for lack of
        space): they make room, and must not fail with inserts that do not fit."""
        self._split_deletes = False
        deletes, self._deletes = self._deletes, []
        last_seq = self._last_seq()
        result: buffer.CommitResult | None = None
        try:
            result = await self._commit([], deletes, [], sync=False, last_seq=last_seq)
        except sqlite3.Error as exc:
            self.last_error = str(exc)
        finally:
            if result is None:
                self._deletes[:0] = deletes
        if result is not None:
            self._after_commit([], result, last_seq, deletes)

    def _last_seq(self) -> int:
        """The sequence to record as used: the highest handed out, or past the
        reservation made for memory-mode records (their rows may never exist)."""
        last = self.next_seq - 1
        if self._memory_seq > self._recorded_seq:
            last = max(last, self._memory_seq + MEMORY_RESERVE)
        return last

    async def _commit(
        self,
        inserts: list[Record | Run],
        deletes: list[Record],
        trims: list[Trim],
        *,
        sync: bool,
        last_seq: int,
    ) -> buffer.CommitResult:
        commit = functools.partial(
            buffer.commit, sync=sync, last_seq=last_seq, recorded=self._recorded_seq
        )
        return await self._in_thread(commit, inserts, self._gids, deletes, trims)

    def _put_back(
        self, batch: list[Record | Run], spill: list[Record], deletes: list[Record]
    ) -> None:
        self.pending[:0] = batch
        self.pending_bytes += sum(r.size for r in batch)
        confirming = self._confirming
        self._spill[:0] = [r for r in spill if r.seq not in confirming]
        self._deletes[:0] = deletes

    def _trims(self) -> list[Trim]:
        free, self._free_bytes = self._free_bytes, {}
        disk = REASON_DISK_FULL if self._full_retry else REASON_DISK_FLOOR
        trims = []
        for index, msgs, size, reason in trims_due(self.groups.states, free, disk):
            self._trim_reason[index] = reason
            trims.append(Trim(self._gids[index], msgs, size))
        return trims

    def _after_commit(
        self,
        batch: list[Record | Run],
        result: buffer.CommitResult,
        last_seq: int,
        deletes: list[Record] | tuple[Record, ...] = (),
    ) -> None:
        if result.wrote_last_seq:
            self._recorded_seq = last_seq
        trimmed: dict[int, int] = {}
        confirming = self._confirming
        for (gid, size), seq in zip(result.trimmed, result.trimmed_seqs, strict=True):
            if seq in confirming:
                continue  # confirmed before or during this commit: counted out then
            if self.link_up:
                self._note_dropped_in_flight((seq,))
            index = self._index_of[gid]
            self.groups.states[index].remove(size)
            trimmed[index] = trimmed.get(index, 0) + 1
        for index, n in trimmed.items():
            state = self.groups.states[index]
            reason = self._trim_reason.get(index, "max_bytes")
            state.note_drop(reason, n)
            self._log_drop(state, reason, "dropped", n)
        confirming.difference_update(r.seq for r in deletes)
        if batch:
            self.committed_seq = max(self.committed_seq, last_seq_of(batch[-1]))
            self.acks.publish_acks(batch)
            if self.behind:
                self._spill.extend(r for r in batch if type(r) is Record and not r.on_disk)
            else:
                # The forwarder takes these from memory: a Run's Records are made now.
                self.feed.extend(expand(batch))
                self.feed_bytes += sum(r.size for r in batch)
                if self.feed_bytes > FEED_MAX:
                    self.behind = True
                    self._drop_feed()
        if self.disk_full and (result.deleted or result.trimmed):
            self.disk_full = False  # room again: try the next batch
            self._split = 0
        if batch or result.deleted:
            self.data_ready.set()
            self.data_ready = trio.Event()
        self.last_error = None
        self._full_retry = False
        self.acks.after_commit(self.committed_seq)
        self._release()

    def _release(self) -> None:
        if self.congested and self.pending_bytes <= PENDING_HOLD:
            self.congested = False
            self._room.set()
            self._room = trio.Event()

    async def _housekeeping(self) -> None:
        await housekeeping.run(self)

    async def _expire(self, state: GroupState) -> None:
        """One max_age sweep of *state*'s group (store.housekeeping)."""
        await housekeeping.expire(self, state)

    def _note_dropped_in_flight(self, seqs: Iterable[int]) -> None:
        """Remember dropped sequences the hub may still confirm. Bounded: past
        DROPPED_MEMORY entries the set is emptied (the old ones are long out of
        the window; at worst a group's count ends a little low, by at most a
        window's worth, and is clamped at zero)."""
        dropped = self._dropped_in_flight
        if len(dropped) > DROPPED_MEMORY:
            dropped.clear()
        dropped.update(seqs)

    def _check_disk(self) -> None:
        housekeeping.check_disk(self)

    # ---- monitoring --------------------------------------------------------------

    async def oldest(self) -> dict[str, int | None]:
        """Group name -> publish time (ms since the epoch) of the oldest message
        it holds on disk, or None. Reads the store (in the writer's thread)."""
        out: dict[str, int | None] = {}
        for state in self.groups.states:
            if not state.count or self.conn is None:
                out[state.spec.name] = None
                continue
            out[state.spec.name] = await self._in_thread(buffer.oldest_ts, self._gids[state.index])
        return out

    def stats(self) -> StoreStats:
        return snapshot(self)


_on_disk_of = attrgetter("on_disk")
_size_of = attrgetter("size")
_seq_of = attrgetter("seq")
_group_of = attrgetter("group")


def _one_group(records: list[Record]) -> bool:
    return list(map(_group_of, records)).count(records[0].group) == len(records)


def _seq(record: Record) -> int:
    return record.seq


def _unplace(records: list[Record | Run]) -> None:
    """A commit that wrote nothing: these records have no row (yet)."""
    for rec in records:
        if isinstance(rec, Run):
            rec.places = []
        else:
            rec.batch = 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


__all__ = ["GroupStats", "Store", "StoreStats"]
