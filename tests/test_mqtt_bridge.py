"""The MQTT bridge against a real mosquitto, with an in-process leafgate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridges.mqtt.config import parse_mqtt_bridge
from edge.config import BridgesConfig, ServerConfig
from edge.local import LocalSubscription
from edge.server import Server, open_server
from tests.certs import make_tls_files
from tests.mqtthelp import Mosquitto, Peer


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    mosq = Mosquitto(tmp_path).start()
    yield mosq
    mosq.stop()


def _entry(port: int, maps: list[dict[str, object]], **kw: object) -> dict[str, object]:
    return {
        "name": "b1",
        "port": port,
        "reconnect_min": 0.1,
        "reconnect_max": 0.5,
        "map": maps,
        **kw,
    }


@asynccontextmanager
async def bridged(entry: dict[str, object]) -> AsyncIterator[Server]:
    cfg = parse_mqtt_bridge(entry, "bridges.mqtt[0]")
    async with open_server(ServerConfig(port=0, bridges=BridgesConfig(mqtt=(cfg,)))) as server:
        await wait_state(server, "connected")
        yield server


async def wait_state(server: Server, state: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while server.bridges[0].status()["state"] != state:
            await trio.sleep(0.02)


async def get(peer: Peer, timeout: float = 5.0) -> paho.MQTTMessage:
    return await trio.to_thread.run_sync(peer.get, timeout)


async def next_msg(sub: LocalSubscription, timeout: float = 5.0) -> Any:
    with trio.fail_after(timeout):
        return await sub.next()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_mqtt_to_nats_wildcards_qos_and_properties(broker: Mosquitto, protocol: str) -> None:
    maps: list[dict[str, object]] = [{"mqtt": "home/+/temp", "prefix": "dev", "strip": 1, "qos": 1}]
    async with bridged(_entry(broker.port, maps, protocol=protocol)) as server:
        sub = server.local_client("app").subscribe("dev.>")
        peer = Peer(broker.port)
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("unit", "C"), ("site", "north")]
            props.ContentType = "text/plain"
            await trio.to_thread.run_sync(
                lambda: peer.publish("home/k1.a/temp", b"21.5", qos=1, properties=props)
            )
            peer.publish("home/k2/temp", b"19", qos=0)
            peer.publish("home/k2/humidity", b"40", qos=0)  # not mapped
            first = await next_msg(sub)
            assert first.subject == "dev.k1%2Ea.temp" and first.data == b"21.5"
            headers = dict(first.headers)
            assert headers["Leafgate-Bridge"] == "b1"
            if protocol == "5":
                assert headers["unit"] == "C" and headers["site"] == "north"
                assert headers["Content-Type"] == "text/plain"
            second = await next_msg(sub)
            assert (second.subject, second.data) == ("dev.k2.temp", b"19")
            await trio.sleep(0.2)
            assert sub.pending == 0
            status = server.bridges[0].status()
            assert status["messages_in"] == 2 and status["dropped"] == {}
            assert json.loads(json.dumps(status))["kind"] == "mqtt"
        finally:
            peer.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_nats_to_mqtt_headers_retain_and_no_loop(broker: Mosquitto, protocol: str) -> None:
    # Overlapping maps both ways: cmd.> goes out to cmd/#, and cmd/# comes in to cmd.>.
    maps: list[dict[str, object]] = [
        {"nats": "cmd.>", "qos": 1},
        {"mqtt": "cmd/#", "qos": 1},
        {"nats": "state.*", "prefix": "retained", "retain": True},
    ]
    async with bridged(_entry(broker.port, maps, protocol=protocol)) as server:
        app = server.local_client("app")
        echo = app.subscribe("cmd.>")
        peer = Peer(broker.port)
        try:
            peer.subscribe("cmd/#", qos=1)
            app.publish("cmd.k1.set", b"on", headers=[("req-id", "7"), ("Content-Type", "x/y")])
            msg = await get(peer)
            assert (msg.topic, msg.payload, msg.qos) == ("cmd/k1/set", b"on", 1)
            if protocol == "5":
                user = dict(msg.properties.UserProperty)
                assert user["req-id"] == "7" and user["Leafgate-Bridge"] == "b1"
                assert msg.properties.ContentType == "x/y"
            # The broker hands the bridge's own publish back on cmd/#: never bridged in again.
            await trio.sleep(0.5)
            assert echo.pending == 0
            status = server.bridges[0].status()
            assert status["messages_out"] == 1
            if protocol == "3.1.1":
                assert status["dropped"].get("loop") == 1
            # A device's message on the same topic does come in.
            peer.publish("cmd/k1/set", b"device", qos=1)
            got = await next_msg(echo)
            assert (got.subject, got.data) == ("cmd.k1.set", b"device")
            await trio.sleep(0.3)
            assert peer.messages.qsize() == 1  # the device's own copy, not a bridged echo
            # Retained publishing per mapping.
            app.publish("state.k1", b"up")
            await trio.sleep(0.3)
            late = Peer(broker.port)
            try:
                late.subscribe("retained/#")
                kept = await get(late)
                assert (kept.topic, kept.payload, kept.retain) == ("retained/state/k1", b"up", True)
            finally:
                late.close()
        finally:
            peer.close()


async def test_retained_messages_carry_a_header(tmp_path: Path) -> None:
    """Live messages arrive without the retain flag; what the broker kept comes
    with it when the bridge (re)subscribes: ``MQTT-Retain: true`` on NATS, or
    not bridged at all for ``forward_retained = false``."""
    mosq = Mosquitto(tmp_path, persistence=True).start()
    maps: list[dict[str, object]] = [
        {"mqtt": "cfg/#"},
        {"mqtt": "skip/#", "forward_retained": False},
    ]
    try:
        async with bridged(_entry(mosq.port, maps)) as server:
            sub = server.local_client("app").subscribe(">")
            peer = Peer(mosq.port)
            peer.publish("cfg/k1", b"v1", qos=1, retain=True)
            peer.publish("skip/k1", b"s1", qos=1, retain=True)
            peer.close()
            live = [await next_msg(sub), await next_msg(sub)]
            assert all(("MQTT-Retain", "true") not in m.headers for m in live)
            await trio.to_thread.run_sync(mosq.restart)  # persistence keeps the retained ones
            msg = await next_msg(sub, 10)
            assert (msg.subject, msg.data) == ("cfg.k1", b"v1")
            assert ("MQTT-Retain", "true") in msg.headers
            await trio.sleep(0.3)
            assert sub.pending == 0
            assert server.bridges[0].status()["dropped"]["retained"] == 1
    finally:
        mosq.stop()


async def test_broker_restart_survived_and_qos1_held(broker: Mosquitto) -> None:
    maps: list[dict[str, object]] = [{"nats": "out.>", "qos": 1}, {"mqtt": "in/#", "qos": 1}]
    async with bridged(_entry(broker.port, maps, hold_max=5)) as server:
        app = server.local_client("app")
        sub_in = app.subscribe("in.>")
        await trio.to_thread.run_sync(broker.stop)
        await wait_state(server, "waiting")
        for i in range(8):
            app.publish(f"out.n{i}", b"%d" % i)
        with trio.fail_after(5):
            while server.bridges[0].status()["dropped"].get("hold_full", 0) < 3:
                await trio.sleep(0.02)
        status = server.bridges[0].status()
        assert status["held"] == 5 and status["dropped"]["hold_full"] == 3
        await trio.to_thread.run_sync(broker.restart)
        peer = Peer(broker.port, client_id="watcher")
        try:
            peer.subscribe("out/#", qos=1)
            # The bridge may reconnect before the watcher subscribed: the watcher
            # sees what was sent after; what the bridge counts covers all five.
            await wait_state(server, "connected")
            with trio.fail_after(10):
                while server.bridges[0].status()["messages_out"] < 5:
                    await trio.sleep(0.05)
            assert server.bridges[0].status()["held"] == 0
            assert server.bridges[0].status()["reconnects"] >= 1
            # Both directions work after the restart.
            peer.publish("in/x", b"back", qos=1)
            assert (await next_msg(sub_in)).data == b"back"
        finally:
            peer.close()


async def test_held_messages_reach_a_persistent_subscriber(tmp_path: Path) -> None:
    """Broker restart: the QoS 1 messages published on NATS meanwhile reach a
    device (persistent session) once the broker is back, in order, none lost."""
    mosq = Mosquitto(tmp_path, persistence=True).start()
    peer = Peer(mosq.port, v5=False, client_id="device-1", persistent=True)
    try:
        await trio.to_thread.run_sync(peer.subscribe, "out/#", 1)
        maps: list[dict[str, object]] = [{"nats": "out.>", "qos": 1}]
        async with bridged(_entry(mosq.port, maps)) as server:
            app = server.local_client("app")
            app.publish("out.n0", b"0")
            assert (await get(peer)).payload == b"0"
            await trio.to_thread.run_sync(mosq.stop)
            await wait_state(server, "waiting")
            for i in range(1, 21):
                app.publish(f"out.n{i}", b"%d" % i)
            await trio.to_thread.run_sync(mosq.restart)
            got = [(await get(peer, 10)).payload for _ in range(20)]
            assert got == [b"%d" % i for i in range(1, 21)]
            with trio.fail_after(5):  # the last PUBACKs
                while server.bridges[0].status()["held"]:
                    await trio.sleep(0.02)
    finally:
        peer.close()
        mosq.stop()


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "certs")
    mosq = Mosquitto(tmp_path, tls=tls).start()
    try:
        entry = _entry(
            mosq.tls_port,
            [{"mqtt": "t/#"}],
            tls={
                "ca_file": str(tls.ca),
                "cert_file": str(tls.client_cert),
                "key_file": str(tls.client_key),
            },
        )
        async with bridged(entry) as server:
            sub = server.local_client("app").subscribe("t.>")
            peer = Peer(mosq.port)
            try:
                peer.publish("t/secure", b"s", qos=1)
                assert (await next_msg(sub)).subject == "t.secure"
            finally:
                peer.close()
        # Without a client certificate the broker refuses: the bridge keeps retrying.
        entry["tls"] = {"ca_file": str(tls.ca)}
        cfg = parse_mqtt_bridge(entry, "k")
        async with open_server(ServerConfig(port=0, bridges=BridgesConfig(mqtt=(cfg,)))) as server:
            with trio.fail_after(10):
                while not server.bridges[0].status()["last_error"]:
                    await trio.sleep(0.05)
            assert server.bridges[0].status()["state"] != "connected"
    finally:
        mosq.stop()


async def test_username_password(tmp_path: Path) -> None:
    mosq = Mosquitto(tmp_path, users={"gw": "s3cret"}).start()
    try:
        entry = _entry(mosq.port, [{"nats": "up.>"}], username="gw", password="s3cret")
        async with bridged(entry) as server:
            assert server.bridges[0].status()["state"] == "connected"
        entry["password"] = "wrong"
        cfg = parse_mqtt_bridge(entry, "k")
        async with open_server(ServerConfig(port=0, bridges=BridgesConfig(mqtt=(cfg,)))) as server:
            with trio.fail_after(10):
                while "refused" not in (server.bridges[0].status()["last_error"] or ""):
                    await trio.sleep(0.05)
            assert server.bridges[0].status()["state"] != "connected"
    finally:
        mosq.stop()


async def test_qos1_into_a_stored_subject_goes_through_the_store(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """QoS 1 into a stored subject: a store request per message (the bridge's
    PUBACK to the broker waits for its PubAck); all of them are in the store."""
    from edge.config import config_from_dict
    from tests.storehelp import stored_rows

    store = tmp_path / "store"
    config = config_from_dict(
        {
            "port": 0,
            "store": {"dir": str(store), "forward": [{"subjects": ["tele.>"]}]},
            "bridges": {"mqtt": [_entry(broker.port, [{"mqtt": "tele/#", "qos": 1}])]},
        }
    )
    async with open_server(config) as server:
        await wait_state(server, "connected")
        peer = Peer(broker.port, v5=False)
        try:
            for i in range(20):
                peer.publish("tele/k1", b"%d" % i, qos=1)
            with trio.fail_after(10):
                while server.bridges[0].status()["messages_in"] < 20:
                    await trio.sleep(0.02)
            rows = await trio.to_thread.run_sync(stored_rows, store)
            assert [(subject, data) for _seq, subject, data in rows] == [
                ("tele.k1", b"%d" % i) for i in range(20)
            ]
            assert server.bridges[0].status()["dropped"] == {}
        finally:
            peer.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_persistent_session_gets_what_came_while_away(
    broker: Mosquitto, protocol: str
) -> None:
    """clean_session = false: QoS 1 messages published while leafgate was down
    are queued by the broker and bridged once it is back."""
    entry = _entry(
        broker.port,
        [{"mqtt": "q/#", "qos": 1}],
        protocol=protocol,
        clean_session=False,
        client_id=f"persist-{protocol}",
    )
    async with bridged(entry):
        pass  # the session (and its subscription) now exists on the broker
    peer = Peer(broker.port)
    try:
        for i in range(5):
            peer.publish("q/x", b"%d" % i, qos=1)
        cfg = parse_mqtt_bridge(entry, "k")
        async with open_server(ServerConfig(port=0, bridges=BridgesConfig(mqtt=(cfg,)))) as server:
            # Subscribed before the bridge connects: the queued messages come at once.
            sub = server.local_client("app").subscribe("q.>")
            got = [(await next_msg(sub, 10)).data for _ in range(5)]
            assert got == [b"%d" % i for i in range(5)]
    finally:
        peer.close()
