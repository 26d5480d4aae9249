"""What the writer does when a commit fails: a full disk drops the batch by
its groups' policies (after halving it, to keep the oldest that fit), any other
error keeps it for a retry. Part of the writer (``store.writer.Store``), kept
apart for size, like store.housekeeping: it updates the writer's own state, in
its task, right after the failed commit."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import trio

from edge.log import get_logger
from store import buffer
from store.dedup import msg_id_of
from store.groups import REASON_DISK_FULL
from store.window import Record, Run, expand

if TYPE_CHECKING:
    from store.writer import Store

log = get_logger("store")


def commit_failed(
    store: Store,
    exc: sqlite3.Error,
    items: list[Record | Run],
    spill: list[Record],
    deletes: list[Record],
) -> bool:
    """A full disk drops the batch by policy; any other error keeps it for a retry."""
    # Message by message from here (a rare path): Runs become their Records,
    # so that halving, dropping and counting see each message.
    batch: list[Record | Run] = list(expand(items))
    text = str(exc)
    store.last_error = text
    store._deletes[:0] = deletes
    full = "full" in text.lower()
    if not full:
        log.error("store_commit_failed", error=text, batch=len(batch))
        store._put_back(batch, spill, [])
        return False
    store.disk_full = True
    store._split_deletes = True
    log.error("store_disk_full", error=text, batch=len(batch), path=str(store.directory))
    oldest_first = [r for r in batch if store.groups.states[r.group].spec.policy == "drop_oldest"]
    if oldest_first and not store._full_retry:
        # Policy drop_oldest: free as much as the batch needs, then retry it once.
        store._full_retry = True
        for rec in oldest_first:
            store._free_bytes[rec.group] = store._free_bytes.get(rec.group, 0) + rec.size
        store._put_back(batch, spill, [])
        return False
    store._full_retry = False
    if store._split >= 0:
        on_disk = sum(1 for r in batch if r.on_disk)
        if on_disk > 1:
            # Keep what fits: the older half first (drop_newest, reject).
            store._split = max(1, (store._split or on_disk) // 2)
            store._put_back(batch, spill, [])
            return False
        store._split = -1  # not even one fitted
    lost = [r for r in batch if r.on_disk]
    for rec in lost:
        state = store.groups.states[rec.group]
        state.remove(rec.size)
        state.note_drop(REASON_DISK_FULL)
        msg_id = msg_id_of(rec.hdr)
        if msg_id is not None:
            store.acks.window.forget(rec.group, msg_id, rec.seq)  # a retry may store it
        store.acks.fail(rec.reply, "store is full (disk_full)")
        rec.reply = b""
    if lost:
        first = store.groups.states[lost[0].group]
        store._log_drop(first, REASON_DISK_FULL, "dropped", len(lost))
    # Spilled memory-mode records stay in memory (their publishers were told
    # they are held) and are tried again; memory-mode records of the batch
    # that were not to be written go on as if committed, unless the
    # reservation of their sequences was in the transaction that failed:
    # then they are committed again (alone: no row to write), so none goes
    # up before a restart is sure to start past it.
    confirming = store._confirming
    store._spill[:0] = [r for r in spill if r.seq not in confirming]
    if store._spill:
        store._spill_stuck = True
        store.data_ready.set()  # the forwarder may send them now
        store.data_ready = trio.Event()
    unwritten = [r for r in batch if not r.on_disk]
    if unwritten and store._memory_seq > store._recorded_seq:
        store.pending[:0] = unwritten
        store.pending_bytes += sum(r.size for r in unwritten)
        unwritten = []
    store._after_commit(unwritten, buffer.CommitResult(0, [], False), 0)
    store.last_error = text  # _after_commit cleared it
    if lost:
        store.committed_seq = max(store.committed_seq, lost[-1].seq)
        store.acks.after_commit(store.committed_seq)  # their publishers were told
    store._committed.set()
    store._committed = trio.Event()
    return False
