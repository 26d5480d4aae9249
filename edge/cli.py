"""The ``leafgate`` command.

Flags follow nats-server's, so ``leafgate -p 4223 -DV`` works where
``nats-server -p 4223 -DV`` did. Subcommands:

    leafgate [run] [flags]          run the server (the default)
    leafgate check-config -c FILE   validate a config file and print a summary
    leafgate bench [args]           load generator (edge.bench)
    leafgate status [--http URL]    a running server's links, backlog, bridges (edge.status)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from edge.config import (
    LOG_FORMATS,
    ConfigError,
    ForwardGroup,
    RemoteConfig,
    ServerConfig,
    apply_overrides,
    check_store_has_hub,
    format_size,
    load_config,
    mask_url,
    parse_leaf_url,
    parse_size,
)
from edge.config_load import group_readable_secrets

PROG = "leafgate"

# nats-server flags that leafgate does not implement. They fail with exit code
# 1 and a clear message instead of argparse's generic "unrecognized argument".
UNSUPPORTED_FLAGS: tuple[str, ...] = (
    "--cluster",
    "--cluster_name",
    "--cluster_advertise",
    "--routes",
    "--no_advertise",
    "--client_advertise",
    "--connect_retries",
    "-js",
    "--jetstream",
    "-sd",
    "--store_dir",
    "--tls",
    "--tlscert",
    "--tlskey",
    "--tlsverify",
    "--tlscacert",
    "-r",
    "--remote_syslog",
    "-s",
    "--syslog",
    "-sl",
    "--signal",
    "-ms",
    "--https_port",
)

# nats-server's combined debug/trace flags. -VV ("verbose trace") is plain
# trace here.
_DEBUG_TRACE_FLAGS = ("-DV", "-DVV")
_TRACE_ALIASES = ("-VV",)


class UnsupportedFlagError(Exception):
    def __init__(self, flag: str) -> None:
        self.flag = flag
        super().__init__(
            f"flag {flag} is not supported (leafgate is a single edge server; see README)"
        )


class _Unsupported(argparse.Action):
    """Accepts the flag with or without a value, then refuses it."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        raise UnsupportedFlagError(option_string or self.option_strings[0])


class _DebugAndTrace(argparse.Action):
    """``-DV``: debug and trace together."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        namespace.debug = True
        namespace.trace = True


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hub_url_arg(text: str) -> str:
    try:
        parse_leaf_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _port_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that remembers its long flags, for Go-style ``-port``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        self.flag_names: set[str] = set()
        super().__init__(**kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flag_names.update(action.option_strings)
        return action

    def normalise(self, argv: Sequence[str]) -> list[str]:
        """Rewrite Go-style single-dash long flags (``-port 4222``, ``-cluster=x``)
        to ``--port``, as nats-server (Go's flag package) accepts both."""
        out: list[str] = []
        for i, token in enumerate(argv):
            if token == "--":
                out.extend(argv[i:])
                break
            match = re.fullmatch(r"-([A-Za-z][\w-]+)(=.*)?", token, re.DOTALL)
            if match is not None:
                flag = token.split("=", 1)[0]
                long_flag = "--" + match.group(1)
                if flag not in self.flag_names and long_flag in self.flag_names:
                    token = long_flag + (match.group(2) or "")
            out.append(token)
        return out


class _Group:
    """An argument group whose flags the parser records (for ``normalise``)."""

    def __init__(self, parser: _Parser, title: str) -> None:
        self._parser = parser
        self._group = parser.add_argument_group(title)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self._group.add_argument(*args, **kwargs)
        self._parser.flag_names.update(action.option_strings)
        return action


def _add_server_flags(parser: _Parser) -> None:
    """Flags shared by ``run`` and ``check-config``; all default to None (= not given)."""
    net = _Group(parser, "server")
    net.add_argument(
        "-a",
        "--addr",
        "--net",
        dest="host",
        metavar="HOST",
        help="bind to HOST (default 127.0.0.1)",
    )
    net.add_argument(
        "-p",
        "--port",
        dest="port",
        type=_port_arg,
        metavar="PORT",
        help="client port (default 4222; -1 for a random port)",
    )
    net.add_argument(
        "-n",
        "--name",
        "--server_name",
        dest="server_name",
        metavar="NAME",
        help="server name (default: generated)",
    )
    net.add_argument(
        "-m",
        "--http_port",
        dest="http_port",
        type=_port_arg,
        metavar="PORT",
        help="HTTP monitoring port (-1 for a random port)",
    )
    net.add_argument(
        "--max_payload",
        dest="max_payload",
        type=_size_arg,
        metavar="SIZE",
        help='largest message payload, e.g. 1048576 or "1MB"',
    )
    net.add_argument(
        "--ports_file_dir",
        dest="ports_file_dir",
        metavar="DIR",
        help="write a <name>_<pid>.ports file in DIR",
    )
    net.add_argument(
        "-P", "--pid", dest="pid_file", metavar="FILE", help="write the process id to FILE"
    )
    net.add_argument(
        "-c",
        "--config",
        dest="config",
        metavar="FILE",
        help="TOML config file; flags override its values",
    )

    auth = _Group(parser, "authorization")
    auth.add_argument("--user", dest="user", metavar="USER", help="required user name")
    auth.add_argument("--pass", dest="password", metavar="PASSWORD", help="required password")
    auth.add_argument("--auth", dest="token", metavar="TOKEN", help="required token")

    hub = _Group(parser, "leafnode link to a hub (the first [[leafnodes.remotes]])")
    hub.add_argument(
        "--hub",
        dest="hub",
        action="append",
        type=_hub_url_arg,
        metavar="URL",
        help="hub leafnode URL, e.g. nats-leaf://hub.example:7422 or tls://hub.example:7422; "
        "repeat for more URLs of the same hub (one remote, URLs kept in order). "
        "Replaces the URLs of the config file's first remote",
    )
    hub.add_argument(
        "--hub-creds",
        dest="hub_creds",
        metavar="FILE",
        help="credentials (.creds) file for the hub link; replaces the first remote's "
        "other authentication",
    )
    hub.add_argument(
        "--hub-account",
        dest="hub_account",
        metavar="NAME",
        help="hub account the link must be bound to (first remote)",
    )

    store = _Group(parser, "store-and-forward")
    store.add_argument(
        "--forward",
        dest="forward",
        action="append",
        metavar="SUBJECT",
        help="keep messages on SUBJECT (wildcards allowed) in the store until the hub "
        "confirmed them; repeat for more subjects (one group, fsync per batch). "
        "Replaces the subjects of the config file's first [[store.forward]]",
    )
    store.add_argument(
        "--store",
        dest="store_dir",
        metavar="DIR",
        help="directory of the SQLite store (default: $STATE_DIRECTORY, else "
        "$XDG_STATE_HOME/leafgate, else ~/.local/state/leafgate)",
    )

    log = _Group(parser, "logging")
    log.add_argument(
        "-l",
        "--log",
        "--log_file",
        dest="logfile",
        metavar="FILE",
        help="append the log to FILE instead of stderr",
    )
    log.add_argument(
        "--log_format",
        dest="log_format",
        choices=LOG_FORMATS,
        help="auto (JSON unless stderr is a terminal), json or console",
    )
    log.add_argument(
        "-D", "--debug", dest="debug", action="store_true", default=None, help="enable debug output"
    )
    log.add_argument(
        "-V",
        "--trace",
        *_TRACE_ALIASES,
        dest="trace",
        action="store_true",
        default=None,
        help="trace the raw protocol (implies debug output)",
    )
    log.add_argument(
        *_DEBUG_TRACE_FLAGS,
        dest="debug_trace",
        action=_DebugAndTrace,
        default=argparse.SUPPRESS,
        help="debug and trace",
    )

    for flag in UNSUPPORTED_FLAGS:
        parser.add_argument(flag, action=_Unsupported)


_COMMANDS = (
    "commands: run (default), check-config, bench, hub, store, status; see 'leafgate <command> -h'"
)


def _run_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Run the leafgate NATS server (flags follow nats-server's).",
        epilog=_COMMANDS,
    )
    _add_server_flags(parser)
    parser.add_argument(
        "-t", dest="test_config", action="store_true", help="test the configuration and exit"
    )
    parser.add_argument(
        "-v", "--version", dest="version", action="store_true", help="print the version and exit"
    )
    return parser


def _check_parser() -> _Parser:
    parser = _Parser(
        prog=f"{PROG} check-config",
        description="Validate a config file (and flags) and print a summary.",
        epilog="exit status: 0 if the configuration is valid, 1 if not",
    )
    _add_server_flags(parser)
    return parser


def parse_run_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``run`` flags. Raises UnsupportedFlagError, or SystemExit from argparse."""
    parser = _run_parser()
    return parser.parse_args(parser.normalise(argv))


def build_config(args: argparse.Namespace) -> ServerConfig:
    """The config file (if any) with command-line flags applied over it.

    Raises ConfigError.
    """
    config = load_config(args.config) if args.config else ServerConfig()
    changes: dict[str, Any] = {}
    for name in (
        "host",
        "port",
        "server_name",
        "http_port",
        "max_payload",
        "ports_file_dir",
        "pid_file",
    ):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value

    auth: dict[str, Any] = {}
    if args.token is not None:
        # A token on the command line replaces user/password from the file.
        auth.update(token=args.token, user=args.user, password=args.password)
    elif args.user is not None or args.password is not None:
        # --user/--pass replace a token from the file; either may be combined
        # with the other half from the file (e.g. --pass to keep the secret
        # out of the file).
        auth["token"] = None
        if args.user is not None:
            auth["user"] = args.user
        if args.password is not None:
            auth["password"] = args.password
    if auth:
        changes["auth"] = auth

    log: dict[str, Any] = {}
    if args.debug:
        log["debug"] = True
    if args.trace:
        log["trace"] = True
    if args.logfile is not None:
        log["logfile"] = args.logfile
    if args.log_format is not None:
        log["format"] = args.log_format
    if log:
        changes["log"] = log

    remotes = _hub_remotes(config, args)
    if remotes is not None:
        changes["leafnodes"] = {"remotes": remotes}
    store = _store_changes(config, args)
    if store:
        changes["store"] = store
    config = apply_overrides(config, **changes)
    check_store_has_hub(config)
    return config


def _store_changes(config: ServerConfig, args: argparse.Namespace) -> dict[str, Any]:
    """--forward/--store over the file's [store]: --forward sets the subjects of the
    first group (creating it with the defaults if the file has none)."""
    changes: dict[str, Any] = {}
    subjects: list[str] | None = getattr(args, "forward", None)
    if subjects is not None:
        groups = list(config.store.groups)
        if groups:
            groups[0] = dataclasses.replace(groups[0], subjects=tuple(subjects))
        else:
            groups.append(ForwardGroup(subjects=tuple(subjects)))
        changes["groups"] = tuple(groups)
    store_dir: str | None = getattr(args, "store_dir", None)
    if store_dir is not None:
        changes["dir"] = store_dir
    return changes


def _hub_remotes(config: ServerConfig, args: argparse.Namespace) -> tuple[RemoteConfig, ...] | None:
    """The leafnode remotes after --hub/--hub-creds/--hub-account, or None if
    none of them was given. They build or change the first remote."""
    urls: list[str] | None = getattr(args, "hub", None)
    creds: str | None = getattr(args, "hub_creds", None)
    account: str | None = getattr(args, "hub_account", None)
    if urls is None and creds is None and account is None:
        return None
    remotes = list(config.leafnodes.remotes)
    if urls is not None:
        if remotes:
            remotes[0] = dataclasses.replace(remotes[0], urls=tuple(urls))
        else:
            remotes.append(RemoteConfig(urls=tuple(urls)))
    elif not remotes:
        flag = "--hub-creds" if creds is not None else "--hub-account"
        raise ConfigError(
            flag, "no hub to apply it to: give --hub URL or a [[leafnodes.remotes]] in the config"
        )
    first = remotes[0]
    if creds is not None:
        # Like --auth over a file's user: the flag's credentials replace the
        # file's way of authenticating.
        first = dataclasses.replace(
            first, credentials=creds, nkey_seed=None, user=None, password=None, token=None
        )
    if account is not None:
        first = dataclasses.replace(first, account=account)
    remotes[0] = first
    return tuple(remotes)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("leafgate")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def describe(config: ServerConfig) -> list[str]:
    """A short human summary of a config; never shows secrets."""

    def size(n: int) -> str:
        return f"{format_size(n)} ({n} bytes)" if n % 1024 == 0 else f"{n} bytes"

    port = "(random port)" if config.port in (0, -1) else str(config.port)
    if config.http_port is None:
        monitoring = "off"
    else:
        http_port = "(random port)" if config.http_port in (0, -1) else str(config.http_port)
        monitoring = f"http://{config.http_host}:{http_port}"
    if config.auth.token is not None:
        auth = "token"
    elif config.auth.user is not None:
        auth = f"user {config.auth.user!r} with password"
    else:
        auth = "none"
    sec = config.security
    if sec.operator is not None:
        auth = f"operator mode, resolver {sec.resolver}"
    elif sec.users:
        auth = f"{len(sec.users)} users in {len(sec.account_names())} accounts"
        if sec.no_auth_user:
            auth += f", no_auth_user {sec.no_auth_user!r}"
    if sec.tls is not None:
        verify = (
            ", client certificates verified" if sec.tls.verify or sec.tls.verify_and_map else ""
        )
        auth += f"; TLS{verify}"
    level = "trace" if config.log.trace else "debug" if config.log.debug else "info"
    lines = [
        f"listen:            {config.host}:{port}",
        f"server_name:       {config.server_name or '(generated)'}",
        f"monitoring:        {monitoring}",
        f"authorization:     {auth}",
        f"max_payload:       {size(config.max_payload)}",
        f"max_pending:       {size(config.max_pending)}",
        f"max_connections:   {config.max_connections}",
        f"ping:              every {config.ping_interval:g}s, max {config.max_pings_out} out",
        f"log:               {level}, format {config.log.format}, "
        f"to {config.log.logfile or 'stderr'}",
    ]
    if not config.leafnodes.remotes:
        lines.append("leafnode remotes:  none")
    for i, remote in enumerate(config.leafnodes.remotes):
        lines.append(f"leafnode remote {i}: {', '.join(mask_url(u) for u in remote.urls)}")
        lines.append(f"                   {_describe_remote(remote)}")
    if config.store.enabled:
        from store.paths import store_dir  # pure path logic, no sqlite

        lines.append(f"store:             {store_dir(config.store)}")
        for group in config.store.groups:
            limits = [
                f"{label} {value}"
                for label, value in (
                    ("max_bytes", format_size(group.max_bytes) if group.max_bytes else ""),
                    ("max_msgs", str(group.max_msgs) if group.max_msgs else ""),
                    ("max_age", f"{group.max_age:g}s" if group.max_age else ""),
                )
                if value
            ]
            lines.append(
                f"  forward {group.name}: {', '.join(group.subjects)}; {group.durability}, "
                f"{', '.join(limits) or 'no limits'}, policy {group.policy}, "
                f"confirm {group.confirm}"
            )
    if config.pid_file:
        lines.append(f"pid_file:          {config.pid_file}")
    if config.ports_file_dir:
        lines.append(f"ports_file_dir:    {config.ports_file_dir}")
    return lines


def _describe_remote(remote: RemoteConfig) -> str:
    """Account, authentication, TLS and reconnect of one remote; no secrets."""
    urls = [parse_leaf_url(url) for url in remote.urls]  # validated already
    account = f"account {remote.account}" if remote.account else "any account"
    if remote.credentials is not None:
        auth = f"credentials {remote.credentials}"
    elif remote.nkey_seed is not None:
        auth = f"nkey {remote.nkey_seed}"
    elif remote.token is not None:
        auth = "token"
    elif remote.user is not None:
        auth = f"user {remote.user!r} with password"
    elif any(url.user is not None for url in urls):
        auth = "user:password in the URL"
    else:
        auth = "no authentication"
    if remote.tls is not None or all(url.tls for url in urls):
        tls = "TLS"
    elif any(url.tls for url in urls):
        tls = "TLS for the tls:// URLs"
    else:
        tls = "no TLS"
    reconnect = f"reconnect {remote.reconnect_delay:g}s..{remote.reconnect_max:g}s"
    return f"{account}, {auth}, {tls}, {reconnect}"


def _print_valid(config: ServerConfig) -> None:
    mode = group_readable_secrets(config)
    if mode is not None:
        print(
            f"{PROG}: warning: {config.config_file} holds passwords or tokens and its "
            f"group may read it (mode {mode:04o}); chmod 600 keeps them to its owner",
            file=sys.stderr,
        )
    if config.config_file:
        print(f"{PROG}: configuration file {config.config_file} is valid")
    else:
        print(f"{PROG}: configuration is valid")
    for line in describe(config):
        print(f"  {line}")


def _error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def _warn_exposed(config: ServerConfig) -> ServerConfig:
    """Log a config file with passwords or tokens that its group may read."""
    mode = group_readable_secrets(config)
    if mode is not None:
        from edge import log

        log.get_logger("edge.config").warning(
            "config_file_readable_by_group",
            file=config.config_file,
            mode=f"{mode:04o}",
            hint="it holds passwords or tokens; chmod 600 keeps them to its owner",
        )
    return config


def _serve(config: ServerConfig, reload: Callable[[], ServerConfig] | None = None) -> int:
    import trio

    from edge import log
    from edge.server import serve  # lazy: keeps the CLI importable without the server

    try:
        log.configure(config.log)
    except OSError as exc:
        return _error(f"cannot open log file {config.log.logfile}: {exc.strerror or exc}")
    _warn_exposed(config)
    try:
        return trio.run(serve, config, reload)
    except KeyboardInterrupt:
        return 130


def _cmd_run(argv: Sequence[str]) -> int:
    args = parse_run_args(argv)
    if args.version:
        print(f"{PROG} v{version()}")
        return 0
    config = build_config(args)
    if args.test_config:
        _print_valid(config)
        return 0
    return _serve(config, lambda: _warn_exposed(build_config(args)))


def _cmd_check_config(argv: Sequence[str]) -> int:
    parser = _check_parser()
    args = parser.parse_args(parser.normalise(argv))
    if not args.config:
        parser.error("the following arguments are required: -c/--config")
    _print_valid(build_config(args))
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    from edge.bench import main as bench_main  # lazy: written separately

    return int(bench_main(list(argv)))


def _cmd_hub(argv: Sequence[str]) -> int:
    from hub.tool import main as hub_main  # lazy: the hub side is rarely used on a gateway

    return int(hub_main(list(argv), prog=f"{PROG} hub"))


def _cmd_store(argv: Sequence[str]) -> int:
    from store.tool import main as store_main  # lazy: operator commands, not the server

    return int(store_main(list(argv), prog=f"{PROG} store"))


def _cmd_status(argv: Sequence[str]) -> int:
    from edge.status import main as status_main  # lazy: an HTTP client, not the server

    return int(status_main(list(argv), prog=f"{PROG} status"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``leafgate`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = "run"
    if args and not args[0].startswith("-"):
        command, args = args[0], args[1:]
    try:
        if command == "run":
            return _cmd_run(args)
        if command == "check-config":
            return _cmd_check_config(args)
        if command == "bench":
            return _cmd_bench(args)
        if command == "hub":
            return _cmd_hub(args)
        if command == "store":
            return _cmd_store(args)
        if command == "status":
            return _cmd_status(args)
        print(f"{PROG}: unknown command {command!r} ({_COMMANDS})", file=sys.stderr)
        return 2
    except UnsupportedFlagError as exc:
        return _error(str(exc))
    except ConfigError as exc:
        return _error(str(exc))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
