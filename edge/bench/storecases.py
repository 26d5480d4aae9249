"""The store-and-forward cases: leafgate's SQLite store against a nats-server leaf
that buffers in a JetStream file stream.

Every run starts fresh processes on 127.0.0.1 (OS-chosen ports) and one scratch
directory (stores, JetStream directories), removed afterwards:

* hub: nats-server with JetStream (domain ``hub``) and a leafnode listener;
* leafgate side: ``leafgate --hub ... --forward 'telemetry.>' --store DIR`` (fsync
  per batch, the default); the hub holds a file stream TELEMETRY on telemetry.>,
  created before the link comes up so that leafgate confirms with PubAcks;
* nats-server side: a nats-server leaf with JetStream (domain ``leaf``) and a file
  stream TELEMETRY on telemetry.>, which the hub's stream TELEMETRY sources across
  the link (``external.api = $JS.leaf.API``): nats-server's own store-and-forward.

The leaf's committed state is read without asking it: leafgate's SQLite file opened
read-only (highest sequence written: ``max(seq)``, or ``last_seq`` once rows are
deleted), the nats-server leaf's stream state from its JetStream API.

``store_pub_128``: the load generator's publisher (final PING/PONG) on a subject
that is not forwarded (plain rate), then, after a warm-up burst through the whole
path, on the forwarded subject without warm-up (every message counted); and when
the leaf had committed them all, and the hub stream held them all.
``store_drain_1m``: ``--store-backlog`` messages published and committed while the
hub is down (started once to create its stream, then stopped); the hub restarted
on the same ports and directory; backlog / (hub holds all - hub logged the link).
``store_bytes_128``: /proc/PID/io write_bytes of the leaf per stored 128 B message,
link down: committed plus a settle, and after a graceful stop (the exited process
is read before it is reaped); and the store's file sizes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
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
    STOP_TIMEOUT,
    BenchError,
    Measurement,
    Runner,
    Target,
)
from .leafcases import wait_flow
from .loadgen import WorkerSpec, run_workers
from .protocol import await_pong, handshake, pub_frame, recv_line
from .servers import Server, descendants, free_ports, log_tail, start_server, stop_server

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
            top = conn.execute("SELECT max(seq) FROM messages").fetchone()[0] or 0
            row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        except sqlite3.Error:
            return -1
        recorded = int(row[0]) if row and str(row[0]).isdigit() else 0
        return max(int(top), recorded)

    def rows(self) -> int:
        conn = self._db()
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0]) if conn else 0

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


# ------------------------------------------------------------- store_pub_128


def _pub_phase(
    top: Topology, subject: bytes, warmup: float, duration: float
) -> tuple[float, int, float, float, dict[str, float]]:
    """One load-generator publisher (final PING/PONG); return its rate, the messages
    it counted, when it started and when it got the PONG, and the CPU figures."""
    marks: list[float] = []
    spec = WorkerSpec("pub", {"size": SIZE, "subject": subject, "ping_end": True, "overrun": 0.0})
    results, cpu = run_workers(
        top.leaf_server,
        [spec],
        warmup,
        duration,
        hub=top.hub,
        barrier=lambda: marks.append(time.monotonic()),  # the load starts 50 ms later
    )
    res = results[0]
    t_mark = marks[0] + 0.05 + warmup  # the publisher's window start
    return res["msgs"] / res["secs"], int(res["msgs"]), t_mark, t_mark + res["secs"], cpu


@_bench_errors
def _store_pub(t: Target, warmup: float, duration: float) -> Measurement:
    with Topology(t) as top:
        if t.side == "leafgate":
            NOTES["store_pub_128 leafgate confirmation"] = _forward_modes(top.leaf_server)
        plain, _, _, _, _ = _pub_phase(top, PLAIN_SUBJECT, warmup, duration)
        publish_exact(top.leaf_server.port, PRIME_SUBJECT, SIZE, PRIME_MSGS)
        base_held, base_hub = _wait_held(top, PRIME_MSGS, at_hub=True)
        sampler = top.sampler()
        try:
            # No warm-up: the publisher then counts every message it sent.
            rate, total, t_go, t_pong, cpu = _pub_phase(top, STORE_SUBJECT, 0.0, duration)
            deadline = time.monotonic() + 30 + total / RATE_FLOOR
            t_held = sampler.wait(1, base_held + total, deadline)
            t_hub = sampler.wait(2, base_hub + total, time.monotonic() + HUB_WAIT)
            held, at_hub = sampler.latest()
        finally:
            sampler.stop()
        top.alive()
    extra = {"plain_rate": plain, "vs_plain": rate / plain, "msgs": total, **cpu}
    extra["secs"] = t_pong - t_go
    if t_held is None:
        extra["not_committed"] = base_held + total - held
    else:
        extra["commit_lag_s"] = t_held - t_pong
        extra["committed_rate"] = total / (t_held - t_go)
    if t_hub is None:
        extra["not_at_hub"] = base_hub + total - at_hub
    else:
        extra["hub_lag_s"] = t_hub - t_pong
        extra["hub_rate"] = total / (t_hub - t_go)
    return _said(t, "store_pub_128", Measurement(rate, extra))


# ------------------------------------------------------------ store_drain_1m


@_bench_errors
def _store_drain(t: Target, warmup: float, duration: float) -> Measurement:
    n = OPTIONS["backlog"]
    with Topology(t, link=False) as top:
        pub_secs = publish_exact(top.leaf_server.port, STORE_SUBJECT, SIZE, n)
        t_pong = time.monotonic()
        _wait_held(top, n, at_hub=False)
        commit_lag = time.monotonic() - t_pong
        hub = top.restart_hub()
        sampler = top.sampler()
        try:
            deadline = time.monotonic() + 60 + n / RATE_FLOOR
            t_first = sampler.wait(2, 1, time.monotonic() + FIRST_MSG_TIMEOUT)
            t_done = sampler.wait(2, n, deadline) if t_first is not None else None
            _, at_hub = sampler.latest()
        finally:
            sampler.stop()
        t_link = hub_link_time(hub)
        if t_first is None or t_done is None:
            raise BenchError(
                f"the hub stream held {at_hub} of {n} messages after the wait; "
                f"leaf log: {log_tail(top.leaf_server.log, 3)}"
            )
        if t_link is None or t_link > t_first:
            t_link = t_first  # no usable log line: count from the first message
        extra: dict[str, float] = {
            "msgs": n,
            "backlog_rate": n / pub_secs,
            "commit_lag_s": commit_lag,
            "hub_ready_to_link_s": t_link - hub.t_ready,
            "link_to_first_s": t_first - t_link,
            "from_first_rate": n / max(t_done - t_first, 1e-3),
            "from_hub_ready_rate": n / (t_done - hub.t_ready),
        }
        if t.side == "leafgate":
            _wait_store_empty(top, extra)
        top.alive()
    return _said(t, "store_drain_1m", Measurement(n / (t_done - t_link), extra))


def _wait_store_empty(top: Topology, extra: dict[str, float]) -> None:
    """After the drain: wait (bounded) until leafgate deleted every confirmed row."""
    store = StoreFile(top.leaf_store)
    try:
        t0 = time.monotonic()
        while (rows := store.rows()) and time.monotonic() - t0 < EMPTY_TIMEOUT:
            time.sleep(0.05)
    finally:
        store.close()
    if rows:
        extra["rows_left"] = rows
    else:
        extra["empty_lag_s"] = time.monotonic() - t0


# ----------------------------------------------------------- store_bytes_128


def _io_of(pid: int) -> tuple[int, int] | None:
    """(write_bytes, cancelled_write_bytes) of /proc/PID/io, None if unreadable."""
    with contextlib.suppress(OSError):
        lines = Path(f"/proc/{pid}/io").read_text().splitlines()
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        return int(fields["write_bytes"]), int(fields["cancelled_write_bytes"])
    return None


def read_io(pid: int) -> tuple[int, int]:
    """/proc/PID/io of ``pid`` and its descendants (the command may be a wrapper)."""
    if _io_of(pid) is None:
        raise BenchError(f"cannot read /proc/{pid}/io")
    counters = [c for p in descendants(pid) if (c := _io_of(p)) is not None]
    return sum(c[0] for c in counters), sum(c[1] for c in counters)


def stop_and_read_io(server: Server) -> tuple[int, int] | None:
    """SIGTERM, wait (bounded) for the exit without reaping, read the exited process's
    /proc/PID/io (its threads' and reaped children's writes included), then reap."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT * 3
    counters = None
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            counters = _io_of(server.pid)
            break
        time.sleep(0.005)
    stop_server(server)  # reaps it (SIGKILL if it did not exit), removes its directory
    return counters


def _files(path: Path) -> dict[str, int]:
    return {
        str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()
    }


def _bytes_once(t: Target, n: int, sync: str | None) -> dict[str, float]:
    """A leaf with the link down: publish ``n``, committed, settle, graceful stop."""
    with Topology(t, hub=False, sync=sync) as top:
        leaf = top.leaf_server
        time.sleep(IO_SETTLE)
        w0, c0 = read_io(leaf.pid)
        pub_secs = publish_exact(leaf.port, STORE_SUBJECT, SIZE, n)
        _wait_held(top, n, at_hub=False)
        time.sleep(BYTES_SETTLE)
        w1, c1 = read_io(leaf.pid)
        files1 = _files(top.leaf_store)
        top.leaf = None  # stopped here, not by close()
        final = stop_and_read_io(leaf)
        files2 = _files(top.leaf_store)
    fig: dict[str, float] = {
        "settled_per_msg": (w1 - w0) / n,
        "settled_net_per_msg": (w1 - w0 - (c1 - c0)) / n,
        "files_settled_per_msg": sum(files1.values()) / n,
        "files_stopped_per_msg": sum(files2.values()) / n,
        "pub_rate": n / pub_secs,
    }
    if final is not None:
        fig["stopped_per_msg"] = (final[0] - w0) / n
        fig["stopped_net_per_msg"] = (final[0] - w0 - (final[1] - c0)) / n
    largest = sorted(files2.items(), key=lambda kv: -kv[1])[:2]
    NOTES[f"store_bytes_128 {t.side}{' sync_interval ' + sync if sync else ''}"] = (
        "largest files after the stop: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in largest)
    )
    return fig


_SYNC_SUPPORT: dict[tuple[str, ...], str | None] = {}


def _sync_always_unsupported(cmd: tuple[str, ...]) -> str | None:
    """Why this nats-server refuses ``jetstream { sync_interval: always }`` (None: it
    accepts it); asked once per binary."""
    if cmd not in _SYNC_SUPPORT:
        work = Path(tempfile.mkdtemp(prefix="leafgate-bench-store-"))
        try:
            conf = _nats_leaf_config(free_ports(1)[0], work, "always")
            stop_server(start_server(cmd, config=conf))
            _SYNC_SUPPORT[cmd] = None
        except BenchError as e:
            m = re.search(r'unknown field "?sync_interval"?', str(e))
            _SYNC_SUPPORT[cmd] = m[0] if m else str(e)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _SYNC_SUPPORT[cmd]


@_bench_errors
def _store_bytes(t: Target, warmup: float, duration: float) -> Measurement:
    n = OPTIONS["bytes_msgs"]
    extra = _bytes_once(t, n, None)
    if t.side == "nats":
        why_not = _sync_always_unsupported(t.cmd)
        if why_not is None:
            always = _bytes_once(t, n, "always")
            extra.update({f"always_{k}": v for k, v in always.items()})
        else:
            NOTES["sync_interval"] = (
                f"{t.cmd[0]} refuses jetstream {{ sync_interval: always }} ({why_not}); "
                "only its built-in sync behaviour is measured"
            )
    value = extra.get("stopped_per_msg", extra["settled_per_msg"])
    return _said(t, "store_bytes_128", Measurement(value, extra | {"msgs": n}))


STORE_RUNNERS: dict[str, Runner] = {
    "store_pub_128": _store_pub,
    "store_drain_1m": _store_drain,
    "store_bytes_128": _store_bytes,
}


# ------------------------------------------------------------------- figures


def _said(t: Target, name: str, m: Measurement) -> Measurement:
    """Print one run's figures (under its progress line); return ``m``."""
    _say(f"{name} {t.side}: {describe(name, m.value, lambda k: m.extra.get(k, math.nan))}")
    return m


def describe(name: str, value: float, get: Callable[[str], float]) -> str:
    """The figures of a store case in words (one run's, or medians)."""

    def have(key: str) -> bool:
        return not math.isnan(get(key))

    if name == "store_pub_128":
        ratio = get("vs_plain")
        text = (
            f"store {_fmt_rate(value)} vs plain {_fmt_rate(get('plain_rate'))} msgs/s = "
            f"{ratio:.2f} ({'meets' if ratio >= PUB_RATIO_TARGET else 'MISSES'} the >= "
            f"{PUB_RATIO_TARGET:g} target; {get('msgs'):.0f} msgs in {get('secs'):.2f} s); "
        )
        if have("commit_lag_s"):
            text += (
                f"all committed {get('commit_lag_s'):+.2f} s after the PONG "
                f"({_fmt_rate(get('committed_rate'))} msgs/s committed); "
            )
        else:
            text += f"{get('not_committed'):.0f} NOT committed after the wait; "
        if have("hub_lag_s"):
            return text + (
                f"hub stream held all {get('hub_lag_s'):.2f} s after the PONG "
                f"({_fmt_rate(get('hub_rate'))} msgs/s end to end)"
            )
        return text + f"{get('not_at_hub'):.0f} NOT in the hub stream {HUB_WAIT:g} s later"
    if name == "store_drain_1m":
        if have("empty_lag_s"):
            empty = f"; leafgate's store empty {get('empty_lag_s'):.2f} s later"
        elif have("rows_left"):
            empty = f"; leafgate's store still held {get('rows_left'):.0f} rows"
        else:
            empty = ""
        return (
            f"drain {_fmt_rate(value)} msgs/s from link up "
            f"({'meets' if value >= DRAIN_TARGET else 'MISSES'} the >= "
            f"{_fmt_rate(DRAIN_TARGET)} target), {_fmt_rate(get('from_first_rate'))} from the "
            f"first message at the hub, {_fmt_rate(get('from_hub_ready_rate'))} from hub ready; "
            f"hub ready -> link {get('hub_ready_to_link_s'):.2f} s, link -> first message "
            f"{get('link_to_first_s'):.2f} s; backlog {get('msgs'):.0f} published at "
            f"{_fmt_rate(get('backlog_rate'))} msgs/s (hub down), committed within "
            f"{get('commit_lag_s'):.2f} s of the PONG{empty}"
        )
    text = (
        f"{value:.0f} B written per message up to a graceful stop, {get('settled_per_msg'):.0f}"
        f" once all committed + {BYTES_SETTLE:g} s (net of cancelled writes "
        f"{get('stopped_net_per_msg'):.0f} / {get('settled_net_per_msg'):.0f}); store files "
        f"{get('files_settled_per_msg'):.0f} B/msg committed, {get('files_stopped_per_msg'):.0f}"
        f" after the stop; {get('msgs'):.0f} msgs published at {_fmt_rate(get('pub_rate'))} "
        "msgs/s, link down"
    )
    if have("always_settled_per_msg"):
        text += (
            f"; with sync_interval: always {get('always_stopped_per_msg'):.0f} / "
            f"{get('always_settled_per_msg'):.0f}"
        )
    return text


def _medians(runs: Sequence[Measurement]) -> Callable[[str], float]:
    def get(key: str) -> float:
        vals = [r.extra[key] for r in runs if key in r.extra]
        return statistics.median(vals) if vals else math.nan

    return get


def summary(names: Sequence[str], results: dict[str, dict[str, Any]]) -> list[str]:
    """Lines after the table: the store cases' figures and ratios (run medians)."""
    lines: list[str] = []
    for name in names:
        if name not in STORE_RUNNERS:
            continue
        for side, res in results[name].items():
            runs: list[Measurement] = res.runs
            if runs:
                value = statistics.median(r.value for r in runs)
                lines.append(f"{name} {side}: {describe(name, value, _medians(runs))}")
    lines.extend(f"note: {k}: {v}" for k, v in NOTES.items())
    return ["store cases (medians of the runs):", *lines] if lines else []
