"""Starting and stopping the servers under test (nats-server, leafgate, hubs, leaves),
and what the bench reads about them from /proc (RSS, CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    HOST,
    HUB_NAME,
    LEAF_NAME,
    SOCKET_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    BenchError,
    Target,
)
from .protocol import connect, recv_line


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    tmpdir: Path
    log: Path
    port: int = 0
    leaf_port: int = 0  # hubs: the leafnode port
    t_spawn: float = 0.0
    t_ready: float = 0.0  # first INFO line received (0 if not probed)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


def log_tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _read_ports_file(tmpdir: Path, pid: int) -> int | None:
    files = sorted(tmpdir.glob("*.ports"), key=lambda f: not f.name.endswith(f"_{pid}.ports"))
    for f in files:
        try:
            urls = json.loads(f.read_text())["nats"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not fully written yet
        for url in urls:
            parsed = urllib.parse.urlsplit(str(url))
            if parsed.port:
                return parsed.port
    return None


def probe(server: Server) -> None:
    """Connect once and read the INFO line; records t_ready and the INFO fields."""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    with connect(server.port) as sock:
        line = recv_line(sock, bytearray(), deadline)
    server.t_ready = time.perf_counter()
    if not line.startswith(b"INFO"):
        raise BenchError(f"server did not start with INFO: {line[:80]!r}")
    with contextlib.suppress(ValueError):
        server.info = json.loads(line[4:])


def _spawn(argv: list[str], tmpdir: Path, what: str) -> Server:
    """Spawn ``argv`` logging to ``tmpdir``/server.log; ``what`` names it in errors."""
    log = tmpdir / "server.log"
    with open(log, "wb") as logf:
        t_spawn = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
            )
        except OSError as e:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise BenchError(f"cannot start {what}{shlex.join(argv)}: {e}") from None
    return Server(proc=proc, tmpdir=tmpdir, log=log, t_spawn=t_spawn)


def _wait_started(
    server: Server, who: str, ready: Callable[[], bool], not_ready: str, pause: float
) -> None:
    """Poll ``ready`` until true; fail if ``server`` exits or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if server.proc.poll() is not None:
            raise BenchError(
                f"{who} exited at start (code {server.proc.returncode}): {log_tail(server.log)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{not_ready} after {START_TIMEOUT:.0f} s: {log_tail(server.log)}")
        time.sleep(pause)


def start_server(cmd: Sequence[str], *, do_probe: bool = True, config: str | None = None) -> Server:
    """Start a server on an ephemeral port (read from its ports file); ``config`` is
    written to a file passed with ``-c`` (the command-line flags still win)."""
    tmpdir = Path(tempfile.mkdtemp(prefix="leafgate-bench-"))
    argv = [*cmd, "-a", HOST, "-p", "-1", "--ports_file_dir", str(tmpdir)]
    if config is not None:
        conf = tmpdir / "server.conf"
        conf.write_text(config)
        conf.chmod(0o600)  # it may hold passwords (leafgate refuses them world-readable)
        argv[len(cmd) : len(cmd)] = ["-c", str(conf)]
    server = _spawn(argv, tmpdir, "")

    def port_known() -> bool:
        server.port = _read_ports_file(tmpdir, server.pid) or 0
        return bool(server.port)

    try:
        _wait_started(server, "server", port_known, "no ports file", 0.0005)
        if do_probe:
            probe(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    proc = server.proc
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(
                    f"bench: server pid {proc.pid} still running {STOP_TIMEOUT:g} s after "
                    "SIGTERM; sending SIGKILL",
                    file=sys.stderr,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
    finally:
        shutil.rmtree(server.tmpdir, ignore_errors=True)


_LISTENING = re.compile(rb"Listening for (client|leafnode) connections on \S+:(\d+)")


def spawn_hub(cmd: Sequence[str], client_port: int = -1, leaf_port: int = -1) -> Server:
    """Spawn a nats-server hub (-1: ephemeral port) without waiting for it."""
    tmpdir = Path(tempfile.mkdtemp(prefix="leafgate-bench-hub-"))
    conf = tmpdir / "hub.conf"
    conf.write_text(
        f"server_name: {HUB_NAME}\n"
        f"listen: {HOST}:{client_port}\n"
        f"leafnodes {{ listen: {HOST}:{leaf_port} }}\n"
    )
    hub = _spawn([*cmd, "-c", str(conf)], tmpdir, "the hub ")
    hub.port, hub.leaf_port = max(0, client_port), max(0, leaf_port)
    return hub


def start_hub(cmd: Sequence[str], client_port: int = -1, leaf_port: int = -1) -> Server:
    """Start a hub; its client and leafnode ports are read from its log (bounded)."""
    hub = spawn_hub(cmd, client_port, leaf_port)
    ports: dict[bytes, int] = {}

    def listening() -> bool:
        nonlocal ports
        with contextlib.suppress(OSError):
            ports = {m[1]: int(m[2]) for m in _LISTENING.finditer(hub.log.read_bytes())}
        return len(ports) == 2

    try:
        _wait_started(hub, "hub", listening, "hub not listening", 0.002)
        hub.port, hub.leaf_port = ports[b"client"], ports[b"leafnode"]
        hub.t_ready = time.perf_counter()
    except BaseException:
        stop_server(hub)
        raise
    return hub


def start_leaf(target: Target, hub: Server) -> Server:
    """Start the leaf of ``target``'s kind, dialing ``hub`` (no wait for the link)."""
    url = f"nats-leaf://{HOST}:{hub.leaf_port}"
    if target.side == "nats":
        # Reference leaf: leafnodes.reconnect left at its default (1 s), on purpose.
        config = (
            f"listen: {HOST}:-1\n"
            f"server_name: {LEAF_NAME}\n"
            f'leafnodes {{ remotes: [ {{ url: "{url}" }} ] }}\n'
        )
        return start_server(target.cmd, config=config)
    return start_server([*target.cmd, "-n", LEAF_NAME, "--hub", url])


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on HOST (bound to 0 together, then closed)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def poll_connect(port: int, server: Server, deadline: float) -> socket.socket:
    """Connect to ``port`` as soon as ``server`` (just spawned) accepts on it."""
    while True:
        try:
            return connect(port)
        except ConnectionRefusedError:
            pass
        if server.proc.poll() is not None:
            raise BenchError(
                f"server exited at start (code {server.proc.returncode}): {log_tail(server.log)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"port {port} not accepting after {START_TIMEOUT:.0f} s")
        time.sleep(0.001)


# ------------------------------------------------------------------------- /proc


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (None if it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """``pid`` and its descendants (in case the server command is a wrapper)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out = [pid]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], []))
        i += 1
    return out


def rss_mib(pid: int) -> float:
    total_kib = 0
    for p in descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    if not total_kib:
        raise BenchError(f"no VmRSS for pid {pid}")
    return total_kib / 1024.0


def foreign_cpu_seconds() -> dict[int, float]:
    """CPU seconds used so far by every user process that is not ours (bench, workers, server)."""
    ours = set(descendants(os.getpid()))
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        fields = _stat_fields(entry)
        if fields is None:
            continue
        if entry == "2" or fields[1] == "2":
            continue  # kernel threads (ksoftirqd may be carrying our own loopback traffic)
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / tck
    return out


def foreign_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def cpu_seconds(pid: int) -> float:
    ticks = 0
    for p in descendants(pid):
        fields = _stat_fields(p)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")
