"""Power cuts against a server whose store is on powerfs: the rounds, the publisher
and the verdict, shared by tests/test_powerloss.py (a short run) and ``python -m
edge.bench.powercut`` (the long run, and the same fault against nats-server).

A round: the server runs with its store on the powerfs mount; a publisher keeps 32
acknowledged publishes in flight (nats-py ``js.publish``) and records every PubAck
(with the time the publish was sent and the time its ack arrived); after a random
time the power is cut (:func:`tests.powerfs.client.power_cut`: SIGSTOP, drop every
unsynced write, kill -9, power on) and the server is started again on the same
store.  After the last round the backlog drains to the hub and :func:`verdict`
compares what the hub stream holds with what was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors

from hub.ledger import StreamLedger, parse_msg_id
from tests.aio import connect, run
from tests.harness import ServerProcess
from tests.hubs import HubProcess, ThreadedProxy
from tests.powerfs.client import PowerFS, power_cut
from tests.storehelp import StoredMsg, add_stream, log_events, read_stream, start_edge
from tests.storehelp import stored_rows as stored_rows
from tests.storehelp import wait_store_empty as wait_store_empty

MODES = ("fsync", "commit", "memory")
INFLIGHT = 32


def subject_for(mode: str, n: int) -> str:
    return f"telemetry.{mode}.dev{n % 4}"


def powerloss_toml(store_dir: Path) -> str:
    """leafgate's [store] on the mount: one forward group per durability mode."""
    lines = ["[store]", f'dir = "{store_dir}"', 'gateway_id = "powercut"']
    for mode in MODES:
        lines += [
            "[[store.forward]]",
            f'name = "{mode}"',
            f'subjects = ["telemetry.{mode}.>"]',
            f'durability = "{mode}"',
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Acked:
    mode: str
    subject: str
    data: bytes
    seq: int  # the PubAck's seq (leafgate: the gateway sequence)
    round: int
    sent_at: float  # the publisher's clock (time.monotonic)
    acked_at: float


@dataclass
class Log:
    """Everything the publisher saw, across rounds."""

    acked: list[Acked] = field(default_factory=list)
    sent: set[bytes] = field(default_factory=set)
    cuts: list[dict[str, Any]] = field(default_factory=list)
    next_n: int = 0


async def publish_round(
    port: int, round_no: int, log: Log, stop: asyncio.Event, modes: tuple[str, ...]
) -> None:
    """Acknowledged publishes, ``INFLIGHT`` at a time, until ``stop`` or the server
    goes away; each PubAck is recorded in ``log``."""
    try:
        nc = await connect(f"nats://127.0.0.1:{port}")
    except (nats.errors.Error, OSError, TimeoutError):
        return
    js = nc.jetstream(timeout=3)
    loop = asyncio.get_running_loop()

    async def one(n: int) -> None:
        mode = modes[n % len(modes)]
        subject = subject_for(mode, n)
        data = b"%s-%d" % (mode.encode(), n)
        log.sent.add(data)
        sent_at = loop.time()
        try:
            ack = await js.publish(subject, data, timeout=3)
        except nats.js.errors.APIError:
            raise  # a refused message would be a failure of its own
        except (nats.errors.Error, OSError, TimeoutError):
            return  # the cut: no ack, so no promise
        log.acked.append(Acked(mode, subject, data, ack.seq, round_no, sent_at, loop.time()))

    try:
        while not stop.is_set() and nc.is_connected:
            batch = range(log.next_n, log.next_n + INFLIGHT)
            log.next_n += INFLIGHT
            await asyncio.gather(*(one(n) for n in batch))
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def publish_then_cut(
    server: ServerProcess,
    fs: PowerFS,
    round_no: int,
    log: Log,
    after: float,
    keep: float,
    seed: int,
    modes: tuple[str, ...],
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(publish_round(server.port, round_no, log, stop, modes))
    await asyncio.sleep(after)
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()
    cut = power_cut(server.proc, fs, keep=keep, seed=seed)
    log.cuts.append(cut | {"round": round_no, "after": after, "keep": keep})
    stop.set()
    await asyncio.wait_for(task, 15)


@dataclass
class LeafgateRig:
    """A JetStream hub, a proxy on the leafnode link, powerfs, leafgate on it."""

    hub: HubProcess
    proxy: ThreadedProxy
    fs: PowerFS
    edge: ServerProcess
    store: Path


def start_rig(
    tmp_path: Path, hub: HubProcess, proxy: ThreadedProxy, fs: PowerFS, duplicate_window: float
) -> LeafgateRig:
    run(add_stream(hub, duplicate_window=duplicate_window))
    store = fs.mount / "store"
    store.mkdir(exist_ok=True)
    edge = start_edge(tmp_path / "edge", proxy.port, store, toml=powerloss_toml(store))
    return LeafgateRig(hub, proxy, fs, edge, store)


def leafgate_rounds(
    rig: LeafgateRig,
    rounds: int,
    rng: random.Random,
    log: Log,
    *,
    min_after: float = 0.2,
    max_after: float = 1.0,
    on_round: Callable[[int, Log], None] | None = None,
) -> None:
    """``rounds`` power cuts of leafgate at random moments; leafgate is running again
    on the same store afterwards.  The link to the hub is up in two rounds of three
    (messages are forwarded, confirmed and deleted while others are stored) and down
    in the third (the backlog grows).  One round in three publishes no fsync-mode
    message, so that commit-mode messages wait for a checkpoint's fsync and a cut
    can take them (the window store/README.md documents)."""
    for round_no in range(rounds):
        if round_no % 3 == 2:
            rig.proxy.cut()
        else:
            rig.proxy.restore()
        after = rng.uniform(min_after, max_after)
        keep = rng.choice((0.0, 0.0, 0.3))
        seed = rng.randrange(2**31)
        modes = rng.choice((MODES, MODES, ("commit", "memory")))
        run(publish_then_cut(rig.edge, rig.fs, round_no, log, after, keep, seed, modes), 60)
        rig.edge.start()
        if on_round is not None:
            on_round(round_no, log)


def drain(rig: LeafgateRig, log: Log, timeout: float = 90.0) -> list[StoredMsg]:
    """Link up, wait until the store is empty; everything on the hub stream."""
    rig.proxy.restore()
    run(wait_store_empty(rig.store, timeout=timeout), timeout + 10)
    expect = len({a.data for a in log.acked if a.mode == "fsync"})
    return run(read_stream(rig.hub, expect, timeout=timeout), timeout + 30)


def integrity(db_path: Path) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    finally:
        conn.close()


def set_aside_events(edge: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_events(edge, "store_set_aside")]


# ---------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    acked: dict[str, int]  # per mode
    lost: dict[str, list[Acked]]  # acknowledged, never on the hub
    hub_messages: int
    duplicate_payloads: list[bytes]  # on the hub more than once
    duplicate_ids: int  # the ledger's count of Nats-Msg-Ids seen again
    foreign: list[bytes]  # on the hub, never published
    wrong_seq: list[Acked]  # on the hub under another Nats-Msg-Id than its PubAck said
    commit_outside_window: list[Acked]  # commit mode, lost though a later fsync covered it

    def lost_count(self, mode: str) -> int:
        return len(self.lost.get(mode, []))

    def summary(self) -> dict[str, Any]:
        return {
            "acked": self.acked,
            "lost": {mode: len(v) for mode, v in self.lost.items()},
            "hub_messages": self.hub_messages,
            "duplicate_payloads": len(self.duplicate_payloads),
            "duplicate_ids": self.duplicate_ids,
            "foreign": len(self.foreign),
            "wrong_seq": len(self.wrong_seq),
            "commit_outside_window": len(self.commit_outside_window),
        }


def verdict(log: Log, hub_msgs: list[StoredMsg]) -> Verdict:
    counts = Counter(m.data for m in hub_msgs)
    ledger = StreamLedger()
    seq_of: dict[bytes, int] = {}
    for m in hub_msgs:
        ledger.add_msg_id(m.msg_id)
        parsed = parse_msg_id(m.msg_id)
        if parsed is not None:
            seq_of[m.data] = parsed[1]
    acked_modes = Counter(a.mode for a in log.acked)
    lost: dict[str, list[Acked]] = {mode: [] for mode in acked_modes}
    wrong_seq = []
    for a in log.acked:
        if a.data not in counts:
            lost[a.mode].append(a)
        elif a.data in seq_of and seq_of[a.data] != a.seq:
            wrong_seq.append(a)
    return Verdict(
        acked=dict(acked_modes),
        lost=lost,
        hub_messages=len(hub_msgs),
        duplicate_payloads=[d for d, c in counts.items() if c > 1],
        duplicate_ids=sum(g.duplicates for g in ledger.gateways.values()),
        foreign=[d for d in counts if d not in log.sent],
        wrong_seq=wrong_seq,
        commit_outside_window=_commit_outside_window(log, lost.get("commit", [])),
    )


def _commit_outside_window(log: Log, lost_commit: list[Acked]) -> list[Acked]:
    """Lost commit-mode messages that the documented window does not excuse.

    store/README.md: a `commit` message may be lost in a power cut if no fsync
    happened after its commit; "the WAL is synced ... by any later `fsync`-mode
    commit".  An fsync-mode message whose publish was *sent* after a commit-mode
    message's ack *arrived* was committed after it, and its acknowledgement means
    its fsync (which covers the whole WAL) completed: the commit-mode message must
    have survived that round's cut."""
    latest_fsync_sent: dict[int, float] = {}
    for a in log.acked:
        if a.mode == "fsync":
            latest_fsync_sent[a.round] = max(latest_fsync_sent.get(a.round, 0.0), a.sent_at)
    return [c for c in lost_commit if latest_fsync_sent.get(c.round, 0.0) > c.acked_at]
