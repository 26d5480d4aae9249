"""The real nats-py client against a leafgate subprocess.

nats-py is asyncio-based, so these are plain synchronous tests that run one asyncio
scenario each (``run(...)`` bounds it with a timeout); the pytest-trio event loop is
not involved.  Every wait inside a scenario is bounded as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from tests.aio import connect, errors_of, run, settle, take, wait_until
from tests.conftest import ServerFactory
from tests.harness import Config, ServerProcess


async def no_more(sub: Any, wait: float = 0.2) -> None:
    """Assert that nothing else arrives on ``sub`` within ``wait`` seconds."""
    try:
        extra = await sub.next_msg(timeout=wait)
    except nats.errors.TimeoutError:
        return
    raise AssertionError(f"unexpected message on {extra.subject}: {extra.data!r}")


# ---------------------------------------------------------------------------


def test_connect_and_server_info(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        nc = await connect(leafgate.url, name="natspy-test")
        try:
            assert nc.is_connected
            info = nc._server_info
            assert info["max_payload"] == 1048576
            assert info["headers"] is True
            assert info["proto"] == 1
            assert nc.max_payload == 1048576
            assert isinstance(info["client_id"], int)
            await nc.flush(timeout=2)
            rtt = await nc.rtt()
            assert 0 <= rtt < 1
        finally:
            await nc.close()
        assert nc.is_closed

    run(scenario())


def test_pubsub_wildcards(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        sub_nc = await connect(leafgate.url)
        pub_nc = await connect(leafgate.url)
        try:
            patterns = ["a.*", "a.>", "a.b.c", "*.b.*", ">", "a.*.c.>"]
            subs = {p: await sub_nc.subscribe(p) for p in patterns}
            await settle(sub_nc)
            published = ["a.b", "a.b.c", "a.x.y.z", "x.b.y", "a.b.c.d", "q"]
            for subject in published:
                await pub_nc.publish(subject, subject.encode())
            await settle(pub_nc)
            expected = {
                "a.*": ["a.b"],
                "a.>": ["a.b", "a.b.c", "a.x.y.z", "a.b.c.d"],
                "a.b.c": ["a.b.c"],
                "*.b.*": ["a.b.c", "x.b.y"],
                ">": published,
                "a.*.c.>": ["a.b.c.d"],
            }
            got = {p: await take(sub, len(expected[p])) for p, sub in subs.items()}
            assert {p: [m.subject for m in msgs] for p, msgs in got.items()} == expected
            await asyncio.gather(*(no_more(sub) for sub in subs.values()))
            assert all(m.data == m.subject.encode() for msgs in got.values() for m in msgs)
        finally:
            await sub_nc.close()
            await pub_nc.close()

    run(scenario())


def test_echo_and_no_echo(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        echo = await connect(leafgate.url)
        quiet = await connect(leafgate.url, no_echo=True)
        try:
            s1 = await echo.subscribe("e")
            s2 = await quiet.subscribe("e")
            await settle(echo)
            await settle(quiet)
            await echo.publish("e", b"from-echo")
            await quiet.publish("e", b"from-quiet")
            await settle(echo)
            await settle(quiet)
            assert sorted(m.data for m in await take(s1, 2)) == [b"from-echo", b"from-quiet"]
            assert [m.data for m in await take(s2, 1)] == [b"from-echo"]
            await asyncio.gather(no_more(s1), no_more(s2))
        finally:
            await echo.close()
            await quiet.close()

    run(scenario())


def test_queue_group_distribution(leafgate: ServerProcess) -> None:
    n = 90

    async def scenario() -> None:
        members = [await connect(leafgate.url) for _ in range(3)]
        pub = await connect(leafgate.url)
        counts: Counter[int] = Counter()
        seen: list[bytes] = []
        try:
            for i, nc in enumerate(members):

                async def cb(msg: Msg, i: int = i) -> None:
                    counts[i] += 1
                    seen.append(msg.data)

                await nc.subscribe("jobs", queue="workers", cb=cb)
                await settle(nc)
            for k in range(n):
                await pub.publish("jobs", str(k).encode())
            await settle(pub)
            await wait_until(lambda: sum(counts.values()) >= n, what="all queue messages")
            await asyncio.sleep(0.2)  # no duplicates arriving late
            assert sum(counts.values()) == n, counts
            assert sorted(seen, key=int) == [str(k).encode() for k in range(n)]
            assert set(counts) == {0, 1, 2}, f"not every member was used: {counts}"
        finally:
            for nc in [*members, pub]:
                await nc.close()

    run(scenario())


def test_request_reply(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        svc = await connect(leafgate.url)
        cli = await connect(leafgate.url)
        try:

            async def handler(msg: Msg) -> None:
                await msg.respond(b"echo:" + msg.data)

            await svc.subscribe("svc.echo", queue="svc", cb=handler)
            await settle(svc)
            resp = await cli.request("svc.echo", b"hi", timeout=2)
            assert resp.data == b"echo:hi"
            answers = await asyncio.gather(
                *(cli.request("svc.echo", str(i).encode(), timeout=2) for i in range(20))
            )
            assert [a.data for a in answers] == [b"echo:%d" % i for i in range(20)]
        finally:
            await svc.close()
            await cli.close()

    run(scenario())


def test_no_responders(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        nc = await connect(leafgate.url)
        try:
            start = time.monotonic()
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request("nobody.home", b"anyone?", timeout=3)
            # The 503 comes back at once, not after the request timeout.
            assert time.monotonic() - start < 1.5
            assert nc.is_connected
        finally:
            await nc.close()

    run(scenario())


def test_headers_round_trip(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        nc = await connect(leafgate.url)
        other = await connect(leafgate.url)
        try:
            sub = await other.subscribe("hdr.>")
            await settle(other)
            headers = {"X-Trace": "abc-123", "X-Words": "two words", "Nats-Msg-Id": "m1"}
            await nc.publish("hdr.one", b"body", headers=headers)
            await nc.publish("hdr.empty", b"", headers={"K": "v"})
            await nc.publish("hdr.none", b"plain")
            await settle(nc)
            msgs = await take(sub, 3)
            await no_more(sub)
            assert [m.subject for m in msgs] == ["hdr.one", "hdr.empty", "hdr.none"]
            assert msgs[0].data == b"body"
            assert msgs[0].headers == headers
            assert (msgs[1].data, msgs[1].headers) == (b"", {"K": "v"})
            assert (msgs[2].data, msgs[2].headers) == (b"plain", None)

            async def responder(msg: Msg) -> None:
                assert msg.headers is not None
                await msg.respond(msg.headers["Q"].encode())

            await other.subscribe("hdr.req", cb=responder)
            await settle(other)
            resp = await nc.request("hdr.req", b"", timeout=2, headers={"Q": "42"})
            assert resp.data == b"42"
        finally:
            await nc.close()
            await other.close()

    run(scenario())


def test_unsubscribe_with_limit(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        nc = await connect(leafgate.url)
        pub = await connect(leafgate.url)
        try:
            sub = await nc.subscribe("lim")
            await sub.unsubscribe(limit=3)
            await settle(nc)
            for i in range(5):
                await pub.publish("lim", b"%d" % i)
            await settle(pub)
            got = await take(sub, 3)
            assert [m.data for m in got] == [b"0", b"1", b"2"]
            await no_more(sub, 0.3)
            # The interest is gone on the server too: a request now has no responders.
            with pytest.raises(nats.errors.NoRespondersError):
                await pub.request("lim", b"?", timeout=2)
        finally:
            await nc.close()
            await pub.close()

    run(scenario())


def test_flush_and_ordering(leafgate: ServerProcess) -> None:
    n = 2000

    async def scenario() -> None:
        sub_nc = await connect(leafgate.url)
        pub_nc = await connect(leafgate.url)
        try:
            received: list[bytes] = []

            async def cb(msg: Msg) -> None:
                received.append(msg.data)

            await sub_nc.subscribe("flow", cb=cb)
            await settle(sub_nc)
            for i in range(n):
                await pub_nc.publish("flow", b"%d" % i)
            await settle(pub_nc)
            await settle(sub_nc)
            await wait_until(lambda: len(received) >= n, what=f"{n} messages")
            assert received == [b"%d" % i for i in range(n)]
        finally:
            await sub_nc.close()
            await pub_nc.close()

    run(scenario())


def test_drain(leafgate: ServerProcess) -> None:
    n = 50

    async def scenario() -> None:
        closed = asyncio.Event()

        async def closed_cb() -> None:
            closed.set()

        nc = await connect(leafgate.url, drain_timeout=10, closed_cb=closed_cb)
        pub = await connect(leafgate.url)
        handled: list[bytes] = []
        try:

            async def slow(msg: Msg) -> None:
                await asyncio.sleep(0.005)
                handled.append(msg.data)

            await nc.subscribe("dr", cb=slow)
            await settle(nc)
            for i in range(n):
                await pub.publish("dr", b"%d" % i)
            await settle(pub)
            await settle(nc)  # everything is in the client now
            await nc.drain()
            await asyncio.wait_for(closed.wait(), 10)
            assert nc.is_closed
            assert handled == [b"%d" % i for i in range(n)]
            # The drained subscription is gone from the server.
            with pytest.raises(nats.errors.NoRespondersError):
                await pub.request("dr", b"?", timeout=2)
        finally:
            await nc.close()
            await pub.close()

    run(scenario())


def test_reconnect_after_restart(leafgate: ServerProcess) -> None:
    async def scenario() -> None:
        reconnected = asyncio.Event()
        disconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        async def on_disconnect() -> None:
            disconnected.set()

        nc = await connect(
            leafgate.url,
            allow_reconnect=True,
            reconnect_time_wait=0.1,
            max_reconnect_attempts=100,
            reconnected_cb=on_reconnect,
            disconnected_cb=on_disconnect,
        )
        try:
            sub = await nc.subscribe("re.>")
            await settle(nc)
            await nc.publish("re.1", b"before")
            await settle(nc)
            assert (await sub.next_msg(timeout=2)).data == b"before"

            await asyncio.to_thread(leafgate.stop)
            await asyncio.wait_for(disconnected.wait(), 10)
            await asyncio.to_thread(leafgate.restart)
            await asyncio.wait_for(reconnected.wait(), 15)
            assert nc.is_connected

            # The subscription was replayed on the new server.
            await settle(nc)
            await nc.publish("re.2", b"after")
            await settle(nc)
            assert (await sub.next_msg(timeout=2)).data == b"after"
            other = await connect(leafgate.url)
            try:
                await other.publish("re.3", b"from-other")
                await settle(other)
            finally:
                await other.close()
            assert (await sub.next_msg(timeout=2)).data == b"from-other"
        finally:
            await nc.close()

    run(scenario(), timeout=60)


SLOW_CONSUMER = Config(
    # nats-server refuses max_payload > max_pending; a short write_deadline keeps the
    # stand-in run (LEAFGATE_CMD=nats-server) fast.
    nats='max_pending: 262144\nmax_payload: 65536\nwrite_deadline: "2s"\n',
    toml='max_pending = "256KB"\nmax_payload = "64KB"\n',
)


def test_slow_consumer_is_disconnected(leafgate_factory: ServerFactory) -> None:
    server = leafgate_factory(config=SLOW_CONSUMER)
    count, size = 300, 60_000

    # A raw subscriber with a tiny receive buffer that does not read during the burst.
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(5)
    try:
        raw.connect(("127.0.0.1", server.port))
        buf = b""
        raw.sendall(b'CONNECT {"verbose":false}\r\nSUB big 1\r\nPING\r\n')
        while b"PONG\r\n" not in buf:
            chunk = raw.recv(4096)
            assert chunk, f"server closed the subscriber early: {buf!r}"
            buf += chunk

        async def publisher() -> None:
            disconnects = 0

            async def on_disconnect() -> None:
                nonlocal disconnects
                disconnects += 1

            nc = await connect(server.url, disconnected_cb=on_disconnect)
            try:
                payload = b"x" * size
                for _ in range(count):
                    await nc.publish("big", payload)
                await settle(nc, timeout=20)
                # The publisher keeps working.
                sub = await nc.subscribe("still.alive")
                await settle(nc)
                await nc.publish("still.alive", b"yes")
                assert (await sub.next_msg(timeout=2)).data == b"yes"
                assert nc.is_connected
                assert disconnects == 0
                assert errors_of(nc) == []
            finally:
                await nc.close()

        run(publisher(), timeout=40)

        # Now read what the server had buffered: the stream must end (EOF or reset)
        # well before all count*size bytes arrived.
        received = 0
        closed = False
        deadline = time.monotonic() + 15
        raw.settimeout(1)
        while time.monotonic() < deadline:
            try:
                chunk = raw.recv(1 << 20)
            except TimeoutError:
                # Nothing more is coming; a live connection would answer a PING.
                with contextlib.suppress(OSError):
                    raw.sendall(b"PING\r\n")
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += len(chunk)
        assert closed, f"slow consumer still connected after {received} bytes"
        assert received < count * size, "the slow consumer got everything: not cut off"
    finally:
        raw.close()


def _max_payload_server(factory: ServerFactory) -> ServerProcess:
    if factory.config_dialect == "nats":  # stand-in mode: nats-server has no such flag
        return factory(config_text="max_payload: 1024\n")
    return factory("--max_payload", "1KB")


def test_max_payload(leafgate_factory: ServerFactory) -> None:
    server = _max_payload_server(leafgate_factory)

    async def scenario() -> None:
        nc = await connect(server.url)
        try:
            assert nc.max_payload == 1024
            sub = await nc.subscribe("mp")
            await settle(nc)
            await nc.publish("mp", b"x" * 1024)
            with pytest.raises(nats.errors.MaxPayloadError):
                await nc.publish("mp", b"x" * 1025)
            await settle(nc)
            got = await take(sub, 1)
            assert [len(m.data) for m in got] == [1024]
            await no_more(sub)
            assert nc.is_connected
        finally:
            await nc.close()

    run(scenario())

    # The server enforces it as well (nats-py checked before sending).
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.settimeout(5)
        buf = b""
        raw.sendall(b'CONNECT {"verbose":false}\r\nPUB mp 1025\r\n')
        with contextlib.suppress(ConnectionResetError):
            while chunk := raw.recv(4096):
                buf += chunk
        assert b"-ERR 'Maximum Payload Violation'\r\n" in buf
