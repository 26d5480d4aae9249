"""Starting the configured bridges inside the server, one supervised task each.

A bridge is an object with ``name``, ``kind``, ``async run(*, task_status)``
(``task_status.started()`` once configured; it then runs until cancelled,
reconnecting on its own and never raising for what its peer does) and
``status() -> dict`` (JSON-ready: at least ``name``, ``kind``, ``state``) for
``/bridgez`` and ``/metrics``. Each talks to the router through its own
``edge.local.LocalClient``.

Each bridge runs in a cancel scope of its own, so a reload (SIGHUP) can stop,
restart or add one bridge while the others keep running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import trio

from edge.config import BridgesConfig
from edge.log import get_logger

if TYPE_CHECKING:
    from edge.local import LocalClient
    from edge.server import Server

log = get_logger("bridges")


class Bridge(Protocol):
    name: str
    kind: str

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...
    def status(self) -> dict[str, Any]: ...


def _entries(config: BridgesConfig) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for entry in config.mqtt:
        out[("mqtt", entry.name)] = entry
    for entry in config.serial:
        out[("serial", entry.name)] = entry
    return out


def build_bridge(client: LocalClient, kind: str, entry: Any) -> Bridge:
    if kind == "mqtt":
        from bridges.mqtt.bridge import MqttBridge

        return MqttBridge(client, entry)
    from bridges.serial.bridge import SerialBridge

    return SerialBridge(client, entry)


class BridgeSet:
    """The running bridges, keyed by (kind, name), under the server's nursery."""

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery
        self.entries: dict[tuple[str, str], Any] = {}
        self._running: dict[tuple[str, str], tuple[Bridge, trio.CancelScope, LocalClient]] = {}

    async def start(self, config: BridgesConfig) -> None:
        for key, entry in _entries(config).items():
            await self._start(key, entry)
        self._publish_list()

    async def _start(self, key: tuple[str, str], entry: Any) -> None:
        kind, name = key
        client = self.server.local_client(f"{kind}:{name}")
        bridge = build_bridge(client, kind, entry)
        scope = trio.CancelScope()
        self.entries[key] = entry
        self._running[key] = (bridge, scope, client)
        await self.nursery.start(self._supervise, bridge, scope, client)

    async def _supervise(
        self,
        bridge: Bridge,
        scope: trio.CancelScope,
        client: LocalClient,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with scope:
                await bridge.run(task_status=task_status)
        finally:
            client.close()
            if client in self.server.local_clients:
                self.server.local_clients.remove(client)

    def reload(self, config: BridgesConfig) -> None:
        """Stop removed and changed bridges, start changed and added ones."""
        new = _entries(config)
        for key in list(self._running):
            if key not in new or new[key] != self.entries.get(key):
                _bridge, scope, _client = self._running.pop(key)
                self.entries.pop(key, None)
                scope.cancel()
                log.info("bridge_stopped", kind=key[0], name=key[1], reason="reload")
        for key, entry in new.items():
            if key not in self._running:
                self.nursery.start_soon(self._start_logged, key, entry)
        self._publish_list()

    async def _start_logged(self, key: tuple[str, str], entry: Any) -> None:
        await self._start(key, entry)
        self._publish_list()
        log.info("bridge_started", kind=key[0], name=key[1], reason="reload")

    def _publish_list(self) -> None:
        self.server.bridges = [bridge for bridge, _scope, _client in self._running.values()]
