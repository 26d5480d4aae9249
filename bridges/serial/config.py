"""``[[bridges.serial]]``: one entry per port (reference in bridges/serial/README.md).

Pure: ``parse_serial_port`` checks every key and raises ``ConfigError`` naming
the exact key (``bridges.serial[1].framing``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridges.serial.framing import FRAMINGS
from bridges.serial.template import SubjectTemplate, TemplateError, is_valid_token, parse_template
from edge.config import ConfigError
from edge.subjects import is_valid_subject

BY_ID = "/dev/serial/by-id/"
PARITIES = ("none", "even", "odd", "mark", "space")
LINE_ENDINGS = {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r"}


@dataclass(frozen=True)
class SerialPortConfig:
    name: str
    path: str  # a device path; ``id = "..."`` in the file becomes /dev/serial/by-id/...
    baud: int = 9600
    bytesize: int = 8
    parity: str = "none"
    stopbits: float = 1
    xonxoff: bool = False
    rtscts: bool = False
    framing: str = "lines"
    max_frame: int = 4096
    columns: tuple[str, ...] = ()
    csv_delimiter: str = ","
    length_bytes: int = 2
    subject: SubjectTemplate = field(default_factory=lambda: parse_template("serial.{port}"))
    downlink: str = ""  # subject whose messages are written to the port ("" = none)
    reply_timeout: float = 1.0
    line_ending: bytes = b"\r\n"
    # Frames per second published; beyond: dropped as flood. The default is
    # above the most a 115200-baud line can carry (5760 two-byte lines/s).
    max_rate: float = 10000.0
    burst: int = 5000
    retry_min: float = 0.5
    retry_max: float = 10.0


def _str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type(value).__name__}")
    return value


def _int(lo: int, hi: int) -> Callable[[str, object], int]:
    def check(key: str, value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(key, f"expected an integer from {lo} to {hi}, got {value!r}")
        return value

    return check


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ConfigError(key, f"expected seconds (0 < s <= 3600), got {value!r}")
    return float(value)


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        if value not in options:
            raise ConfigError(key, f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return check


def _name(key: str, value: object) -> str:
    text = _str(key, value)
    if not is_valid_token(text):
        raise ConfigError(key, "expected a subject token (no dots, spaces, * or >)")
    return text


def _path(key: str, value: object) -> str:
    text = _str(key, value)
    if not text.startswith("/"):
        raise ConfigError(key, "expected an absolute device path")
    return text


def _by_id(key: str, value: object) -> str:
    text = _str(key, value)
    if not text or "/" in text:
        raise ConfigError(key, "expected a name in /dev/serial/by-id/ (no slashes)")
    return BY_ID + text


def _stopbits(key: str, value: object) -> float:
    if value not in (1, 1.5, 2) or isinstance(value, bool):
        raise ConfigError(key, f"expected 1, 1.5 or 2, got {value!r}")
    return float(value)


def _columns(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "expected a non-empty list of column names")
    names = tuple(_str(f"{key}[{i}]", item) for i, item in enumerate(value))
    if len(set(names)) != len(names):
        raise ConfigError(key, "column names must be unique")
    return names


def _delimiter(key: str, value: object) -> str:
    text = _str(key, value)
    if len(text) != 1 or text in '\r\n"':
        raise ConfigError(key, "expected one character (not a quote or line end)")
    return text


def _template(key: str, value: object) -> SubjectTemplate:
    try:
        return parse_template(_str(key, value))
    except TemplateError as exc:
        raise ConfigError(key, str(exc)) from None


def _downlink(key: str, value: object) -> str:
    text = _str(key, value)
    if not is_valid_subject(text.encode()):
        raise ConfigError(key, f"{text!r} is not a valid subject")
    return text


def _line_ending(key: str, value: object) -> bytes:
    return LINE_ENDINGS[_choice(tuple(LINE_ENDINGS))(key, value)]


def _rate(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(key, f"expected frames per second above 0, got {value!r}")
    return float(value)


_KEYS: dict[str, tuple[str, Callable[[str, object], Any]]] = {
    "name": ("name", _name),
    "path": ("path", _path),
    "id": ("path", _by_id),
    "baud": ("baud", _int(50, 4_000_000)),
    "bytesize": ("bytesize", _int(5, 8)),
    "parity": ("parity", _choice(PARITIES)),
    "stopbits": ("stopbits", _stopbits),
    "xonxoff": ("xonxoff", _bool),
    "rtscts": ("rtscts", _bool),
    "framing": ("framing", _choice(FRAMINGS)),
    "max_frame": ("max_frame", _int(16, 1 << 20)),
    "columns": ("columns", _columns),
    "csv_delimiter": ("csv_delimiter", _delimiter),
    "length_bytes": ("length_bytes", _int(1, 4)),
    "subject": ("subject", _template),
    "downlink": ("downlink", _downlink),
    "reply_timeout": ("reply_timeout", _seconds),
    "line_ending": ("line_ending", _line_ending),
    "max_rate": ("max_rate", _rate),
    "burst": ("burst", _int(1, 1_000_000)),
    "retry_min": ("retry_min", _seconds),
    "retry_max": ("retry_max", _seconds),
}


def parse_serial_port(entry: Mapping[str, object], key: str) -> SerialPortConfig:
    """A SerialPortConfig from one ``[[bridges.serial]]`` table."""
    values: dict[str, Any] = {}
    for name, value in entry.items():
        if name not in _KEYS:
            raise ConfigError(f"{key}.{name}", "unknown key")
        field_name, check = _KEYS[name]
        values[field_name] = check(f"{key}.{name}", value)
    for required in ("name", "path"):
        if required not in values:
            raise ConfigError(f"{key}.{required}", "required" + (" (or id)" * (required == "path")))
    if "path" in entry and "id" in entry:
        raise ConfigError(f"{key}.id", "give path or id, not both")
    config = SerialPortConfig(**values)
    _check_combination(config, entry, key)
    return config


def _check_combination(config: SerialPortConfig, entry: Mapping[str, object], key: str) -> None:
    if config.length_bytes == 3:
        raise ConfigError(f"{key}.length_bytes", "expected 1, 2 or 4")
    if config.framing == "csv" and not config.columns:
        raise ConfigError(f"{key}.columns", 'required for framing = "csv"')
    if config.framing != "csv" and "columns" in entry:
        raise ConfigError(f"{key}.columns", 'only for framing = "csv"')
    if config.framing == "length" and config.max_frame >= 1 << (8 * config.length_bytes):
        raise ConfigError(
            f"{key}.max_frame", f"does not fit a {config.length_bytes}-byte length header"
        )
    available = _fields(config)
    for name in config.subject.fields:
        if available is not None and name not in available:
            raise ConfigError(f"{key}.subject", f"framing {config.framing!r} has no field {name!r}")
    if config.retry_max < config.retry_min:
        raise ConfigError(f"{key}.retry_max", "must not be below retry_min")


def _fields(config: SerialPortConfig) -> frozenset[str] | None:
    """The fields a framing can fill (None: any, decided per frame)."""
    if config.framing == "json":
        return None
    if config.framing == "csv":
        return frozenset(config.columns)
    if config.framing == "nmea":
        return frozenset({"sentence", "talker", "type"})
    return frozenset()
