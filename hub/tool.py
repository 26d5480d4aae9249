"""``leafgate hub``: run a development hub, provision its stream, check it, show configs.

    leafgate hub start [--cluster] [--store-dir DIR] [--port N] [--leaf-port N] ...
    leafgate hub provision --server nats://host:port [--user U --password P | --creds F]
                           [--stream TELEMETRY] [--subjects 'telemetry.>']
                           [--duplicate-window 2m] [--replicas N]
    leafgate hub ledger --server nats://host:port [--user U --password P | --creds F]
                        [--stream TELEMETRY] [--subject FILTER] [--gateway ID]
                        [--from-seq 1] [--allow-head-gap] [--limit 10] [--json]
    leafgate hub config [--print single|cluster-node|stream | --path NAME]

``start`` runs the installed nats-server (``NATS_SERVER_BIN`` overrides) on the shipped
``single.conf`` (or three nodes of ``cluster-node.conf``) in the foreground, exporting
the config variables; it prints the ports once the servers are ready and stops them
on Ctrl-C / SIGTERM.  A port of 0 lets the OS choose (reported in the ready line).
``ledger`` reads the stream and reports, per gateway, the seqs missing and those
stored twice (see :mod:`hub.ledger`); exit status 0 complete, 1 not, 2 error.
Also runnable as ``python -m hub``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hub.configs import (
    CONF_FILES,
    HubConfigError,
    Value,
    conf_path,
    conf_text,
    hostport,
    nats_server_bin,
    variables_env,
    variables_for,
)
from hub.ledger import (
    MSG_ID_HEADER,
    StreamLedger,
    format_json,
    format_text,
    parse_ack_reply,
    parse_msg_id,
)

DEFAULT_PROG = "leafgate hub"
DEFAULT_HOST = "127.0.0.1"
# The client port is not 4222 so that a gateway (leafgate's default port 4222) can run
# on the same machine.
DEFAULT_CLIENT_PORT = 4223
DEFAULT_LEAF_PORT = 7422
DEFAULT_HTTP_PORT = 8222
DEFAULT_CLUSTER_PORT = 6222
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0  # SIGTERM -> SIGKILL (JetStream flushes on shutdown)

_LISTEN_LINES: dict[str, re.Pattern[str]] = {
    "client": re.compile(r"Listening for client connections on (.+):(\d+)\s*$"),
    "leaf": re.compile(r"Listening for leafnode connections on (.+):(\d+)\s*$"),
    "http": re.compile(r"Starting http monitor on (.+):(\d+)\s*$"),
    "route": re.compile(r"Listening for route connections on (.+):(\d+)\s*$"),
}
_READY_LINE = "Server is ready"


class ToolError(RuntimeError):
    """A failure reported to the user as one line, exit status 1."""


# ---------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------


@dataclass
class Node:
    """One nats-server child of ``start`` and what its log told us."""

    name: str
    conf: Path
    variables: dict[str, Value]
    clustered: bool
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    ready: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    changed: threading.Condition = field(default_factory=threading.Condition)

    def started(self) -> bool:
        needed = ["client", "leaf", "http"] + (["route"] if self.clustered else [])
        return self.ready and all(k in self.ports for k in needed)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec hook making the kernel SIGTERM the child when this process dies
    (Linux), so a killed ``hub start`` leaves no nats-server behind."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    prctl = libc.prctl
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return hook


def _relay(node: Node, stream: IO[bytes], out: IO[str] | None) -> None:
    """Copy a child's log to ``out`` (prefixed) and pick the ports out of it."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if out is not None:
            with contextlib.suppress(OSError, ValueError):
                out.write(f"[{node.name}] {line}\n")
                out.flush()
        with node.changed:
            node.tail.append(line)
            for kind, pattern in _LISTEN_LINES.items():
                match = pattern.search(line)
                if match:
                    node.ports[kind] = int(match.group(2))
            if _READY_LINE in line:
                node.ready = True
            node.changed.notify_all()
    with node.changed:
        node.changed.notify_all()


def _stop_nodes(nodes: Sequence[Node], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every child by PID, wait (bounded), SIGKILL what is left."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in nodes:
        if node.proc is None:
            continue
        try:
            node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=timeout)


def _local(host: str) -> str:
    """Where to dial a listener bound to ``host`` from this machine."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def _port_arg(port: int) -> int:
    return -1 if port == 0 else port


def plan_nodes(args: argparse.Namespace) -> list[Node]:
    """The nodes ``start`` runs, with their config variables."""
    store = Path(args.store_dir).expanduser().resolve()
    common: dict[str, Value] = {
        "HUB_DOMAIN": args.domain,
        "HUB_LEAF_USER": args.leaf_user,
        "HUB_LEAF_PASSWORD": args.leaf_password,
        "HUB_APP_USER": args.app_user,
        "HUB_APP_PASSWORD": args.app_password,
        "HUB_SYS_USER": args.sys_user,
        "HUB_SYS_PASSWORD": args.sys_password,
    }
    host = args.host
    if not args.cluster:
        variables = {
            **common,
            "HUB_NAME": args.name,
            "HUB_CLIENT_LISTEN": hostport(host, _port_arg(args.port)),
            "HUB_LEAF_LISTEN": hostport(host, _port_arg(args.leaf_port)),
            "HUB_HTTP_LISTEN": hostport(host, _port_arg(args.http_port)),
            "HUB_STORE_DIR": str(store),
        }
        return [Node(args.name, conf_path("single"), variables, clustered=False)]
    n = args.nodes
    if n < 2:
        raise ToolError("--nodes must be at least 2")
    if args.cluster_port <= 0:
        raise ToolError("--cluster needs a fixed --cluster-port (routes must know it)")

    def shifted(port: int, i: int) -> int:
        return -1 if port == 0 else port + i

    route_urls = [f"nats-route://{hostport(_local(host), args.cluster_port + i)}" for i in range(n)]
    nodes = []
    for i in range(n):
        name = f"{args.name}-{i + 1}"
        variables = {
            **common,
            "HUB_NAME": name,
            "HUB_CLIENT_LISTEN": hostport(host, shifted(args.port, i)),
            "HUB_LEAF_LISTEN": hostport(host, shifted(args.leaf_port, i)),
            "HUB_HTTP_LISTEN": hostport(host, shifted(args.http_port, i)),
            "HUB_STORE_DIR": str(store / name),
            "HUB_CLUSTER_NAME": args.cluster_name,
            "HUB_CLUSTER_LISTEN": hostport(host, args.cluster_port + i),
            "HUB_ROUTES": [url for j, url in enumerate(route_urls) if j != i],
        }
        nodes.append(Node(name, conf_path("cluster-node"), variables, clustered=True))
    return nodes


def _wait_started(nodes: Sequence[Node], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        with node.changed:
            while not node.started():
                if node.exited():
                    # let the relay thread drain the last lines
                    node.changed.wait(timeout=0.5)
                    tail = "\n".join(node.tail)
                    raise ToolError(
                        f"{node.name}: nats-server exited with status "
                        f"{node.proc.returncode if node.proc else '?'}:\n{tail}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ToolError(
                        f"{node.name}: not ready within {timeout:g} s:\n" + "\n".join(node.tail)
                    )
                node.changed.wait(timeout=min(left, 0.2))


def _print_summary(args: argparse.Namespace, nodes: Sequence[Node], version: str) -> None:
    out = sys.stdout
    kind = f"{len(nodes)}-node cluster" if args.cluster else "single hub"
    print(f"leafgate dev hub ({kind}, {version}) ready", file=out)
    leaf_urls = []
    for node in nodes:
        h = _local(args.host)
        client = f"nats://{hostport(h, node.ports['client'])}"
        leaf = f"nats-leaf://{hostport(h, node.ports['leaf'])}"
        http = f"http://{hostport(h, node.ports['http'])}"
        line = f"{node.name} ready: client {client} leafnode {leaf} monitoring {http}"
        if "route" in node.ports:
            line += f" routes nats-route://{hostport(h, node.ports['route'])}"
        print(line, file=out)
        leaf_urls.append(node.ports["leaf"])
    store = Path(args.store_dir).expanduser().resolve()
    print(f"domain: {args.domain}  store: {store}", file=out)
    print(
        f"account TELEMETRY: leafnode user {args.leaf_user!r} password {args.leaf_password!r}; "
        f"client user {args.app_user!r} password {args.app_password!r}; "
        f"system user {args.sys_user!r}",
        file=out,
    )
    h = _local(args.host)
    hubs = " ".join(
        f"--hub nats-leaf://{args.leaf_user}:{args.leaf_password}@{hostport(h, p)}"
        for p in leaf_urls
    )
    print(f"gateway:   leafgate run {hubs}", file=out)
    client0 = f"nats://{hostport(h, nodes[0].ports['client'])}"
    print(
        f"provision: leafgate hub provision --server {client0} "
        f"--user {args.app_user} --password {args.app_password}",
        file=out,
    )
    print("Ctrl-C stops the hub", file=out)
    out.flush()


def _server_version(binary: str) -> str:
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "nats-server"
    return (done.stdout or done.stderr).strip() or "nats-server"


def cmd_start(args: argparse.Namespace) -> int:
    binary = args.nats_server or nats_server_bin()
    nodes = plan_nodes(args)
    for node in nodes:
        store_dir = Path(str(node.variables["HUB_STORE_DIR"]))
        store_dir.mkdir(parents=True, exist_ok=True)
    version = _server_version(binary)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    log_out = None if args.quiet else sys.stderr
    threads: list[threading.Thread] = []
    try:
        hook = _pdeathsig()
        for node in nodes:
            env = {**os.environ, **variables_env(node.variables)}
            node.proc = subprocess.Popen(
                [binary, "-c", str(node.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=hook,  # safe: the relay threads start after the last spawn
            )
        for node in nodes:
            assert node.proc is not None and node.proc.stdout is not None
            thread = threading.Thread(
                target=_relay, args=(node, node.proc.stdout, log_out), daemon=True
            )
            thread.start()
            threads.append(thread)
        _wait_started(nodes, args.ready_timeout)
        _print_summary(args, nodes, version)
        while not stop.wait(0.2):
            dead = [node for node in nodes if node.exited()]
            if dead:
                node = dead[0]
                rc = node.proc.returncode if node.proc else None
                print(f"{node.name}: nats-server exited (status {rc}); stopping", file=sys.stderr)
                return 1
        return 0
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop_nodes(nodes)
        for thread in threads:
            thread.join(timeout=2)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------
# provision
# ---------------------------------------------------------------------------


def _split_subjects(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    out = []
    for value in values:
        out += [part.strip() for part in value.split(",") if part.strip()]
    return out


class ConnectError(RuntimeError):
    """The hub could not be reached or refused us."""


async def _connect(args: argparse.Namespace, name: str, errors: list[Exception]) -> Any:
    """A nats-py connection from ``--server``, ``--user``/``--password``, ``--creds``
    and ``--timeout``, without reconnects (a one-shot tool should fail, not wait).
    Asynchronous errors nats-py reports later are appended to ``errors``."""
    import nats
    import nats.errors

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)

    options: dict[str, Any] = {
        "servers": [args.server],
        "connect_timeout": args.timeout,
        "allow_reconnect": False,
        "max_reconnect_attempts": 0,
        "error_cb": error_cb,
        "name": name,
    }
    if args.user is not None:
        options["user"] = args.user
        options["password"] = args.password or ""
    if args.creds:
        options["user_credentials"] = args.creds
    try:
        return await asyncio.wait_for(nats.connect(**options), args.timeout + 1)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        # nats-py reports one error per connect attempt; say each different one once.
        said = dict.fromkeys(str(e) for e in errors)
        detail = "; ".join(said) or str(exc) or type(exc).__name__
        raise ConnectError(f"cannot connect to {args.server}: {detail}") from None


async def _provision(args: argparse.Namespace) -> int:
    import nats
    import nats.errors
    from nats.js.errors import Error as JsError

    from hub.provision import ProvisionError, StreamRequest, parse_duration, provision_stream

    try:
        request = StreamRequest(
            name=args.stream,
            subjects=_split_subjects(args.subjects),
            duplicate_window=(
                parse_duration(args.duplicate_window) if args.duplicate_window else None
            ),
            replicas=args.replicas,
        )
        request.desired()  # validate before connecting
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:
        nc = await _connect(args, "leafgate-hub-provision", [])
    except ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        result = await asyncio.wait_for(
            provision_stream(nc, request, domain=args.domain, timeout=args.timeout),
            args.timeout * 3,
        )
    except (TimeoutError, ProvisionError, JsError, nats.errors.Error) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    name = result.config.get("name")
    detail = f" ({'; '.join(result.changes)})" if result.changes else ""
    print(f"stream {name} {result.action}{detail}", file=sys.stderr)
    print(json.dumps(result.config, indent=2, sort_keys=True))
    return 0


def _auth_usage_error(args: argparse.Namespace) -> str | None:
    if args.creds and args.user is not None:
        return "--creds and --user are exclusive"
    if (args.password is not None) and args.user is None:
        return "--password needs --user"
    return None


def cmd_provision(args: argparse.Namespace) -> int:
    problem = _auth_usage_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_provision(args))


# ---------------------------------------------------------------------------
# ledger
# ---------------------------------------------------------------------------


class LedgerReadError(RuntimeError):
    """The stream could not be read to the end (exit status 2)."""


class _StreamReader:
    """Feeds one pass over a stream, up to the last seq it had when the pass began
    (``snapshot``), to a :class:`StreamLedger`."""

    def __init__(self, ledger: StreamLedger, snapshot: int) -> None:
        self.ledger = ledger
        self.snapshot = snapshot
        self.done = asyncio.Event()
        self.last_sseq = 0
        self.failure: Exception | None = None

    async def on_msg(self, msg: Any) -> None:
        try:
            self._take(msg.reply or "", msg.headers)
        except Exception as exc:  # a bug here must surface, not look like a stall
            self.failure = exc
            self.done.set()

    def _take(self, reply: str, headers: dict[str, str] | None) -> None:
        meta = parse_ack_reply(reply)
        if meta is None or self.done.is_set():
            return
        sseq, pending = meta
        if sseq > self.snapshot:  # arrived after we began: not part of this ledger
            self.done.set()
            return
        if sseq <= self.last_sseq:  # delivered again by a re-created consumer
            return
        self.last_sseq = sseq
        self.ledger.add_msg_id(headers.get(MSG_ID_HEADER) if headers else None)
        if pending == 0 or sseq == self.snapshot:
            self.done.set()

    async def wait(self, stall: float) -> None:
        """Until done; LedgerReadError if ``stall`` seconds pass without a message."""
        seen = -1
        while not self.done.is_set():
            if self.ledger.read == seen:
                raise LedgerReadError(f"no message for {stall:g} s after {seen} messages")
            seen = self.ledger.read
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), stall)
        if self.failure is not None:
            raise self.failure


async def _read_stream(
    js: Any, stream: str, subject: str, ledger: StreamLedger, stall: float
) -> int:
    """Feed every message of ``stream`` (matching ``subject``; "" = all) up to its
    current last seq to ``ledger``; returns that seq.

    One ordered push consumer, headers only: ephemeral and in memory on the server
    (nothing durable left behind), payloads never sent, flow-controlled so the
    client's queue stays bounded, and re-created by nats-py from the next stream seq
    if a delivery is missed.
    """
    info = await js.stream_info(stream)
    reader = _StreamReader(ledger, int(info.state.last_seq))
    if not info.state.messages:
        return reader.snapshot
    sub = await js.subscribe(
        subject, stream=stream, cb=reader.on_msg, ordered_consumer=True, headers_only=True
    )
    try:
        consumer = await sub.consumer_info()
        if consumer.num_pending == 0 and consumer.delivered.consumer_seq == 0:
            return reader.snapshot  # nothing matches the filter
        await reader.wait(stall)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return reader.snapshot


async def _ledger(args: argparse.Namespace) -> int:
    import nats.errors
    from nats.js.errors import Error as JsError
    from nats.js.errors import NotFoundError

    from hub.provision import stream_template

    stream = args.stream or str(stream_template()["name"])
    errors: list[Exception] = []
    try:
        nc = await _connect(args, "leafgate-hub-ledger", errors)
    except ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ledger = StreamLedger(gateway=args.gateway, sample_limit=args.limit)
    try:
        js = nc.jetstream(domain=args.domain, timeout=args.timeout)
        last = await _read_stream(js, stream, args.subject or "", ledger, args.timeout)
    except NotFoundError:
        print(f"error: stream {stream} not found", file=sys.stderr)
        return 2
    except (TimeoutError, LedgerReadError, JsError, nats.errors.Error) as exc:
        said = "".join(f"; {type(e).__name__}: {e}" for e in errors[-3:])
        print(f"error: reading stream {stream}: {type(exc).__name__}: {exc}{said}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    # A message nats-py dropped on the floor would look like a gap: refuse to report.
    lost = [e for e in errors if isinstance(e, nats.errors.SlowConsumerError)]
    if lost:
        print(f"error: {len(lost)} messages dropped while reading; run again", file=sys.stderr)
        return 2
    report = ledger.report(
        stream=stream,
        subject=args.subject,
        last_stream_seq=last,
        from_seq=args.from_seq,
        allow_head_gap=args.allow_head_gap,
        limit=args.limit,
    )
    sys.stdout.write(format_json(report) if args.json else format_text(report))
    return 0 if report.complete else 1


def cmd_ledger(args: argparse.Namespace) -> int:
    problem = _auth_usage_error(args)
    if args.gateway is not None and parse_msg_id(f"{args.gateway}:1") is None:
        problem = f"bad gateway id {args.gateway!r} (letters, digits, '-', '_', '.')"
    if args.from_seq < 1:
        problem = "--from-seq must be at least 1"
    if args.limit < 0:
        problem = "--limit must not be negative"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_ledger(args))


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    if args.print:
        sys.stdout.write(conf_text(args.print))
        return 0
    if args.path:
        print(conf_path(args.path))
        return 0
    for name in CONF_FILES:
        path = conf_path(name)
        print(f"{name:13} {path}")
        if path.suffix == ".conf":
            print(f"{'':13} variables: {' '.join(variables_for(name))}")
    return 0


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def build_parser(prog: str = DEFAULT_PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run and prepare a nats-server hub for leafgate gateways."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    start = sub.add_parser("start", help="run a local development hub in the foreground")
    start.add_argument("--cluster", action="store_true", help="run a local cluster instead")
    start.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    start.add_argument("--store-dir", default="hub-data", help="JetStream storage directory")
    start.add_argument("--host", default=DEFAULT_HOST, help="interface to listen on")
    start.add_argument(
        "--port",
        type=int,
        default=DEFAULT_CLIENT_PORT,
        help=f"client port (default {DEFAULT_CLIENT_PORT}; 0 = OS-chosen)",
    )
    start.add_argument(
        "--leaf-port",
        type=int,
        default=DEFAULT_LEAF_PORT,
        help=f"leafnode port (default {DEFAULT_LEAF_PORT}; 0 = OS-chosen)",
    )
    start.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"monitoring port (default {DEFAULT_HTTP_PORT}; 0 = OS-chosen)",
    )
    start.add_argument(
        "--cluster-port",
        type=int,
        default=DEFAULT_CLUSTER_PORT,
        help=f"first route port with --cluster (default {DEFAULT_CLUSTER_PORT})",
    )
    start.add_argument("--cluster-name", default="leafgate-hub")
    start.add_argument("--name", default="hub", help="server name (cluster: NAME-1, NAME-2 ...)")
    start.add_argument("--domain", default="hub", help="JetStream domain (default hub)")
    start.add_argument("--leaf-user", default="leaf")
    start.add_argument("--leaf-password", default="leaf")
    start.add_argument("--app-user", default="app")
    start.add_argument("--app-password", default="app")
    start.add_argument("--sys-user", default="sys")
    start.add_argument("--sys-password", default="sys")
    start.add_argument(
        "--nats-server",
        help="nats-server binary (default: NATS_SERVER_BIN, then nats-server on PATH)",
    )
    start.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT)
    start.add_argument("-q", "--quiet", action="store_true", help="do not relay server logs")
    start.set_defaults(func=cmd_start)

    prov = sub.add_parser("provision", help="create or update the telemetry stream")
    _add_hub_client_args(prov)
    prov.add_argument(
        "--subjects",
        action="append",
        help="subject filter; repeat or comma-separate (default 'telemetry.>')",
    )
    prov.add_argument("--duplicate-window", help="dedup window, e.g. 2m (default 2m)")
    prov.add_argument(
        "--replicas",
        type=int,
        help="replicas (default: 3 on a cluster, 1 otherwise; kept on update)",
    )
    prov.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    prov.set_defaults(func=cmd_provision)

    led = sub.add_parser(
        "ledger",
        help="per gateway, report sequence gaps and duplicates in the stream",
        description=(
            "Read the stream once (ephemeral ordered consumer, headers only) and report, "
            "per gateway (Nats-Msg-Id <gateway>:<seq>), the seqs missing and those stored "
            "twice. Exit status: 0 every gateway complete, 1 a gap or duplicate, "
            "2 usage or connection error."
        ),
    )
    _add_hub_client_args(led)
    led.add_argument("--subject", help="read only this subject filter (default: all)")
    led.add_argument("--gateway", help="report only this gateway id")
    led.add_argument(
        "--from-seq",
        type=int,
        default=1,
        help="the first seq every gateway must have (default 1)",
    )
    led.add_argument(
        "--allow-head-gap",
        action="store_true",
        help="accept a gateway whose first seq is after --from-seq (old messages "
        "discarded by the stream's limits, or a reset gateway store)",
    )
    led.add_argument(
        "--limit", type=int, default=10, help="missing ranges / duplicate seqs listed (10)"
    )
    led.add_argument("--json", action="store_true", help="machine-readable output")
    led.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds per request, and the longest wait for the next message",
    )
    led.set_defaults(func=cmd_ledger)

    conf = sub.add_parser("config", help="print a shipped config file")
    group = conf.add_mutually_exclusive_group()
    group.add_argument("--print", choices=list(CONF_FILES), help="print the file")
    group.add_argument("--path", choices=list(CONF_FILES), help="print the file's path")
    conf.set_defaults(func=cmd_config)
    return parser


def _add_hub_client_args(parser: argparse.ArgumentParser) -> None:
    """How a command reaches the hub's stream as a NATS client (provision, ledger)."""
    parser.add_argument("--server", required=True, help="nats://host:port of a hub node")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--creds", help="credentials file (JWT auth)")
    parser.add_argument("--domain", help="JetStream domain to address (when going through a leaf)")
    parser.add_argument("--stream", help="stream name (default TELEMETRY)")


def main(argv: list[str], *, prog: str = DEFAULT_PROG) -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return int(exc.code or 0)
    try:
        result: int = args.func(args)
    except (HubConfigError, ToolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result
