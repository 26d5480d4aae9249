"""Side-by-side benchmark: leafgate against a real nats-server on the same load.

Both servers are started as subprocesses on 127.0.0.1 with an ephemeral port
(``-a 127.0.0.1 -p -1 --ports_file_dir DIR``); the port is read from the
``<prog>_<pid>.ports`` file the server writes.  A fresh server is started for every
case and every run, and the two sides alternate so that both see the same machine.

The load generator is deliberately dumb so that it is not the bottleneck: one forked
process per connection, raw sockets, publishers ``sendall`` a large pre-built buffer
of identical ``PUB`` commands, subscribers only count received bytes and divide by
the exact size of one ``MSG`` frame.  Only the request/reply cases parse anything.

The ``leaf_*`` cases measure the leafnode link instead: a fresh nats-server hub per
run (``leafnodes { listen }``), and as the leaf either leafgate (``--hub``) or a
nats-server with a ``leafnodes { remotes }`` config; load on one end of the link, the
counting end on the other.  Both kinds of leaf may drop messages when the link is
saturated (core NATS semantics), so the receiving end's count is what is reported.

Run ``python -m edge.bench --help`` (or ``leafgate bench --help``) for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SIDES = ("nats", "leafgate")
SIDE_LABEL = {"nats": "nats-server", "leafgate": "leafgate"}

CONNECT_LINE = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
PING = b"PING\r\n"
PONG = b"PONG\r\n"

SUBJECT = b"bench.s"
REQ_SUBJECT = b"bench.req"
REQ_SIZE = 16
REPLY_BODY = b"ok"
PUB_BUFFER_BYTES = 64 * 1024  # publishers sendall a buffer of about this size
RECV_BUFFER_BYTES = 1 << 20

SOCKET_TIMEOUT = 5.0  # every blocking socket operation of the generator
START_TIMEOUT = 10.0  # waiting for the ports file
STOP_TIMEOUT = 3.0  # SIGTERM -> SIGKILL
READY_TIMEOUT = 15.0  # workers connecting and subscribing
RSS_SETTLE = 0.5  # seconds between "ready" and reading VmRSS
IDLE_CONNECTIONS = 1000
IDLE_BATCH = 100
COLD_STARTS_PER_RUN = 5
REQREP_MIN_SAMPLES = 2000
REQREP_WINDOW = 32
PAYLOAD_BYTE = b"x"
OTHER_CPU_WARN = 0.2  # warn when unrelated processes used more CPU than this in a window

# Leaf cases.
HUB_NAME = "bench_hub"
LEAF_NAME = "bench_leaf"
UP_SUBJECT = b"up.x"  # leaf -> hub
DOWN_SUBJECT = b"down.x"  # hub -> leaf
PROBE_SUBJECT = b"bench.probe"  # link-up checks and interest barriers
RECONNECT_SUBJECT = b"bench.reconnect"
PROBE_INTERVAL = 0.02  # seconds between probe publishes
LINK_TIMEOUT = 10.0  # the link coming up / interest crossing it
RECONNECT_CYCLES = 3  # hub kill + restart cycles per run of leaf_reconnect
RECONNECT_TIMEOUT = 15.0  # restarted hub accepting -> first probe through the new link
NATS_LEAF_RECONNECT_DEFAULT = 1.0  # nats-server leafnodes.reconnect, left unset on purpose


class BenchError(Exception):
    """A case could not be measured; the message is the reason shown in the report."""


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    unit: str
    higher_is_better: bool
    description: str

    @property
    def leaf(self) -> bool:
        """The case runs a hub and a leaf (and needs nats-server for the hub)."""
        return self.name.startswith("leaf_")


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("pub_only_16", "msgs/s", True, "16 B publishes, no subscriber"),
        Case("pub_sub_16", "msgs/s", True, "1 publisher -> 1 subscriber, 16 B"),
        Case("pub_sub_128", "msgs/s", True, "1 publisher -> 1 subscriber, 128 B"),
        Case("pub_sub_1024", "msgs/s", True, "1 publisher -> 1 subscriber, 1024 B"),
        Case("fanout4_128", "msgs/s", True, "1 publisher -> 4 subscribers, published/s"),
        Case("queue4_128", "msgs/s", True, "1 publisher -> queue group of 4, received/s"),
        Case("reqrep_seq", "p50/p99 us", False, "sequential request/reply latency"),
        Case("reqrep_32", "replies/s", True, "request/reply, 32 in flight"),
        Case("rss_idle", "MiB", False, "VmRSS after start"),
        Case("rss_1000", "MiB", False, "VmRSS with 1000 idle connections"),
        Case("cold_start", "ms", False, "spawn to first INFO received"),
        Case(
            "leaf_up_128",
            "msgs/s",
            True,
            "publisher on the leaf -> subscriber on the hub, 128 B, received/s",
        ),
        Case(
            "leaf_down_128",
            "msgs/s",
            True,
            "publisher on the hub -> subscriber on the leaf, 128 B, received/s",
        ),
        Case(
            "leaf_reqrep_seq",
            "p50/p99 us",
            False,
            "requester on the leaf, responder on the hub, sequential",
        ),
        Case(
            "leaf_reconnect",
            "ms",
            False,
            "hub killed + restarted: its leaf port accepting -> leaf msg at the hub",
        ),
    )
}


# ------------------------------------------------------------------------ protocol


def pub_frame(subject: bytes, size: int, reply: bytes | None = None) -> bytes:
    head = b"PUB " + subject + (b" " + reply if reply else b"") + b" %d\r\n" % size
    return head + PAYLOAD_BYTE * size + b"\r\n"


def msg_frame(subject: bytes, sid: bytes, size: int, payload: bytes | None = None) -> bytes:
    body = PAYLOAD_BYTE * size if payload is None else payload
    return b"MSG " + subject + b" " + sid + b" %d\r\n" % len(body) + body + b"\r\n"


def _connect(port: int, timeout: float = SOCKET_TIMEOUT) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_line(sock: socket.socket, buf: bytearray, deadline: float) -> bytes:
    """Return the next CRLF-terminated line (without CRLF), reading as needed."""
    while True:
        eol = buf.find(b"\r\n")
        if eol >= 0:
            line = bytes(buf[:eol])
            del buf[: eol + 2]
            return line
        if time.monotonic() > deadline:
            raise BenchError("timed out waiting for a line from the server")
        data = sock.recv(65536)
        if not data:
            raise BenchError("server closed the connection")
        buf += data


def _await_pong(sock: socket.socket, buf: bytearray, deadline: float) -> None:
    """Read until PONG, skipping INFO/+OK and answering server PINGs."""
    while True:
        line = _recv_line(sock, buf, deadline)
        op = line.split(b" ", 1)[0].upper()
        if op == b"PONG":
            return
        if op == b"PING":
            sock.sendall(PONG)
        elif op.startswith(b"-ERR"):
            raise BenchError(f"server error: {line.decode(errors='replace')}")
        elif op not in (b"INFO", b"+OK"):
            raise BenchError(f"unexpected line from server: {line[:80]!r}")


def _handshake(port: int, extra: bytes = b"") -> tuple[socket.socket, bytearray]:
    """Connect, send CONNECT (+ ``extra``, e.g. SUB) and PING, wait for the PONG."""
    sock = _connect(port)
    buf = bytearray()
    deadline = time.monotonic() + SOCKET_TIMEOUT
    try:
        sock.sendall(CONNECT_LINE + extra + PING)
        _await_pong(sock, buf, deadline)
    except BaseException:
        sock.close()
        raise
    return sock, buf


def _consume_replies(sock: socket.socket, buf: bytearray, frame: bytes) -> int:
    """Consume complete reply MSG frames from ``buf``; answer PINGs; return the count.

    ``frame`` is the exact expected frame; anything else that is a well-formed MSG is
    still counted (tolerant of spacing differences), anything else is an error.
    """
    count = 0
    pos = 0
    n = len(buf)
    flen = len(frame)
    while pos < n:
        if buf.startswith(frame, pos):
            count += 1
            pos += flen
            continue
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            break
        line = bytes(buf[pos:eol])
        op = line.split(None, 1)[0].upper() if line.strip() else b""
        if op == b"MSG":
            parts = line.split()
            try:
                size = int(parts[-1])
            except (ValueError, IndexError):
                raise BenchError(f"bad MSG line from server: {line[:80]!r}") from None
            end = eol + 2 + size + 2
            if end > n:
                break
            count += 1
            pos = end
        elif op == b"PING":
            sock.sendall(PONG)
            pos = eol + 2
        elif op in (b"PONG", b"+OK", b"INFO"):
            pos = eol + 2
        else:
            raise BenchError(f"unexpected from server: {line[:80]!r}")
    del buf[:pos]
    return count


# ------------------------------------------------------------------------- workers
# Each worker runs in its own forked process and owns one connection.  Protocol on
# its pipe: worker -> ("ready", None); main -> ("go", t_go, t0, t1); worker ->
# ("result", dict) or ("error", str) at any time; main -> ("stop",) ends a worker
# that runs until told (the responder).  All times are time.monotonic(), which is
# system-wide on Linux.


@dataclass(frozen=True)
class Schedule:
    t_go: float  # publishing starts
    t0: float  # measurement window starts (after warm-up)
    t1: float  # measurement window ends


def _wait_go(conn: Connection) -> Schedule | None:
    if not conn.poll(READY_TIMEOUT + 30):
        raise BenchError("no go signal from the bench")
    msg = conn.recv()
    if msg[0] == "stop":
        return None
    return Schedule(msg[1], msg[2], msg[3])


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _role_pub(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, buf = _handshake(port)
    one = pub_frame(p.get("subject", SUBJECT), p["size"])
    per_buf = max(1, PUB_BUFFER_BYTES // len(one))
    block = one * per_buf
    conn.send(("ready", None))
    sched = _wait_go(conn)
    if sched is None:
        return None
    t_end = sched.t1 + p["overrun"]
    _sleep_until(sched.t_go)
    sent = 0
    mark = -1
    t_mark = 0.0
    cpu_mark = 0.0
    with sock:
        while True:
            now = time.monotonic()
            if mark < 0 and now >= sched.t0:
                mark, t_mark, cpu_mark = sent, now, time.process_time()
            if now >= t_end:
                break
            sock.sendall(block)
            sent += 1
        cpu = time.process_time() - cpu_mark
        t_stop = time.monotonic()
        if p["ping_end"]:
            # The server has consumed every PUB once it answers this PING.
            sock.sendall(PING)
            _await_pong(sock, buf, time.monotonic() + 30)
            t_stop = time.monotonic()
    secs = t_stop - t_mark
    return {"msgs": (sent - mark) * per_buf, "secs": secs, "cpu": cpu / secs}


def _role_sub(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sid = b"1"
    queue = p.get("queue")
    subject = p.get("subject", SUBJECT)
    sub = b"SUB " + subject + (b" " + queue.encode() if queue else b"") + b" " + sid + b"\r\n"
    sock, _ = _handshake(port, sub)
    frame = msg_frame(subject, sid, p["size"])
    flen = len(frame)
    conn.send(("ready", None))
    sched = _wait_go(conn)
    if sched is None:
        return None
    rbuf = bytearray(RECV_BUFFER_BYTES)
    view = memoryview(rbuf)
    total = 0
    checked = False
    b0 = -1
    ta = 0.0
    cpu0 = 0.0
    with sock:
        while True:
            try:
                n = sock.recv_into(view)
            except TimeoutError:
                raise BenchError(
                    f"subscriber received nothing for {SOCKET_TIMEOUT:.0f} s"
                ) from None
            except ConnectionError as e:
                raise BenchError(f"subscriber connection lost during the run ({e})") from None
            if n == 0:
                raise BenchError(
                    "server closed the subscriber connection during the run (slow consumer?)"
                )
            if not checked:
                head = bytes(view[: min(n, flen + 6)])
                while head.startswith(PING):
                    head = head[len(PING) :]
                if head and not frame.startswith(head[:flen]):
                    raise BenchError(
                        f"subscriber got {head[:60]!r}, expected frames of {frame[:60]!r}"
                    )
                checked = bool(head)
            total += n
            now = time.monotonic()
            if b0 < 0:
                if now >= sched.t0:
                    b0, ta, cpu0 = total, now, time.process_time()
            elif now >= sched.t1:
                secs = now - ta
                cpu = (time.process_time() - cpu0) / secs
                return {"msgs": (total - b0) / flen, "secs": secs, "cpu": cpu}


def _role_responder(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, _ = _handshake(port, b"SUB " + REQ_SUBJECT + b" 1\r\n")
    conn.send(("ready", None))
    sched = _wait_go(conn)
    if sched is None:
        return None
    sock.settimeout(0.2)
    hard_deadline = sched.t1 + 60
    buf = bytearray()
    known_frame = b""  # the last request frame seen, for a cheap exact-match fast path
    known_reply = b""
    replied = 0
    t_start, cpu_start = time.monotonic(), time.process_time()
    with sock:
        while time.monotonic() < hard_deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if conn.poll() and conn.recv()[0] == "stop":
                    break
                continue
            if not data:
                raise BenchError("server closed the responder connection")
            buf += data
            out: list[bytes] = []
            pos = 0
            n = len(buf)
            while pos < n:
                if known_frame and buf.startswith(known_frame, pos):
                    out.append(known_reply)
                    pos += len(known_frame)
                    continue
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                line = bytes(buf[pos:eol])
                parts = line.split()
                op = parts[0].upper() if parts else b""
                if op == b"MSG":
                    if len(parts) not in (4, 5):
                        raise BenchError(f"responder: bad MSG line {line[:80]!r}")
                    end = eol + 2 + int(parts[-1]) + 2
                    if end > n:
                        break
                    if len(parts) == 5:
                        known_frame = bytes(buf[pos:end])
                        known_reply = b"PUB " + parts[3] + b" %d\r\n" % len(REPLY_BODY)
                        known_reply += REPLY_BODY + b"\r\n"
                        out.append(known_reply)
                    pos = end
                elif op == b"PING":
                    out.append(PONG)
                    pos = eol + 2
                elif op in (b"PONG", b"+OK", b"INFO"):
                    pos = eol + 2
                else:
                    raise BenchError(f"responder: unexpected {line[:80]!r}")
            del buf[:pos]
            if out:
                replied += len(out)
                sock.sendall(b"".join(out))
    elapsed = max(1e-9, time.monotonic() - t_start)
    return {"replied": replied, "cpu": (time.process_time() - cpu_start) / elapsed}


def _requester_setup(port: int) -> tuple[socket.socket, bytes, bytes]:
    inbox = b"_INBOX.bench.%d" % os.getpid()
    sock, _ = _handshake(port, b"SUB " + inbox + b" 1\r\n")
    request = pub_frame(REQ_SUBJECT, REQ_SIZE, reply=inbox)
    reply_frame = msg_frame(inbox, b"1", 0, REPLY_BODY)
    return sock, request, reply_frame


def _recv_some(sock: socket.socket, buf: bytearray, who: str) -> None:
    try:
        data = sock.recv(65536)
    except TimeoutError:
        raise BenchError(f"{who}: no reply for {SOCKET_TIMEOUT:.0f} s") from None
    if not data:
        raise BenchError(f"server closed the {who} connection")
    buf += data


def _role_req_seq(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, request, reply_frame = _requester_setup(port)
    conn.send(("ready", None))
    sched = _wait_go(conn)
    if sched is None:
        return None
    _sleep_until(sched.t_go)
    hard_deadline = sched.t1 + max(10.0, sched.t1 - sched.t0)
    samples: list[int] = []
    buf = bytearray()
    clock = time.perf_counter_ns
    with sock:
        while True:
            now = time.monotonic()
            if now >= sched.t1 and len(samples) >= REQREP_MIN_SAMPLES:
                break
            if now >= hard_deadline:
                raise BenchError(f"only {len(samples)} requests completed before the deadline")
            t = clock()
            sock.sendall(request)
            got = 0
            while not got:
                _recv_some(sock, buf, "requester")
                got = _consume_replies(sock, buf, reply_frame)
            dt = clock() - t
            if got != 1:
                raise BenchError(f"requester: {got} replies to one request")
            if now >= sched.t0:
                samples.append(dt)
    samples.sort()
    return {
        "p50": _percentile(samples, 0.50) / 1000.0,
        "p99": _percentile(samples, 0.99) / 1000.0,
        "n": len(samples),
    }


def _role_req_window(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, request, reply_frame = _requester_setup(port)
    window = int(p["window"])
    conn.send(("ready", None))
    sched = _wait_go(conn)
    if sched is None:
        return None
    _sleep_until(sched.t_go)
    buf = bytearray()
    replies = 0
    r0 = -1
    ta = 0.0
    cpu0 = 0.0
    with sock:
        sock.sendall(request * window)
        while True:
            _recv_some(sock, buf, "requester")
            got = _consume_replies(sock, buf, reply_frame)
            if got:
                sock.sendall(request * got)
                replies += got
            now = time.monotonic()
            if r0 < 0:
                if now >= sched.t0:
                    r0, ta, cpu0 = replies, now, time.process_time()
            elif now >= sched.t1:
                secs = now - ta
                cpu = (time.process_time() - cpu0) / secs
                return {"msgs": replies - r0, "secs": secs, "cpu": cpu}


ROLES: dict[str, Callable[[Connection, int, dict[str, Any]], dict[str, Any] | None]] = {
    "pub": _role_pub,
    "sub": _role_sub,
    "responder": _role_responder,
    "req_seq": _role_req_seq,
    "req_window": _role_req_window,
}


def _worker_main(conn: Connection, role: str, port: int, params: dict[str, Any]) -> None:
    try:
        result = ROLES[role](conn, port, params)
        if result is not None:
            conn.send(("result", result))
    except BaseException as e:  # report everything, including timeouts, to the bench
        with contextlib.suppress(Exception):
            conn.send(("error", f"{role}: {e or type(e).__name__}"))
    finally:
        conn.close()


@dataclass
class WorkerSpec:
    role: str
    params: dict[str, Any] = field(default_factory=dict)
    stop_after: bool = False  # runs until told to stop (after the measured ones finished)
    port: int | None = None  # the server it connects to; None = the server under test


def _pipe_recv(conn: Connection, deadline: float, what: str) -> Any:
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise BenchError(f"timed out waiting for {what}")
    try:
        msg = conn.recv()
    except EOFError:
        raise BenchError(f"{what}: worker process died") from None
    if msg[0] == "error":
        raise BenchError(msg[1])
    return msg


def _run_workers(
    server: Server,
    specs: Sequence[WorkerSpec],
    warmup: float,
    duration: float,
    *,
    hub: Server | None = None,
    barrier: Callable[[], object] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run one load pattern; return the worker results (in spec order) and CPU figures.

    ``server_cpu`` is the server's CPU use in the window (1.0 = one core busy),
    ``hub_cpu`` the hub's (leaf cases), ``other_cpu`` that of every process on the
    machine that is not part of this run.  ``barrier`` runs once every worker is
    connected and subscribed, before the load starts (leaf cases: wait until the
    workers' interest has crossed the link).
    """
    ctx = mp.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()
    procs: list[tuple[Any, Connection, WorkerSpec]] = []
    try:
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(child, spec.role, spec.port or server.port, spec.params),
                daemon=True,
            )
            proc.start()
            child.close()
            procs.append((proc, parent, spec))
        deadline = time.monotonic() + READY_TIMEOUT
        for _, parent, spec in procs:
            _pipe_recv(parent, deadline, f"{spec.role} to connect")
        if barrier is not None:
            barrier()
        t_go = time.monotonic() + 0.05
        sched = ("go", t_go, t_go + warmup, t_go + warmup + duration)
        for _, parent, _ in procs:
            parent.send(sched)
        _sleep_until(sched[2])
        cpu0 = _cpu_seconds(server.pid)
        hub0 = _cpu_seconds(hub.pid) if hub else 0.0
        other0 = _foreign_cpu_seconds()
        _sleep_until(sched[3])
        cpu = (_cpu_seconds(server.pid) - cpu0) / duration
        figures = {"server_cpu": round(cpu, 3)}
        if hub:
            figures["hub_cpu"] = round((_cpu_seconds(hub.pid) - hub0) / duration, 3)
        other = _foreign_cpu_between(other0, _foreign_cpu_seconds()) / duration
        figures["other_cpu"] = round(other, 3)
        results: list[dict[str, Any]] = [{} for _ in procs]
        deadline = sched[3] + max(30.0, duration * 3)
        for i, (_, parent, spec) in enumerate(procs):
            if not spec.stop_after:
                results[i] = _pipe_recv(parent, deadline, spec.role)[1]
        deadline = time.monotonic() + 5
        for i, (_, parent, spec) in enumerate(procs):
            if spec.stop_after:
                parent.send(("stop",))
                results[i] = _pipe_recv(parent, deadline, spec.role)[1]
        for who, srv in (("server", server), ("hub", hub)):
            if srv and srv.proc.poll() is not None:
                raise BenchError(f"{who} exited during the run (code {srv.proc.returncode})")
        return results, figures
    finally:
        for proc, parent, _ in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)
            parent.close()


# -------------------------------------------------------------------------- server


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


def _log_tail(path: Path, n: int = 5) -> str:
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
    with _connect(server.port) as sock:
        line = _recv_line(sock, bytearray(), deadline)
    server.t_ready = time.perf_counter()
    if not line.startswith(b"INFO"):
        raise BenchError(f"server did not start with INFO: {line[:80]!r}")
    with contextlib.suppress(ValueError):
        server.info = json.loads(line[4:])


def start_server(cmd: Sequence[str], *, do_probe: bool = True, config: str | None = None) -> Server:
    """Start a server on an ephemeral port (read from its ports file); ``config`` is
    written to a file passed with ``-c`` (the command-line flags still win)."""
    tmpdir = Path(tempfile.mkdtemp(prefix="leafgate-bench-"))
    log = tmpdir / "server.log"
    argv = [*cmd, "-a", HOST, "-p", "-1", "--ports_file_dir", str(tmpdir)]
    if config is not None:
        conf = tmpdir / "server.conf"
        conf.write_text(config)
        argv[len(cmd) : len(cmd)] = ["-c", str(conf)]
    with open(log, "wb") as logf:
        t_spawn = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
            )
        except OSError as e:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise BenchError(f"cannot start {shlex.join(argv)}: {e}") from None
    server = Server(proc=proc, tmpdir=tmpdir, log=log, t_spawn=t_spawn)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            port = _read_ports_file(tmpdir, proc.pid)
            if port:
                server.port = port
                break
            if proc.poll() is not None:
                raise BenchError(
                    f"server exited at start (code {proc.returncode}): {_log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"no ports file after {START_TIMEOUT:.0f} s: {_log_tail(log)}")
            time.sleep(0.0005)
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
    log = tmpdir / "server.log"
    conf = tmpdir / "hub.conf"
    conf.write_text(
        f"server_name: {HUB_NAME}\n"
        f"listen: {HOST}:{client_port}\n"
        f"leafnodes {{ listen: {HOST}:{leaf_port} }}\n"
    )
    argv = [*cmd, "-c", str(conf)]
    with open(log, "wb") as logf:
        t_spawn = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
            )
        except OSError as e:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise BenchError(f"cannot start the hub {shlex.join(argv)}: {e}") from None
    return Server(
        proc=proc,
        tmpdir=tmpdir,
        log=log,
        port=max(0, client_port),
        leaf_port=max(0, leaf_port),
        t_spawn=t_spawn,
    )


def start_hub(cmd: Sequence[str], client_port: int = -1, leaf_port: int = -1) -> Server:
    """Start a hub; its client and leafnode ports are read from its log (bounded)."""
    hub = spawn_hub(cmd, client_port, leaf_port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        ports: dict[bytes, int] = {}
        while len(ports) < 2:
            with contextlib.suppress(OSError):
                ports = {m[1]: int(m[2]) for m in _LISTENING.finditer(hub.log.read_bytes())}
            if len(ports) == 2:
                break
            if hub.proc.poll() is not None:
                raise BenchError(
                    f"hub exited at start (code {hub.proc.returncode}): {_log_tail(hub.log)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"hub not listening after {START_TIMEOUT:.0f} s: {_log_tail(hub.log)}"
                )
            time.sleep(0.002)
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


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on HOST (bound to 0 together, then closed)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _wait_msg(sock: socket.socket, buf: bytearray, frame: bytes, until: float) -> bool:
    """Read until a MSG arrives (True) or ``until`` passes (False); answers PINGs."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise BenchError("server closed the probe subscriber connection")
        buf += data
        if _consume_replies(sock, buf, frame):
            return True


def wait_flow(pub_port: int, sub_port: int, what: str, timeout: float = LINK_TIMEOUT) -> float:
    """Subscribe to a probe subject on ``sub_port``, then publish it on ``pub_port``
    every PROBE_INTERVAL until one arrives; return the seconds this took.

    Used to wait for a leaf link to come up, and as a barrier: a subscription made
    on one end after the workers' proves their (earlier) interest crossed the link too.
    """
    t_start = time.monotonic()
    deadline = t_start + timeout
    frame = msg_frame(PROBE_SUBJECT, b"1", 0)
    probe_pub = pub_frame(PROBE_SUBJECT, 0)
    sub, buf = _handshake(sub_port, b"SUB " + PROBE_SUBJECT + b" 1\r\n")
    with sub:
        pub, _ = _handshake(pub_port)
        with pub:
            while True:
                pub.sendall(probe_pub)
                if _wait_msg(sub, buf, frame, time.monotonic() + PROBE_INTERVAL):
                    return time.monotonic() - t_start
                if time.monotonic() > deadline:
                    raise BenchError(f"{what}: nothing arrived within {timeout:g} s")


def _poll_connect(port: int, server: Server, deadline: float) -> socket.socket:
    """Connect to ``port`` as soon as ``server`` (just spawned) accepts on it."""
    while True:
        try:
            return _connect(port)
        except ConnectionRefusedError:
            pass
        if server.proc.poll() is not None:
            raise BenchError(
                f"server exited at start (code {server.proc.returncode}): {_log_tail(server.log)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"port {port} not accepting after {START_TIMEOUT:.0f} s")
        time.sleep(0.001)


class _Prober:
    """A thread publishing an empty message on ``subject`` every PROBE_INTERVAL."""

    def __init__(self, port: int, subject: bytes) -> None:
        self.sock, _ = _handshake(port)
        self.frame = pub_frame(subject, 0)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-prober", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self.sock.sendall(self.frame)
                if self._stop.wait(PROBE_INTERVAL):
                    return
        except OSError as e:
            self.error = f"probe publisher on the leaf: {e}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=SOCKET_TIMEOUT)
        self.sock.close()


def _descendants(pid: int) -> list[int]:
    """``pid`` and its descendants (in case the server command is a wrapper)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out = [pid]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], []))
        i += 1
    return out


def rss_mib(pid: int) -> float:
    total_kib = 0
    for p in _descendants(pid):
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


def _foreign_cpu_seconds() -> dict[int, float]:
    """CPU seconds used so far by every user process that is not ours (bench, workers, server)."""
    ours = set(_descendants(os.getpid()))
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry == "2" or fields[1] == "2":
            continue  # kernel threads (ksoftirqd may be carrying our own loopback traffic)
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / tck
    return out


def _foreign_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _cpu_seconds(pid: int) -> float:
    ticks = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------- case runners


@dataclass
class Measurement:
    value: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One side of the comparison: what to start for it."""

    side: str  # "nats" or "leafgate"
    cmd: tuple[str, ...]  # the server command (in the leaf cases: the leaf)
    hub: tuple[str, ...] = ()  # nats-server command for the hub of the leaf cases


Runner = Callable[[Target, float, float], Measurement]


def _rate(results: Sequence[dict[str, Any]]) -> float:
    return float(sum(r["msgs"] / r["secs"] for r in results))


def _throughput(
    server: Server,
    specs: list[WorkerSpec],
    warmup: float,
    duration: float,
    measured: str,
    *,
    hub: Server | None = None,
    barrier: Callable[[], object] | None = None,
) -> tuple[float, dict[str, float]]:
    results, cpu = _run_workers(server, specs, warmup, duration, hub=hub, barrier=barrier)
    counted = [r for r, s in zip(results, specs, strict=True) if s.role == measured]
    rate = _rate(counted)
    if rate <= 0:
        raise BenchError("no messages measured")
    gen_cpu = max((r.get("cpu", 0.0) for r in results), default=0.0)
    return rate, {**cpu, "gen_cpu_max": round(gen_cpu, 3)}


def _pub_sub(size: int, subs: int = 1, queue: str | None = None) -> Runner:
    def run(t: Target, warmup: float, duration: float) -> Measurement:
        params: dict[str, Any] = {"size": size, "queue": queue}
        specs = [WorkerSpec("sub", params) for _ in range(subs)]
        specs.append(WorkerSpec("pub", {"size": size, "ping_end": False, "overrun": 0.1}))
        server = start_server(t.cmd)
        try:
            rate, extra = _throughput(server, specs, warmup, duration, "sub")
        finally:
            stop_server(server)
        if subs > 1 and queue is None:
            rate /= subs  # fan-out: report published msgs/s
        return Measurement(rate, extra)

    return run


def _pub_only(size: int) -> Runner:
    def run(t: Target, warmup: float, duration: float) -> Measurement:
        specs = [WorkerSpec("pub", {"size": size, "ping_end": True, "overrun": 0.0})]
        server = start_server(t.cmd)
        try:
            rate, extra = _throughput(server, specs, warmup, duration, "pub")
        finally:
            stop_server(server)
        return Measurement(rate, extra)

    return run


def _reqrep_seq(t: Target, warmup: float, duration: float) -> Measurement:
    specs = [WorkerSpec("responder", stop_after=True), WorkerSpec("req_seq")]
    server = start_server(t.cmd)
    try:
        results, cpu = _run_workers(server, specs, warmup, duration)
    finally:
        stop_server(server)
    r = results[1]
    return Measurement(r["p50"], {"p99": r["p99"], "n": r["n"], **cpu})


def _reqrep_window(t: Target, warmup: float, duration: float) -> Measurement:
    specs = [
        WorkerSpec("responder", stop_after=True),
        WorkerSpec("req_window", {"window": REQREP_WINDOW}),
    ]
    server = start_server(t.cmd)
    try:
        rate, extra = _throughput(server, specs, warmup, duration, "req_window")
    finally:
        stop_server(server)
    return Measurement(rate, extra)


def _rss_idle(t: Target, warmup: float, duration: float) -> Measurement:
    server = start_server(t.cmd, do_probe=False)
    try:
        time.sleep(RSS_SETTLE)
        rss = rss_mib(server.pid)
        probe(server)  # only to confirm it serves (and learn its version)
    finally:
        stop_server(server)
    return Measurement(rss)


def _open_idle_connections(port: int, n: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for start in range(0, n, IDLE_BATCH):
            batch: list[socket.socket] = []
            for _ in range(min(IDLE_BATCH, n - start)):
                sock = _connect(port)
                socks.append(sock)
                batch.append(sock)
                sock.sendall(CONNECT_LINE + PING)
            deadline = time.monotonic() + SOCKET_TIMEOUT * 2
            for sock in batch:
                _await_pong(sock, bytearray(), deadline)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _rss_conns(t: Target, warmup: float, duration: float) -> Measurement:
    _raise_nofile(IDLE_CONNECTIONS + 256)
    server = start_server(t.cmd)
    socks: list[socket.socket] = []
    try:
        try:
            socks = _open_idle_connections(server.port, IDLE_CONNECTIONS)
        except OSError as e:
            raise BenchError(f"opening {IDLE_CONNECTIONS} connections: {e}") from None
        time.sleep(RSS_SETTLE)
        rss = rss_mib(server.pid)
    finally:
        for sock in socks:
            sock.close()
        stop_server(server)
    return Measurement(rss)


def _cold_start(t: Target, warmup: float, duration: float) -> Measurement:
    times: list[float] = []
    for _ in range(COLD_STARTS_PER_RUN):
        server = start_server(t.cmd)
        try:
            times.append((server.t_ready - server.t_spawn) * 1000.0)
        finally:
            stop_server(server)
    return Measurement(statistics.median(times), {"min": min(times), "max": max(times)})


@contextlib.contextmanager
def _leaf_link(t: Target) -> Iterator[tuple[Server, Server]]:
    """A fresh hub and a leaf of ``t``'s kind with the link up; both stopped after."""
    hub = start_hub(t.hub)
    try:
        leaf = start_leaf(t, hub)
        try:
            try:
                wait_flow(leaf.port, hub.port, "the leaf link to come up")
            except BenchError as e:
                raise BenchError(f"{e}; leaf log: {_log_tail(leaf.log, 3)}") from None
            yield hub, leaf
        finally:
            stop_server(leaf)
    finally:
        stop_server(hub)


def _leaf_stream(size: int, up: bool) -> Runner:
    """One publisher on one end of the link, one subscriber counting on the other."""

    def run(t: Target, warmup: float, duration: float) -> Measurement:
        subject = UP_SUBJECT if up else DOWN_SUBJECT
        params: dict[str, Any] = {"size": size, "subject": subject}
        with _leaf_link(t) as (hub, leaf):
            src, dst = (leaf, hub) if up else (hub, leaf)
            specs = [
                WorkerSpec("sub", params, port=dst.port),
                WorkerSpec("pub", {**params, "ping_end": False, "overrun": 0.1}, port=src.port),
            ]
            rate, extra = _throughput(
                leaf,
                specs,
                warmup,
                duration,
                "sub",
                hub=hub,
                barrier=lambda: wait_flow(src.port, dst.port, "interest across the link"),
            )
        return Measurement(rate, extra)

    return run


def _leaf_reqrep_seq(t: Target, warmup: float, duration: float) -> Measurement:
    with _leaf_link(t) as (hub, leaf):
        specs = [
            WorkerSpec("responder", stop_after=True, port=hub.port),
            WorkerSpec("req_seq", port=leaf.port),
        ]

        def barrier() -> None:
            # The responder's interest reached the leaf, the requester's inbox the hub.
            wait_flow(leaf.port, hub.port, "interest across the link")
            wait_flow(hub.port, leaf.port, "interest across the link")

        results, cpu = _run_workers(leaf, specs, warmup, duration, hub=hub, barrier=barrier)
    r = results[1]
    return Measurement(r["p50"], {"p99": r["p99"], "n": r["n"], **cpu})


def _leaf_reconnect_once(t: Target) -> dict[str, float]:
    """Kill the hub under a working link, restart it on the same ports; return the
    milliseconds from the restarted hub's leafnode port accepting to a message
    published on the leaf (every PROBE_INTERVAL) reaching a subscriber on the hub."""
    client_port, leaf_port = _free_ports(2)
    hubs: list[Server] = []

    def stop_hubs() -> None:
        for h in hubs:
            stop_server(h)

    with contextlib.ExitStack() as stack:  # unwinds: subscriber, prober, leaf, hubs
        stack.callback(stop_hubs)
        hub = start_hub(t.hub, client_port, leaf_port)
        hubs.append(hub)
        leaf = start_leaf(t, hub)
        stack.callback(stop_server, leaf)
        try:
            wait_flow(leaf.port, hub.port, "the leaf link to come up")
        except BenchError as e:
            raise BenchError(f"{e}; leaf log: {_log_tail(leaf.log, 3)}") from None
        prober = _Prober(leaf.port, RECONNECT_SUBJECT)
        stack.callback(prober.close)

        t_kill = time.monotonic()
        os.kill(hub.pid, signal.SIGKILL)
        try:
            hub.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchError(f"hub pid {hub.pid} still alive after SIGKILL") from None
        hub2 = spawn_hub(t.hub, client_port, leaf_port)
        hubs.append(hub2)
        deadline = time.monotonic() + START_TIMEOUT
        _poll_connect(leaf_port, hub2, deadline).close()
        t_accept = time.monotonic()
        sub = stack.enter_context(_poll_connect(client_port, hub2, deadline))
        buf = bytearray()
        sub.sendall(CONNECT_LINE + b"SUB " + RECONNECT_SUBJECT + b" 1\r\n" + PING)
        _await_pong(sub, buf, time.monotonic() + SOCKET_TIMEOUT)
        frame = msg_frame(RECONNECT_SUBJECT, b"1", 0)
        if not _wait_msg(sub, buf, frame, t_accept + RECONNECT_TIMEOUT):
            raise BenchError(
                prober.error
                or f"no message through the link {RECONNECT_TIMEOUT:g} s after the hub "
                f"restarted; leaf log: {_log_tail(leaf.log, 3)}"
            )
        t_msg = time.monotonic()
        if leaf.proc.poll() is not None:
            raise BenchError(f"leaf exited during the run (code {leaf.proc.returncode})")
    return {
        "link_ms": (t_msg - t_accept) * 1000.0,
        "restart_ms": (t_accept - t_kill) * 1000.0,  # kill -> new hub accepting
        "outage_ms": (t_msg - t_kill) * 1000.0,  # kill -> first message through
    }


def _leaf_reconnect(t: Target, warmup: float, duration: float) -> Measurement:
    # A fresh hub and leaf per cycle: every reconnect is a first one (a leafgate leaf
    # backs off further after repeated losses; nats-server's delay is fixed).
    cycles = [_leaf_reconnect_once(t) for _ in range(RECONNECT_CYCLES)]
    link = [c["link_ms"] for c in cycles]
    return Measurement(
        statistics.median(link),
        {
            "min": min(link),
            "max": max(link),
            "restart_ms": statistics.median(c["restart_ms"] for c in cycles),
            "outage_ms": statistics.median(c["outage_ms"] for c in cycles),
        },
    )


RUNNERS: dict[str, Runner] = {
    "pub_only_16": _pub_only(16),
    "pub_sub_16": _pub_sub(16),
    "pub_sub_128": _pub_sub(128),
    "pub_sub_1024": _pub_sub(1024),
    "fanout4_128": _pub_sub(128, subs=4),
    "queue4_128": _pub_sub(128, subs=4, queue="q"),
    "reqrep_seq": _reqrep_seq,
    "reqrep_32": _reqrep_window,
    "rss_idle": _rss_idle,
    "rss_1000": _rss_conns,
    "cold_start": _cold_start,
    "leaf_up_128": _leaf_stream(128, up=True),
    "leaf_down_128": _leaf_stream(128, up=False),
    "leaf_reqrep_seq": _leaf_reqrep_seq,
    "leaf_reconnect": _leaf_reconnect,
}


# -------------------------------------------------------------------------- helpers


def _percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        raise BenchError("no samples")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _fmt(case: Case, value: float) -> str:
    if case.unit in ("msgs/s", "replies/s"):
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"
    if case.unit == "MiB":
        return f"{value:.1f}"
    if case.unit == "ms":
        return f"{value:.1f}"
    return f"{value:.0f}"


# ----------------------------------------------------------------------------- main


@dataclass
class SideResult:
    runs: list[Measurement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and not self.errors

    def median(self, key: str | None = None) -> float:
        vals = [m.value if key is None else m.extra[key] for m in self.runs]
        return statistics.median(vals)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="leafgate bench",
        description="Run leafgate and nats-server side by side on the same load.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases:\n"
        + "\n".join(f"  {c.name:<16}{c.description} [{c.unit}]" for c in CASES.values())
        + "\n\nleaf_* cases: a fresh nats-server hub per run, and as the leaf leafgate --hub\n"
        "or a nats-server with leafnodes.remotes; leaf_reconnect does "
        f"{RECONNECT_CYCLES} hub kill + restart\ncycles per run (--duration does not apply).",
    )
    ap.add_argument("--cases", default="all", help="comma-separated case names (default: all)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per case")
    ap.add_argument("--runs", type=int, default=3, help="runs per case; the median is reported")
    ap.add_argument(
        "--nats-server",
        default=None,
        help="nats-server binary (default: $NATS_SERVER_BIN or nats-server on PATH)",
    )
    ap.add_argument(
        "--leafgate-cmd",
        default=None,
        help="command starting leafgate, shell-split (default: python -m edge run)",
    )
    ap.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")
    ap.add_argument("--only", choices=SIDES, default=None, help="run one side only")
    args = ap.parse_args(list(argv))
    if args.duration <= 0:
        ap.error("--duration must be positive")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    args.case_names = names
    return args


def _nats_bin(args: argparse.Namespace) -> str:
    nats = args.nats_server or os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    if not nats:
        raise BenchError("nats-server not found: use --nats-server or NATS_SERVER_BIN")
    return str(nats)


def _commands(args: argparse.Namespace) -> dict[str, list[str]]:
    sides = [args.only] if args.only else list(SIDES)
    cmds: dict[str, list[str]] = {}
    if "nats" in sides:
        cmds["nats"] = [_nats_bin(args)]
    if "leafgate" in sides:
        if args.leafgate_cmd:
            cmds["leafgate"] = shlex.split(args.leafgate_cmd)
        else:
            cmds["leafgate"] = [sys.executable, "-m", "edge", "run"]
    return cmds


def _version(cmd: Sequence[str]) -> str:
    """Version from the INFO line of a freshly started server."""
    try:
        server = start_server(cmd)
    except BenchError as e:
        return f"unavailable ({e})"
    try:
        info = server.info
        return f"{info.get('version', '?')} (INFO go={info.get('go', '?')})"
    finally:
        stop_server(server)


def _report(
    names: Sequence[str], results: dict[str, dict[str, SideResult]], sides: Sequence[str]
) -> tuple[list[str], dict[str, Any]]:
    header = ["case", "unit", "nats-server", "leafgate", "leafgate/nats", "better"]
    rows: list[list[str]] = []
    data: dict[str, Any] = {}
    for name in names:
        case = CASES[name]
        cells: dict[str, str] = {}
        entry: dict[str, Any] = {"unit": case.unit, "higher_is_better": case.higher_is_better}
        for side in SIDES:
            if side not in sides:
                cells[side] = "-"
                continue
            res = results[name][side]
            side_data: dict[str, Any] = {
                "runs": [{"value": m.value, **m.extra} for m in res.runs],
                "errors": res.errors,
            }
            if res.ok:
                side_data["value"] = res.median()
                if case.unit == "p50/p99 us":
                    side_data["p99"] = res.median("p99")
                    cells[side] = f"{res.median():.0f} / {res.median('p99'):.0f}"
                else:
                    cells[side] = _fmt(case, res.median())
            else:
                side_data["value"] = None
                cells[side] = f"FAILED {len(res.errors)}/{len(res.runs) + len(res.errors)}"
            entry[side] = side_data
        ratio = None
        if all(s in sides and results[name][s].ok for s in SIDES):
            base = results[name]["nats"].median()
            ratio = results[name]["leafgate"].median() / base if base else None
        entry["ratio"] = ratio
        data[name] = entry
        rows.append(
            [
                name,
                case.unit,
                cells["nats"],
                cells["leafgate"],
                "-" if ratio is None else f"{ratio:.2f}",
                "higher" if case.higher_is_better else "lower",
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for j, row in enumerate([header, *rows]):
        lines.append(
            "  ".join(
                c.ljust(widths[i]) if i < 2 or i == 5 else c.rjust(widths[i])
                for i, c in enumerate(row)
            ).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines, data


def _leafgate_reconnect_default() -> str:
    try:
        from edge.config import RemoteConfig
    except ImportError:  # pragma: no cover - bench copied out of the tree
        return "its default backoff"
    d = {f.name: f.default for f in dataclasses.fields(RemoteConfig)}
    return (
        f"default backoff {d['reconnect_delay']:g} s doubling to {d['reconnect_max']:g} s, "
        "jittered (edge.config.RemoteConfig of this tree)"
    )


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    names: list[str] = args.case_names
    leaf_cases = any(CASES[n].leaf for n in names)
    try:
        cmds = _commands(args)
        hub_cmd = (_nats_bin(args),) if leaf_cases else ()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    sides = list(cmds)
    targets = {s: Target(s, tuple(cmds[s]), hub_cmd) for s in sides}
    warmup = min(0.5, args.duration / 2)
    started = time.monotonic()
    _raise_nofile(IDLE_CONNECTIONS + 256)

    print(f"command: {shlex.join(sys.argv)}")
    if list(argv) != sys.argv[1:]:
        print(f"bench arguments: {shlex.join(argv)}")
    versions: dict[str, str] = {}
    for side in sides:
        versions[side] = _version(cmds[side])
        print(f"{SIDE_LABEL[side]}: {shlex.join(cmds[side])}  -> version {versions[side]}")
    delays: dict[str, str] = {}
    if leaf_cases:
        if "nats" not in sides:
            versions["hub"] = _version(hub_cmd)
        hub_version = versions.get("hub", versions.get("nats"))
        print(f"leaf cases: hub {shlex.join(hub_cmd)} -> version {hub_version} (fresh per run)")
    if "leaf_reconnect" in names:
        delays = {
            "nats": f"leafnodes.reconnect not set: default {NATS_LEAF_RECONNECT_DEFAULT:g} s",
            "leafgate": _leafgate_reconnect_default(),
        }
        for side in sides:
            print(f"leaf_reconnect: {SIDE_LABEL[side]} leaf reconnect delay: {delays[side]}")
    print(
        f"cases={','.join(names)} duration={args.duration:g}s warmup={warmup:g}s "
        f"runs={args.runs} (median reported); python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    sys.stdout.flush()

    results: dict[str, dict[str, SideResult]] = {n: {s: SideResult() for s in sides} for n in names}
    busiest = 0.0  # the most CPU that unrelated processes used during a measurement window
    for run in range(args.runs):
        for name in names:
            order = sides if run % 2 == 0 else sides[::-1]
            for side in order:
                res = results[name][side]
                t = time.monotonic()
                try:
                    m = RUNNERS[name](targets[side], warmup, args.duration)
                except BenchError as e:
                    res.errors.append(str(e))
                    msg = f"FAILED: {e}"
                else:
                    res.runs.append(m)
                    msg = _fmt(CASES[name], m.value)
                    if "p99" in m.extra:
                        msg += f" / p99 {m.extra['p99']:.0f}"
                    if "server_cpu" in m.extra:
                        msg += f"  [server {m.extra['server_cpu']:.2f} CPU"
                        if "hub_cpu" in m.extra:
                            msg += f", hub {m.extra['hub_cpu']:.2f} CPU"
                        msg += f", other processes {m.extra['other_cpu']:.2f} CPU]"
                    if "outage_ms" in m.extra:
                        msg += f"  [kill -> hub back {m.extra['restart_ms']:.0f} ms"
                        msg += f", kill -> message through {m.extra['outage_ms']:.0f} ms]"
                    busiest = max(busiest, m.extra.get("other_cpu", 0.0))
                print(
                    f"  run {run + 1}/{args.runs} {name:<15} {SIDE_LABEL[side]:<11} {msg}"
                    f"  ({time.monotonic() - t:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )

    lines, data = _report(names, results, sides)
    elapsed = time.monotonic() - started
    print()
    print("\n".join(lines))
    failed = [
        (n, s, err) for n in names for s in sides for err in dict.fromkeys(results[n][s].errors)
    ]
    for n, s, err in failed:
        print(f"FAILED {n} on {SIDE_LABEL[s]}: {err}")
    if busiest > OTHER_CPU_WARN:
        print(
            f"WARNING: other processes on this machine used up to {busiest:.2f} CPU during "
            "the measurements; throughput figures are contended (compare ratios only)"
        )
    print(f"\ntotal time {elapsed:.0f} s")

    if args.json:
        doc = {
            "command": sys.argv,
            "argv": list(argv),
            "commands": cmds,
            "versions": versions,
            "hub_command": list(hub_cmd),
            "leaf_reconnect_delays": delays,
            "duration": args.duration,
            "warmup": warmup,
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "elapsed_s": round(elapsed, 1),
            "cases": data,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
