"""Server configuration: frozen dataclasses, loaded from TOML and command-line flags.

Names follow nats-server's configuration where one exists (``max_payload``,
``ping_interval``, ``authorization.timeout`` ...), so an operator who knows
nats-server can read a leafgate config file without a manual.

The code is split in three modules, all imported from here: this one (the
dataclasses, ConfigError, validation, overrides), ``edge.config_values`` (value
parsers) and ``edge.config_load`` (the TOML loader, imported on first use).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.auth.settings import SecurityConfig
from edge.config_values import (
    _LEAF_URL_EXAMPLE,
    _check_port_value,
    _Invalid,
    _quote,
    _show,
)
from edge.config_values import DEFAULT_LEAF_PORT as DEFAULT_LEAF_PORT
from edge.config_values import KIB as KIB
from edge.config_values import LEAF_URL_SCHEMES as LEAF_URL_SCHEMES
from edge.config_values import MIB as MIB
from edge.config_values import LeafURL as LeafURL
from edge.config_values import format_size as format_size
from edge.config_values import mask_url as mask_url
from edge.config_values import parse_duration as parse_duration
from edge.config_values import parse_hostport as parse_hostport
from edge.config_values import parse_leaf_url as parse_leaf_url
from edge.config_values import parse_size as parse_size
from edge.subjects import is_valid_subject


def is_account_key(text: str) -> bool:
    """Whether ``text`` is an account public nkey (an operator-mode account's name)."""
    from edge.nkeys import PREFIX_ACCOUNT, NkeyError, public_key_bytes

    try:
        public_key_bytes(text, PREFIX_ACCOUNT)
    except NkeyError:
        return False
    return True


if TYPE_CHECKING:
    from edge.config_load import config_from_dict as config_from_dict
    from edge.config_load import load_config as load_config

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
    # Local account whose subjects this link carries (nats-server's remote
    # ``account``; here ``local_account``, as ``account`` above names the hub's).
    local_account: str | None = None
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


DURABILITY_MODES = ("fsync", "commit", "memory")
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "reject")
CONFIRM_MODES = ("auto", "jetstream", "link")


@dataclass(frozen=True)
class ForwardGroup:
    """Subjects whose messages are kept in the store until the hub confirmed them.

    ``durability`` (what a committed message survives, see store/README.md):
    ``fsync``: committed and fsynced per batch before it goes up (survives power
    loss); ``commit``: committed without waiting for fsync (survives a crash of
    leafgate, not of the machine); ``memory``: held in memory while the link is
    up and written to disk only when the link is down or the hub falls behind.

    Limits (0 = none) apply per group; ``policy`` says what happens when one is
    hit: drop the oldest stored message, drop the new one, or refuse it (the
    publisher gets an error). ``confirm``: ``jetstream`` waits for the hub
    stream's PubAck, ``link`` for the PONG answering a PING sent after the
    message, ``auto`` asks the hub whether a stream covers the subjects.
    """

    subjects: tuple[str, ...]
    name: str = "default"
    durability: str = "fsync"
    max_bytes: int = 0
    max_msgs: int = 0
    max_age: float = 0.0
    policy: str = "drop_oldest"
    confirm: str = "auto"
    # A publisher's repeated Nats-Msg-Id within this many seconds is not stored
    # again (its PubAck says "duplicate": true), as a JetStream stream does. 0: off.
    duplicate_window: float = 120.0
    # A PONG only after every message of this group the connection published
    # before its PING is committed: a plain client's flush() is then a barrier.
    durable_flush: bool = False


@dataclass(frozen=True)
class StoreConfig:
    """The store-and-forward buffer (``[store]`` with ``[[store.forward]]`` groups)."""

    # Directory of the SQLite store; None: $STATE_DIRECTORY (systemd), else
    # $XDG_STATE_HOME/leafgate, else ~/.local/state/leafgate.
    dir: str | None = None
    groups: tuple[ForwardGroup, ...] = ()
    # Below this much free space on the store's file system, new messages are
    # handled as if their group were full.
    min_free_disk: int = 64 * MIB
    # Hard cap on the store file (0: none); reaching it is handled as a full disk.
    max_file_size: int = 0
    # Id that names this gateway in Nats-Msg-Id (``<gateway>:<seq>``); None:
    # the one created with the store (host name and a random suffix).
    gateway_id: str | None = None
    # Messages sent to the hub and not yet confirmed; resent after ack_timeout.
    max_inflight: int = 4096
    ack_timeout: float = 5.0
    # JetStream domain of the hub, for the stream lookup ($JS.<domain>.API...);
    # None: the domain the hub announces, else $JS.API.
    jetstream_domain: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.groups)


@dataclass(frozen=True)
class BridgesConfig:
    """``[[bridges.mqtt]]`` and ``[[bridges.serial]]`` entries (parsed by bridges.config)."""

    # MqttBridgeConfig and SerialPortConfig entries, in file order.
    mqtt: tuple[Any, ...] = ()
    serial: tuple[Any, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.mqtt or self.serial)


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
    # Users, accounts, client-port TLS, operator mode (edge.auth.settings).
    security: SecurityConfig = field(default_factory=SecurityConfig)
    leafnodes: LeafnodesConfig = field(default_factory=LeafnodesConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    bridges: BridgesConfig = field(default_factory=BridgesConfig)
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
    _validate_security(config)
    _validate_leafnodes(config.leafnodes, url_keys)
    _validate_store(config.store)
    if not isinstance(config.bridges, BridgesConfig):
        raise _fail("bridges", f"expected a BridgesConfig, got {_show(config.bridges)}")
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


def _validate_security(config: ServerConfig) -> None:
    security = config.security
    if not isinstance(security, SecurityConfig):
        raise _fail("authorization", f"expected a SecurityConfig, got {_show(security)}")
    if security.users and (config.auth.user is not None or config.auth.token is not None):
        what = "user" if config.auth.user is not None else "token"
        raise _fail(f"authorization.{what}", "cannot be combined with authorization.users")
    if security.operator is not None and config.auth.required:
        raise _fail("operator", "operator mode cannot be combined with authorization user/token")
    if security.tls is not None:
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(security.tls, name)
            if path is not None:
                _check_readable(f"tls.{name}", path)
    if security.resolver_dir is not None and not os.path.isdir(security.resolver_dir):
        raise _fail("resolver.dir", f"{_quote(security.resolver_dir)} is not a directory")
    for i, remote in enumerate(config.leafnodes.remotes):
        local = remote.local_account
        # In operator mode accounts are JWTs: a local account is a public key.
        jwt_account = security.operator is not None and local is not None and is_account_key(local)
        if local is not None and local not in security.account_names() and not jwt_account:
            raise _fail(
                f"leafnodes.remotes[{i}].local_account", f"account {local!r} is not defined"
            )


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


def _validate_store(store: StoreConfig) -> None:
    if not isinstance(store, StoreConfig):
        raise _fail("store", f"expected a StoreConfig, got {_show(store)}")
    _check_text("store.dir", store.dir, optional=True)
    _check_int("store.min_free_disk", store.min_free_disk, 0)
    _check_int("store.max_file_size", store.max_file_size, 0)
    _check_text("store.gateway_id", store.gateway_id, optional=True)
    if store.gateway_id is not None and not _GATEWAY_ID_CHARS.issuperset(store.gateway_id):
        raise _fail(
            "store.gateway_id",
            f"may hold only letters, digits, '-', '_' and '.', got {_show(store.gateway_id)}",
        )
    _check_int("store.max_inflight", store.max_inflight, 1)
    _check_seconds("store.ack_timeout", store.ack_timeout, allow_zero=False)
    _check_text("store.jetstream_domain", store.jetstream_domain, optional=True)
    if not isinstance(store.groups, tuple | list):
        raise _fail("store.forward", f"expected a tuple, got {_show(store.groups)}")
    names: dict[str, str] = {}
    for i, group in enumerate(store.groups):
        prefix = f"store.forward[{i}]"
        if not isinstance(group, ForwardGroup):
            raise _fail(prefix, f"expected a ForwardGroup, got {_show(group)}")
        _validate_group(group, prefix)
        if group.name in names:
            raise _fail(
                f"{prefix}.name", f"{_show(group.name)} is already used by {names[group.name]}"
            )
        names[group.name] = prefix


def check_store_has_hub(config: ServerConfig) -> None:
    """Store-and-forward needs a hub to forward to. Checked once the file and the
    flags are combined (the hub may come from ``--hub``)."""
    if config.store.groups and not config.leafnodes.remotes:
        raise _fail(
            "store.forward",
            "store-and-forward needs a hub: add --hub URL or a [[leafnodes.remotes]] entry",
        )


_GATEWAY_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _validate_group(group: ForwardGroup, prefix: str) -> None:
    _check_subjects(f"{prefix}.subjects", group.subjects)
    if not group.subjects:
        raise _fail(f"{prefix}.subjects", 'must list at least one subject, like "telemetry.>"')
    _check_text(f"{prefix}.name", group.name, optional=False)
    if not _GATEWAY_ID_CHARS.issuperset(group.name):
        raise _fail(
            f"{prefix}.name",
            f"may hold only letters, digits, '-', '_' and '.', got {_show(group.name)}",
        )
    for key, value, choices in (
        ("durability", group.durability, DURABILITY_MODES),
        ("policy", group.policy, OVERFLOW_POLICIES),
        ("confirm", group.confirm, CONFIRM_MODES),
    ):
        if value not in choices:
            listed = ", ".join(f'"{c}"' for c in choices)
            raise _fail(f"{prefix}.{key}", f"expected one of {listed}, got {_show(value)}")
    _check_int(f"{prefix}.max_bytes", group.max_bytes, 0)
    _check_int(f"{prefix}.max_msgs", group.max_msgs, 0)
    _check_seconds(f"{prefix}.max_age", group.max_age, allow_zero=True)
    _check_seconds(f"{prefix}.duplicate_window", group.duplicate_window, allow_zero=True)
    if not isinstance(group.durable_flush, bool):
        raise _fail(
            f"{prefix}.durable_flush", f"expected true or false, got {group.durable_flush!r}"
        )


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
    for name in ("auth", "leafnodes", "store", "log"):
        sub = changes.get(name)
        if isinstance(sub, Mapping):
            changes[name] = dataclasses.replace(getattr(config, name), **sub)
    updated = dataclasses.replace(config, **changes)
    validate(updated)
    return updated


_LAZY = frozenset({"config_from_dict", "load_config"})

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """``load_config``/``config_from_dict``: the loader is imported on first use."""
        if name in _LAZY:
            from edge import config_load

            value = getattr(config_load, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
