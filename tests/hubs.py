"""Hub fixtures for tests: real nats-server hubs (single or clustered) and a TCP proxy.

Built on :mod:`tests.harness` (same process handling: 127.0.0.1 only, OS-chosen
ports, stop by PID, bounded waits).

* :func:`start_hub` starts one nats-server with a leafnode listener.  With
  ``accounts=True`` it runs the shipped ``hub/conf/single.conf`` (variables defined at
  the top of a copy), otherwise an equivalent config without accounts (links bind to
  ``$G``).  The leafnode port is not in nats-server's ports file: it is read from the
  server log ("Listening for leafnode connections on 127.0.0.1:NNNNN").
* :func:`start_hub_cluster` starts ``n`` nodes routed to each other (shipped
  ``cluster-node.conf`` with ``accounts=True``) and waits until every node has its
  routes and, with JetStream, a meta leader.
* :class:`TcpProxy` relays TCP to a target port; ``cut()`` drops the link,
  ``restore()`` brings it back. :class:`ThreadedProxy` runs one on a thread of
  its own, for asyncio (nats-py) scenarios.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from hub.configs import conf_text, format_value, hostport, render_with_variables
from tests.harness import START_TIMEOUT, HarnessError, ServerProcess, nats_server_bin

HOST = "127.0.0.1"
#: Credentials used with ``accounts=True`` (shipped config) unless told otherwise.
DEFAULT_LEAF_AUTH = ("leaf", "leaf-secret")
APP_AUTH = ("app", "app-secret")  # client user of the TELEMETRY account
SYS_AUTH = ("sys", "sys-secret")  # client user of the system account
ACCOUNT = "TELEMETRY"
MONITOR_TIMEOUT = 2.0  # one HTTP monitoring request
CLUSTER_TIMEOUT = 30.0  # routes up + JetStream meta leader elected

_LOG_LINES: dict[str, re.Pattern[str]] = {
    "leaf": re.compile(r"Listening for leafnode connections on (\S+):(\d+)"),
    "http": re.compile(r"Starting http monitor on (\S+):(\d+)"),
    "route": re.compile(r"Listening for route connections on (\S+):(\d+)"),
}


@dataclass(frozen=True)
class ClusterSpec:
    """A node's place in a cluster: its route port and its peers' route ports."""

    name: str
    port: int
    peers: tuple[int, ...]


class HubProcess(ServerProcess):
    """A nats-server hub: client, leafnode and monitoring listeners (+ routes).

    ``restart()`` brings it back on the same ports (and the same JetStream store).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        server_name: str = "hub",
        jetstream: bool = True,
        domain: str | None = "hub",
        accounts: bool = False,
        leaf_auth: tuple[str, str] | None = None,
        extra: str = "",
        cluster: ClusterSpec | None = None,
    ) -> None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(server_name, [nats_server_bin()], [], workdir, config_text="")
        self.server_name = server_name
        self.jetstream = jetstream
        self.domain = domain or ""
        self.accounts = accounts
        self.leaf_auth = leaf_auth if leaf_auth or not accounts else DEFAULT_LEAF_AUTH
        self.app_auth: tuple[str, str] | None = APP_AUTH if accounts else None
        self.sys_auth: tuple[str, str] | None = SYS_AUTH if accounts else None
        self.extra = extra
        self.cluster = cluster
        self.leaf_port = 0
        self.http_port = 0
        self.cluster_port = cluster.port if cluster else 0
        self.store_dir = self.log_path.with_name(self.log_path.stem + "-store")

    # -- addresses ------------------------------------------------------------

    @property
    def client_port(self) -> int:
        return self.port

    @property
    def client_url(self) -> str:
        """Client URL, with the TELEMETRY account's user when accounts are on."""
        auth = f"{self.app_auth[0]}:{self.app_auth[1]}@" if self.app_auth else ""
        return f"nats://{auth}{HOST}:{self.port}"

    @property
    def leaf_url(self) -> str:
        """What a gateway dials (credentials included when the hub requires them)."""
        auth = f"{self.leaf_auth[0]}:{self.leaf_auth[1]}@" if self.leaf_auth else ""
        return f"nats-leaf://{auth}{HOST}:{self.leaf_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def monitor(self, path: str, timeout: float = MONITOR_TIMEOUT) -> dict[str, Any]:
        """GET a monitoring endpoint (``varz``, ``routez``, ``leafz``, ``jsz`` ...)."""
        url = f"{self.http_url}/{path.lstrip('/')}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read())
        if not isinstance(data, dict):
            raise HarnessError(f"{url}: not a JSON object")
        return data

    def __repr__(self) -> str:
        return (
            f"<HubProcess {self.server_name} pid={self.proc and self.proc.pid} "
            f"client={self.port} leaf={self.leaf_port} http={self.http_port}>"
        )

    # -- config ---------------------------------------------------------------

    def render_config(self) -> str:
        """The config for the next start: ports already learnt are reused, unknown
        ones are OS-chosen (-1)."""
        leaf = hostport(HOST, self.leaf_port or -1)
        http = hostport(HOST, self.http_port or -1)
        client = hostport(HOST, self.port or -1)
        routes = [f"nats-route://{HOST}:{p}" for p in self.cluster.peers] if self.cluster else []
        if self.accounts:
            variables: dict[str, Any] = {
                "HUB_NAME": self.server_name,
                "HUB_CLIENT_LISTEN": client,
                "HUB_LEAF_LISTEN": leaf,
                "HUB_HTTP_LISTEN": http,
                "HUB_STORE_DIR": str(self.store_dir),
                "HUB_DOMAIN": self.domain,
                "HUB_LEAF_USER": self.leaf_auth[0] if self.leaf_auth else "",
                "HUB_LEAF_PASSWORD": self.leaf_auth[1] if self.leaf_auth else "",
                "HUB_APP_USER": APP_AUTH[0],
                "HUB_APP_PASSWORD": APP_AUTH[1],
                "HUB_SYS_USER": SYS_AUTH[0],
                "HUB_SYS_PASSWORD": SYS_AUTH[1],
            }
            if self.cluster:
                variables["HUB_CLUSTER_NAME"] = self.cluster.name
                variables["HUB_CLUSTER_LISTEN"] = hostport(HOST, self.cluster.port)
                variables["HUB_ROUTES"] = routes
            shipped = conf_text("cluster-node" if self.cluster else "single")
            text = render_with_variables(shipped, variables)
            if not self.jetstream:
                text += "\n# test override: no JetStream\njetstream: disabled\n"
        else:
            lines = [
                f"server_name: {format_value(self.server_name)}",
                f"listen: {format_value(client)}",
                f"http: {format_value(http)}",
            ]
            if self.jetstream:
                lines.append(
                    f"jetstream {{ store_dir: {format_value(str(self.store_dir))}, "
                    f"domain: {format_value(self.domain)} }}"
                )
            auth = ""
            if self.leaf_auth:
                auth = (
                    f", authorization {{ user: {format_value(self.leaf_auth[0])}, "
                    f"password: {format_value(self.leaf_auth[1])} }}"
                )
            lines.append(f"leafnodes {{ listen: {format_value(leaf)}{auth} }}")
            if self.cluster:
                lines.append(
                    f"cluster {{ name: {format_value(self.cluster.name)}, "
                    f"listen: {format_value(hostport(HOST, self.cluster.port))}, "
                    f"routes: {format_value(routes)} }}"
                )
            text = "\n".join(lines) + "\n"
        if self.extra:
            text += "\n# extra\n" + self.extra.rstrip() + "\n"
        return text

    # -- lifecycle ------------------------------------------------------------

    def _start_once(self, port: int, deadline: float) -> None:
        assert self.config_path is not None
        self.config_path.write_text(self.render_config())
        try:
            offset = self.log_path.stat().st_size
        except OSError:
            offset = 0
        super()._start_once(port, deadline)
        wanted = ["leaf", "http"] + (["route"] if self.cluster else [])
        found = self._wait_log_ports(offset, wanted, deadline)
        self.leaf_port = found["leaf"]
        self.http_port = found["http"]
        if self.cluster:
            self.cluster_port = found["route"]

    def _wait_log_ports(
        self, offset: int, wanted: Sequence[str], deadline: float
    ) -> dict[str, int]:
        """Ports announced in the log since ``offset`` (bounded by ``deadline``)."""
        found: dict[str, int] = {}
        while True:
            try:
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    text = log.read().decode("utf-8", "replace")
            except OSError:
                text = ""
            for kind in wanted:
                match = _LOG_LINES[kind].search(text)
                if match:
                    found[kind] = int(match.group(2))
            if all(kind in found for kind in wanted):
                return found
            if not self.running:
                self.stop()
                raise HarnessError(
                    f"{self.name} exited before announcing {', '.join(wanted)}.\n"
                    f"log tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise HarnessError(
                    f"{self.name}: no {', '.join(k for k in wanted if k not in found)} "
                    f"listener in the log within the time limit.\nlog tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def restart(self, timeout: float = START_TIMEOUT) -> HubProcess:
        """Stop (if running) and start again on the same client, leafnode, monitoring
        and route ports, with the same store."""
        super().restart(timeout)
        return self


def start_hub(
    tmp_path: Path,
    *,
    jetstream: bool = True,
    domain: str = "hub",
    accounts: bool = False,
    leaf_auth: tuple[str, str] | None = None,
    extra: str = "",
    server_name: str = "hub",
) -> HubProcess:
    """Start one hub and return once its client, leafnode and monitoring listeners
    are up.

    * ``accounts=True``: the shipped ``single.conf`` -- leaf links authenticate
      (``leaf_auth``, default :data:`DEFAULT_LEAF_AUTH`) and are bound to account
      TELEMETRY; hub clients use ``hub.client_url`` (user :data:`APP_AUTH`).
    * ``accounts=False``: no accounts; ``leaf_auth`` (if given) is required from
      leafs, links bind to ``$G``.
    * ``extra`` is appended to the config (later keys override earlier ones).
    """
    hub = HubProcess(
        tmp_path,
        server_name=server_name,
        jetstream=jetstream,
        domain=domain,
        accounts=accounts,
        leaf_auth=leaf_auth,
        extra=extra,
    )
    hub.start()
    return hub


# ---------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on 127.0.0.1 (a hint: they can be taken
    before use, callers retry).  Taken below the kernel's ephemeral range where
    possible, so outgoing connections do not grab them meanwhile."""
    low = _ephemeral_low()
    socks: list[socket.socket] = []
    try:
        tries = 0
        while len(socks) < n:
            tries += 1
            candidate = random.randint(20000, low - 1) if low > 20100 and tries < 200 else 0
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((HOST, candidate))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_cluster_ready(
    nodes: Sequence[HubProcess], *, jetstream: bool = True, timeout: float = CLUSTER_TIMEOUT
) -> None:
    """Wait (bounded) until every node has routes to all others (``/routez``) and,
    with JetStream, every node knows the meta leader (``/jsz``)."""
    deadline = time.monotonic() + timeout
    want = len(nodes) - 1
    pending = list(nodes)
    last: str = ""
    while pending:
        node = pending[0]
        try:
            routes = node.monitor("routez").get("num_routes", 0)
            ok = routes >= want
            last = f"{node.server_name}: {routes}/{want} routes"
            if ok and jetstream:
                meta = node.monitor("jsz").get("meta_cluster") or {}
                ok = bool(meta.get("leader")) and int(meta.get("cluster_size") or 0) >= len(nodes)
                last = f"{node.server_name}: meta {meta}"
        except (OSError, urllib.error.URLError, ValueError) as exc:
            ok = False
            last = f"{node.server_name}: {exc}"
        if ok:
            pending.pop(0)
            continue
        if not node.running:
            raise HarnessError(f"{node.server_name} exited.\nlog tail:\n{node.log_tail()}")
        if time.monotonic() >= deadline:
            raise HarnessError(
                f"cluster not ready within {timeout} s ({last}).\nlog tail:\n{node.log_tail()}"
            )
        time.sleep(0.1)


def start_hub_cluster(
    tmp_path: Path,
    n: int = 3,
    *,
    cluster_name: str = "hubs",
    attempts: int = 3,
    timeout: float = CLUSTER_TIMEOUT,
    **kw: Any,
) -> list[HubProcess]:
    """Start ``n`` hub nodes (``hub-1`` ...) routed to each other; returns once all
    routes are up (and, with JetStream, a meta leader is known).  Route ports are
    pre-picked; a start that loses one to another process is retried with new ports.
    Keyword arguments are those of :func:`start_hub` (not ``server_name``)."""
    if n < 2:
        raise ValueError("a cluster needs at least 2 nodes")
    jetstream = bool(kw.get("jetstream", True))
    last_error: HarnessError | None = None
    for _attempt in range(attempts):
        ports = free_ports(n)
        nodes = [
            HubProcess(
                tmp_path / f"hub-{i + 1}",
                server_name=f"hub-{i + 1}",
                cluster=ClusterSpec(
                    cluster_name, ports[i], tuple(p for j, p in enumerate(ports) if j != i)
                ),
                **kw,
            )
            for i in range(n)
        ]
        try:
            for node in nodes:
                node.start()
            wait_cluster_ready(nodes, jetstream=jetstream, timeout=timeout)
            return nodes
        except HarnessError as exc:
            for node in nodes:
                node.stop()
            if not any("address already in use" in node.log_tail(20000) for node in nodes):
                raise
            last_error = exc
    raise HarnessError(f"no cluster after {attempts} attempts: {last_error}")


def stop_all(hubs: Sequence[HubProcess]) -> None:
    for hub in hubs:
        hub.stop()


# ---------------------------------------------------------------------------
# TCP proxy
# ---------------------------------------------------------------------------


class TcpProxy:
    """A TCP relay on 127.0.0.1:<OS-chosen> to ``target_host:target_port``.

    Run it in a nursery, either ``async with TcpProxy(port) as proxy:`` or
    ``proxy = await nursery.start(TcpProxy(port).run)``.  ``cut()`` closes every
    relayed connection and makes the proxy close new ones right after accepting them
    (counted in ``refused``) until ``restore()``.  ``cut``/``restore`` may be called
    from the Trio thread or from any other thread (e.g. an asyncio scenario run with
    ``trio.to_thread``).

    Counters: ``accepted`` (connections relayed), ``refused`` (closed because cut),
    ``failed`` (target unreachable), ``active`` (relaying now), ``cuts``,
    ``bytes_up`` (client -> target) and ``bytes_down``.
    """

    def __init__(
        self, target_port: int, target_host: str = HOST, *, connect_timeout: float = 5.0
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.connect_timeout = connect_timeout
        self.port = 0
        self.is_cut = False
        self.accepted = 0
        self.refused = 0
        self.failed = 0
        self.cuts = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._links: set[trio.CancelScope] = set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: int | None = None
        self._changed = trio.Event()
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def active(self) -> int:
        return len(self._links)

    # -- running ----------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[TcpProxy] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and relay until cancelled; ``task_status.started(self)`` once
        listening (``.port`` is set)."""
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        listener = listeners[0]
        for extra in listeners[1:]:
            await extra.aclose()
        self.port = listener.socket.getsockname()[1]
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(self)
                async with listener:
                    while True:
                        stream = await listener.accept()
                        nursery.start_soon(self._handle, stream)
        finally:
            self._token = None

    async def __aenter__(self) -> TcpProxy:
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        try:
            await nursery.start(self.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.is_cut:
            self.refused += 1
            self._wake()
            await _abort(client)
            return
        scope = trio.CancelScope()
        self._links.add(scope)
        self.accepted += 1
        self._wake()
        upstream: trio.SocketStream | None = None
        try:
            with scope:
                try:
                    with trio.fail_after(self.connect_timeout):
                        upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
                except (OSError, trio.TooSlowError):
                    self.failed += 1
                    return
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._pump, client, upstream, True, pumps.cancel_scope)
                    pumps.start_soon(self._pump, upstream, client, False, pumps.cancel_scope)
        finally:
            self._links.discard(scope)
            with trio.CancelScope(shield=True):
                if upstream is not None:
                    await _abort(upstream)
                await _abort(client)
            self._wake()

    async def _pump(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        up: bool,
        both: trio.CancelScope,
    ) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    await dst.send_eof()  # half-close: the other direction may go on
                    return
                await dst.send_all(data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                self._wake()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            both.cancel()

    # -- control ------------------------------------------------------------------

    def _in_trio_thread(self) -> bool:
        return self._thread == threading.get_ident()

    def _call(self, fn: Any) -> None:
        if self._token is None or self._in_trio_thread():
            fn()
        else:
            trio.from_thread.run_sync(fn, trio_token=self._token)

    def cut(self) -> None:
        """Close all relayed connections; new ones are closed on accept."""
        self._call(self._cut)

    def restore(self) -> None:
        """Relay new connections again."""
        self._call(self._restore)

    def _cut(self) -> None:
        self.is_cut = True
        self.cuts += 1
        for scope in list(self._links):
            scope.cancel()
        self._wake()

    def _restore(self) -> None:
        self.is_cut = False
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, cond: Any, timeout: float = 5.0, what: str = "") -> None:
        """Wait (bounded) until ``cond(self)`` is true; checked after every event."""
        with trio.move_on_after(timeout):
            while not cond(self):
                await self._changed.wait()
            return
        raise TimeoutError(f"TcpProxy: {what or cond} not reached within {timeout} s")


class ThreadedProxy:
    """A TcpProxy running in its own thread with its own Trio loop, for tests whose
    scenario runs on asyncio (nats-py). cut()/restore() are thread-safe."""

    def __init__(self, target_port: int) -> None:
        self.proxy = TcpProxy(target_port)
        self._started = threading.Event()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.proxy.run)
                self._started.set()
                await trio.sleep_forever()

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scope is not None and self._token is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def accepted(self) -> int:
        return self.proxy.accepted

    def cut(self) -> None:
        self.proxy.cut()

    def restore(self) -> None:
        self.proxy.restore()


async def _abort(stream: trio.SocketStream) -> None:
    """Close a stream without waiting for the peer."""
    with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.aclose()
