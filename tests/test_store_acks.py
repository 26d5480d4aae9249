"""Publisher acknowledgements (issue 8): Nats-Msg-Id deduplication and durable flush.

Pure parts (store.dedup) byte by byte and with Hypothesis; the behaviour with an
in-process server and raw clients (where the test can hold the writer to show a
PONG really waits for the commit); nats-py's JetStream publish against a real hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from edge.config import ForwardGroup, ServerConfig, StoreConfig
from edge.server import open_server
from store.dedup import DuplicateWindow, msg_id_of
from tests.aio import connect, run
from tests.harness import RawClient
from tests.storehelp import read_stream, start_edge, start_js_hub

CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'


# ---- pure ------------------------------------------------------------------------


def test_msg_id_of_reads_the_header_without_case() -> None:
    assert msg_id_of(b"NATS/1.0\r\nNats-Msg-Id: abc\r\n\r\n") == b"abc"
    assert msg_id_of(b"NATS/1.0\r\nA: 1\r\nnats-msg-id:  x-1 \r\nB: 2\r\n\r\n") == b"x-1"
    assert msg_id_of(b"NATS/1.0\r\nNats-Msg-Id:\r\n\r\n") is None  # empty: no id
    assert msg_id_of(b"NATS/1.0\r\nX-Nats-Msg-Id: no\r\n\r\n") is None
    assert msg_id_of(b"NATS/1.0\r\n\r\n") is None
    assert msg_id_of(None) is None


def test_window_remembers_within_the_window_only() -> None:
    w = DuplicateWindow()
    w.add(0, b"a", 7, now_ms=1000)
    assert w.check(0, b"a", 1500, window_ms=1000) == 7
    assert w.check(1, b"a", 1500, window_ms=1000) == 0  # ids are per group
    assert w.check(0, b"a", 2000, window_ms=1000) == 0  # expired exactly at the window
    assert len(w) == 0
    w.add(0, b"b", 8, 3000)
    w.forget(0, b"b", 9)  # another copy's sequence: kept
    assert w.check(0, b"b", 3001, 1000) == 8
    w.forget(0, b"b", 8)
    assert w.check(0, b"b", 3001, 1000) == 0


def test_window_is_bounded_oldest_first() -> None:
    w = DuplicateWindow(max_ids=3)
    for i in range(5):
        w.add(0, b"%d" % i, i + 1, 100)
    assert len(w) == 3 and w.forgotten == 2
    assert w.check(0, b"0", 101, 1000) == 0
    assert w.check(0, b"4", 101, 1000) == 5


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50)), max_size=60))
def test_expire_keeps_exactly_the_young_ids(events: list[tuple[int, int]]) -> None:
    w = DuplicateWindow()
    now = 0
    added: dict[bytes, int] = {}
    for key, step in events:
        now += step
        w.add(0, b"%d" % key, 1, now)
        added[b"%d" % key] = now
    w.expire(now, 100)
    for key, at in added.items():
        assert (w.check(0, key, now, 100) != 0) == (now - at < 100)


# ---- in-process server --------------------------------------------------------------


def _config(tmp_path: Path, **group: object) -> ServerConfig:
    forward = ForwardGroup(subjects=("t.>",), **group)  # type: ignore[arg-type]
    return ServerConfig(port=0, store=StoreConfig(dir=str(tmp_path / "store"), groups=(forward,)))


async def _client(port: int) -> RawClient:
    return await RawClient.connected(port, CONNECT)


async def test_pong_waits_for_the_commit_with_durable_flush(tmp_path: Path) -> None:
    async with open_server(_config(tmp_path, durable_flush=True)) as server:
        store = server.store
        assert store is not None
        pub = await _client(server.port)
        # Hold the one writer: nothing can be committed until it is released.
        await store._limiter.acquire()
        try:
            await pub.send(b"".join(b"PUB t.x 1\r\n%d\r\n" % (i % 10) for i in range(50)))
            await pub.send(b"PING\r\n")
            with trio.move_on_after(0.5) as waited:
                await pub.read_frame()
            assert waited.cancelled_caught, "PONG came before the messages were committed"
        finally:
            store._limiter.release()
        frame = await pub.read_frame(timeout=5)
        assert frame.op == "PONG"
        assert store.committed_seq >= 50
        # Nothing published since: the next PING is answered at once.
        await pub.send(b"PING\r\n")
        assert (await pub.read_frame(timeout=2)).op == "PONG"


async def test_without_durable_flush_pong_does_not_wait(tmp_path: Path) -> None:
    async with open_server(_config(tmp_path)) as server:
        store = server.store
        assert store is not None
        pub = await _client(server.port)
        await store._limiter.acquire()
        try:
            await pub.send(b"PUB t.x 1\r\n1\r\nPING\r\n")
            assert (await pub.read_frame(timeout=2)).op == "PONG"
            assert store.committed_seq == 0
        finally:
            store._limiter.release()


async def test_pongs_stay_in_ping_order(tmp_path: Path) -> None:
    """A PING after a held one must not be answered first: clients match
    PONGs to PINGs by order."""
    async with open_server(_config(tmp_path, durable_flush=True)) as server:
        store = server.store
        assert store is not None
        pub = await _client(server.port)
        await pub.send(b"SUB me 1\r\n")
        await store._limiter.acquire()
        try:
            await pub.send(b"PUB t.x 1\r\n1\r\nPING\r\nPUB me 2\r\nok\r\nPING\r\n")
            frame = await pub.read_frame(timeout=2)
            assert frame.op == "MSG"  # the plain message is delivered meanwhile
            with trio.move_on_after(0.3) as waited:
                await pub.read_frame()
            assert waited.cancelled_caught
        finally:
            store._limiter.release()
        assert (await pub.read_frame(timeout=5)).op == "PONG"
        assert (await pub.read_frame(timeout=5)).op == "PONG"


async def _acks(client: RawClient, n: int) -> list[dict[str, object]]:
    out = []
    for _ in range(n):
        frame = await client.read_frame(timeout=5)
        assert frame.op == "MSG", frame
        out.append(json.loads(frame.payload))
    return out


def _hpub(subject: bytes, reply: bytes, msg_id: bytes, payload: bytes) -> bytes:
    hdr = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id + b"\r\n\r\n"
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
        subject,
        reply,
        len(hdr),
        len(hdr) + len(payload),
        hdr,
        payload,
    )


async def test_repeated_msg_id_is_stored_once_and_acked_as_duplicate(tmp_path: Path) -> None:
    async with open_server(_config(tmp_path)) as server:
        store = server.store
        assert store is not None
        pub = await _client(server.port)
        await pub.send(b"SUB ack.* 1\r\n")
        await pub.send(_hpub(b"t.a", b"ack.1", b"m-1", b"first"))
        await pub.send(_hpub(b"t.a", b"ack.2", b"m-1", b"again"))
        await pub.send(_hpub(b"t.a", b"ack.3", b"m-2", b"other"))
        acks = await _acks(pub, 3)
        by_order = sorted(acks, key=lambda a: (a["seq"], "duplicate" in a))
        assert by_order == [
            {"stream": "default", "seq": 1},
            {"stream": "default", "seq": 1, "duplicate": True},
            {"stream": "default", "seq": 2},
        ]
        group = store.groups.states[0]
        assert (group.count, group.duplicates) == (2, 1)


async def test_duplicate_ack_waits_for_the_first_copy_commit(tmp_path: Path) -> None:
    async with open_server(_config(tmp_path)) as server:
        store = server.store
        assert store is not None
        pub = await _client(server.port)
        await pub.send(b"SUB ack.* 1\r\n")
        await pub.ping()
        await store._limiter.acquire()
        try:
            await pub.send(_hpub(b"t.a", b"ack.1", b"m-1", b"x"))
            await pub.send(_hpub(b"t.a", b"ack.2", b"m-1", b"x"))
            with trio.move_on_after(0.3) as waited:
                await pub.read_frame()
            assert waited.cancelled_caught, "an ack went out before the commit"
        finally:
            store._limiter.release()
        acks = await _acks(pub, 2)
        assert sorted("duplicate" in a for a in acks) == [False, True]


async def test_zero_window_turns_deduplication_off(tmp_path: Path) -> None:
    async with open_server(_config(tmp_path, duplicate_window=0.0)) as server:
        pub = await _client(server.port)
        await pub.send(b"SUB ack.* 1\r\n")
        await pub.send(_hpub(b"t.a", b"ack.1", b"m-1", b"x"))
        await pub.send(_hpub(b"t.a", b"ack.2", b"m-1", b"x"))
        acks = await _acks(pub, 2)
        assert sorted(int(a["seq"]) for a in acks) == [1, 2]  # type: ignore[call-overload]


# ---- nats-py against a real hub ----------------------------------------------------


def test_natspy_js_publish_with_msg_id_reaches_the_hub_once(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    edge = start_edge(tmp_path / "edge", hub.leaf_port, tmp_path / "store")
    try:

        async def scenario() -> None:
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            js = e.jetstream()
            first = await js.publish("telemetry.d", b"1", headers={"Nats-Msg-Id": "reading-1"})
            again = await js.publish("telemetry.d", b"1", headers={"Nats-Msg-Id": "reading-1"})
            other = await js.publish("telemetry.d", b"2", headers={"Nats-Msg-Id": "reading-2"})
            assert (first.seq, bool(first.duplicate)) == (1, False)
            assert (again.seq, again.duplicate) == (1, True)
            assert (other.seq, bool(other.duplicate)) == (2, False)
            await e.flush()
            msgs = await read_stream(hub, 2)
            assert [m.data for m in msgs] == [b"1", b"2"]
            await e.close()

        run(scenario(), timeout=40)
    finally:
        edge.stop()
        hub.stop()


async def test_a_failing_store_answers_with_an_error_not_silence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits that keep failing (an I/O error): what is pending is kept and
    acked once the store works again; new publishes meanwhile are refused
    with a JetStream-style error reply."""
    import sqlite3

    from store import buffer

    real_commit = buffer.commit

    def broken(*args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("disk I/O error")

    async with open_server(_config(tmp_path)) as server:
        store = server.store
        assert store is not None
        pub = await _client(server.port)
        await pub.send(b"SUB ack.* 1\r\n")
        await pub.ping()
        monkeypatch.setattr(buffer, "commit", broken)
        await pub.send(b"PUB t.a ack.1 1\r\nA\r\n")
        with trio.fail_after(10):
            while store.commit_failures < 3:
                await trio.sleep(0.02)
        await pub.send(b"PUB t.a ack.2 1\r\nB\r\n")
        frame = await pub.read_frame(timeout=5)
        assert frame.args[0] == b"ack.2"
        error = json.loads(frame.payload)["error"]
        assert error["code"] == 503 and "store unavailable (disk I/O error)" in error["description"]
        monkeypatch.setattr(buffer, "commit", real_commit)
        frame = await pub.read_frame(timeout=10)
        assert (frame.args[0], json.loads(frame.payload)) == (
            b"ack.1",
            {"stream": "default", "seq": 1},
        )
        await pub.send(b"PUB t.a ack.3 1\r\nC\r\n")
        frame = await pub.read_frame(timeout=5)
        assert json.loads(frame.payload)["seq"] == 2
        assert store.groups.states[0].rejected == 1
