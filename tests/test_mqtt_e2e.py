"""End to end: an MQTT device -> mosquitto -> leafgate's MQTT bridge -> leafnode
uplink -> a subscriber and a JetStream stream on a real nats-server hub."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.aio import connect, run
from tests.mqtthelp import Mosquitto, Peer
from tests.storehelp import read_stream, start_edge, start_js_hub, store_toml


def _bridge_toml(port: int) -> str:
    return (
        "[[bridges.mqtt]]\n"
        'name = "site"\n'
        f"port = {port}\n"
        "reconnect_min = 0.1\n"
        "[[bridges.mqtt.map]]\n"
        'mqtt = "plain/#"\n'
        'prefix = "site1"\n'
        "[[bridges.mqtt.map]]\n"
        'mqtt = "tele/#"\n'
        'prefix = "telemetry"\n'
        "strip = 1\n"
        "qos = 1\n"
    )


def _wait_leaf(hub: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.monitor("leafz").get("leafnodes", 0) >= 1:  # type: ignore[attr-defined]
            return
        time.sleep(0.1)
    raise AssertionError("the edge never linked to the hub")


def test_mqtt_device_reaches_hub_subscriber_and_stream(tmp_path: Path) -> None:
    mosq = Mosquitto(tmp_path).start()
    hub = start_js_hub(tmp_path)
    edge = None
    peer = None
    try:
        store = tmp_path / "store"
        toml = store_toml(store) + _bridge_toml(mosq.port)
        edge = start_edge(tmp_path / "edge", hub.leaf_port, store, toml=toml)
        _wait_leaf(hub)
        peer = Peer(mosq.port, v5=False)

        async def scenario() -> bytes:
            nc = await connect(f"nats://127.0.0.1:{hub.client_port}")
            try:
                sub = await nc.subscribe("site1.plain.>")
                await nc.flush()
                deadline = asyncio.get_running_loop().time() + 10
                while True:  # until the hub's interest reached the edge
                    peer.publish("plain/k1/t", b"21.5")
                    try:
                        msg = await sub.next_msg(timeout=0.3)
                        break
                    except TimeoutError:
                        assert asyncio.get_running_loop().time() < deadline, "never arrived"
                assert msg.subject == "site1.plain.k1.t"
                assert msg.headers is not None and msg.headers["Leafgate-Bridge"] == "site"
                return msg.data
            finally:
                await nc.close()

        assert run(scenario()) == b"21.5"
        # QoS 1 into a stored subject: the device's PUBACK waits for the store commit,
        # the store forwards to the hub's stream.
        for i in range(5):
            peer.publish(f"tele/k{i}/temp", b"%d" % i, qos=1)
        msgs = run(read_stream(hub, 5))
        assert sorted((m.subject, m.data) for m in msgs) == [
            (f"telemetry.k{i}.temp", b"%d" % i) for i in range(5)
        ]
    finally:
        if peer is not None:
            peer.close()
        if edge is not None:
            edge.stop()
        hub.stop()
        mosq.stop()
