"""Server configuration: frozen dataclasses, loaded from TOML and command-line flags.

Names follow nats-server's configuration where one exists (``max_payload``,
``ping_interval``, ``authorization.timeout`` ...), so an operator who knows
nats-server can read a leafgate config file without a manual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    log: LogConfig = field(default_factory=LogConfig)
    # Files written at start, as nats-server does (--ports_file_dir, -P/--pid).
    ports_file_dir: str | None = None
    pid_file: str | None = None
    # File the config was read from, for messages and reload.
    config_file: str | None = None
