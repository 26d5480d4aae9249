"""Server configuration: frozen dataclasses, loaded from TOML and command-line flags.

Names follow nats-server's configuration where one exists (``max_payload``,
``ping_interval``, ``authorization.timeout`` ...), so an operator who knows
nats-server can read a leafgate config file without a manual.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from edge.subjects import is_valid_subject

KIB = 1024
MIB = 1024 * 1024

DEFAULT_PORT = 4222
DEFAULT_HOST = "127.0.0.1"
DEFAULT_LEAF_PORT = 7422  # nats-server's leafnode port

# URL schemes of a leafnode remote; "nats" is a synonym of "nats-leaf", "tls"
# asks for TLS.
LEAF_URL_SCHEMES = ("nats-leaf", "nats", "tls")


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
    ``tls://host:port`` (``nats://`` is accepted as a synonym of ``nats-leaf://``);
    ``parse_leaf_url`` reads them. The port defaults to 7422. A ``user:pass@``
    in a URL is that URL's user and password (percent-decoded); it excludes the
    ``user``/``password``/``token``/``credentials``/``nkey_seed`` settings.

    TLS is used for a URL when it is ``tls://`` or when ``tls`` is set.
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
        return _quote(value if len(value) <= 60 else value[:57] + "...")
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


@dataclass(frozen=True)
class LeafURL:
    """A parsed leafnode URL (see ``parse_leaf_url``)."""

    scheme: str  # lower case, one of LEAF_URL_SCHEMES
    host: str  # IPv6 addresses without brackets
    port: int
    user: str | None  # percent-decoded; set together with password
    password: str | None
    tls: bool  # the scheme is tls://


_LEAF_URL_EXAMPLE = '"nats-leaf://hub.example:7422"'


def parse_leaf_url(url: object) -> LeafURL:
    """Read ``nats-leaf://[user:password@]host[:port]`` (also ``nats://``, ``tls://``).

    The port defaults to 7422; the user and password are percent-decoded (a
    password holding ``@``, ``:`` or ``/`` is written ``%40``, ``%3A``, ``%2F``).
    Raises ValueError saying what is wrong; the message never contains the
    password.
    """
    if not isinstance(url, str):
        raise _Invalid(f"expected a URL like {_LEAF_URL_EXAMPLE}, got {_show(url)}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise _Invalid(f"expected a URL like {_LEAF_URL_EXAMPLE}, got {_show_url(url)}")
    scheme = scheme.lower()
    if scheme in ("ws", "wss"):
        raise _Invalid(f"{scheme}:// (websocket) leafnode links are not supported yet")
    if scheme not in LEAF_URL_SCHEMES:
        raise _Invalid(
            f'scheme "{scheme}" is not supported; use nats-leaf://, nats:// or tls://, '
            f"like {_LEAF_URL_EXAMPLE}"
        )
    if any(c.isspace() for c in url):
        raise _Invalid(f"must not contain spaces, got {_show_url(url)}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _Invalid(f"{exc}, got {_show_url(url)}") from None
    if parts.path not in ("", "/") or "?" in rest or "#" in rest:
        if "@" in parts.path + parts.query + parts.fragment:
            raise _Invalid(
                "a / ? or # in the user or password must be percent-encoded "
                f"(%2F, %3F, %23), got {_show_url(url)}"
            )
        raise _Invalid(f"must be only scheme://host:port, got {_show_url(url)}")

    user: str | None = None
    password: str | None = None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        try:
            user = unquote(user_text, errors="strict")
            password = unquote(password_text, errors="strict")
        except UnicodeDecodeError:
            raise _Invalid("user:password is not valid percent-encoded UTF-8") from None
        if not user:
            raise _Invalid(f"has an empty user name, got {_show_url(url)}")
        if not colon or not password:
            raise _Invalid(
                f"has a user but no password (write user:password@host), got {_show_url(url)}"
            )

    host, port = _split_leaf_hostport(hostport, url)
    return LeafURL(scheme, host, port, user, password, tls=scheme == "tls")


def _split_leaf_hostport(hostport: str, url: str) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _Invalid(f"unclosed [ in the host, got {_show_url(url)}")
        host, after = hostport[1:end], hostport[end + 1 :]
        if after and not after.startswith(":"):
            raise _Invalid(f"unexpected text after the host, got {_show_url(url)}")
        has_port, port_text = bool(after), after[1:]
    else:
        if hostport.count(":") > 1:
            raise _Invalid(
                f'an IPv6 address needs brackets, like "nats-leaf://[::1]:7422"; '
                f"got {_show_url(url)}"
            )
        host, colon, port_text = hostport.partition(":")
        has_port = bool(colon)
    if not host:
        raise _Invalid(f"has no host, got {_show_url(url)}")
    if not has_port:
        return host.lower(), DEFAULT_LEAF_PORT
    if not port_text:
        raise _Invalid(f"has an empty port, got {_show_url(url)}")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _Invalid(f"port must be 1..65535, got {_show_url(url)}")
    return host.lower(), int(port_text)


def mask_url(url: str) -> str:
    """*url* with the password of a ``user:password@`` replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found >= 0:
            end = min(end, found)
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}://{masked}@{hostport}{rest[end:]}"


def _quote(text: str) -> str:
    """*text* as a TOML string, in full (file paths must not be shortened)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _show_url(url: str) -> str:
    """*url* for an error message: everything before the last ``@`` is hidden,
    as a malformed URL may hold a password where ``mask_url`` does not look."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    if "@" in rest:
        url = f"{head}{sep}***@{rest.rpartition('@')[2]}"
    return _show(url)


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
_SERVER, _AUTH, _LOG, _LEAF = "server", "auth", "log", "leafnodes"
# Sections of the builder of one leafnodes.remotes entry.
_REMOTE, _TLS = "remote", "tls"


class _Builder:
    """Keyword arguments for the config dataclasses, collected key by key."""

    def __init__(self, *sections: str) -> None:
        self.sections: dict[str, dict[str, Any]] = {
            name: {} for name in sections or (_SERVER, _AUTH, _LOG, _LEAF)
        }
        # (section, field) -> the config key that set it, to report two keys
        # that set the same thing (``listen`` and ``port``, ``logfile`` and
        # ``log_file``).
        self.origin: dict[tuple[str, str], str] = {}
        # One builder per leafnodes.remotes entry, with its key
        # ("leafnodes.remotes[0]").
        self.remotes: list[tuple[str, _Builder]] = []

    def set(self, section: str, name: str, value: Any, key: str) -> None:
        previous = self.origin.get((section, name))
        if previous is not None:
            raise ConfigError(key, f"conflicts with {previous}; set only one of them")
        self.origin[(section, name)] = key
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


def _string_list(section: str, name: str, *, single: bool) -> _Handler:
    """An array of strings, stored as a tuple; with *single*, a string is also
    accepted (as nats-server accepts ``deny_exports = "a.>"``)."""

    def handle(builder: _Builder, key: str, value: object) -> None:
        if single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise _Invalid(f"expected an array of strings, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{key}[{i}]", f"expected a string, got {_show(item)}")
        builder.set(section, name, tuple(value), key)

    return handle


def _single_url(builder: _Builder, key: str, value: object) -> None:
    builder.set(_REMOTE, "urls", (_to_str(value),), key)


def _tls_table(handlers: Mapping[str, _Handler]) -> _Handler:
    """``[leafnodes.remotes.tls]``: even an empty table turns TLS on."""
    walk_table = _table(handlers)

    def handle(builder: _Builder, key: str, value: object) -> None:
        walk_table(builder, key, value)
        builder.set(_REMOTE, "tls", True, key)

    return handle


def _remotes(builder: _Builder, key: str, value: object) -> None:
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of tables ([[{key}]]), got {_show(value)}")
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(item_key, f"expected a table, got {_show(item)}")
        remote = _Builder(_REMOTE, _TLS)
        _walk(remote, item, _REMOTE_KEYS, prefix=item_key + ".")
        builder.remotes.append((item_key, remote))


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
    import difflib  # only on an error: keeps start-up fast

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

_TLS_CLIENT_KEYS: dict[str, _Handler] = {
    "ca_file": _setting(_TLS, "ca_file", _to_str),
    "cert_file": _setting(_TLS, "cert_file", _to_str),
    "key_file": _setting(_TLS, "key_file", _to_str),
    "handshake_first": _setting(_TLS, "handshake_first", _to_bool),
    "server_name": _setting(_TLS, "server_name", _to_str),
    "insecure_skip_verify": _setting(_TLS, "insecure_skip_verify", _to_bool),
    "insecure": _setting(_TLS, "insecure_skip_verify", _to_bool),  # nats-server's name
}

# One [[leafnodes.remotes]] entry. Keys differing from the RemoteConfig field:
# url/urls -> urls, nkey -> nkey_seed, reconnect -> reconnect_delay.
_REMOTE_KEYS: dict[str, _Handler] = {
    "url": _single_url,
    "urls": _string_list(_REMOTE, "urls", single=False),
    "account": _setting(_REMOTE, "account", _to_str),
    "credentials": _setting(_REMOTE, "credentials", _to_str),
    "nkey": _setting(_REMOTE, "nkey_seed", _to_str),
    "user": _setting(_REMOTE, "user", _to_str),
    "password": _setting(_REMOTE, "password", _to_str),
    "token": _setting(_REMOTE, "token", _to_str),
    "tls": _tls_table(_TLS_CLIENT_KEYS),
    "allow_exports": _string_list(_REMOTE, "allow_exports", single=True),
    "deny_exports": _string_list(_REMOTE, "deny_exports", single=True),
    "allow_imports": _string_list(_REMOTE, "allow_imports", single=True),
    "deny_imports": _string_list(_REMOTE, "deny_imports", single=True),
    "reconnect": _setting(_REMOTE, "reconnect_delay", parse_duration),
    "reconnect_max": _setting(_REMOTE, "reconnect_max", parse_duration),
    "use_advertised_urls": _setting(_REMOTE, "use_advertised_urls", _to_bool),
    "connect_timeout": _setting(_REMOTE, "connect_timeout", parse_duration),
    "ping_interval": _setting(_REMOTE, "ping_interval", parse_duration),
    "ping_max": _setting(_REMOTE, "ping_max", _to_int),
}

_LEAFNODES_KEYS: dict[str, _Handler] = {
    # The reconnect delay of every remote that does not set its own.
    "reconnect": _setting(_LEAF, "reconnect_delay", parse_duration),
    "remotes": _remotes,
}

# Top-level keys. To support a new table (store, mqtt, serial, accounts): add
# its dataclass and a builder section, write a dict of key -> handler like
# _AUTHORIZATION_KEYS, and register it here with _table().
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
    "leafnodes": _table(_LEAFNODES_KEYS),
}


def config_from_dict(data: Mapping[str, object], file: str | None = None) -> ServerConfig:
    """A validated ServerConfig from parsed TOML. Errors do not carry ``file``."""
    builder = _Builder()
    _walk(builder, data, _TOP_LEVEL_KEYS, prefix="")
    remotes, url_keys = _build_remotes(builder)
    config = ServerConfig(
        **builder.sections[_SERVER],
        auth=AuthConfig(**builder.sections[_AUTH]),
        leafnodes=LeafnodesConfig(remotes=remotes),
        log=LogConfig(**builder.sections[_LOG]),
        config_file=file,
    )
    _validate(config, url_keys)
    return config


def _build_remotes(builder: _Builder) -> tuple[tuple[RemoteConfig, ...], list[str]]:
    """The RemoteConfigs, and for each the key its URLs came from ("url"/"urls")."""
    default_delay: float | None = builder.sections[_LEAF].get("reconnect_delay")
    if default_delay is not None:
        key = builder.origin[(_LEAF, "reconnect_delay")]
        _check_seconds(key, default_delay, allow_zero=False)
        if not builder.remotes:
            raise ConfigError(
                key, "set, but there is no [[leafnodes.remotes]] entry to apply it to"
            )
    remotes: list[RemoteConfig] = []
    url_keys: list[str] = []
    for item_key, draft in builder.remotes:
        kwargs = dict(draft.sections[_REMOTE])
        if "urls" not in kwargs:
            raise ConfigError(item_key, f"needs url or urls, like url = {_LEAF_URL_EXAMPLE}")
        url_keys.append(draft.origin[(_REMOTE, "urls")].rpartition(".")[2])
        if kwargs.pop("tls", False):
            kwargs["tls"] = TLSClientConfig(**draft.sections[_TLS])
        if default_delay is not None:
            kwargs.setdefault("reconnect_delay", default_delay)
        remote = RemoteConfig(**kwargs)
        # Without reconnect_max, a reconnect delay above the default cap is
        # also the cap (a fixed delay, as nats-server's reconnect is).
        if "reconnect_max" not in kwargs and remote.reconnect_max < remote.reconnect_delay:
            remote = dataclasses.replace(remote, reconnect_max=remote.reconnect_delay)
        remotes.append(remote)
    return tuple(remotes), url_keys


def load_config(path: str) -> ServerConfig:
    """Read and validate a TOML config file. Raises ConfigError naming the key."""
    import tomllib  # imported here: a server started without a file never pays for it

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
    """Check ranges and cross-field rules. Errors name the config-file key.

    Reads nothing but the credentials, nkey and TLS files of the leafnode
    remotes, which must exist and be readable.
    """
    _validate(config, ())


def _validate(config: ServerConfig, url_keys: Sequence[str]) -> None:
    """``validate``; *url_keys* says, per remote, whether its URLs were given as
    ``url`` or ``urls`` in the file (default ``urls``), for error messages."""
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
    _validate_leafnodes(config.leafnodes, url_keys)
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


def _validate_leafnodes(leafnodes: LeafnodesConfig, url_keys: Sequence[str]) -> None:
    if not isinstance(leafnodes, LeafnodesConfig):
        raise _fail("leafnodes", f"expected a LeafnodesConfig, got {_show(leafnodes)}")
    if not isinstance(leafnodes.remotes, tuple | list):
        raise _fail("leafnodes.remotes", f"expected a tuple, got {_show(leafnodes.remotes)}")
    for i, remote in enumerate(leafnodes.remotes):
        prefix = f"leafnodes.remotes[{i}]"
        if not isinstance(remote, RemoteConfig):
            raise _fail(prefix, f"expected a RemoteConfig, got {_show(remote)}")
        _validate_remote(remote, prefix, url_keys[i] if i < len(url_keys) else "urls")


def _validate_remote(remote: RemoteConfig, prefix: str, url_key: str) -> None:
    """One remote; *url_key* is "url" (a single URL) or "urls"."""
    urls = remote.urls
    if not isinstance(urls, tuple | list):
        raise _fail(f"{prefix}.urls", f"expected a tuple of URLs, got {_show(urls)}")
    if not urls:
        raise _fail(f"{prefix}.urls", f"must list at least one URL, like {_LEAF_URL_EXAMPLE}")
    url_user_key: str | None = None  # the first URL carrying user:password
    for j, url in enumerate(urls):
        key = f"{prefix}.url" if url_key == "url" else f"{prefix}.urls[{j}]"
        try:
            parsed = parse_leaf_url(url)
        except _Invalid as exc:
            raise _fail(key, str(exc)) from None
        if parsed.user is not None and url_user_key is None:
            url_user_key = key

    _check_text(f"{prefix}.account", remote.account, optional=True)
    if remote.account is not None and any(c.isspace() for c in remote.account):
        raise _fail(f"{prefix}.account", f"must not contain spaces, got {_show(remote.account)}")
    _validate_remote_auth(remote, prefix, url_user_key)
    if remote.tls is not None:
        _validate_tls_client(remote.tls, f"{prefix}.tls")

    for name in ("allow_exports", "deny_exports", "allow_imports", "deny_imports"):
        _check_subjects(f"{prefix}.{name}", getattr(remote, name))

    delay = _check_seconds(f"{prefix}.reconnect", remote.reconnect_delay, allow_zero=False)
    cap = _check_seconds(f"{prefix}.reconnect_max", remote.reconnect_max, allow_zero=False)
    if cap < delay:
        raise _fail(
            f"{prefix}.reconnect_max",
            f"must be at least reconnect ({delay:g}s), got {cap:g}s",
        )
    if not isinstance(remote.use_advertised_urls, bool):
        raise _fail(
            f"{prefix}.use_advertised_urls",
            f"expected true or false, got {_show(remote.use_advertised_urls)}",
        )
    _check_seconds(f"{prefix}.connect_timeout", remote.connect_timeout, allow_zero=False)
    _check_seconds(f"{prefix}.ping_interval", remote.ping_interval, allow_zero=False)
    _check_int(f"{prefix}.ping_max", remote.ping_max, 1)


def _validate_remote_auth(remote: RemoteConfig, prefix: str, url_user_key: str | None) -> None:
    """At most one way to authenticate: credentials, nkey, user/password (as
    keys or in a URL) or token."""
    for name in ("credentials", "nkey_seed", "user", "token"):
        key = "nkey" if name == "nkey_seed" else name
        _check_text(f"{prefix}.{key}", getattr(remote, name), optional=True)
    if remote.password is not None:
        _check_text(f"{prefix}.password", remote.password, optional=False)
    if remote.user is not None and url_user_key is not None:
        raise _fail(
            f"{prefix}.user",
            f"cannot be combined with the user:password in {url_user_key}; set only one of them",
        )
    methods = [
        (key, label)
        for key, label, present in (
            (f"{prefix}.credentials", "credentials", remote.credentials is not None),
            (f"{prefix}.nkey", "nkey", remote.nkey_seed is not None),
            (f"{prefix}.user", "user", remote.user is not None),
            (url_user_key, "the user:password in the URL", url_user_key is not None),
            (f"{prefix}.token", "token", remote.token is not None),
        )
        if present and key is not None
    ]
    if len(methods) > 1:
        key = methods[1][0]
        what = "its user:password cannot" if key == url_user_key else "cannot"
        raise _fail(key, f"{what} be combined with {methods[0][1]}; use one way to authenticate")
    if remote.user is not None and remote.password is None:
        raise _fail(f"{prefix}.user", "set without a password")
    if remote.password is not None and remote.user is None:
        raise _fail(f"{prefix}.password", "set without a user")
    if remote.credentials is not None:
        _check_readable(f"{prefix}.credentials", remote.credentials)
    if remote.nkey_seed is not None:
        _check_readable(f"{prefix}.nkey", remote.nkey_seed)


def _validate_tls_client(tls: TLSClientConfig, prefix: str) -> None:
    if not isinstance(tls, TLSClientConfig):
        raise _fail(prefix, f"expected a TLSClientConfig, got {_show(tls)}")
    for name in ("ca_file", "cert_file", "key_file", "server_name"):
        _check_text(f"{prefix}.{name}", getattr(tls, name), optional=True)
    for name in ("handshake_first", "insecure_skip_verify"):
        if not isinstance(getattr(tls, name), bool):
            raise _fail(
                f"{prefix}.{name}", f"expected true or false, got {_show(getattr(tls, name))}"
            )
    if tls.server_name is not None and any(c.isspace() for c in tls.server_name):
        raise _fail(
            f"{prefix}.server_name", f"must not contain spaces, got {_show(tls.server_name)}"
        )
    if tls.cert_file is not None and tls.key_file is None:
        raise _fail(f"{prefix}.cert_file", "set without key_file (the certificate's private key)")
    if tls.key_file is not None and tls.cert_file is None:
        raise _fail(f"{prefix}.key_file", "set without cert_file")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None:
            _check_readable(f"{prefix}.{name}", path)


def _check_subjects(key: str, subjects: object) -> None:
    if not isinstance(subjects, tuple | list):
        raise _fail(key, f"expected a tuple of subjects, got {_show(subjects)}")
    for j, subject in enumerate(subjects):
        if not isinstance(subject, str):
            raise _fail(f"{key}[{j}]", f"expected a string, got {_show(subject)}")
        try:
            valid = is_valid_subject(subject.encode("utf-8"))
        except UnicodeEncodeError:
            valid = False
        if not valid:
            raise _fail(f"{key}[{j}]", f"not a valid subject: {_show(subject)}")


def _check_readable(key: str, path: str) -> None:
    """*path* is a regular file we can open for reading (checked now rather
    than at the first connection to the hub)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _fail(key, f"{_quote(path)} is not a regular file")
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _fail(key, f"cannot read {_quote(path)}: {exc.strerror or exc}") from None


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

    Keys are ServerConfig field names. ``auth``, ``leafnodes`` and ``log`` may
    be given as a mapping of field changes, merged into the current
    AuthConfig/LeafnodesConfig/LogConfig.
    An unknown field name is a TypeError (a programming error, not a config
    error). Validation errors carry no file name: the value may come from a
    flag rather than the file.
    """
    for name in ("auth", "leafnodes", "log"):
        sub = changes.get(name)
        if isinstance(sub, Mapping):
            changes[name] = dataclasses.replace(getattr(config, name), **sub)
    updated = dataclasses.replace(config, **changes)
    validate(updated)
    return updated
