"""In-process clients (edge.local): the bridges' and services' way into the router."""

from __future__ import annotations

import pytest
import trio

from edge.config import ServerConfig
from edge.local import LocalClient, NoResponders, PublishError
from edge.server import open_server
from tests.harness import RawClient

CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'


async def _client(port: int) -> RawClient:
    return await RawClient.connected(port, CONNECT)


async def test_local_publish_reaches_socket_subscriber_with_headers() -> None:
    async with open_server(ServerConfig(port=0)) as server:
        sub = await _client(server.port)
        await sub.send(b"SUB dev.> 1\r\n")
        await sub.ping()
        local = server.local_client("test")
        assert local.publish("dev.t", b"21.5") is True
        assert local.publish("dev.h", b"x", headers=[("Unit", "C")]) is True
        first = await sub.read_frame()
        assert (first.op, first.args, first.payload) == ("MSG", [b"dev.t", b"1", b"4"], b"21.5")
        second = await sub.read_frame()
        assert second.op == "HMSG"
        assert second.payload == b"NATS/1.0\r\nUnit: C\r\n\r\nx"
        assert local.publish("nobody.here", b"") is False


async def test_socket_publish_reaches_local_subscriber_fast_paths() -> None:
    """Single subscriber, fan-out and queue group: the router's inline framing
    paths must hand local clients structured messages instead."""
    async with open_server(ServerConfig(port=0)) as server:
        local = server.local_client("test")
        single = local.subscribe("one")
        fan_a = local.subscribe("fan.*")
        fan_b = local.subscribe("fan.>")
        group = local.subscribe("q", queue="workers")
        pub = await _client(server.port)
        await pub.send(b"PUB one 3\r\nabc\r\nPUB fan.x 1\r\nf\r\nPUB q 1\r\nw\r\n")
        await pub.send(b"HPUB one r.1 20 22\r\nNATS/1.0\r\nA: b c\r\n\r\nhi\r\n")
        await pub.ping()
        with trio.fail_after(5):
            msg = await single.next()
            assert (msg.subject, msg.data, msg.headers) == ("one", b"abc", ())
            msg = await single.next()
            assert (msg.reply, msg.data, msg.headers) == ("r.1", b"hi", (("A", "b c"),))
            assert (await fan_a.next()).data == b"f"
            assert (await fan_b.next()).data == b"f"
            assert (await group.next()).subject == "q"


async def test_echo_off_and_unsubscribe() -> None:
    async with open_server(ServerConfig(port=0)) as server:
        local = server.local_client("test")
        own = local.subscribe("loop.>")
        other = server.local_client("other")
        seen = other.subscribe("loop.>")
        local.publish("loop.a", b"1")
        with trio.fail_after(5):
            assert (await seen.next()).data == b"1"
        assert own.pending == 0  # a client never gets its own messages back
        seen.unsubscribe()
        assert other.publish("loop.b", b"2") is True  # still heard by `own`
        assert (await own.next()).data == b"2"
        with pytest.raises(trio.EndOfChannel):
            await seen.next()


async def test_pending_limit_drops_and_counts() -> None:
    async with open_server(ServerConfig(port=0)) as server:
        local = server.local_client("slow")
        sub = local.subscribe("flood", pending_msgs=3)
        other = server.local_client("fast")
        for i in range(10):
            other.publish("flood", b"%d" % i)
        assert sub.pending == 3
        assert sub.dropped == 7
        assert [sub.next_nowait().data for _ in range(3)] == [b"0", b"1", b"2"]  # type: ignore[union-attr]


async def test_request_reply_between_local_and_socket() -> None:
    async with open_server(ServerConfig(port=0)) as server:
        service = await _client(server.port)
        await service.send(b"SUB svc.echo 1\r\n")
        await service.ping()
        local = server.local_client("req")

        async def answer() -> None:
            frame = await service.read_frame()
            reply = frame.args[2]
            await service.send(b"PUB %b %d\r\n%b\r\n" % (reply, len(frame.payload), frame.payload))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            msg = await local.request("svc.echo", b"ping", timeout=5)
        assert msg.data == b"ping"
        with pytest.raises(NoResponders):
            await local.request("svc.none", b"", timeout=5)
        # A request nobody answers in time.
        silent = server.local_client("silent").subscribe("svc.silent")
        with pytest.raises(trio.TooSlowError):
            await local.request("svc.silent", b"", timeout=0.2)
        assert silent.pending == 1


async def test_bad_publishes_are_refused_with_a_reason() -> None:
    async with open_server(ServerConfig(port=0, max_payload=16)) as server:
        local: LocalClient = server.local_client("bad")
        for subject in ("", "a..b", "a.*", "a.>", "a b"):
            with pytest.raises(PublishError, match="invalid subject"):
                local.publish(subject, b"")
        with pytest.raises(PublishError, match="max_payload"):
            local.publish("big", b"x" * 17)
        with pytest.raises(PublishError, match="header"):
            local.publish("h", b"", headers=[("Bad Name", "v")])
        with pytest.raises(ValueError):
            local.subscribe("a..b")
        # Still usable afterwards.
        assert local.publish("fine", b"") is False


def test_bridges_table_errors_name_the_key() -> None:
    from edge.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"bridges": {"modbus": []}})
    assert err.value.key == "bridges.modbus"
    with pytest.raises(ConfigError) as err:
        config_from_dict({"bridges": 3})
    assert err.value.key == "bridges"
    assert not config_from_dict({}).bridges.enabled
