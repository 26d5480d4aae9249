"""The serial bridge against real socat pty pairs and an in-process leafgate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from bridges.serial.bridge import SerialBridge
from bridges.serial.config import parse_serial_port
from bridges.serial.framing import cobs_encode, length_encode, nmea_checksum
from edge.config import BridgesConfig, ServerConfig
from edge.config_load import load_config
from edge.local import LocalMsg, LocalSubscription
from edge.server import Server, open_server
from tests.serialpty import PtyPair

FAST = {"retry_min": 0.05, "retry_max": 0.2}


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path).start()
    try:
        yield pair
    finally:
        pair.stop()


def _port(pair: PtyPair, **entry: Any) -> Any:
    return parse_serial_port({"name": "s1", "path": str(pair.dev), **FAST, **entry}, "p")


@asynccontextmanager
async def _server(*ports: Any) -> AsyncIterator[Server]:
    async with open_server(ServerConfig(port=0, bridges=BridgesConfig(serial=ports))) as server:
        yield server


async def _until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


async def _opened(bridge: Any) -> SerialBridge:
    assert isinstance(bridge, SerialBridge)
    await _until(lambda: bridge.state == "open", "port open")
    return bridge


async def _take(sub: LocalSubscription, n: int, timeout: float = 5.0) -> list[LocalMsg]:
    with trio.fail_after(timeout):
        return [await sub.next() for _ in range(n)]


async def test_lines_from_two_ports_with_headers_from_a_toml_config(tmp_path: Path) -> None:
    with PtyPair(tmp_path, "a") as a, PtyPair(tmp_path, "b") as b:
        toml = tmp_path / "leafgate.toml"
        toml.write_text(
            "port = 0\n"
            f'[[bridges.serial]]\nname = "a"\npath = "{a.dev}"\nbaud = 115200\n'
            f'[[bridges.serial]]\nname = "b"\npath = "{b.dev}"\nsubject = "lab.{{port}}.raw"\n'
            'parity = "even"\nstopbits = 2\nbytesize = 7\n'
        )
        config = load_config(str(toml))
        async with open_server(config) as server:
            sub = server.local_client("test").subscribe(">")
            for bridge in server.bridges:
                await _opened(bridge)
            before = datetime.now(UTC)
            await a.write(b"one\rtwo\nthree\r\n")
            await b.write(b"22.5\r\n")
            msgs = await _take(sub, 4)
            by_subject: dict[str, list[bytes]] = {}
            for msg in msgs:
                by_subject.setdefault(msg.subject, []).append(msg.data)
            assert by_subject == {"serial.a": [b"one", b"two", b"three"], "lab.b.raw": [b"22.5"]}
            headers = dict(msgs[0].headers)
            assert headers["Serial-Port"] in ("a", "b")
            stamp = datetime.strptime(headers["Serial-Received"], "%Y-%m-%dT%H:%M:%S.%fZ")
            stamp = stamp.replace(tzinfo=UTC)
            assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)
            status = server.bridges[0].status()
            assert status["state"] == "open" and status["kind"] == "serial"
            assert (status["frames_in"], status["published"], status["bytes_in"]) == (3, 3, 15)
            assert status["rejected"] == {}


GGA = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"


@pytest.mark.parametrize(
    ("entry", "stream", "expect", "rejected"),
    [
        (
            {"framing": "json", "subject": "sensors.{port}.{field:id}"},
            b'{"id":"t1","v":1}\n{"v":2}\n{"id":"a.b"}\n{"id":"t2"}\n',
            [("sensors.s1.t1", b'{"id":"t1","v":1}'), ("sensors.s1.t2", b'{"id":"t2"}')],
            {"missing_field": 1, "bad_subject": 1},
        ),
        (
            {"framing": "csv", "columns": ["id", "t"], "subject": "csv.{field:id}"},
            b"id,t\nk1,20.5\nk2\n",
            [("csv.k1", b'{"id":"k1","t":"20.5"}')],
            {"bad_columns": 1},
        ),
        (
            {"framing": "nmea", "subject": "gps.{port}.{field:type}"},
            b"$" + GGA + b"*47\r\n$" + GGA + b"*00\r\n",
            [("gps.s1.GGA", b"$" + GGA + b"*47")],
            {"bad_checksum": 1},
        ),
        (
            {"framing": "cobs", "max_frame": 64},
            cobs_encode(b"\x00\x01bin\x00") + b"\x00" + b"\x07\x00" + cobs_encode(b"z") + b"\x00",
            [("serial.s1", b"\x00\x01bin\x00"), ("serial.s1", b"z")],
            {"garbage": 1},
        ),
        (
            {"framing": "length", "length_bytes": 2, "max_frame": 64},
            length_encode(b"\x00abc") + b"\xff\xff" + length_encode(b"d"),
            [("serial.s1", b"\x00abc"), ("serial.s1", b"d")],
            {"overlong": 1},
        ),
    ],
    ids=["json", "csv", "nmea", "cobs", "length"],
)
async def test_each_framing(
    pty: PtyPair,
    entry: dict[str, Any],
    stream: bytes,
    expect: list[tuple[str, bytes]],
    rejected: dict[str, int],
) -> None:
    async with _server(_port(pty, **entry)) as server:
        sub = server.local_client("test").subscribe(">")
        bridge = await _opened(server.bridges[0])
        await pty.write(stream)
        msgs = await _take(sub, len(expect))
        assert [(m.subject, m.data) for m in msgs] == expect
        await _until(lambda: bridge.status()["rejected"] == rejected, "rejections counted")
        assert sub.pending == 0


async def test_downlink_writes_and_request_reply(pty: PtyPair) -> None:
    port = _port(pty, framing="nmea", downlink="cmd.s1", reply_timeout=0.3)
    async with _server(port) as server:
        bridge = await _opened(server.bridges[0])
        client = server.local_client("app")
        readings = client.subscribe("serial.>")
        # A plain publish is written, with the NMEA checksum added.
        client.publish("cmd.s1", b"PMTK000")
        expected = b"$PMTK000*%02X\r\n" % nmea_checksum(b"PMTK000")
        assert await pty.read(len(expected)) == expected

        async def device() -> None:
            asked = b"$PQVER*%02X\r\n" % nmea_checksum(b"PQVER")
            assert await pty.read(len(asked)) == asked
            await pty.write(b"$PQVER,1.2*%02X\r\n" % nmea_checksum(b"PQVER,1.2"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(device)
            answer = await client.request("cmd.s1", b"PQVER", timeout=5)
        assert answer.data == b"$PQVER,1.2*%02X" % nmea_checksum(b"PQVER,1.2")
        assert dict(answer.headers)["Serial-Port"] == "s1"
        assert readings.pending == 0  # the answer went to the requester only
        # Nobody answers: a 408 status header after reply_timeout.
        silent = await client.request("cmd.s1", b"PQX", timeout=5)
        assert dict(silent.headers)["Serial-Status"] == "408"
        assert silent.data == b""
        status = bridge.status()
        assert (status["written"], status["replies"], status["reply_timeouts"]) == (3, 1, 1)


async def test_hotplug_absent_at_start_removed_and_back(tmp_path: Path) -> None:
    pair = PtyPair(tmp_path)
    async with _server(_port(pair, downlink="cmd.s1")) as server:
        bridge = server.bridges[0]
        assert bridge.status()["state"] == "waiting"  # started with no device
        sub = server.local_client("test").subscribe("serial.>")
        try:
            pair.start()
            await _opened(bridge)
            await pair.write(b"first\n")
            assert (await _take(sub, 1))[0].data == b"first"
            pair.stop()  # unplugged
            await _until(lambda: bridge.status()["state"] == "waiting", "port waiting")
            assert bridge.status()["last_error"]
            # A downlink request to an absent device is answered at once.
            answer = await server.local_client("app").request("cmd.s1", b"x", timeout=5)
            assert dict(answer.headers)["Serial-Status"] == "503"
            pair.start()  # plugged back at the same path
            await _opened(bridge)
            await pair.write(b"second\n")
            assert (await _take(sub, 1))[0].data == b"second"
            assert bridge.status()["reopens"] == 1
        finally:
            pair.stop()


async def test_garbage_is_counted_and_a_flood_is_bounded(pty: PtyPair) -> None:
    async with _server(_port(pty, max_frame=32, max_rate=50, burst=20)) as server:
        bridge = await _opened(server.bridges[0])
        sub = server.local_client("test").subscribe("serial.>")
        await pty.write(b"\xff\xfe\xfd\n" + b"x" * 100 + b"\n" + b"a\x00\x01b\n" + b"fine\n")
        assert (await _take(sub, 1))[0].data == b"fine"
        assert bridge.status()["rejected"] == {"invalid_utf8": 1, "overlong": 1, "garbage": 1}
        # A flood: 2000 lines at once; the rate limit publishes a bounded number.
        flood = b"".join(b"f%d\n" % i for i in range(2000))
        await pty.write(flood)
        await _until(lambda: bridge.status()["frames_in"] >= 2001, "flood read")
        status = bridge.status()
        assert status["rejected"]["flood"] >= 1900
        assert status["published"] + status["rejected"]["flood"] == 2001
        assert status["state"] == "open"
        # The server and the port still work afterwards.
        await trio.sleep(0.1)
        while sub.next_nowait() is not None:
            pass
        await pty.write(b"after\n")
        assert (await _take(sub, 1))[0].data == b"after"


async def test_a_path_that_is_not_a_serial_port_is_in_error(tmp_path: Path) -> None:
    notatty = tmp_path / "notatty"
    notatty.write_text("")
    port = parse_serial_port({"name": "s1", "path": str(notatty), **FAST}, "p")
    async with _server(port) as server:
        bridge = server.bridges[0]
        await _until(lambda: bridge.status()["state"] == "error", "error state")
        assert bridge.status()["last_error"]
        # The server is unaffected.
        other = server.local_client("x")
        sub = server.local_client("y").subscribe("still.up")
        assert other.publish("still.up", b"1")
        assert (await _take(sub, 1))[0].data == b"1"


async def test_device_unplugged_during_a_blocked_downlink_write(tmp_path: Path) -> None:
    """A write waiting for room in a full tty when the device goes away is a
    counted downlink error; the bridge goes on waiting for the device."""
    pair = PtyPair(tmp_path).start()
    try:
        async with _server(_port(pair, downlink="cmd.s1")) as server:
            bridge = await _opened(server.bridges[0])
            app = server.local_client("app")
            app.publish("cmd.s1", b"x" * 900_000)  # more than the ptys and socat buffer
            await trio.sleep(0.3)
            assert bridge.status()["written"] == 0  # blocked: nobody reads the device side
            pair.stop()
            await _until(lambda: bridge.status()["state"] == "waiting", "port waiting")
            await _until(lambda: bridge.status()["rejected"].get("downlink_error") == 1, "error")
            pair.start()
            await _opened(bridge)
            sub = app.subscribe("serial.>")
            await pair.write(b"back\n")
            assert (await _take(sub, 1))[0].data == b"back"
    finally:
        pair.stop()
