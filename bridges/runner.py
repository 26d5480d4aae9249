"""Starting the configured bridges inside the server, one supervised task each.

A bridge is an object with ``name``, ``kind``, ``async run(*, task_status)``
(``task_status.started()`` once configured; it then runs until cancelled,
reconnecting on its own and never raising for what its peer does) and
``status() -> dict`` (JSON-ready: at least ``name``, ``kind``, ``state``) for
``/bridgez`` and ``/metrics``. Each talks to the router through its own
``edge.local.LocalClient``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import trio

from edge.config import BridgesConfig

if TYPE_CHECKING:
    from edge.server import Server


class Bridge(Protocol):
    name: str
    kind: str

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...
    def status(self) -> dict[str, Any]: ...


def build_bridges(server: Server, config: BridgesConfig) -> list[Bridge]:
    bridges: list[Bridge] = []
    if config.mqtt:
        from bridges.mqtt.bridge import MqttBridge

        for mqtt in config.mqtt:
            bridges.append(MqttBridge(server.local_client(f"mqtt:{mqtt.name}"), mqtt))
    if config.serial:
        from bridges.serial.bridge import SerialBridge

        for port in config.serial:
            bridges.append(SerialBridge(server.local_client(f"serial:{port.name}"), port))
    return bridges


async def run_bridges(
    bridges: list[Bridge], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with trio.open_nursery() as nursery:
        for bridge in bridges:
            await nursery.start(bridge.run)
        task_status.started()
