"""The MQTT bridge: a paho-mqtt client driven from Trio, without a network thread.

Theory of operation. paho keeps the MQTT protocol state; this shell owns the
socket waits. Per connection three tasks run: the reader waits until the
socket is readable and calls ``loop_read()`` (paho then calls ``on_message``,
which only appends to the bounded inbound deque), the writer waits for a kick
(paho's ``on_socket_register_write`` or our own publishes) and calls
``loop_write()`` while ``want_write()``, and a misc task calls ``loop_misc()``
every second (keepalive pings). Only the blocking TCP connect and TLS
handshake of ``connect()`` run in a worker thread (paho offers no
non-blocking connect), before any of these tasks touch the client.

MQTT -> NATS: the pump task takes inbound messages, maps each to a subject,
and publishes it with the MQTT 5 properties as headers. QoS 1 messages are
acknowledged manually (``manual_ack``): for a subject that goes through the
store-and-forward buffer, the message is published in arrival order with a
reply subject of the bridge's own inbox, and the PUBACK goes to the broker only
when the store's PubAck comes back (at most 64 outstanding, 10 s each), so a
crash in between makes the broker send it again (at least once end to end). When the inbound
deque is full the reader stops reading: TCP back-pressure to the broker.

NATS -> MQTT: one task per mapping reads its local subscription. While the
broker is away, QoS 1 messages are held in a bounded deque (``hold_max``;
the oldest are dropped and counted beyond it) and QoS 0 ones are dropped and
counted. QoS 1 publishes in flight (sent, no PUBACK yet) go back to the head
of the hold queue when the connection drops, so they are sent again.

Loops: the bridge's local client has echo off; MQTT->NATS messages carry a
``Leafgate-Bridge`` header, and messages with our own marker are never sent
back out. MQTT 5 subscriptions use ``no_local``; for 3.1.1 a bounded memory of
recent publishes drops the copy the broker sends back.
"""

from __future__ import annotations

import random
import ssl
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridges.mqtt.config import MqttBridgeConfig, MqttMapping
from bridges.mqtt.headers import MARKER, marked_by, to_mqtt_properties, to_nats_headers
from bridges.mqtt.mapping import MappingError
from bridges.mqtt.recent import RecentPublishes
from edge.local import LocalClient, LocalMsg, LocalSubscription, PublishError
from edge.log import get_logger

log = get_logger("bridges.mqtt")

READ_BATCH = 256  # loop_read calls per readable wake-up (one packet each)
PUMP_BATCH = 512  # inbound messages published between two wait_room() calls
STORE_ACK_CONCURRENCY = 64  # QoS 1 store requests waiting for a PubAck at once
STORE_ACK_TIMEOUT = 10.0
CONNACK_TIMEOUT = 10.0
CONNECT_TIMEOUT = 15.0
INFLIGHT_MAX = 1000  # QoS 1 NATS->MQTT publishes awaiting a PUBACK


class ConnectionLost(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...]
    content_type: str | None


class MqttBridge:
    kind = "mqtt"

    def __init__(self, local: LocalClient, config: MqttBridgeConfig) -> None:
        self.local = local
        self.config = config
        self.name = config.name
        self.state = "connecting"
        self.last_error: str | None = None
        self.messages_in = 0  # MQTT -> NATS
        self.messages_out = 0  # NATS -> MQTT (acknowledged for QoS 1)
        self.reconnects = 0
        self.dropped: dict[str, int] = {}
        self._inbound: deque[tuple[paho.Client, paho.MQTTMessage]] = deque()
        self._inbound_wake = trio.Event()
        self._room = trio.Event()
        self._hold: deque[Outgoing] = deque()
        self._hold_wake = trio.Event()
        self._inflight: dict[int, Outgoing] = {}
        self._acked = trio.Event()
        self._client: paho.Client | None = None
        self._kick = trio.Event()
        self._lost = trio.Event()
        self._connack = trio.Event()
        self._connack_rc: Any = None
        self._recent = RecentPublishes()
        self._in_maps = [m for m in config.mappings if m.direction == "mqtt_to_nats"]
        self._out_maps = [m for m in config.mappings if m.direction == "nats_to_mqtt"]
        self._plain_headers: tuple[tuple[str, str], ...] = ((MARKER, self.name),)
        self._subs: list[LocalSubscription] = []
        # Store requests awaiting their PubAck: token -> (client, message, subject, sent at).
        self._pending_acks: dict[str, tuple[paho.Client, paho.MQTTMessage, str, float]] = {}
        self._ack_seq = 0
        self._ack_room = trio.Event()
        self._ack_prefix = ""
        self._ack_sub: LocalSubscription | None = None
        self._route_cache: dict[str, tuple[MqttMapping, str] | None] = {}

    # ---- status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        dropped = dict(self.dropped)
        slow = sum(sub.dropped for sub in self._subs)
        if slow:  # NATS messages the outbound subscriptions could not queue
            dropped["slow_consumer"] = slow
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "broker": f"{self.config.host}:{self.config.port}",
            "protocol": self.config.protocol,
            "tls": self.config.tls is not None,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "dropped": dropped,
            "held": len(self._hold) + len(self._inflight),
            "inbound_pending": len(self._inbound),
            "store_pending": len(self._pending_acks),
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            subs = []
            for mapping in self._out_maps:
                sub = self.local.subscribe(mapping.filter)
                subs.append(sub)
                nursery.start_soon(self._guarded, partial(self._outbound, mapping, sub))
            self._ack_prefix = self.local.new_inbox() + "."
            self._ack_sub = self.local.subscribe(self._ack_prefix + "*")
            nursery.start_soon(self._guarded, self._pump)
            nursery.start_soon(self._guarded, self._store_acks)
            self._subs = subs
            task_status.started()
            await self._connection_loop()

    async def _guarded(self, task: Any) -> None:
        """The bridge boundary for the pump and the outbound tasks: a bug logs
        and restarts the task, never the server."""
        while True:
            try:
                await task()
                return
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("mqtt_bridge_task_failed", bridge=self.name)
            await trio.sleep(1.0)

    async def _connection_loop(self) -> None:
        attempt = 0
        while True:
            self.state = "connecting"
            try:
                await self._session()
            except Exception as exc:  # the bridge boundary: log, back off, reconnect
                self.last_error = self._describe(exc)
                log.warning("mqtt_bridge_disconnected", bridge=self.name, error=self.last_error)
            finally:
                self._requeue_inflight()
                client, self._client = self._client, None
                sock = client.socket() if client is not None else None
                if sock is not None:
                    sock.close()
            if self.state == "connected":
                attempt = 0
            self.state = "waiting"
            self.reconnects += 1
            delay = min(self.config.reconnect_max, self.config.reconnect_min * 2**attempt)
            attempt = min(attempt + 1, 30)
            await trio.sleep(delay * random.uniform(0.8, 1.0))

    def _describe(self, exc: BaseException) -> str:
        rc = self._connack_rc
        if rc is not None and rc.is_failure:
            return f"broker refused the connection: {rc}"
        if isinstance(exc, BaseExceptionGroup):
            return "; ".join(self._describe(inner) for inner in exc.exceptions)
        return f"{type(exc).__name__}: {exc}"

    def _make_client(self) -> paho.Client:
        cfg = self.config
        proto = paho.MQTTv5 if cfg.mqtt5 else paho.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=proto,
            clean_session=None if cfg.mqtt5 else cfg.clean_session,
            manual_ack=True,
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=cfg.tls.ca_file,
                certfile=cfg.tls.cert_file,
                keyfile=cfg.tls.key_file,
                cert_reqs=ssl.CERT_NONE if cfg.tls.insecure else ssl.CERT_REQUIRED,
            )
            if cfg.tls.insecure:
                client.tls_insecure_set(True)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    async def _session(self) -> None:
        cfg = self.config
        client = self._make_client()
        self._client = client
        self._lost = trio.Event()
        self._connack = trio.Event()
        self._connack_rc = None
        kwargs: dict[str, Any] = {"keepalive": cfg.keepalive}
        if cfg.mqtt5:
            kwargs["clean_start"] = cfg.clean_session
            if cfg.session_expiry:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = cfg.session_expiry
                kwargs["properties"] = props
        with trio.fail_after(CONNECT_TIMEOUT):
            await trio.to_thread.run_sync(
                partial(client.connect, cfg.host, cfg.port, **kwargs), abandon_on_cancel=True
            )
        client.on_socket_register_write = lambda *_: self._kick.set()
        sock = client.socket()
        if sock is None:
            raise ConnectionLost("no socket after connect")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, client, sock)
            nursery.start_soon(self._writer, client, sock)
            nursery.start_soon(self._misc, client)
            with trio.fail_after(CONNACK_TIMEOUT):
                await self._connack.wait()
            if self._connack_rc is None or self._connack_rc.is_failure:
                raise ConnectionLost(f"broker refused the connection: {self._connack_rc}")
            self._subscribe(client)
            self.state = "connected"
            self.last_error = None
            log.info("mqtt_bridge_connected", bridge=self.name, broker=f"{cfg.host}:{cfg.port}")
            nursery.start_soon(self._flush_hold, client)
            await self._lost.wait()
            raise ConnectionLost("connection lost")

    def _subscribe(self, client: paho.Client) -> None:
        for mapping in self._in_maps:
            if self.config.mqtt5:
                opts = SubscribeOptions(qos=mapping.qos, noLocal=True)
                client.subscribe(mapping.filter, options=opts)
            else:
                client.subscribe(mapping.filter, qos=mapping.qos)
        self._kick.set()

    # ---- the socket tasks ----------------------------------------------------------------

    async def _reader(self, client: paho.Client, sock: Any) -> None:
        tls = isinstance(sock, ssl.SSLSocket)
        while True:
            while len(self._inbound) >= self.config.inbound_max:
                self._room = trio.Event()
                await self._room.wait()
            if not (tls and sock.pending()):
                await trio.lowlevel.wait_readable(sock)
            for _ in range(READ_BATCH):
                before = len(self._inbound)
                rc = client.loop_read()
                if rc != paho.MQTT_ERR_SUCCESS:
                    self._lost.set()
                    raise ConnectionLost(f"read: {paho.error_string(rc)}")
                if len(self._inbound) == before and not (tls and sock.pending()):
                    break
            self._kick.set()
            await trio.lowlevel.checkpoint()

    async def _writer(self, client: paho.Client, sock: Any) -> None:
        while True:
            if client.want_write():
                await trio.lowlevel.wait_writable(sock)
                rc = client.loop_write()
                if rc != paho.MQTT_ERR_SUCCESS:
                    self._lost.set()
                    raise ConnectionLost(f"write: {paho.error_string(rc)}")
            else:
                self._kick = trio.Event()
                await self._kick.wait()

    async def _misc(self, client: paho.Client) -> None:
        while True:
            await trio.sleep(1.0)
            if client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                self._lost.set()
                raise ConnectionLost("keepalive timed out")
            self._kick.set()

    # ---- paho callbacks (only enqueue and flag) -----------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connack_rc = rc
        self._connack.set()

    def _on_disconnect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if client is self._client:
            self._lost.set()

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._inbound.append((client, msg))
        self._inbound_wake.set()

    def _on_publish(self, client: paho.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if self._inflight.pop(mid, None) is not None:
            self.messages_out += 1
            self._acked.set()

    # ---- MQTT -> NATS ------------------------------------------------------------------------

    def _route(self, topic: str) -> tuple[MqttMapping, str] | None:
        if topic in self._route_cache:
            return self._route_cache[topic]
        found: tuple[MqttMapping, str] | None = None
        for mapping in self._in_maps:
            if paho.topic_matches_sub(mapping.filter, topic):
                try:
                    found = (mapping, mapping.route.to_subject(topic))
                except MappingError:
                    continue
                break
        if len(self._route_cache) >= 65536:
            self._route_cache.clear()
        self._route_cache[topic] = found
        return found

    async def _pump(self) -> None:
        while True:
            while not self._inbound:
                self._inbound_wake = trio.Event()
                await self._inbound_wake.wait()
            for _ in range(min(PUMP_BATCH, len(self._inbound))):
                client, msg = self._inbound.popleft()
                stored = self._bridge_in(client, msg)
                if stored is not None:
                    while len(self._pending_acks) >= STORE_ACK_CONCURRENCY:
                        self._ack_room = trio.Event()
                        await self._ack_room.wait()
                    self._store_request(client, msg, *stored)
            self._room.set()
            await self.local.wait_room()

    def _store_request(
        self,
        client: paho.Client,
        msg: paho.MQTTMessage,
        subject: str,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        """Publish into the store with a reply subject, in arrival order (so the
        store keeps the broker's order); the PUBACK waits for the store's PubAck."""
        self._ack_seq += 1
        token = str(self._ack_seq)
        try:
            heard = self.local.publish(
                subject, bytes(msg.payload), reply=self._ack_prefix + token, headers=headers
            )
        except PublishError as exc:
            self._drop("refused")
            self.last_error = f"refused {subject!r}: {exc}"
            client.ack(msg.mid, msg.qos)  # it never can be stored: do not have it resent
            return
        if not heard:
            self._drop("store_error")
            return
        self._pending_acks[token] = (client, msg, subject, trio.current_time())

    async def _store_acks(self) -> None:
        """PubAcks (or errors) from the store: acknowledge to the broker, in any order."""
        sub = self._ack_sub
        assert sub is not None, "subscribed in run()"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_acks)
            async for reply in sub:
                token = reply.subject[len(self._ack_prefix) :]
                entry = self._pending_acks.pop(token, None)
                if entry is None:
                    continue  # expired meanwhile
                self._ack_room.set()
                client, msg, subject, _t = entry
                if reply.status is not None or b'"error"' in reply.data:
                    self._drop("store_error")
                    self.last_error = f"store refused {subject}: {reply.data[:200]!r}"
                    continue  # no PUBACK: the broker sends it again on the next session
                self.messages_in += 1
                client.ack(msg.mid, msg.qos)
                self._kick.set()

    async def _expire_acks(self) -> None:
        while True:
            await trio.sleep(1.0)
            limit = trio.current_time() - STORE_ACK_TIMEOUT
            old = [t for t, entry in self._pending_acks.items() if entry[3] < limit]
            for token in old:
                _client, _msg, subject, _t = self._pending_acks.pop(token)
                self._drop("store_error")
                self.last_error = f"no PubAck from the store for {subject}"
            if old:
                self._ack_room.set()

    def _bridge_in(
        self, client: paho.Client, msg: paho.MQTTMessage
    ) -> tuple[str, tuple[tuple[str, str], ...]] | None:
        """Publish one inbound message; returns (subject, headers) when it must go
        through a store request before its PUBACK."""
        topic = msg.topic
        payload = bytes(msg.payload)
        routed = self._route(topic)
        ack = msg.qos > 0
        try:
            if routed is None:
                self._drop("unmapped")
                return None
            mapping, subject = routed
            if msg.retain and not mapping.forward_retained:
                self._drop("retained")
                return None
            props = msg.properties if self.config.mqtt5 else None
            user_props = getattr(props, "UserProperty", None) or ()
            if self.config.mqtt5:
                if user_props and marked_by(user_props) == self.name:
                    self._drop("loop")
                    return None
            elif self._recent.take(topic, payload, trio.current_time()):
                self._drop("loop")
                return None
            content_type = getattr(props, "ContentType", None) if props is not None else None
            if not user_props and content_type is None and not msg.retain:
                headers = self._plain_headers  # the common case, one tuple for all
            else:
                out = to_nats_headers(self.name, user_props, content_type, bool(msg.retain))
                if out.skipped:
                    self._drop("property", out.skipped)
                headers = out.headers
            if msg.qos > 0 and self.local.stored(subject):
                ack = False
                return subject, headers
            self.local.publish(subject, payload, headers=headers)
            self.messages_in += 1
        except PublishError as exc:
            self._drop("refused")
            self.last_error = f"refused {topic!r}: {exc}"
        finally:
            if ack:
                client.ack(msg.mid, msg.qos)
        return None

    # ---- NATS -> MQTT ------------------------------------------------------------------------

    async def _outbound(self, mapping: MqttMapping, sub: Any) -> None:
        async for msg in sub:
            item = self._outgoing(mapping, msg)
            if item is None:
                continue
            client = self._client
            if self.state == "connected" and client is not None and not self._hold:
                await self._send(client, item)
            elif item.qos > 0:
                self._hold_item(item)
            else:
                self._drop("disconnected")

    def _outgoing(self, mapping: MqttMapping, msg: LocalMsg) -> Outgoing | None:
        props = to_mqtt_properties(msg.headers)
        if props.marker == self.name:
            self._drop("loop")
            return None
        try:
            topic = mapping.route.to_topic(msg.subject)
        except MappingError:
            self._drop("unmapped")
            return None
        return Outgoing(
            topic,
            msg.data,
            mapping.qos,
            mapping.retain or props.retain,
            props.user_properties,
            props.content_type,
        )

    def _hold_item(self, item: Outgoing) -> None:
        if self.config.hold_max == 0:
            self._drop("hold_full")
            return
        while len(self._hold) >= self.config.hold_max:
            self._hold.popleft()
            self._drop("hold_full")
        self._hold.append(item)

    def _requeue_inflight(self) -> None:
        """Unacknowledged QoS 1 publishes go back to the head of the hold queue."""
        items = list(self._inflight.values())
        self._inflight.clear()
        for item in reversed(items):
            self._hold.appendleft(item)
        while len(self._hold) > max(self.config.hold_max, 0):
            self._hold.pop()
            self._drop("hold_full")

    async def _flush_hold(self, client: paho.Client) -> None:
        while self._hold and self.state == "connected":
            await self._send(client, self._hold.popleft())

    async def _send(self, client: paho.Client, item: Outgoing) -> None:
        while item.qos > 0 and len(self._inflight) >= INFLIGHT_MAX:
            self._acked = trio.Event()
            await self._acked.wait()
        if client is not self._client or self.state != "connected":
            # The connection dropped while we waited for room.
            if item.qos > 0:
                self._hold_item(item)
            else:
                self._drop("disconnected")
            return
        properties = None
        if self.config.mqtt5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = [*item.user_properties, (MARKER, self.name)]
            if item.content_type is not None:
                properties.ContentType = item.content_type
        elif self._in_maps and any(
            paho.topic_matches_sub(m.filter, item.topic) for m in self._in_maps
        ):
            self._recent.note(item.topic, item.payload, trio.current_time())
        info = client.publish(
            item.topic, item.payload, qos=item.qos, retain=item.retain, properties=properties
        )
        if info.rc != paho.MQTT_ERR_SUCCESS:
            if item.qos > 0:
                self._hold_item(item)
            else:
                self._drop("disconnected")
        elif item.qos > 0:
            self._inflight[info.mid] = item
        else:
            self.messages_out += 1
        self._kick.set()
        await trio.lowlevel.checkpoint()
