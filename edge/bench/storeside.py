"""The store cases' setting: constants, the raw JetStream API, the hub and leaf
processes of both sides, the probes that read a leaf's committed state. The cases
themselves are in ``storecases``."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import (
    HOST,
    HUB_NAME,
    LEAF_NAME,
    LINK_TIMEOUT,
    PING,
    PONG,
    PUB_BUFFER_BYTES,
    SOCKET_TIMEOUT,
    START_TIMEOUT,
    BenchError,
    Measurement,
    Runner,
    Target,
)
from .leafcases import wait_flow
from .protocol import await_pong, handshake, pub_frame, recv_line
from .servers import Server, free_ports, log_tail, start_server, stop_server

STORE_FILTER = "telemetry.>"
STORE_SUBJECT = b"telemetry.bench"
PRIME_SUBJECT = b"telemetry.prime"
PLAIN_SUBJECT = b"bench.plain"  # not forwarded: the leaf's plain publish rate
STREAM = "TELEMETRY"
HUB_DOMAIN = "hub"
LEAF_DOMAIN = "leaf"
SIZE = 128
DB_NAME = "leafgate.db"  # store.paths.DB_NAME of this tree

DEFAULT_BACKLOG = 1_000_000
DEFAULT_BYTES_MSGS = 100_000
PRIME_MSGS = 20_000  # warm-up burst through leaf store -> hub stream before store_pub
SAMPLE_INTERVAL = 0.02  # seconds between reads of the leaf's and the hub's state
HUB_WAIT = 60.0  # longest wait for the hub stream to hold a store_pub run
RATE_FLOOR = 5_000  # msgs/s: bounds every wait for a count (plus a fixed margin)
FIRST_MSG_TIMEOUT = 30.0  # link up -> a first message in the hub stream
EMPTY_TIMEOUT = 15.0  # leafgate's store emptying after the hub holds everything
IO_SETTLE = 0.5  # before the first /proc/PID/io reading
BYTES_SETTLE = 2.0  # after everything is committed, before the second
DRAIN_TARGET = 50_000.0  # msgs/s (issue target)
PUB_RATIO_TARGET = 0.5  # store rate / plain rate (issue target)
_JS_INBOX = b"_INBOX.bench_js"
_API_IDS = itertools.count()
_HUB_LEAF_LINE = re.compile(
    rb"^\[\d+\] (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)(\.\d+) .*Leafnode connection created"
)


OPTIONS = {"backlog": DEFAULT_BACKLOG, "bytes_msgs": DEFAULT_BYTES_MSGS}
NOTES: dict[str, str] = {}  # said once in the summary (e.g. what this nats-server lacks)


def configure(backlog: int, bytes_msgs: int) -> None:
    """The message counts of store_drain_1m and store_bytes_128 (from the CLI), for a
    new bench run (whose notes start empty)."""
    OPTIONS.update(backlog=backlog, bytes_msgs=bytes_msgs)
    NOTES.clear()


def _say(text: str) -> None:
    print(f"    {text}", file=sys.stderr, flush=True)


def _fmt_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"


# ------------------------------------------------------------ JetStream API, raw


class JsApi:
    """Requests to one server's JetStream API ($JS.API.>) on one raw connection."""

    def __init__(self, port: int) -> None:
        # A reply prefix of its own: leaf and hub share one subject space.
        self.prefix = b"%b.%d.%d" % (_JS_INBOX, os.getpid(), next(_API_IDS))
        self.sock, self.buf = handshake(port, b"SUB " + self.prefix + b".* 1\r\n")
        self.n = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self.n += 1
        inbox = b"%b.%d" % (self.prefix, self.n)
        data = b"" if body is None else json.dumps(body).encode()
        self.sock.sendall(b"PUB %b %b %d\r\n%b\r\n" % (subject.encode(), inbox, len(data), data))
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while True:
            got, payload = self._next_msg(deadline)
            if got == inbox:  # anything else: a late answer to an earlier request
                break
        with contextlib.suppress(ValueError):
            reply = json.loads(payload)
            if isinstance(reply, dict):
                return reply
        raise BenchError(f"{subject}: unexpected reply {payload[:80]!r}")

    def _next_msg(self, deadline: float) -> tuple[bytes, bytes]:
        """The next MSG/HMSG (subject, payload without headers); answers PINGs."""
        sock, buf = self.sock, self.buf
        while True:
            line = recv_line(sock, buf, deadline)
            parts = line.split()
            op = parts[0].upper() if parts else b""
            if op == b"PING":
                sock.sendall(PONG)
            elif op.startswith(b"-ERR"):
                raise BenchError(f"server error: {line.decode(errors='replace')}")
            elif op in (b"MSG", b"HMSG"):
                size = int(parts[-1])
                hsize = int(parts[-2]) if op == b"HMSG" else 0
                while len(buf) < size + 2:
                    if time.monotonic() > deadline:
                        raise BenchError("timed out reading a JetStream API reply")
                    data = sock.recv(65536)
                    if not data:
                        raise BenchError("server closed the JetStream API connection")
                    buf += data
                body = bytes(buf[hsize:size])
                del buf[: size + 2]
                return parts[1], body

    def create_stream(self, config: dict[str, Any]) -> None:
        reply = self.request(f"$JS.API.STREAM.CREATE.{config['name']}", config)
        if "error" in reply:
            raise BenchError(f"creating stream {config['name']}: {reply['error']}")

    def stream_msgs(self, name: str = STREAM) -> int:
        reply = self.request(f"$JS.API.STREAM.INFO.{name}")
        state = reply.get("state")
        if not isinstance(state, dict):
            raise BenchError(f"stream {name}: {reply.get('error', reply)}")
        return int(state["messages"])


def _create_stream(port: int, config: dict[str, Any]) -> None:
    api = JsApi(port)
    try:
        api.create_stream(config)
    finally:
        api.close()


def _leaf_stream() -> dict[str, Any]:
    return {"name": STREAM, "subjects": [STORE_FILTER], "storage": "file", "num_replicas": 1}


def _hub_stream(side: str) -> dict[str, Any]:
    if side == "leafgate":
        return _leaf_stream()  # duplicate window: the default 2 min
    # nats-server's pattern: the hub's stream sources the leaf's across the link.
    source = {"name": STREAM, "external": {"api": f"$JS.{LEAF_DOMAIN}.API", "deliver": ""}}
    return {"name": STREAM, "storage": "file", "num_replicas": 1, "sources": [source]}


# ------------------------------------------------------------------ processes


def start_js_hub(cmd: Sequence[str], ports: tuple[int, int], js_dir: Path) -> Server:
    """A nats-server hub with JetStream on (client, leafnode) ``ports``; its JetStream
    directory ``js_dir`` outlives the process (a restart finds its stream)."""
    tmpdir = Path(tempfile.mkdtemp(prefix="leafgate-bench-jshub-"))
    conf = tmpdir / "hub.conf"
    conf.write_text(
        f"server_name: {HUB_NAME}\nlisten: {HOST}:{ports[0]}\n"
        f"leafnodes {{ listen: {HOST}:{ports[1]} }}\n"
        f'jetstream {{ store_dir: "{js_dir}", domain: {HUB_DOMAIN} }}\n'
    )
    log = tmpdir / "server.log"
    with open(log, "wb") as logf:
        try:
            argv = [*cmd, "-c", str(conf)]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        except OSError as e:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise BenchError(f"cannot start the hub: {e}") from None
    hub = Server(proc=proc, tmpdir=tmpdir, log=log, port=ports[0], leaf_port=ports[1])
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while b"Server is ready" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the hub did not start: {log_tail(log)}")
            time.sleep(0.002)
    except BaseException:
        stop_server(hub)
        raise
    hub.t_ready = time.monotonic()
    return hub


def hub_link_time(hub: Server) -> float | None:
    """time.monotonic() of the hub's first "Leafnode connection created" log line."""
    with contextlib.suppress(OSError):
        for line in hub.log.read_bytes().splitlines():
            m = _HUB_LEAF_LINE.match(line)
            if m:
                wall = time.mktime(time.strptime(m[1].decode(), "%Y/%m/%d %H:%M:%S"))
                return wall + float(m[2]) - time.time() + time.monotonic()
    return None


def _nats_leaf_config(hub_leaf_port: int, js_dir: Path, sync: str | None) -> str:
    sync_item = f", sync_interval: {sync}" if sync else ""
    return (
        f"server_name: {LEAF_NAME}\n"
        f'jetstream {{ store_dir: "{js_dir}", domain: {LEAF_DOMAIN}{sync_item} }}\n'
        f'leafnodes {{ remotes: [ {{ url: "nats-leaf://{HOST}:{hub_leaf_port}" }} ] }}\n'
    )


def _forward_modes(leaf: Server) -> str:
    """How leafgate's forwarder confirms (its forward_started log line)."""
    deadline = time.monotonic() + LINK_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in leaf.log.read_text(errors="replace").splitlines():
                if '"forward_started"' in line:
                    with contextlib.suppress(ValueError):
                        return str(json.loads(line).get("modes"))
                    return line[:120]
        time.sleep(0.01)
    return f"unknown (no forward_started in the leaf log: {log_tail(leaf.log, 2)})"


class StoreFile:
    """leafgate's store read without leafgate: a read-only SQLite connection."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / DB_NAME
        self.conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self.conn is None and self.path.exists():
            uri = f"file:{self.path}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=1.0, isolation_level=None)
        return self.conn

    def committed(self) -> int:
        """The highest sequence committed (-1 if the file cannot be read right now)."""
        try:
            conn = self._db()
            if conn is None:
                return 0
            top = conn.execute("SELECT max(last_seq) FROM batches").fetchone()[0] or 0
            row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        except sqlite3.Error:
            return -1
        recorded = int(row[0]) if row and str(row[0]).isdigit() else 0
        return max(int(top), recorded)

    def rows(self) -> int:
        """Messages still stored (rows of messages less what is gone of them)."""
        conn = self._db()
        if conn is None:
            return 0
        held = conn.execute("SELECT ifnull(sum(msgs), 0) FROM batches").fetchone()[0]
        gone = conn.execute("SELECT ifnull(sum(msgs), 0) FROM gone").fetchone()[0]
        return int(held) - int(gone)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Probe:
    """Reads what the leaf holds (committed) and what the hub stream holds."""

    def __init__(self, side: str, leaf_port: int, store_dir: Path, hub_port: int | None) -> None:
        self.store = StoreFile(store_dir) if side == "leafgate" else None
        self.leaf = JsApi(leaf_port) if self.store is None else None
        self.hub = JsApi(hub_port) if hub_port else None

    def held(self) -> int:
        if self.store is not None:
            return self.store.committed()
        assert self.leaf is not None
        return self.leaf.stream_msgs()

    def at_hub(self) -> int:
        return self.hub.stream_msgs() if self.hub else 0

    def close(self) -> None:
        for part in (self.store, self.leaf, self.hub):
            if part is not None:
                part.close()


class Sampler:
    """A thread reading (held, at_hub) every SAMPLE_INTERVAL; keeps every sample."""

    def __init__(self, open_probe: Callable[[], Probe]) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self.error: str | None = None
        self._open = open_probe
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        if not self._ready.wait(SOCKET_TIMEOUT * 2) or self.error:
            self.stop()
            raise BenchError(self.error or "the state sampler did not start")

    def _run(self) -> None:
        probe: Probe | None = None
        try:
            probe = self._open()
            self._ready.set()
            while not self._stop.is_set():
                held, hub = probe.held(), probe.at_hub()
                self.samples.append((time.monotonic(), held, hub))
                self._stop.wait(SAMPLE_INTERVAL)
        except (OSError, BenchError, sqlite3.Error) as e:
            self.error = f"state sampler: {e or type(e).__name__}"
        finally:
            self._ready.set()
            if probe is not None:
                probe.close()

    def latest(self) -> tuple[int, int]:
        if self.error:
            raise BenchError(self.error)
        return self.samples[-1][1:] if self.samples else (0, 0)

    def wait(self, index: int, n: int, deadline: float) -> float | None:
        """Wait (bounded) until sample field ``index`` (1: held, 2: at the hub) reaches
        ``n``; return when it first did, or None."""
        seen = 0
        while True:
            samples = self.samples[seen:]
            for sample in samples:
                if sample[index] >= n:
                    return sample[0]
            seen += len(samples)
            if self.error:
                raise BenchError(self.error)
            if time.monotonic() > deadline:
                return None
            time.sleep(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=SOCKET_TIMEOUT * 2)


class Topology:
    """A leaf of the side's kind with its store, and (``hub``) a hub with JetStream,
    in one scratch directory. ``link=False``: the hub is started once (to create its
    stream) and stopped before the leaf starts; ``restart_hub`` brings it back.
    ``hub=False``: the leaf dials a port where nothing listens."""

    def __init__(
        self, t: Target, *, hub: bool = True, link: bool = True, sync: str | None = None
    ) -> None:
        self.t = t
        self.side = t.side
        self.work = Path(tempfile.mkdtemp(prefix="leafgate-bench-store-"))
        self.leaf_store = self.work / "leaf-store"
        p = free_ports(2)
        self.ports = (p[0], p[1])
        self.hub: Server | None = None
        self.leaf: Server | None = None
        try:
            if hub:
                _create_stream(self.restart_hub().port, _hub_stream(self.side))
                if not link:
                    self.stop_hub()
            self.leaf = self._start_leaf(sync)
            if self.side == "nats":
                _create_stream(self.leaf.port, _leaf_stream())
            if self.hub is not None:
                wait_flow(self.leaf.port, self.hub.port, "the leaf link to come up")
        except BenchError as e:
            leaf_log = f"; leaf log: {log_tail(self.leaf.log, 3)}" if self.leaf else ""
            self.close()  # (removes the log)
            raise BenchError(f"{e}{leaf_log}") from None
        except BaseException:
            self.close()
            raise

    def _start_leaf(self, sync: str | None) -> Server:
        if self.side == "nats":
            conf = _nats_leaf_config(self.ports[1], self.leaf_store, sync)
            return start_server(self.t.cmd, config=conf)
        url = f"nats-leaf://{HOST}:{self.ports[1]}"
        store = ("--forward", STORE_FILTER, "--store", str(self.leaf_store))
        return start_server([*self.t.cmd, "-n", LEAF_NAME, "--hub", url, *store])

    @property
    def leaf_server(self) -> Server:
        assert self.leaf is not None
        return self.leaf

    def restart_hub(self) -> Server:
        self.hub = start_js_hub(self.t.hub, self.ports, self.work / "hub-js")
        return self.hub

    def stop_hub(self) -> None:
        hub, self.hub = self.hub, None
        if hub is not None:
            stop_server(hub)

    def probe(self, with_hub: bool = True) -> Probe:
        hub_port = self.hub.port if with_hub and self.hub is not None else None
        return Probe(self.side, self.leaf_server.port, self.leaf_store, hub_port)

    def sampler(self, with_hub: bool = True) -> Sampler:
        return Sampler(lambda: self.probe(with_hub))

    def alive(self) -> None:
        for who, srv in (("leaf", self.leaf), ("hub", self.hub)):
            if srv is not None and srv.proc.poll() is not None:
                code = srv.proc.returncode
                raise BenchError(f"{who} exited (code {code}): {log_tail(srv.log, 3)}")

    def close(self) -> None:
        try:
            self.stop_hub()
            if self.leaf is not None:
                stop_server(self.leaf)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_exact(port: int, subject: bytes, size: int, n: int) -> float:
    """Publish exactly ``n`` messages on one connection, then PING; return the seconds
    until the PONG (the server had taken every message)."""
    sock, buf = handshake(port)
    one = pub_frame(subject, size)
    per = max(1, PUB_BUFFER_BYTES // len(one))
    block = one * per
    full, rest = divmod(n, per)
    with sock:
        t = time.monotonic()
        try:
            for _ in range(full):
                sock.sendall(block)
            sock.sendall(one * rest + PING)
        except TimeoutError:
            raise BenchError(f"the publisher was blocked for {SOCKET_TIMEOUT:g} s") from None
        await_pong(sock, buf, time.monotonic() + 60 + n / RATE_FLOOR)
        return time.monotonic() - t


def _wait_held(top: Topology, n: int, at_hub: bool) -> tuple[int, int]:
    """Wait (bounded) until the leaf holds ``n`` (and, ``at_hub``, the hub stream too)."""
    probe = top.probe(with_hub=at_hub)
    try:
        deadline = time.monotonic() + FIRST_MSG_TIMEOUT + n / RATE_FLOOR
        while True:
            held, hub = probe.held(), probe.at_hub()
            if held >= n and (hub >= n or not at_hub):
                return held, hub
            if time.monotonic() > deadline:
                raise BenchError(
                    f"waiting for {n} messages: the leaf holds {held}, the hub stream {hub}; "
                    f"leaf log: {log_tail(top.leaf_server.log, 3)}"
                )
            time.sleep(SAMPLE_INTERVAL)
    finally:
        probe.close()


def _bench_errors(fn: Runner) -> Runner:
    """Socket and SQLite failures end the run as a BenchError (shown as the reason)."""

    @functools.wraps(fn)
    def run(t: Target, warmup: float, duration: float) -> Measurement:
        try:
            return fn(t, warmup, duration)
        except (OSError, sqlite3.Error) as e:
            raise BenchError(f"{type(e).__name__}: {e}") from None

    return run
