"""Store-and-forward against real nats-server hubs: nothing meant for the hub is
lost, duplicated or reordered, whatever happens to the link.

Each test runs a real hub (nats-server 2.9.10, or NATS_SERVER_BIN; JetStream with
the TELEMETRY stream unless said otherwise), a real leafgate with a store, a TCP
proxy between them where the link must be cut, and nats-py clients.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from tests.aio import connect, run, settle, wait_until
from tests.harness import ServerProcess
from tests.hubs import ThreadedProxy, start_hub
from tests.storehelp import (
    edge_seqs,
    log_events,
    publish_many,
    read_stream,
    start_edge,
    start_js_hub,
    store_toml,
    stored_rows,
    stream_count,
    wait_store_empty,
)


def _assert_exactly_once_in_order(msgs: list, sent: list[tuple[str, bytes]]) -> None:
    """The stream holds each sent message once, and in publish order per subject
    (here also overall: one publisher, sequences in order)."""
    got = [(m.subject, m.data) for m in msgs]
    assert len(got) == len(sent), f"{len(got)} in the stream, {len(sent)} sent"
    assert sorted(got) == sorted(sent), "the stream does not hold exactly what was sent"
    per_subject: dict[str, list[bytes]] = defaultdict(list)
    for subject, data in got:
        per_subject[subject].append(data)
    expected: dict[str, list[bytes]] = defaultdict(list)
    for subject, data in sent:
        expected[subject].append(data)
    assert per_subject == expected, "order per subject not kept"
    seqs = edge_seqs(msgs)
    assert len(set(seqs)) == len(seqs), "a gateway sequence appears twice"
    assert seqs == sorted(seqs), "gateway sequences out of order in the stream"


def test_backlog_built_while_the_link_is_down_arrives_once_in_order(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    with ThreadedProxy(hub.leaf_port) as proxy:
        proxy.cut()
        edge = start_edge(tmp_path / "edge", proxy.port, store)
        try:

            async def scenario() -> None:
                e = await connect(f"nats://127.0.0.1:{edge.port}")
                sent = await publish_many(e, 3000)
                await wait_until(lambda: len(stored_rows(store)) == 3000, 10, "3000 stored")
                assert await stream_count(hub) == 0
                proxy.restore()
                msgs = await read_stream(hub, 3000)
                _assert_exactly_once_in_order(msgs, sent)
                assert edge_seqs(msgs) == list(range(1, 3001))
                await wait_store_empty(store)
                await e.close()

            run(scenario(), timeout=60)
        finally:
            edge.stop()
            hub.stop()


def test_random_cuts_during_a_long_publish_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    rng = random.Random(4)
    with ThreadedProxy(hub.leaf_port) as proxy:
        edge = start_edge(tmp_path / "edge", proxy.port, store)
        try:

            async def scenario() -> None:
                e = await connect(f"nats://127.0.0.1:{edge.port}")
                sent: list[tuple[str, bytes]] = []
                cuts = 0

                async def cutter() -> None:
                    nonlocal cuts
                    while True:
                        await asyncio.sleep(rng.uniform(0.2, 0.6))
                        proxy.cut()
                        cuts += 1
                        await asyncio.sleep(rng.uniform(0.02, 0.3))
                        proxy.restore()

                task = asyncio.create_task(cutter())
                deadline = time.monotonic() + 6.0
                i = 0
                while time.monotonic() < deadline:
                    sent += await publish_many(e, 200, start=i)
                    i += 200
                    await asyncio.sleep(0.01)
                task.cancel()
                proxy.restore()
                assert cuts >= 6
                # The link really went through the proxy each time (no way around it).
                assert proxy.accepted >= 4, proxy.accepted
                assert len(log_events(edge, "uplink_up")) >= 4
                msgs = await read_stream(hub, len(sent), timeout=60)
                _assert_exactly_once_in_order(msgs, sent)
                await wait_store_empty(store, timeout=30)
                await e.close()

            run(scenario(), timeout=120)
        finally:
            edge.stop()
            hub.stop()


def test_hub_without_jetstream_confirms_by_ping_pong(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub", jetstream=False)
    store = tmp_path / "store"
    with ThreadedProxy(hub.leaf_port) as proxy:
        edge = start_edge(tmp_path / "edge", proxy.port, store)
        try:

            async def scenario() -> None:
                h = await connect(f"nats://127.0.0.1:{hub.client_port}")
                got: list[Msg] = []

                async def on_msg(msg: Msg) -> None:
                    got.append(msg)

                await h.subscribe("telemetry.>", cb=on_msg)
                await settle(h)
                e = await connect(f"nats://127.0.0.1:{edge.port}")
                await wait_until(lambda: bool(log_events(edge, "forward_started")), 10, "link up")
                sent = await publish_many(e, 500)
                await wait_until(lambda: len(got) == 500, 15, "500 at the hub subscriber")
                await wait_store_empty(store)
                # With the link down the store keeps them; they arrive after it returns.
                proxy.cut()
                sent += await publish_many(e, 500, start=500)
                await wait_until(lambda: len(stored_rows(store)) == 500, 10, "500 held")
                proxy.restore()
                await wait_until(lambda: len(got) == 1000, 20, "1000 at the hub subscriber")
                await wait_store_empty(store)
                assert [(m.subject, m.data) for m in got] == sent
                assert all(m.headers and "Nats-Msg-Id" in m.headers for m in got)
                assert log_events(edge, "forward_no_hub_stream") == []  # no JetStream at all
                await e.close()
                await h.close()

            run(scenario(), timeout=60)
        finally:
            edge.stop()
            hub.stop()


def test_hub_with_jetstream_but_no_stream_falls_back_and_says_so(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path, stream=False)
    store = tmp_path / "store"
    edge = start_edge(tmp_path / "edge", hub.leaf_port, store)
    try:

        async def scenario() -> None:
            h = await connect(f"nats://127.0.0.1:{hub.client_port}")
            got: list[Msg] = []

            async def on_msg(msg: Msg) -> None:
                got.append(msg)

            await h.subscribe("telemetry.>", cb=on_msg)
            await settle(h)
            await wait_until(
                lambda: bool(log_events(edge, "forward_no_hub_stream")), 10, "the fallback warning"
            )
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            await publish_many(e, 100)
            await wait_until(lambda: len(got) == 100, 10, "100 at the hub subscriber")
            await wait_store_empty(store)
            await e.close()
            await h.close()

        run(scenario(), timeout=40)
    finally:
        edge.stop()
        hub.stop()


def test_headers_are_kept_and_the_publisher_gets_a_puback(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    edge = start_edge(tmp_path / "edge", hub.leaf_port, store)
    try:

        async def scenario() -> None:
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            reply = await e.request(
                "telemetry.hdr", b"x", timeout=5, headers={"traceparent": "00-abc-def-01"}
            )
            assert reply.data == b'{"stream":"default","seq":1}'
            js = e.jetstream()
            ack = await js.publish("telemetry.js", b"y")  # nats-py's JetStream publish works
            assert (ack.stream, ack.seq) == ("default", 2)
            msgs = await read_stream(hub, 2)
            assert [m.subject for m in msgs] == ["telemetry.hdr", "telemetry.js"]
            h = await connect(f"nats://127.0.0.1:{hub.client_port}")
            stored = await h.jetstream().get_msg("TELEMETRY", msgs[0].stream_seq)
            assert stored.headers is not None
            assert stored.headers["traceparent"] == "00-abc-def-01"
            assert stored.headers["Nats-Msg-Id"].endswith(":1")
            await e.close()
            await h.close()

        run(scenario(), timeout=40)
    finally:
        edge.stop()
        hub.stop()


def test_identity_survives_a_restart_and_sequences_continue(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    edge = start_edge(tmp_path / "edge", hub.leaf_port, store)
    try:

        async def publish(n: int, start: int) -> list[tuple[str, bytes]]:
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            sent = await publish_many(e, n, start=start)
            await e.close()
            return sent

        sent = run(publish(50, 0))
        run(wait_store_empty(store))
        first_info = run(_server_info(edge.port))
        edge.restart()
        sent += run(publish(50, 50))
        msgs = run(read_stream(hub, 100))
        _assert_exactly_once_in_order(msgs, sent)
        assert edge_seqs(msgs) == list(range(1, 101))  # a drained store does not reuse 1..50
        assert len({m.msg_id.rpartition(":")[0] for m in msgs if m.msg_id}) == 1
        assert run(_server_info(edge.port))["server_id"] == first_info["server_id"]
    finally:
        edge.stop()
        hub.stop()


async def _server_info(port: int) -> dict:
    nc = await connect(f"nats://127.0.0.1:{port}")
    info = dict(nc._server_info)
    await nc.close()
    return info


def test_memory_durability_spills_when_the_link_is_down(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    toml = store_toml(store, durability="memory")
    with ThreadedProxy(hub.leaf_port) as proxy:
        edge = start_edge(tmp_path / "edge", proxy.port, store, toml=toml)
        try:

            async def scenario() -> None:
                e = await connect(f"nats://127.0.0.1:{edge.port}")
                await wait_until(lambda: bool(log_events(edge, "forward_started")), 10, "link up")
                sent = await publish_many(e, 300)
                await read_stream(hub, 300)
                assert stored_rows(store) == []  # link up: nothing written
                proxy.cut()
                sent += await publish_many(e, 300, start=300)
                await wait_until(lambda: len(stored_rows(store)) == 300, 10, "spilled")
                proxy.restore()
                msgs = await read_stream(hub, 600)
                _assert_exactly_once_in_order(msgs, sent)
                await wait_store_empty(store)
                await e.close()

            run(scenario(), timeout=60)
        finally:
            edge.stop()
            hub.stop()


def test_graceful_stop_keeps_an_unsent_backlog(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    toml = store_toml(store, durability="memory")
    with ThreadedProxy(hub.leaf_port) as proxy:
        proxy.cut()
        edge = start_edge(tmp_path / "edge", proxy.port, store, toml=toml)
        try:
            sent = run(_publish_to(edge.port, 200))
            assert edge.stop() == 0
            assert len(stored_rows(store)) == 200  # memory mode, but stopped cleanly
            proxy.restore()
            edge.start()
            msgs = run(read_stream(hub, 200))
            _assert_exactly_once_in_order(msgs, sent)
            sent += run(_publish_to(edge.port, 10, start=200))
            msgs = run(read_stream(hub, 210))
            assert edge_seqs(msgs) == list(range(1, 211))  # no gap after a clean stop
        finally:
            edge.stop()
            hub.stop()


async def _publish_to(port: int, n: int, start: int = 0) -> list[tuple[str, bytes]]:
    e = await connect(f"nats://127.0.0.1:{port}")
    sent = await publish_many(e, n, start=start)
    await e.close()
    return sent


def test_a_graceful_stop_waits_for_the_hub_to_confirm_what_is_in_flight(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    edge = start_edge(tmp_path / "edge", hub.leaf_port, store)
    try:
        run(_wait_forwarding(edge))
        sent = run(_publish_to(edge.port, 20_000))
        # Stop while the backlog is going up: some at the hub, some in flight.
        run(wait_until(lambda: run_count(hub) >= 500, 20, "the first messages at the hub"))
        assert edge.stop() == 0
        left = {data for _seq, _subject, data in stored_rows(store)}
        msgs = run(read_stream(hub, len(sent) - len(left)))
        at_hub = {m.data for m in msgs}
        # Whatever the hub holds was confirmed before the stop: nothing to send again.
        assert not (left & at_hub), f"{len(left & at_hub)} messages both at the hub and stored"
        edge.start()
        msgs = run(read_stream(hub, len(sent)))
        _assert_exactly_once_in_order(msgs, sent)
    finally:
        edge.stop()
        hub.stop()


def run_count(hub: Any) -> int:
    """The hub stream's message count, from a thread of its own (callable inside
    a running asyncio scenario)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run, stream_count(hub)).result(timeout=10)


async def _wait_forwarding(edge: ServerProcess) -> None:
    await wait_until(lambda: bool(log_events(edge, "forward_started")), 10, "link up")


def test_a_stop_right_after_a_burst_keeps_every_accepted_message(tmp_path: Path) -> None:
    """SIGTERM while the writer still holds a batch: the batch is committed at
    close, not lost with the cancelled commit loop."""
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    edge = start_edge(tmp_path / "edge", hub.leaf_port, store)
    try:
        run(_wait_forwarding(edge))
        sent = run(_publish_to(edge.port, 20_000))  # flushed: the server has them all
        assert edge.stop() == 0
        at_hub = run(stream_count(hub))
        assert len(stored_rows(store)) + at_hub >= len(sent)
        edge.start()
        msgs = run(read_stream(hub, len(sent)))
        _assert_exactly_once_in_order(msgs, sent)
    finally:
        edge.stop()
        hub.stop()
