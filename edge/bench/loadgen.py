"""The load generator: one forked process per connection, raw sockets.

Each worker runs in its own forked process and owns one connection.  Protocol on
its pipe: worker -> ("ready", None); main -> ("go", t_go, t0, t1); worker ->
("result", dict) or ("error", str) at any time; main -> ("stop",) ends a worker
that runs until told (the responder).  All times are time.monotonic(), which is
system-wide on Linux.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .common import (
    PING,
    PONG,
    PUB_BUFFER_BYTES,
    READY_TIMEOUT,
    RECV_BUFFER_BYTES,
    REPLY_BODY,
    REQ_SIZE,
    REQ_SUBJECT,
    REQREP_MIN_SAMPLES,
    SOCKET_TIMEOUT,
    SUBJECT,
    BenchError,
    percentile,
)
from .protocol import await_pong, consume_replies, handshake, msg_frame, pub_frame
from .servers import Server, cpu_seconds, foreign_cpu_between, foreign_cpu_seconds


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


def _ready(conn: Connection) -> Schedule | None:
    """Tell the bench this worker is connected; wait for the go (None: stop)."""
    conn.send(("ready", None))
    return _wait_go(conn)


def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _role_pub(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, buf = handshake(port)
    # "subjects": one message to each in turn (a stream that mixes subjects).
    subjects = p.get("subjects") or [p.get("subject", SUBJECT)]
    one = b"".join(pub_frame(subject, p["size"]) for subject in subjects)
    per_buf = max(1, PUB_BUFFER_BYTES // len(one))
    block = one * per_buf
    sched = _ready(conn)
    if sched is None:
        return None
    t_end = sched.t1 + p["overrun"]
    sleep_until(sched.t_go)
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
            await_pong(sock, buf, time.monotonic() + 30)
            t_stop = time.monotonic()
    secs = t_stop - t_mark
    return {"msgs": (sent - mark) * per_buf * len(subjects), "secs": secs, "cpu": cpu / secs}


class _Window:
    """Counts a running total into the measurement window [t0, t1]."""

    def __init__(self, sched: Schedule) -> None:
        self.sched = sched
        self.start: float = -1
        self.ta = 0.0
        self.cpu0 = 0.0

    def update(self, total: float) -> dict[str, float] | None:
        """Note the running ``total``; past t1, return {"msgs", "secs", "cpu"}."""
        now = time.monotonic()
        if self.start < 0:
            if now >= self.sched.t0:
                self.start, self.ta, self.cpu0 = total, now, time.process_time()
        elif now >= self.sched.t1:
            secs = now - self.ta
            cpu = (time.process_time() - self.cpu0) / secs
            return {"msgs": total - self.start, "secs": secs, "cpu": cpu}
        return None


def _check_first(view: memoryview, n: int, frame: bytes, others: tuple[bytes, ...] = ()) -> bool:
    """Check the first bytes a subscriber got look like ``frame`` (or one of
    *others*, as long); True once seen."""
    flen = len(frame)
    head = bytes(view[: min(n, flen + 6)])
    while head.startswith(PING):
        head = head[len(PING) :]
    if head and not any(f.startswith(head[:flen]) for f in (frame, *others)):
        raise BenchError(f"subscriber got {head[:60]!r}, expected frames of {frame[:60]!r}")
    return bool(head)


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    try:
        n = sock.recv_into(view)
    except TimeoutError:
        raise BenchError(f"subscriber received nothing for {SOCKET_TIMEOUT:.0f} s") from None
    except ConnectionError as e:
        raise BenchError(f"subscriber connection lost during the run ({e})") from None
    if n == 0:
        raise BenchError("server closed the subscriber connection during the run (slow consumer?)")
    return n


def _role_sub(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sid = b"1"
    queue = p.get("queue")
    subject = p.get("subject", SUBJECT)
    sub = b"SUB " + subject + (b" " + queue.encode() if queue else b"") + b" " + sid + b"\r\n"
    sock, _ = handshake(port, sub)
    # Mixed subjects are all of one length: every frame is as long as the first.
    frames = [msg_frame(s, sid, p["size"]) for s in p.get("frame_subjects") or [subject]]
    frame, others = frames[0], tuple(frames[1:])
    sched = _ready(conn)
    if sched is None:
        return None
    view = memoryview(bytearray(RECV_BUFFER_BYTES))
    total = 0
    checked = False
    window = _Window(sched)
    with sock:
        while True:
            n = _recv_into(sock, view)
            if not checked:
                checked = _check_first(view, n, frame, others)
            total += n
            done = window.update(total)
            if done is not None:
                return {**done, "msgs": done["msgs"] / len(frame)}


class _Answerer:
    """Turns the requests in a responder's buffer into reply PUBs."""

    def __init__(self) -> None:
        self.known_frame = b""  # the last request frame seen, for a cheap exact-match path
        self.known_reply = b""

    def _request(self, parts: list[bytes], frame: bytes) -> bytes:
        self.known_frame = frame
        reply = b"PUB " + parts[3] + b" %d\r\n" % len(REPLY_BODY)
        self.known_reply = reply + REPLY_BODY + b"\r\n"
        return self.known_reply

    def answer(self, buf: bytearray) -> list[bytes]:
        """Consume complete frames from ``buf``; return what to send back."""
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n:
            if self.known_frame and buf.startswith(self.known_frame, pos):
                out.append(self.known_reply)
                pos += len(self.known_frame)
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
                    out.append(self._request(parts, bytes(buf[pos:end])))
                pos = end
            elif op == b"PING":
                out.append(PONG)
                pos = eol + 2
            elif op in (b"PONG", b"+OK", b"INFO"):
                pos = eol + 2
            else:
                raise BenchError(f"responder: unexpected {line[:80]!r}")
        del buf[:pos]
        return out


def _role_responder(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, _ = handshake(port, b"SUB " + REQ_SUBJECT + b" 1\r\n")
    sched = _ready(conn)
    if sched is None:
        return None
    sock.settimeout(0.2)
    hard_deadline = sched.t1 + 60
    buf = bytearray()
    answerer = _Answerer()
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
            out = answerer.answer(buf)
            if out:
                replied += len(out)
                sock.sendall(b"".join(out))
    elapsed = max(1e-9, time.monotonic() - t_start)
    return {"replied": replied, "cpu": (time.process_time() - cpu_start) / elapsed}


def _requester_setup(port: int) -> tuple[socket.socket, bytes, bytes]:
    inbox = b"_INBOX.bench.%d" % os.getpid()
    sock, _ = handshake(port, b"SUB " + inbox + b" 1\r\n")
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


def _round_trip(sock: socket.socket, buf: bytearray, request: bytes, reply_frame: bytes) -> int:
    """Send one request and wait for its reply; return the nanoseconds it took."""
    clock = time.perf_counter_ns
    t = clock()
    sock.sendall(request)
    got = 0
    while not got:
        _recv_some(sock, buf, "requester")
        got = consume_replies(sock, buf, reply_frame)
    dt = clock() - t
    if got != 1:
        raise BenchError(f"requester: {got} replies to one request")
    return dt


def _role_req_seq(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, request, reply_frame = _requester_setup(port)
    sched = _ready(conn)
    if sched is None:
        return None
    sleep_until(sched.t_go)
    hard_deadline = sched.t1 + max(10.0, sched.t1 - sched.t0)
    samples: list[int] = []
    buf = bytearray()
    with sock:
        while True:
            now = time.monotonic()
            if now >= sched.t1 and len(samples) >= REQREP_MIN_SAMPLES:
                break
            if now >= hard_deadline:
                raise BenchError(f"only {len(samples)} requests completed before the deadline")
            dt = _round_trip(sock, buf, request, reply_frame)
            if now >= sched.t0:
                samples.append(dt)
    samples.sort()
    return {
        "p50": percentile(samples, 0.50) / 1000.0,
        "p99": percentile(samples, 0.99) / 1000.0,
        "n": len(samples),
    }


def _role_req_window(conn: Connection, port: int, p: dict[str, Any]) -> dict[str, Any] | None:
    sock, request, reply_frame = _requester_setup(port)
    in_flight = int(p["window"])
    sched = _ready(conn)
    if sched is None:
        return None
    sleep_until(sched.t_go)
    buf = bytearray()
    replies = 0
    window = _Window(sched)
    with sock:
        sock.sendall(request * in_flight)
        while True:
            _recv_some(sock, buf, "requester")
            got = consume_replies(sock, buf, reply_frame)
            if got:
                sock.sendall(request * got)
                replies += got
            done = window.update(replies)
            if done is not None:
                return done


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


# -------------------------------------------------------------------- the bench side


@dataclass
class WorkerSpec:
    role: str
    params: dict[str, Any] = field(default_factory=dict)
    stop_after: bool = False  # runs until told to stop (after the measured ones finished)
    port: int | None = None  # the server it connects to; None = the server under test


_Procs = list[tuple[Any, Connection, WorkerSpec]]


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


def _fork_workers(server: Server, specs: Sequence[WorkerSpec], procs: _Procs) -> None:
    """Fork one worker per spec (appended to ``procs`` as they start)."""
    ctx = mp.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()
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


def _measure_cpu(
    server: Server, hub: Server | None, sched: Schedule, duration: float
) -> dict[str, float]:
    """Sleep through the measurement window; return the CPU used in it."""
    sleep_until(sched.t0)
    cpu0 = cpu_seconds(server.pid)
    hub0 = cpu_seconds(hub.pid) if hub else 0.0
    other0 = foreign_cpu_seconds()
    sleep_until(sched.t1)
    cpu = (cpu_seconds(server.pid) - cpu0) / duration
    figures = {"server_cpu": round(cpu, 3)}
    if hub:
        figures["hub_cpu"] = round((cpu_seconds(hub.pid) - hub0) / duration, 3)
    other = foreign_cpu_between(other0, foreign_cpu_seconds()) / duration
    figures["other_cpu"] = round(other, 3)
    return figures


def _collect(procs: _Procs, t1: float, duration: float) -> list[dict[str, Any]]:
    """The measured workers' results, then the stop-after ones' (in spec order)."""
    results: list[dict[str, Any]] = [{} for _ in procs]
    deadline = t1 + max(30.0, duration * 3)
    for i, (_, parent, spec) in enumerate(procs):
        if not spec.stop_after:
            results[i] = _pipe_recv(parent, deadline, spec.role)[1]
    deadline = time.monotonic() + 5
    for i, (_, parent, spec) in enumerate(procs):
        if spec.stop_after:
            parent.send(("stop",))
            results[i] = _pipe_recv(parent, deadline, spec.role)[1]
    return results


def _reap(procs: _Procs) -> None:
    for proc, parent, _ in procs:
        proc.join(timeout=2)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=2)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=2)
        parent.close()


def run_workers(
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
    procs: _Procs = []
    try:
        _fork_workers(server, specs, procs)
        deadline = time.monotonic() + READY_TIMEOUT
        for _, parent, spec in procs:
            _pipe_recv(parent, deadline, f"{spec.role} to connect")
        if barrier is not None:
            barrier()
        t_go = time.monotonic() + 0.05
        sched = Schedule(t_go, t_go + warmup, t_go + warmup + duration)
        for _, parent, _ in procs:
            parent.send(("go", sched.t_go, sched.t0, sched.t1))
        figures = _measure_cpu(server, hub, sched, duration)
        results = _collect(procs, sched.t1, duration)
        for who, srv in (("server", server), ("hub", hub)):
            if srv and srv.proc.poll() is not None:
                raise BenchError(f"{who} exited during the run (code {srv.proc.returncode})")
        return results, figures
    finally:
        _reap(procs)
