"""``[[bridges.mqtt]]`` entries: one MQTT broker and its mappings each.

Pure: parses a TOML table into frozen dataclasses; every bad value raises
``ConfigError`` naming the exact key (``bridges.mqtt[0].map[2].qos``).
See bridges/README.md for the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bridges.mqtt.mapping import (
    MappingError,
    Route,
    check_topic_filter,
    literal_levels,
    subject_to_topic,
    topic_to_subject,
)
from edge.config import ConfigError
from edge.subjects import is_valid_publish_subject, is_valid_subject

PROTOCOLS = ("5", "3.1.1")
_BRIDGE_KEYS = frozenset(
    {
        "name",
        "host",
        "port",
        "protocol",
        "client_id",
        "username",
        "password",
        "clean_session",
        "session_expiry",
        "keepalive",
        "tls",
        "reconnect_min",
        "reconnect_max",
        "hold_max",
        "inbound_max",
        "map",
    }
)
_TLS_KEYS = frozenset({"ca_file", "cert_file", "key_file", "insecure"})
_MAP_KEYS = frozenset({"mqtt", "nats", "prefix", "strip", "qos", "retain", "forward_retained"})


@dataclass(frozen=True)
class MqttTls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip hostname/certificate verification (tests only)


@dataclass(frozen=True)
class MqttMapping:
    """One direction of traffic: ``mqtt_to_nats`` (filter is an MQTT topic
    filter) or ``nats_to_mqtt`` (filter is a NATS subject filter)."""

    direction: str
    filter: str
    route: Route
    qos: int = 0
    retain: bool = False  # nats_to_mqtt: publish retained
    forward_retained: bool = True  # mqtt_to_nats: bridge retained messages too


@dataclass(frozen=True)
class MqttBridgeConfig:
    name: str
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "5"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    clean_session: bool = True
    session_expiry: int = 0  # MQTT 5 persistent sessions: seconds the broker keeps it
    keepalive: int = 30
    tls: MqttTls | None = None
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    hold_max: int = 10000  # NATS->MQTT QoS 1 messages held while the broker is away
    inbound_max: int = 10000  # MQTT->NATS messages queued before reading pauses
    mappings: tuple[MqttMapping, ...] = ()

    @property
    def mqtt5(self) -> bool:
        return self.protocol == "5"


def _str(entry: Mapping[str, object], name: str, key: str, default: str | None) -> str | None:
    value = entry.get(name, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key}.{name}", f"expected a string, got {type(value).__name__}")
    return value


def _int(entry: Mapping[str, object], name: str, key: str, default: int, lo: int, hi: int) -> int:
    value = entry.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}.{name}", f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ConfigError(f"{key}.{name}", f"must be between {lo} and {hi}, got {value}")
    return value


def _float(entry: Mapping[str, object], name: str, key: str, default: float) -> float:
    value = entry.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{key}.{name}", f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _bool(entry: Mapping[str, object], name: str, key: str, default: bool) -> bool:
    value = entry.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}", f"expected true or false, got {value!r}")
    return value


def _unknown(entry: Mapping[str, object], allowed: frozenset[str], key: str) -> None:
    for name in entry:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", "unknown key")


def _tls(value: object, key: str) -> MqttTls | None:
    if value is False:
        return None
    if value is True:
        return MqttTls()
    if not isinstance(value, Mapping):
        raise ConfigError(key, "expected true, false or a table")
    _unknown(value, _TLS_KEYS, key)
    cert = _str(value, "cert_file", key, None)
    private = _str(value, "key_file", key, None)
    if (cert is None) != (private is None):
        raise ConfigError(f"{key}.cert_file", "cert_file and key_file go together")
    return MqttTls(
        _str(value, "ca_file", key, None), cert, private, _bool(value, "insecure", key, False)
    )


def parse_mapping(entry: object, key: str) -> MqttMapping:
    if not isinstance(entry, Mapping):
        raise ConfigError(key, f"expected a table, got {type(entry).__name__}")
    _unknown(entry, _MAP_KEYS, key)
    if ("mqtt" in entry) == ("nats" in entry):
        raise ConfigError(
            key,
            "a mapping has exactly one of mqtt (a topic filter bridged into "
            "NATS) or nats (a subject filter bridged out to MQTT)",
        )
    qos = _int(entry, "qos", key, 0, 0, 1)
    strip = _int(entry, "strip", key, 0, 0, 64)
    prefix = _str(entry, "prefix", key, "") or ""
    if "mqtt" in entry:
        source = _str(entry, "mqtt", key, None) or ""
        try:
            check_topic_filter(source)
        except MappingError as exc:
            raise ConfigError(f"{key}.mqtt", str(exc)) from None
        if strip > literal_levels(source):
            raise ConfigError(
                f"{key}.strip",
                f"{source!r} has only {literal_levels(source)} literal leading levels to strip",
            )
        if prefix and not is_valid_publish_subject(prefix.encode()):
            raise ConfigError(f"{key}.prefix", f"{prefix!r} is not a literal NATS subject")
        if "retain" in entry:
            raise ConfigError(f"{key}.retain", "retain applies to nats -> mqtt mappings")
        return MqttMapping(
            "mqtt_to_nats",
            source,
            Route(strip, prefix),
            qos,
            forward_retained=_bool(entry, "forward_retained", key, True),
        )
    source = _str(entry, "nats", key, None) or ""
    if not is_valid_subject(source.encode()):
        raise ConfigError(f"{key}.nats", f"{source!r} is not a valid NATS subject filter")
    literal = 0
    for token in source.split("."):
        if token in ("*", ">"):
            break
        literal += 1
    if strip > literal:
        raise ConfigError(f"{key}.strip", f"{source!r} has only {literal} literal leading tokens")
    if prefix:
        try:
            check_topic_filter(prefix)
        except MappingError as exc:
            raise ConfigError(f"{key}.prefix", str(exc)) from None
        if "+" in prefix.split("/") or "#" in prefix.split("/"):
            raise ConfigError(f"{key}.prefix", "an MQTT topic prefix cannot hold wildcards")
    if "forward_retained" in entry:
        raise ConfigError(f"{key}.forward_retained", "applies to mqtt -> nats mappings")
    return MqttMapping(
        "nats_to_mqtt", source, Route(strip, prefix), qos, retain=_bool(entry, "retain", key, False)
    )


def parse_mqtt_bridge(entry: Mapping[str, object], key: str) -> MqttBridgeConfig:
    """One ``[[bridges.mqtt]]`` table; ``key`` is its dotted key (``bridges.mqtt[0]``)."""
    _unknown(entry, _BRIDGE_KEYS, key)
    host = _str(entry, "host", key, "127.0.0.1") or ""
    if not host:
        raise ConfigError(f"{key}.host", "must not be empty")
    tls = _tls(entry.get("tls", False), f"{key}.tls")
    port = _int(entry, "port", key, 8883 if tls else 1883, 1, 65535)
    name = _str(entry, "name", key, f"{host}:{port}") or ""
    if not name:
        raise ConfigError(f"{key}.name", "must not be empty")
    protocol = entry.get("protocol", "5")
    if isinstance(protocol, int | float) and not isinstance(protocol, bool):
        protocol = "5" if protocol == 5 else str(protocol)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{key}.protocol", f'expected "5" or "3.1.1", got {protocol!r}')
    username = _str(entry, "username", key, None)
    password = _str(entry, "password", key, None)
    if password is not None and username is None:
        raise ConfigError(f"{key}.password", "a password needs a username")
    clean = _bool(entry, "clean_session", key, True)
    expiry = _int(entry, "session_expiry", key, 0 if clean else 3600, 0, 0xFFFFFFFF)
    raw_maps = entry.get("map", [])
    if isinstance(raw_maps, Mapping):
        raw_maps = [raw_maps]
    if not isinstance(raw_maps, list) or not raw_maps:
        raise ConfigError(f"{key}.map", "expected at least one [[...map]] table")
    mappings = tuple(parse_mapping(m, f"{key}.map[{i}]") for i, m in enumerate(raw_maps))
    reconnect_min = _float(entry, "reconnect_min", key, 0.5)
    reconnect_max = _float(entry, "reconnect_max", key, 30.0)
    if reconnect_max < reconnect_min:
        raise ConfigError(f"{key}.reconnect_max", "must not be below reconnect_min")
    return MqttBridgeConfig(
        name=name,
        host=host,
        port=port,
        protocol=str(protocol),
        client_id=_str(entry, "client_id", key, "") or f"leafgate-{name}"[:64],
        username=username,
        password=password,
        clean_session=clean,
        session_expiry=expiry,
        keepalive=_int(entry, "keepalive", key, 30, 5, 65535),
        tls=tls,
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        hold_max=_int(entry, "hold_max", key, 10000, 0, 10_000_000),
        inbound_max=_int(entry, "inbound_max", key, 10000, 16, 10_000_000),
        mappings=mappings,
    )


# Sanity: the route helpers are what the bridge uses; exported for it.
__all__ = [
    "MqttBridgeConfig",
    "MqttMapping",
    "MqttTls",
    "parse_mqtt_bridge",
    "subject_to_topic",
    "topic_to_subject",
]
