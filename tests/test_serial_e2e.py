"""End to end: a serial sensor (a socat pty) reaches a real nats-server hub
through a leafgate subprocess and its leafnode uplink."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.aio import connect, run
from tests.harness import ServerProcess
from tests.hubs import start_hub
from tests.serialpty import PtyPair
from tests.storehelp import log_events, read_stream, start_edge, start_js_hub, store_toml

pytestmark = pytest.mark.slow


def _serial_toml(pair: PtyPair, subject: str) -> str:
    return (
        f'[[bridges.serial]]\nname = "probe"\npath = "{pair.dev}"\nbaud = 115200\n'
        f'subject = "{subject}"\nretry_min = 0.05\nretry_max = 0.2\n'
    )


def _wait_port_open(edge: ServerProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not log_events(edge, "serial_port_open"):
        assert time.monotonic() < deadline, "the serial port did not open"
        time.sleep(0.02)


def _lines(start: int, n: int) -> bytes:
    return b"".join(b"reading %d\r\n" % i for i in range(start, start + n))


def test_serial_sensor_reaches_a_hub_subscriber(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub", jetstream=False)
    pair = PtyPair(tmp_path).start()
    edge = start_edge(
        tmp_path, hub.leaf_port, tmp_path / "store", toml=_serial_toml(pair, "sensors.{port}")
    )
    try:
        _wait_port_open(edge)

        async def scenario() -> None:
            nc = await connect(hub.client_url)
            try:
                got: list[tuple[str, bytes, dict[str, str]]] = []

                async def on_msg(msg: object) -> None:
                    got.append((msg.subject, msg.data, msg.headers or {}))  # type: ignore[attr-defined]

                await nc.subscribe("sensors.>", cb=on_msg)
                await nc.flush()
                # Until the hub's interest reached the edge, probes may find nobody.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10
                while not got:
                    assert loop.time() < deadline, "no probe reached the hub"
                    assert pair.fd is not None
                    os.write(pair.fd, b"probe\n")
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.2)
                got.clear()
                assert pair.fd is not None
                os.write(pair.fd, _lines(0, 100))
                while len(got) < 100:
                    assert loop.time() < deadline + 10, f"{len(got)} of 100 arrived"
                    await asyncio.sleep(0.02)
                assert [data for _, data, _ in got] == [b"reading %d" % i for i in range(100)]
                subject, _, headers = got[0]
                assert subject == "sensors.probe"
                assert headers["Serial-Port"] == "probe"
                assert headers["Serial-Received"].endswith("Z")
            finally:
                await nc.close()

        run(scenario())
    finally:
        edge.stop()
        pair.stop()
        hub.stop()


def test_stored_serial_frames_reach_the_hub_stream(tmp_path: Path) -> None:
    """Store-and-forward applies to bridged traffic: frames read before the
    link is up are kept and forwarded, in order."""
    hub = start_js_hub(tmp_path)
    pair = PtyPair(tmp_path).start()
    store_dir = tmp_path / "store"
    toml = store_toml(store_dir) + _serial_toml(pair, "telemetry.{port}")
    edge = start_edge(tmp_path, hub.leaf_port, store_dir, toml=toml)
    try:
        _wait_port_open(edge)
        assert pair.fd is not None
        os.write(pair.fd, _lines(0, 50))
        msgs = run(read_stream(hub, 50))
        assert [(m.subject, m.data) for m in msgs] == [
            ("telemetry.probe", b"reading %d" % i) for i in range(50)
        ]
    finally:
        edge.stop()
        pair.stop()
        hub.stop()
