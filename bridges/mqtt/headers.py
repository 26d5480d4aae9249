"""MQTT 5 properties <-> NATS headers, and the bridge's loop marker.

* MQTT -> NATS: each user property becomes a header of the same name and
  value (when the name is a valid NATS header name and neither holds CR/LF;
  others are left out and counted); ``content_type`` becomes
  ``Content-Type``; a retained message gets ``MQTT-Retain: true``; every
  message gets ``Leafgate-Bridge: <bridge name>`` (the loop marker).
* NATS -> MQTT: ``Content-Type`` becomes the content type, ``MQTT-Retain``
  asks for a retained publish, ``Leafgate-Bridge`` marks a message a bridge
  brought in (never sent back out by that bridge), every other header becomes
  a user property. The bridge adds its marker as a user property (MQTT 5).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MARKER = "Leafgate-Bridge"
CONTENT_TYPE = "Content-Type"
RETAIN = "MQTT-Retain"
_NAME_FORBIDDEN = frozenset(": \t\r\n")


def valid_header_name(name: str) -> bool:
    bad = any(c in _NAME_FORBIDDEN or ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    return bool(name) and not bad


def _valid_value(value: str) -> bool:
    return "\r" not in value and "\n" not in value


@dataclass(frozen=True, slots=True)
class ToNats:
    headers: tuple[tuple[str, str], ...]
    skipped: int  # user properties that cannot be NATS headers


def to_nats_headers(
    bridge: str,
    user_properties: Iterable[tuple[str, str]],
    content_type: str | None,
    retain: bool,
) -> ToNats:
    headers: list[tuple[str, str]] = [(MARKER, bridge)]
    skipped = 0
    for name, value in user_properties:
        if name.lower() == MARKER.lower():
            continue  # ours is set above; a foreign one would confuse loop checks
        if valid_header_name(name) and _valid_value(value) and value == value.strip(" \t"):
            headers.append((name, value))
        else:
            skipped += 1
    if content_type is not None and _valid_value(content_type):
        headers.append((CONTENT_TYPE, content_type))
    if retain:
        headers.append((RETAIN, "true"))
    return ToNats(tuple(headers), skipped)


@dataclass(frozen=True, slots=True)
class ToMqtt:
    user_properties: tuple[tuple[str, str], ...]
    content_type: str | None
    retain: bool
    marker: str | None  # the Leafgate-Bridge header, if any


def to_mqtt_properties(headers: Sequence[tuple[str, str]]) -> ToMqtt:
    props: list[tuple[str, str]] = []
    content_type: str | None = None
    retain = False
    marker: str | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == CONTENT_TYPE.lower():
            content_type = value
        elif lower == RETAIN.lower():
            retain = value.strip().lower() in ("true", "1", "yes")
        elif lower == MARKER.lower():
            marker = value
        else:
            props.append((name, value))
    return ToMqtt(tuple(props), content_type, retain, marker)


def marked_by(user_properties: Iterable[tuple[str, str]]) -> str | None:
    """The bridge name an MQTT message's marker property names, if any."""
    for name, value in user_properties:
        if name.lower() == MARKER.lower():
            return value
    return None
