"""kill -9 of leafgate at random moments, during publish and during replay: after
a restart on the same store, every message the store had committed reaches the
hub once.

"Committed" is what the store acknowledged: a publish with a reply subject on a
store-and-forward subject is answered with a PubAck only after its batch is
committed (fsync per batch by default), so the publisher's acks are the set
that must survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path

import nats.errors
import pytest

from hub.tool import main as hub_main
from tests.aio import connect, run
from tests.harness import ServerProcess
from tests.hubs import HubProcess, ThreadedProxy
from tests.storehelp import (
    edge_seqs,
    log_events,
    read_stream,
    start_edge,
    start_js_hub,
    stored_rows,
    wait_store_empty,
)


async def _publish_acked(
    port: int, start: int, acked: dict[bytes, str], stop: asyncio.Event
) -> int:
    """Publish numbered requests (32 in flight) until *stop* or the server dies;
    record each acknowledged one. Returns the next number to use."""
    try:
        nc = await connect(f"nats://127.0.0.1:{port}")
    except Exception:
        return start
    i = start

    async def one(n: int) -> None:
        subject = f"telemetry.dev{n % 4}"
        data = b"m%d" % n
        try:
            reply = await nc.request(subject, data, timeout=3)
        except (TimeoutError, nats.errors.Error, OSError):
            return
        ack = json.loads(reply.data)
        assert "seq" in ack and "error" not in ack, ack
        acked[data] = subject

    try:
        while not stop.is_set() and nc.is_connected:
            batch = range(i, i + 32)
            i += 32
            await asyncio.gather(*(one(n) for n in batch))
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return i


def _ledger_complete(hub: HubProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """The hub-side ledger agrees: one gateway, no gap, no duplicate."""
    code = hub_main(["ledger", "--server", f"nats://127.0.0.1:{hub.client_port}", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert len(report["gateways"]) == 1, report


def _check_hub_holds(msgs: list, acked: dict[bytes, str]) -> None:
    got = [(m.subject, m.data) for m in msgs]
    assert len(set(got)) == len(got), "a message reached the hub twice"
    seqs = edge_seqs(msgs)
    assert len(set(seqs)) == len(seqs), "a gateway sequence reached the hub twice"
    present = {data for _subject, data in got}
    missing = [d for d in acked if d not in present]
    assert not missing, f"{len(missing)} acknowledged messages never reached the hub: {missing[:5]}"
    for subject, data in got:
        if data in acked:
            assert acked[data] == subject


def test_kill_9_during_publish_loses_no_acknowledged_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    rng = random.Random(9)
    acked: dict[bytes, str] = {}
    with ThreadedProxy(hub.leaf_port) as proxy:
        edge = start_edge(tmp_path / "edge", proxy.port, store)
        try:
            n = 0
            for cycle in range(6):
                # Alternate: link up (acks race the hub) and link down (backlog grows).
                if cycle % 2:
                    proxy.cut()
                else:
                    proxy.restore()
                n = run(_publish_until_killed(edge, n, acked, rng.uniform(0.2, 0.8)), timeout=30)
                edge.start()
            proxy.restore()
            run(wait_store_empty(store, timeout=40), timeout=60)
            assert len(acked) > 500
            msgs = run(read_stream(hub, len(acked)), timeout=60)
            _check_hub_holds(msgs, acked)
            _ledger_complete(hub, capsys)
        finally:
            edge.stop()
            hub.stop()


async def _publish_until_killed(
    edge: ServerProcess, start: int, acked: dict[bytes, str], after: float
) -> int:
    stop = asyncio.Event()
    task = asyncio.create_task(_publish_acked(edge.port, start, acked, stop))
    await asyncio.sleep(after)
    edge.kill()
    stop.set()
    return await asyncio.wait_for(task, 10)


def test_kill_9_during_replay_delivers_everything_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    rng = random.Random(11)
    with ThreadedProxy(hub.leaf_port) as proxy:
        proxy.cut()
        edge = start_edge(tmp_path / "edge", proxy.port, store)
        try:
            acked: dict[bytes, str] = {}
            stop = asyncio.Event()

            async def build() -> None:
                async def stopper() -> None:
                    while len(acked) < 6000:
                        await asyncio.sleep(0.05)
                    stop.set()

                await asyncio.gather(_publish_acked(edge.port, 0, acked, stop), stopper())

            run(build(), timeout=60)
            assert len(stored_rows(store)) >= len(acked)
            for _ in range(4):
                proxy.restore()
                run(asyncio.sleep(rng.uniform(0.05, 0.4)))
                edge.kill()
                proxy.cut()
                edge.start()
            proxy.restore()
            run(wait_store_empty(store, timeout=40), timeout=60)
            msgs = run(read_stream(hub, len(acked)), timeout=60)
            _check_hub_holds(msgs, acked)
            assert edge_seqs(msgs) == sorted(edge_seqs(msgs))  # replay kept the order
            _ledger_complete(hub, capsys)
        finally:
            edge.stop()
            hub.stop()


def test_a_damaged_store_is_set_aside_loudly_and_service_goes_on(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    (store / "leafgate.db").write_bytes(b"this is not a database" * 500)
    edge = start_edge(tmp_path / "edge", hub.leaf_port, store)
    try:
        lines = [json.loads(line) for line in log_events(edge, "store_set_aside")]
        assert lines and lines[0]["level"] == "error"
        assert "not a database" in lines[0]["damage"]
        aside = list(store.glob("leafgate.db.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")

        async def scenario() -> None:
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            reply = await e.request("telemetry.after", b"ok", timeout=5)
            assert json.loads(reply.data)["seq"] == 1
            await e.close()
            msgs = await read_stream(hub, 1)
            assert [m.data for m in msgs] == [b"ok"]

        run(scenario())
    finally:
        edge.stop()
        hub.stop()
