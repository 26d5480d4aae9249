"""The client cases: one fresh server per run, the load generator on its client port."""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .common import (
    COLD_STARTS_PER_RUN,
    CONNECT_LINE,
    IDLE_BATCH,
    IDLE_CONNECTIONS,
    PING,
    REQREP_WINDOW,
    RSS_SETTLE,
    SOCKET_TIMEOUT,
    BenchError,
    Measurement,
    Runner,
    Target,
    raise_nofile,
)
from .loadgen import WorkerSpec, run_workers
from .protocol import await_pong, connect
from .servers import Server, probe, rss_mib, start_server, stop_server

T = TypeVar("T")


def _rate(results: Sequence[dict[str, Any]]) -> float:
    return float(sum(r["msgs"] / r["secs"] for r in results))


def throughput(
    server: Server,
    specs: list[WorkerSpec],
    warmup: float,
    duration: float,
    measured: str,
    *,
    hub: Server | None = None,
    barrier: Callable[[], object] | None = None,
) -> tuple[float, dict[str, float]]:
    results, cpu = run_workers(server, specs, warmup, duration, hub=hub, barrier=barrier)
    counted = [r for r, s in zip(results, specs, strict=True) if s.role == measured]
    rate = _rate(counted)
    if rate <= 0:
        raise BenchError("no messages measured")
    gen_cpu = max((r.get("cpu", 0.0) for r in results), default=0.0)
    return rate, {**cpu, "gen_cpu_max": round(gen_cpu, 3)}


def latency(results: Sequence[dict[str, Any]], cpu: dict[str, float]) -> Measurement:
    """The Measurement of a responder + sequential requester run (p50, p99 in us)."""
    r = results[1]
    return Measurement(r["p50"], {"p99": r["p99"], "n": r["n"], **cpu})


def _on_server(t: Target, use: Callable[[Server], T]) -> T:
    """``use`` a freshly started server of ``t``, stopped afterwards."""
    server = start_server(t.cmd)
    try:
        return use(server)
    finally:
        stop_server(server)


def _streams(specs: list[WorkerSpec], measured: str, per: int = 1) -> Runner:
    """A throughput case: ``specs`` against a fresh server, the rate divided by ``per``."""

    def run(t: Target, warmup: float, duration: float) -> Measurement:
        rate, extra = _on_server(
            t, lambda server: throughput(server, specs, warmup, duration, measured)
        )
        return Measurement(rate / per, extra)

    return run


def _pub_sub(size: int, subs: int = 1, queue: str | None = None, mixed: int = 0) -> Runner:
    """*mixed*: the publisher sends to that many subjects in turn (``bench.m0``,
    ``bench.m1``...), which the subscribers take with ``bench.*``: no two
    consecutive messages on one subject, so nothing is routed as a run."""
    params: dict[str, Any] = {"size": size, "queue": queue}
    pub: dict[str, Any] = {"size": size, "ping_end": False, "overrun": 0.1}
    if mixed:
        subjects = [b"bench.m%d" % i for i in range(mixed)]
        params.update(subject=b"bench.*", frame_subjects=subjects)
        pub["subjects"] = subjects
    specs = [WorkerSpec("sub", params) for _ in range(subs)]
    specs.append(WorkerSpec("pub", pub))
    # fan-out: report published msgs/s
    return _streams(specs, "sub", per=subs if subs > 1 and queue is None else 1)


def _pub_only(size: int) -> Runner:
    return _streams([WorkerSpec("pub", {"size": size, "ping_end": True, "overrun": 0.0})], "pub")


def _reqrep_seq(t: Target, warmup: float, duration: float) -> Measurement:
    specs = [WorkerSpec("responder", stop_after=True), WorkerSpec("req_seq")]
    results, cpu = _on_server(t, lambda server: run_workers(server, specs, warmup, duration))
    return latency(results, cpu)


_reqrep_window = _streams(
    [
        WorkerSpec("responder", stop_after=True),
        WorkerSpec("req_window", {"window": REQREP_WINDOW}),
    ],
    "req_window",
)


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
                sock = connect(port)
                socks.append(sock)
                batch.append(sock)
                sock.sendall(CONNECT_LINE + PING)
            deadline = time.monotonic() + SOCKET_TIMEOUT * 2
            for sock in batch:
                await_pong(sock, bytearray(), deadline)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _rss_conns(t: Target, warmup: float, duration: float) -> Measurement:
    raise_nofile(IDLE_CONNECTIONS + 256)
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


CLIENT_RUNNERS: dict[str, Runner] = {
    "pub_only_16": _pub_only(16),
    "pub_sub_16": _pub_sub(16),
    "pub_sub_128": _pub_sub(128),
    "pub_sub_1024": _pub_sub(1024),
    "fanout4_128": _pub_sub(128, subs=4),
    "queue4_128": _pub_sub(128, subs=4, queue="q"),
    "pub_sub_mixed_128": _pub_sub(128, mixed=8),
    "queue4_mixed_128": _pub_sub(128, subs=4, queue="q", mixed=8),
    "reqrep_seq": _reqrep_seq,
    "reqrep_32": _reqrep_window,
    "rss_idle": _rss_idle,
    "rss_1000": _rss_conns,
    "cold_start": _cold_start,
}
