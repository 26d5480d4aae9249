"""The ``[bridges]`` table: ``[[bridges.mqtt]]`` brokers and ``[[bridges.serial]]`` ports.

Each kind parses its own entries (``bridges.mqtt.config``,
``bridges.serial.config``), imported only when the file has such entries, so
a server without bridges does not load paho or pyserial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.config import BridgesConfig, ConfigError

KINDS = ("mqtt", "serial")


def parse_bridges(value: object, key: str = "bridges") -> BridgesConfig:
    """A BridgesConfig from the parsed ``[bridges]`` table; ConfigError names the key."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, got {type(value).__name__}")
    for name in value:
        if name not in KINDS:
            raise ConfigError(f"{key}.{name}", "unknown bridge kind; expected mqtt or serial")
    mqtt: tuple[Any, ...] = ()
    serial: tuple[Any, ...] = ()
    if "mqtt" in value:
        from bridges.mqtt.config import parse_mqtt_bridge

        mqtt = tuple(
            parse_mqtt_bridge(entry, f"{key}.mqtt[{i}]")
            for i, entry in enumerate(_entries(value["mqtt"], f"{key}.mqtt"))
        )
    if "serial" in value:
        from bridges.serial.config import parse_serial_port

        serial = tuple(
            parse_serial_port(entry, f"{key}.serial[{i}]")
            for i, entry in enumerate(_entries(value["serial"], f"{key}.serial"))
        )
    _check_unique_names(mqtt, f"{key}.mqtt")
    _check_unique_names(serial, f"{key}.serial")
    return BridgesConfig(mqtt=mqtt, serial=serial)


def _entries(value: object, key: str) -> list[Mapping[str, object]]:
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(
            key, f"expected an array of tables ([[{key}]]), got {type(value).__name__}"
        )
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}[{i}]", f"expected a table, got {type(entry).__name__}")
    return value


def _check_unique_names(entries: tuple[Any, ...], key: str) -> None:
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        name = entry.name
        if name in seen:
            raise ConfigError(
                f"{key}[{i}].name", f"{name!r} is already the name of {key}[{seen[name]}]"
            )
        seen[name] = i
