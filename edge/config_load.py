"""Configuration loading: a TOML file or a parsed dict to a validated ServerConfig.

Import ``load_config`` and ``config_from_dict`` from ``edge.config``, which
re-exports them (lazily: this module loads on first use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from edge.auth.settings import SecurityConfig, SettingError, holds_client_secrets, parse_security
from edge.config import (
    AuthConfig,
    BridgesConfig,
    ConfigError,
    ForwardGroup,
    LeafnodesConfig,
    LogConfig,
    RemoteConfig,
    ServerConfig,
    StoreConfig,
    TLSClientConfig,
    _check_seconds,
    _validate,
)
from edge.config_values import (
    _LEAF_URL_EXAMPLE,
    _Invalid,
    _show,
    _to_bool,
    _to_int,
    _to_str,
    parse_duration,
    parse_hostport,
    parse_size,
)

# ---------------------------------------------------------------------------
# TOML loading: a table is a dict of key -> handler
# ---------------------------------------------------------------------------

# Sections of the builder, one per dataclass the loader fills in.
_SERVER, _AUTH, _LOG, _LEAF, _STORE = "server", "auth", "log", "leafnodes", "store"
# Raw values of the security keys, by full key, parsed by edge.auth.settings.
_SECURITY = "security"
# Section holding the parsed [bridges] table (a BridgesConfig under "config").
_BRIDGES = "bridges"
# Section of the builder of one store.forward entry.
_GROUP = "group"
# Sections of the builder of one leafnodes.remotes entry.
_REMOTE, _TLS = "remote", "tls"


class _Builder:
    """Keyword arguments for the config dataclasses, collected key by key."""

    def __init__(self, *sections: str) -> None:
        self.sections: dict[str, dict[str, Any]] = {
            name: {}
            for name in sections or (_SERVER, _AUTH, _LOG, _LEAF, _STORE, _SECURITY, _BRIDGES)
        }
        # (section, field) -> the config key that set it, to report two keys
        # that set the same thing (``listen`` and ``port``, ``logfile`` and
        # ``log_file``).
        self.origin: dict[tuple[str, str], str] = {}
        # One builder per leafnodes.remotes entry, with its key
        # ("leafnodes.remotes[0]").
        self.remotes: list[tuple[str, _Builder]] = []
        # One builder per store.forward entry, with its key ("store.forward[0]").
        self.groups: list[tuple[str, _Builder]] = []

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


def _raw(builder: _Builder, key: str, value: object) -> None:
    """A security key, kept as written; edge.auth.settings parses them together."""
    builder.set(_SECURITY, key, value, key)


def _single_url(builder: _Builder, key: str, value: object) -> None:
    builder.set(_REMOTE, "urls", (_to_str(value),), key)


def _tls_table(handlers: Mapping[str, _Handler]) -> _Handler:
    """``[leafnodes.remotes.tls]``: even an empty table turns TLS on."""
    walk_table = _table(handlers)

    def handle(builder: _Builder, key: str, value: object) -> None:
        walk_table(builder, key, value)
        builder.set(_REMOTE, "tls", True, key)

    return handle


def _table_array(sections: tuple[str, ...], keys: Mapping[str, _Handler], into: str) -> _Handler:
    """A handler for an array of tables (``[[leafnodes.remotes]]``,
    ``[[store.forward]]``): one builder per entry, kept with its key
    ("leafnodes.remotes[0]") in the builder list named *into*."""

    def handle(builder: _Builder, key: str, value: object) -> None:
        if not isinstance(value, list):
            raise _Invalid(f"expected an array of tables ([[{key}]]), got {_show(value)}")
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(item_key, f"expected a table, got {_show(item)}")
            entry = _Builder(*sections)
            _walk(entry, item, keys, prefix=item_key + ".")
            getattr(builder, into).append((item_key, entry))

    return handle


def _bridges(builder: _Builder, key: str, value: object) -> None:
    """``[bridges]``: each bridge kind parses its own entries (bridges.config)."""
    from bridges.config import parse_bridges  # only when the file has bridges

    builder.set(_BRIDGES, "config", parse_bridges(value, key), key)


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
    "users": _raw,
    "default_permissions": _raw,
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
    "local_account": _setting(_REMOTE, "local_account", _to_str),
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

# One [[store.forward]] entry.
_FORWARD_KEYS: dict[str, _Handler] = {
    "subjects": _string_list(_GROUP, "subjects", single=True),
    "name": _setting(_GROUP, "name", _to_str),
    "durability": _setting(_GROUP, "durability", _to_str),
    "max_bytes": _setting(_GROUP, "max_bytes", parse_size),
    "max_msgs": _setting(_GROUP, "max_msgs", _to_int),
    "max_age": _setting(_GROUP, "max_age", parse_duration),
    "policy": _setting(_GROUP, "policy", _to_str),
    "confirm": _setting(_GROUP, "confirm", _to_str),
    "duplicate_window": _setting(_GROUP, "duplicate_window", parse_duration),
    "durable_flush": _setting(_GROUP, "durable_flush", _to_bool),
}

_STORE_KEYS: dict[str, _Handler] = {
    "dir": _setting(_STORE, "dir", _to_str),
    "min_free_disk": _setting(_STORE, "min_free_disk", parse_size),
    "max_file_size": _setting(_STORE, "max_file_size", parse_size),
    "gateway_id": _setting(_STORE, "gateway_id", _to_str),
    "max_inflight": _setting(_STORE, "max_inflight", _to_int),
    "ack_timeout": _setting(_STORE, "ack_timeout", parse_duration),
    "jetstream_domain": _setting(_STORE, "jetstream_domain", _to_str),
    "forward": _table_array((_GROUP,), _FORWARD_KEYS, "groups"),
}

_LEAFNODES_KEYS: dict[str, _Handler] = {
    # The reconnect delay of every remote that does not set its own.
    "reconnect": _setting(_LEAF, "reconnect_delay", parse_duration),
    "remotes": _table_array((_REMOTE, _TLS), _REMOTE_KEYS, "remotes"),
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
    "accounts": _raw,
    "no_auth_user": _raw,
    "tls": _raw,
    "operator": _raw,
    "system_account": _raw,
    "resolver": _raw,
    "resolver_preload": _raw,
    "leafnodes": _table(_LEAFNODES_KEYS),
    "store": _table(_STORE_KEYS),
    "bridges": _bridges,
}


def config_from_dict(data: Mapping[str, object], file: str | None = None) -> ServerConfig:
    """A validated ServerConfig from parsed TOML. Errors do not carry ``file``."""
    builder = _Builder()
    _walk(builder, data, _TOP_LEVEL_KEYS, prefix="")
    remotes, url_keys = _build_remotes(builder)
    config = ServerConfig(
        **builder.sections[_SERVER],
        auth=AuthConfig(**builder.sections[_AUTH]),
        security=_build_security(builder),
        leafnodes=LeafnodesConfig(remotes=remotes),
        store=_build_store(builder),
        bridges=builder.sections[_BRIDGES].get("config", BridgesConfig()),
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


def _build_security(builder: _Builder) -> SecurityConfig:
    try:
        return parse_security(builder.sections[_SECURITY])
    except SettingError as exc:
        raise ConfigError(exc.key, exc.reason) from None


def _build_store(builder: _Builder) -> StoreConfig:
    groups = []
    for i, (_key, draft) in enumerate(builder.groups):
        kwargs = dict(draft.sections[_GROUP])
        # An unnamed group is named after its place: "default" for the only or
        # first one, "group<N>" for the others.
        kwargs.setdefault("name", "default" if i == 0 else f"group{i}")
        if "subjects" not in kwargs:
            raise ConfigError(_key, 'needs subjects, like subjects = ["telemetry.>"]')
        groups.append(ForwardGroup(**kwargs))
    return StoreConfig(**builder.sections[_STORE], groups=tuple(groups))


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
        config = config_from_dict(data, file=path)
    except ConfigError as exc:
        raise exc.with_file(path) from None
    _check_secret_file(path, config)
    return config


def group_readable_secrets(config: ServerConfig) -> int | None:
    """The mode of ``config``'s file when it holds client passwords or tokens and
    its group may read it (to be warned about; readable by all is refused), else None."""
    import os
    import stat

    auth = config.auth
    path = config.config_file
    if not path or not holds_client_secrets(config.security, auth.password, auth.token):
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & stat.S_IRGRP else None


def _check_secret_file(path: str, config: ServerConfig) -> None:
    """A file holding client passwords or tokens must not be readable by everyone."""
    import os
    import stat

    auth = config.auth
    if not holds_client_secrets(config.security, auth.password, auth.token):
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & stat.S_IROTH:
        raise ConfigError(
            None,
            f"holds passwords or tokens but is readable by every user (mode {mode:04o}); "
            f"restrict it with: chmod 600 {path}",
            path,
        )
