"""The leafnode cases: a fresh nats-server hub per run, and a leaf of the side's kind
(leafgate ``--hub``, or nats-server with ``leafnodes { remotes }``) dialing it."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from .cases import latency, throughput
from .common import (
    CONNECT_LINE,
    DOWN_SUBJECT,
    LINK_TIMEOUT,
    PING,
    PROBE_INTERVAL,
    PROBE_SUBJECT,
    RECONNECT_CYCLES,
    RECONNECT_SUBJECT,
    RECONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    UP_SUBJECT,
    BenchError,
    Measurement,
    Runner,
    Target,
)
from .loadgen import WorkerSpec, run_workers
from .protocol import await_pong, handshake, msg_frame, pub_frame, wait_msg
from .servers import (
    Server,
    free_ports,
    log_tail,
    poll_connect,
    spawn_hub,
    start_hub,
    start_leaf,
    stop_server,
)


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
    sub, buf = handshake(sub_port, b"SUB " + PROBE_SUBJECT + b" 1\r\n")
    with sub:
        pub, _ = handshake(pub_port)
        with pub:
            while True:
                pub.sendall(probe_pub)
                if wait_msg(sub, buf, frame, time.monotonic() + PROBE_INTERVAL):
                    return time.monotonic() - t_start
                if time.monotonic() > deadline:
                    raise BenchError(f"{what}: nothing arrived within {timeout:g} s")


def _wait_link(leaf: Server, hub: Server) -> None:
    """Wait for the leaf's link to the hub to carry messages (failing with its log)."""
    try:
        wait_flow(leaf.port, hub.port, "the leaf link to come up")
    except BenchError as e:
        raise BenchError(f"{e}; leaf log: {log_tail(leaf.log, 3)}") from None


class _Prober:
    """A thread publishing an empty message on ``subject`` every PROBE_INTERVAL."""

    def __init__(self, port: int, subject: bytes) -> None:
        self.sock, _ = handshake(port)
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


@contextlib.contextmanager
def _leaf_link(t: Target) -> Iterator[tuple[Server, Server]]:
    """A fresh hub and a leaf of ``t``'s kind with the link up; both stopped after."""
    hub = start_hub(t.hub)
    try:
        leaf = start_leaf(t, hub)
        try:
            _wait_link(leaf, hub)
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
            rate, extra = throughput(
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

        results, cpu = run_workers(leaf, specs, warmup, duration, hub=hub, barrier=barrier)
    return latency(results, cpu)


def _kill(hub: Server) -> None:
    os.kill(hub.pid, signal.SIGKILL)
    try:
        hub.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"hub pid {hub.pid} still alive after SIGKILL") from None


def _await_through(
    stack: contextlib.ExitStack, hub: Server, client_port: int, deadline: float, t_accept: float
) -> bool:
    """Subscribe on the restarted ``hub``; wait for a RECONNECT_SUBJECT message."""
    sub = stack.enter_context(poll_connect(client_port, hub, deadline))
    buf = bytearray()
    sub.sendall(CONNECT_LINE + b"SUB " + RECONNECT_SUBJECT + b" 1\r\n" + PING)
    await_pong(sub, buf, time.monotonic() + SOCKET_TIMEOUT)
    frame = msg_frame(RECONNECT_SUBJECT, b"1", 0)
    return wait_msg(sub, buf, frame, t_accept + RECONNECT_TIMEOUT)


def _leaf_reconnect_once(t: Target) -> dict[str, float]:
    """Kill the hub under a working link, restart it on the same ports; return the
    milliseconds from the restarted hub's leafnode port accepting to a message
    published on the leaf (every PROBE_INTERVAL) reaching a subscriber on the hub."""
    client_port, leaf_port = free_ports(2)
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
        _wait_link(leaf, hub)
        prober = _Prober(leaf.port, RECONNECT_SUBJECT)
        stack.callback(prober.close)

        t_kill = time.monotonic()
        _kill(hub)
        hub2 = spawn_hub(t.hub, client_port, leaf_port)
        hubs.append(hub2)
        deadline = time.monotonic() + START_TIMEOUT
        poll_connect(leaf_port, hub2, deadline).close()
        t_accept = time.monotonic()
        if not _await_through(stack, hub2, client_port, deadline, t_accept):
            raise BenchError(
                prober.error
                or f"no message through the link {RECONNECT_TIMEOUT:g} s after the hub "
                f"restarted; leaf log: {log_tail(leaf.log, 3)}"
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


LEAF_RUNNERS: dict[str, Runner] = {
    "leaf_up_128": _leaf_stream(128, up=True),
    "leaf_down_128": _leaf_stream(128, up=False),
    "leaf_reqrep_seq": _leaf_reqrep_seq,
    "leaf_reconnect": _leaf_reconnect,
}
