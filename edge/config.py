"""Server configuration: frozen dataclasses, loaded from TOML and command-line flags.

Names follow nats-server's configuration where one exists (``max_payload``,
``ping_interval``, ``authorization.timeout`` ...), so an operator who knows
nats-server can read a leafgate config file without a manual.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

KIB = 1024
MIB = 1024 * 1024

DEFAULT_PORT = 4222
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class AuthConfig:
    """Single-user or token authentication (``--user/--pass``, ``--auth``).

    The full authentication and authorization model (users with permissions,
    nkeys, JWT, accounts) builds on this later.
    """

    user: str | None = None
    password: str | None = None
    token: str | None = None
    timeout: float = 2.0

    @property
    def required(self) -> bool:
        return self.user is not None or self.token is not None


@dataclass(frozen=True)
class LogConfig:
    debug: bool = False
    trace: bool = False
    logfile: str | None = None
    # "auto": JSON when stderr is not a terminal (systemd/journald), console otherwise.
    format: str = "auto"


@dataclass(frozen=True)
class TLSClientConfig:
    """TLS towards the hub: CA to verify it, our certificate if it wants one."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # TLS before the hub's INFO (nats-server 2.10+ ``handshake_first``).
    handshake_first: bool = False
    # Name to verify in the hub's certificate; default: the URL's host.
    server_name: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class RemoteConfig:
    """One leafnode link to a hub (nats-server's ``leafnodes.remotes`` entry).

    ``urls`` take the forms ``nats-leaf://[user:pass@]host:port`` and
    ``tls://host:port`` (``nats://`` is accepted as a synonym of ``nats-leaf://``).
    """

    urls: tuple[str, ...]
    # Hub account the link must be bound to (checked against the hub's
    # ``remote_account``); None accepts whatever the credentials select.
    account: str | None = None
    credentials: str | None = None  # .creds file: user JWT + nkey seed
    nkey_seed: str | None = None  # path to a file holding an nkey seed ("SU...")
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls: TLSClientConfig | None = None
    # What local traffic may go up / what local interest may pull down.
    allow_exports: tuple[str, ...] = ()
    deny_exports: tuple[str, ...] = ()
    allow_imports: tuple[str, ...] = ()
    deny_imports: tuple[str, ...] = ()
    # Reconnect after a lost link or a refused dial: jittered exponential backoff
    # from reconnect_delay up to reconnect_max. The cap is low on purpose: a
    # refused dial costs the hub almost nothing, and the link must be back within
    # two seconds of the hub returning. (Credential and permission errors back off
    # on their own, much longer schedule.)
    reconnect_delay: float = 0.25
    reconnect_max: float = 1.5
    # Also try the leafnode URLs the hub advertises (cluster members).
    use_advertised_urls: bool = True
    connect_timeout: float = 5.0
    # Link keep-alive: edge links (LTE, Wi-Fi) die silently, so ping more often
    # than nats-server's 2-minute default.
    ping_interval: float = 20.0
    ping_max: int = 3


@dataclass(frozen=True)
class LeafnodesConfig:
    remotes: tuple[RemoteConfig, ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 or -1: a port chosen by the OS
    server_name: str | None = None
    # Network limits, same defaults as nats-server.
    max_payload: int = 1 * MIB
    max_control_line: int = 4 * KIB
    max_connections: int = 65536
    max_subscriptions: int = 0  # 0 = unlimited
    max_pending: int = 64 * MIB
    write_deadline: float = 10.0
    # Keep-alive.
    ping_interval: float = 120.0
    max_pings_out: int = 2
    # Lifecycle.
    lame_duck_duration: float = 120.0
    lame_duck_grace_period: float = 10.0
    shutdown_grace: float = 5.0
    # Monitoring (HTTP); None = off.
    http_host: str = DEFAULT_HOST
    http_port: int | None = None
    auth: AuthConfig = field(default_factory=AuthConfig)
    leafnodes: LeafnodesConfig = field(default_factory=LeafnodesConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Files written at start, as nats-server does (--ports_file_dir, -P/--pid).
    ports_file_dir: str | None = None
    pid_file: str | None = None
    # File the config was read from, for messages and reload.
    config_file: str | None = None


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

# Hard ceiling on max_payload, the same as nats-server's MAX_PAYLOAD_MAX_SIZE.
MAX_PAYLOAD_LIMIT = 64 * MIB

LOG_FORMATS = ("auto", "json", "console")


class ConfigError(Exception):
    """An invalid configuration value, naming the offending key.

    ``key`` is the key as written in the config file (``max_payload``,
    ``authorization.user``), or None for file-level problems (unreadable file,
    TOML syntax). ``file`` is the config file, or None when the value came from
    a command-line flag or code. ``reason`` is the message without the prefix.
    """

    def __init__(self, key: str | None, reason: str, file: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.file = file
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"config error in {self.file}" if self.file else "config error"
        if self.key:
            return f"{where}: {self.key}: {self.reason}"
        return f"{where}: {self.reason}"

    def __str__(self) -> str:
        return self._message()

    def with_file(self, file: str | None) -> ConfigError:
        return ConfigError(self.key, self.reason, file)


class _Invalid(ValueError):
    """A value does not convert; the caller knows the key and adds it."""


def _show(value: object) -> str:
    """A value as it would appear in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------
# Value conversion (shared by the TOML loader and the command line)
# ---------------------------------------------------------------------------

# Size suffixes, as nats-server's config parser reads them: "KB"/"MB"/"GB"/"TB"
# (and "KiB"/"Ki" ...) are powers of 1024, so "1MB" == 1048576 == "1MiB"; a bare
# "K"/"M"/"G"/"T" is a power of 1000. Case does not matter.
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgt", start=1):
    _SIZE_UNITS[_letter] = 1000**_i
    for _suffix in ("b", "i", "ib"):
        _SIZE_UNITS[_letter + _suffix] = 1024**_i
del _i, _letter, _suffix

_SIZE_RE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")
_SIZE_EXPECTED = 'expected a size like 1048576 or "1MB"'


def parse_size(value: object) -> int:
    """A byte count from an int or a string such as ``"1MB"``, ``"4KB"``, ``"1MiB"``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f"{_SIZE_EXPECTED}, got {_show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise _Invalid(f"must not be negative, got {value}")
        return value
    if value.strip().startswith("-"):
        raise _Invalid(f"must not be negative, got {_show(value)}")
    match = _SIZE_RE.fullmatch(value)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise _Invalid(f"{_SIZE_EXPECTED}, got {_show(value)}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


# Go's time.ParseDuration syntax, which nats-server uses: "500ms", "10s", "2m",
# "1h", "1m30s", "1.5h". A bare number (TOML int or float) is seconds.
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_EXPECTED = 'expected a duration like 10, "10s", "500ms" or "1m30s"'


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``"2m"`` or ``"1m30s"``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(f"{_DURATION_EXPECTED}, got {_show(value)}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Invalid(f"{_DURATION_EXPECTED}, got {_show(value)}")
        if value < 0:
            raise _Invalid(f"must not be negative, got {_show(value)}")
        return float(value)
    text = value.strip()
    if text.startswith("-"):
        raise _Invalid(f"must not be negative, got {_show(value)}")
    if text == "0":
        return 0.0
    total = 0.0
    pos = 0
    while pos < len(text) or pos == 0:
        match = _DURATION_PART_RE.match(text, pos)
        if match is None:
            raise _Invalid(f"{_DURATION_EXPECTED}, got {_show(value)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total


def parse_hostport(value: object) -> tuple[str | None, int]:
    """``"host:port"``, ``":port"``, ``"[::1]:port"`` or a bare port number.

    The host is None when the value names only a port (the configured or
    default host stays in place).
    """
    expected = 'expected "host:port", ":port" or a port number'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f"{expected}, got {_show(value)}")
    host: str | None = None
    if isinstance(value, int):
        port = value
    else:
        host_text, sep, port_text = value.strip().rpartition(":")
        if not sep:
            raise _Invalid(f"{expected}, got {_show(value)}")
        if host_text.startswith("[") and host_text.endswith("]"):
            host_text = host_text[1:-1]
        elif ":" in host_text:
            raise _Invalid(f'an IPv6 address needs brackets, like "[::1]:4222"; got {_show(value)}')
        host = host_text or None
        try:
            port = int(port_text)
        except ValueError:
            raise _Invalid(f"{expected}, got {_show(value)}") from None
    try:
        _check_port_value(port)
    except _Invalid as exc:
        raise _Invalid(f"port {exc}") from None
    return host, port


def _check_port_value(port: int) -> None:
    if port != -1 and not 0 <= port <= 65535:
        raise _Invalid(f"must be 0..65535 (or -1 for a random port), got {port}")


def _to_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    return value


def _to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _to_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_show(value)}")
    return value


# ---------------------------------------------------------------------------
# TOML loading: a table is a dict of key -> handler
# ---------------------------------------------------------------------------

# Sections of the builder, one per dataclass the loader fills in.
_SERVER, _AUTH, _LOG = "server", "auth", "log"


class _Builder:
    """Keyword arguments for the config dataclasses, collected key by key."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {_SERVER: {}, _AUTH: {}, _LOG: {}}
        # (section, field) -> the config key that set it, to report two keys
        # that set the same thing (``listen`` and ``port``, ``logfile`` and
        # ``log_file``).
        self._origin: dict[tuple[str, str], str] = {}

    def set(self, section: str, name: str, value: Any, key: str) -> None:
        previous = self._origin.get((section, name))
        if previous is not None:
            raise ConfigError(key, f"conflicts with {previous}; set only one of them")
        self._origin[(section, name)] = key
        self.sections[section][name] = value


# A handler converts one key's value and stores it in the builder. It gets the
# full dotted key for messages; it raises _Invalid (the key is added by
# _walk) or ConfigError.
_Handler = Callable[[_Builder, str, object], None]


def _setting(section: str, name: str, convert: Callable[[object], Any]) -> _Handler:
    def handle(builder: _Builder, key: str, value: object) -> None:
        builder.set(section, name, convert(value), key)

    return handle


def _hostport(section: str, host_field: str, port_field: str) -> _Handler:
    def handle(builder: _Builder, key: str, value: object) -> None:
        host, port = parse_hostport(value)
        if host is not None:
            builder.set(section, host_field, host, key)
        builder.set(section, port_field, port, key)

    return handle


def _table(handlers: Mapping[str, _Handler]) -> _Handler:
    """A handler for a sub-table such as ``[authorization]``."""

    def handle(builder: _Builder, key: str, value: object) -> None:
        if not isinstance(value, dict):
            raise _Invalid(f"expected a table, got {_show(value)}")
        _walk(builder, value, handlers, prefix=key + ".")

    return handle


def _walk(
    builder: _Builder, table: Mapping[str, object], handlers: Mapping[str, _Handler], prefix: str
) -> None:
    for name, value in table.items():
        key = prefix + name
        handler = handlers.get(name)
        if handler is None:
            raise ConfigError(key, _unknown_key_reason(name, handlers))
        try:
            handler(builder, key, value)
        except _Invalid as exc:
            raise ConfigError(key, str(exc)) from None


def _unknown_key_reason(name: str, handlers: Mapping[str, _Handler]) -> str:
    close = difflib.get_close_matches(name, list(handlers), n=1, cutoff=0.75)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return "unknown key"


_AUTHORIZATION_KEYS: dict[str, _Handler] = {
    "user": _setting(_AUTH, "user", _to_str),
    "password": _setting(_AUTH, "password", _to_str),
    "pass": _setting(_AUTH, "password", _to_str),  # nats-server accepts both
    "token": _setting(_AUTH, "token", _to_str),
    "timeout": _setting(_AUTH, "timeout", parse_duration),
}

# Top-level keys. To support a new table (leafnodes, store, mqtt, serial,
# accounts): add its dataclass and a builder section, write a dict of
# key -> handler like _AUTHORIZATION_KEYS, and register it here with _table().
_TOP_LEVEL_KEYS: dict[str, _Handler] = {
    "listen": _hostport(_SERVER, "host", "port"),
    "host": _setting(_SERVER, "host", _to_str),
    "net": _setting(_SERVER, "host", _to_str),  # nats-server's alias for host
    "port": _setting(_SERVER, "port", _to_int),
    "server_name": _setting(_SERVER, "server_name", _to_str),
    "max_payload": _setting(_SERVER, "max_payload", parse_size),
    "max_control_line": _setting(_SERVER, "max_control_line", parse_size),
    "max_connections": _setting(_SERVER, "max_connections", _to_int),
    "max_subscriptions": _setting(_SERVER, "max_subscriptions", _to_int),
    "max_pending": _setting(_SERVER, "max_pending", parse_size),
    "write_deadline": _setting(_SERVER, "write_deadline", parse_duration),
    "ping_interval": _setting(_SERVER, "ping_interval", parse_duration),
    "ping_max": _setting(_SERVER, "max_pings_out", _to_int),
    "lame_duck_duration": _setting(_SERVER, "lame_duck_duration", parse_duration),
    "lame_duck_grace_period": _setting(_SERVER, "lame_duck_grace_period", parse_duration),
    "shutdown_grace": _setting(_SERVER, "shutdown_grace", parse_duration),
    "http": _hostport(_SERVER, "http_host", "http_port"),
    "http_host": _setting(_SERVER, "http_host", _to_str),
    "http_port": _setting(_SERVER, "http_port", _to_int),
    "ports_file_dir": _setting(_SERVER, "ports_file_dir", _to_str),
    "pid_file": _setting(_SERVER, "pid_file", _to_str),
    "debug": _setting(_LOG, "debug", _to_bool),
    "trace": _setting(_LOG, "trace", _to_bool),
    "logfile": _setting(_LOG, "logfile", _to_str),
    "log_file": _setting(_LOG, "logfile", _to_str),
    "log_format": _setting(_LOG, "format", _to_str),
    "authorization": _table(_AUTHORIZATION_KEYS),
}


def config_from_dict(data: Mapping[str, object], file: str | None = None) -> ServerConfig:
    """A validated ServerConfig from parsed TOML. Errors do not carry ``file``."""
    builder = _Builder()
    _walk(builder, data, _TOP_LEVEL_KEYS, prefix="")
    config = ServerConfig(
        **builder.sections[_SERVER],
        auth=AuthConfig(**builder.sections[_AUTH]),
        log=LogConfig(**builder.sections[_LOG]),
        config_file=file,
    )
    validate(config)
    return config


def load_config(path: str) -> ServerConfig:
    """Read and validate a TOML config file. Raises ConfigError naming the key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(None, f"cannot read file: {exc.strerror or exc}", path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        hint = ""
        if not path.endswith(".toml"):
            hint = " (leafgate reads TOML, not nats-server's .conf syntax)"
        raise ConfigError(None, f"invalid TOML: {exc}{hint}", path) from None
    try:
        return config_from_dict(data, file=path)
    except ConfigError as exc:
        raise exc.with_file(path) from None


# ---------------------------------------------------------------------------
# Validation (TOML and command line)
# ---------------------------------------------------------------------------


def _fail(key: str, reason: str) -> ConfigError:
    return ConfigError(key, reason)


def _check_int(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, f"expected an integer, got {_show(value)}")
    if value < minimum:
        raise _fail(key, f"must be at least {minimum}, got {value}")
    return value


def _check_port(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, f"expected an integer, got {_show(value)}")
    try:
        _check_port_value(value)
    except _Invalid as exc:
        raise _fail(key, str(exc)) from None


def _check_seconds(key: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(key, f"expected a duration in seconds, got {_show(value)}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "must not be negative" if allow_zero else "must be greater than 0"
        raise _fail(key, f"{bound}, got {value}")
    return float(value)


def _check_text(key: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _fail(key, f"expected a string, got {_show(value)}")
    if not value.strip():
        raise _fail(key, "must not be empty")


def format_size(size: int) -> str:
    """``1048576`` -> ``"1MB"`` (1024-based, as nats-server writes sizes)."""
    for unit, factor in (("GB", 1024**3), ("MB", MIB), ("KB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def validate(config: ServerConfig) -> None:
    """Check ranges and cross-field rules. Errors name the config-file key."""
    _check_text("host", config.host, optional=False)
    _check_port("port", config.port)
    _check_text("server_name", config.server_name, optional=True)
    if config.server_name is not None and any(c.isspace() for c in config.server_name):
        raise _fail("server_name", f"must not contain spaces, got {_show(config.server_name)}")

    max_payload = _check_int("max_payload", config.max_payload, 1)
    if max_payload > MAX_PAYLOAD_LIMIT:
        raise _fail(
            "max_payload",
            f"must be at most {format_size(MAX_PAYLOAD_LIMIT)}, got {max_payload}",
        )
    max_pending = _check_int("max_pending", config.max_pending, 1)
    if max_payload > max_pending:
        raise _fail(
            "max_payload",
            f"{max_payload} is larger than max_pending ({max_pending})",
        )
    _check_int("max_control_line", config.max_control_line, 1)
    _check_int("max_connections", config.max_connections, 1)
    _check_int("max_subscriptions", config.max_subscriptions, 0)  # 0 = unlimited

    _check_seconds("write_deadline", config.write_deadline, allow_zero=False)
    _check_seconds("ping_interval", config.ping_interval, allow_zero=False)
    _check_int("ping_max", config.max_pings_out, 1)
    lame_duck = _check_seconds("lame_duck_duration", config.lame_duck_duration, allow_zero=False)
    grace = _check_seconds("lame_duck_grace_period", config.lame_duck_grace_period, allow_zero=True)
    if grace >= lame_duck:
        raise _fail(
            "lame_duck_grace_period",
            f"must be shorter than lame_duck_duration ({lame_duck:g}s), got {grace:g}s",
        )
    _check_seconds("shutdown_grace", config.shutdown_grace, allow_zero=True)

    _check_text("http_host", config.http_host, optional=False)
    if config.http_port is not None:
        _check_port("http_port", config.http_port)
    _check_text("ports_file_dir", config.ports_file_dir, optional=True)
    _check_text("pid_file", config.pid_file, optional=True)

    _validate_auth(config.auth)
    _validate_log(config.log)


def _validate_auth(auth: AuthConfig) -> None:
    _check_text("authorization.user", auth.user, optional=True)
    _check_text("authorization.token", auth.token, optional=True)
    if auth.password is not None and not isinstance(auth.password, str):
        raise _fail("authorization.password", f"expected a string, got {_show(auth.password)}")
    if auth.user is not None and auth.token is not None:
        raise _fail("authorization.token", "cannot be combined with user; use one or the other")
    if auth.user is not None and not auth.password:
        raise _fail("authorization.user", "set without a password")
    if auth.password is not None and auth.user is None:
        raise _fail("authorization.password", "set without a user")
    _check_seconds("authorization.timeout", auth.timeout, allow_zero=False)


def _validate_log(log: LogConfig) -> None:
    for key, flag in (("debug", log.debug), ("trace", log.trace)):
        if not isinstance(flag, bool):
            raise _fail(key, f"expected true or false, got {_show(flag)}")
    _check_text("logfile", log.logfile, optional=True)
    if log.format not in LOG_FORMATS:
        choices = ", ".join(f'"{f}"' for f in LOG_FORMATS)
        raise _fail("log_format", f"expected one of {choices}, got {_show(log.format)}")


def apply_overrides(config: ServerConfig, **changes: Any) -> ServerConfig:
    """A copy of *config* with *changes* applied, validated.

    Keys are ServerConfig field names. ``auth`` and ``log`` may be given as a
    mapping of field changes, merged into the current AuthConfig/LogConfig.
    An unknown field name is a TypeError (a programming error, not a config
    error). Validation errors carry no file name: the value may come from a
    flag rather than the file.
    """
    for name in ("auth", "log"):
        sub = changes.get(name)
        if isinstance(sub, Mapping):
            changes[name] = dataclasses.replace(getattr(config, name), **sub)
    updated = dataclasses.replace(config, **changes)
    validate(updated)
    return updated
