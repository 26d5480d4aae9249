"""The store's once-a-second upkeep: the free-disk check, the duplicate window's
expiry and max_age sweeps. Part of the writer (``store.writer.Store``), kept
apart for size: these functions read and update the writer's own state, in its
task, between commits."""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import TYPE_CHECKING

import trio

from edge.log import get_logger
from store import buffer
from store.groups import REASON_MAX_AGE, GroupState

if TYPE_CHECKING:
    from store.writer import Store

log = get_logger("store")

PERIOD = 1.0
EXPIRE_BATCH = 1000  # messages one sweep removes at most (the next goes on)


async def run(store: Store) -> None:
    from store.writer import _now_ms

    while True:
        await trio.sleep(PERIOD)
        check_disk(store)
        store.disk_full = False  # try again: space may have been freed meanwhile
        store._split = max(store._split, 0)  # halving goes on; "none fitted" is retried
        store.acks.window.expire(_now_ms(), max(store._dedup_ms, default=0))
        for state in store.groups.states:
            if state.spec.max_age and state.count:
                await store._expire(state)


async def expire(store: Store, state: GroupState) -> None:
    """Drop what *state*'s group has held longer than its max_age."""
    from store.writer import _now_ms  # tests set the writer's clock

    cutoff = _now_ms() - int(state.spec.max_age * 1000)
    last_seq = store._last_seq()
    recorded = store._recorded_seq
    try:
        seqs: list[int] = []
        wrote: list[bool] = []
        sizes = await store._in_thread(
            functools.partial(buffer.expire, last_seq=last_seq, recorded=recorded, wrote=wrote),
            store._gids[state.index],
            cutoff,
            EXPIRE_BATCH,
            seqs,
        )
    except sqlite3.Error as exc:
        log.error("store_expire_failed", group=state.spec.name, error=str(exc))
        return
    if wrote:
        store._recorded_seq = max(store._recorded_seq, last_seq)
    confirming = store._confirming
    fresh = [(q, size) for q, size in zip(seqs, sizes, strict=True) if q not in confirming]
    if store.link_up:
        store._note_dropped_in_flight([q for q, _ in fresh])
    for _, size in fresh:
        state.remove(size)
    if fresh:
        state.note_drop(REASON_MAX_AGE, len(fresh))
        store._log_drop(state, REASON_MAX_AGE, "dropped", len(fresh))


def check_disk(store: Store) -> None:
    """Compare the free space with min_free_disk; log each change."""
    floor = store.config.min_free_disk
    try:
        st = os.statvfs(store.directory)
    except OSError as exc:
        store.last_error = f"statvfs: {exc}"
        return
    free = st.f_bavail * st.f_frsize
    low = free < floor
    if low != store.low_disk:
        store.low_disk = low
        (log.warning if low else log.info)(
            "store_low_disk" if low else "store_disk_ok", free=free, min_free_disk=floor
        )
