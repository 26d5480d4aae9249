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
``store_pub_mixed_128``: the same with both phases sent to 8 subjects in turn
(``bench.plain.m0``..., ``telemetry.bench.m0``...): no runs, every message by the
one-by-one path (reported, no target of its own).
``store_drain_1m``: ``--store-backlog`` messages published and committed while the
hub is down (started once to create its stream, then stopped); the hub restarted
on the same ports and directory; backlog / (hub holds all - hub logged the link).
``store_bytes_128``: /proc/PID/io write_bytes of the leaf per stored 128 B message,
link down: committed plus a settle, and after a graceful stop (the exited process
is read before it is reaped); and the store's file sizes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import (
    STOP_TIMEOUT,
    BenchError,
    Measurement,
    Runner,
    Target,
)
from .loadgen import WorkerSpec, run_workers
from .protocol import handshake
from .servers import Server, descendants, free_ports, log_tail, start_server, stop_server
from .storeside import (
    BYTES_SETTLE,
    DRAIN_TARGET,
    EMPTY_TIMEOUT,
    FIRST_MSG_TIMEOUT,
    HUB_WAIT,
    IO_SETTLE,
    NOTES,
    OPTIONS,
    PLAIN_SUBJECT,
    PRIME_MSGS,
    PRIME_SUBJECT,
    PUB_RATIO_TARGET,
    RATE_FLOOR,
    SIZE,
    STORE_SUBJECT,
    StoreFile,
    Topology,
    _bench_errors,
    _fmt_rate,
    _forward_modes,
    _nats_leaf_config,
    _say,
    _wait_held,
    hub_link_time,
    publish_exact,
)

# ------------------------------------------------------------- store_pub_128


def _pub_phase(
    top: Topology, subject: bytes, warmup: float, duration: float, mixed: int = 0
) -> tuple[float, int, float, float, dict[str, float]]:
    """One load-generator publisher (final PING/PONG); return its rate, the messages
    it counted, when it started and when it got the PONG, and the CPU figures.
    *mixed*: to that many subjects under *subject* in turn (no two consecutive
    messages on one subject, so nothing is taken as a run)."""
    marks: list[float] = []
    params = {"size": SIZE, "subject": subject, "ping_end": True, "overrun": 0.0}
    if mixed:
        params["subjects"] = [subject + b".m%d" % i for i in range(mixed)]
    spec = WorkerSpec("pub", params)
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


def _store_pub(mixed: int = 0) -> Runner:
    name = "store_pub_mixed_128" if mixed else "store_pub_128"

    @_bench_errors
    def run(t: Target, warmup: float, duration: float) -> Measurement:
        return _said(t, name, _store_pub_once(t, warmup, duration, mixed))

    return run


def _store_pub_once(t: Target, warmup: float, duration: float, mixed: int) -> Measurement:
    with Topology(t) as top:
        if t.side == "leafgate":
            NOTES["store_pub_128 leafgate confirmation"] = _forward_modes(top.leaf_server)
        plain, _, _, _, _ = _pub_phase(top, PLAIN_SUBJECT, warmup, duration, mixed)
        publish_exact(top.leaf_server.port, PRIME_SUBJECT, SIZE, PRIME_MSGS)
        base_held, base_hub = _wait_held(top, PRIME_MSGS, at_hub=True)
        sampler = top.sampler()
        try:
            # No warm-up: the publisher then counts every message it sent.
            rate, total, t_go, t_pong, cpu = _pub_phase(top, STORE_SUBJECT, 0.0, duration, mixed)
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
    return Measurement(rate, extra)


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


# ------------------------------------------------------------ store_ack32_128

ACK_INFLIGHT = 32
ACK_INBOX = b"_INBOX.benchack."


def acked_publish(port: int, inflight: int, duration: float) -> tuple[int, int, float]:
    """Publish 128 B requests on the stored subject with *inflight* unanswered at
    any time, for *duration* seconds; return (acks, error replies, seconds)."""
    sock, buf = handshake(port, b"SUB " + ACK_INBOX + b"* 1\r\n")
    payload = b"x" * SIZE
    frame = b"PUB %b %b%%d %d\r\n%b\r\n" % (STORE_SUBJECT, ACK_INBOX, SIZE, payload)
    mark = b"MSG " + ACK_INBOX
    sent = answered = errors = 0
    with sock:
        t0 = time.monotonic()
        end = t0 + duration
        sock.sendall(b"".join(frame % (sent + i) for i in range(inflight)))
        sent = inflight
        stream = bytes(buf)
        while answered < sent:
            data = sock.recv(262144)
            if not data:
                raise BenchError("the server closed the acked publisher")
            stream = stream + data
            cut = stream.rfind(b"\r\n")  # count whole lines only
            done, stream = stream[: cut + 2], stream[cut + 2 :]
            new = done.count(mark)
            errors += done.count(b'"error"')
            if b"PING\r\n" in done:
                sock.sendall(b"PONG\r\n")
            answered += new
            if new and time.monotonic() < end:
                sock.sendall(b"".join(frame % (sent + i) for i in range(new)))
                sent += new
        return answered, errors, time.monotonic() - t0


@_bench_errors
def _store_ack32(t: Target, warmup: float, duration: float) -> Measurement:
    # The target compares with JetStream syncing every write (sync_interval:
    # always), the setting whose ack means what leafgate's fsync mode means.
    sync = None
    if t.side == "nats":
        why_not = _sync_always_unsupported(t.cmd)
        sync = "always" if why_not is None else None
        NOTES["store_ack32_128 nats"] = (
            "JetStream file store with sync_interval: always"
            if sync
            else f"JetStream file store, its default sync: acks before fsync ({why_not})"
        )
    else:
        NOTES["store_ack32_128 leafgate"] = "durability fsync: each PubAck after its batch's fsync"
    with Topology(t, hub=False, sync=sync) as top:
        acked_publish(top.leaf_server.port, ACK_INFLIGHT, warmup)
        acks, errors, secs = acked_publish(top.leaf_server.port, ACK_INFLIGHT, duration)
        top.alive()
    if errors:
        raise BenchError(f"{errors} of {acks} publishes were answered with an error")
    return _said(t, "store_ack32_128", Measurement(acks / secs, {"msgs": acks}))


STORE_RUNNERS: dict[str, Runner] = {
    "store_ack32_128": _store_ack32,
    "store_pub_128": _store_pub(),
    "store_pub_mixed_128": _store_pub(mixed=8),
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

    if name == "store_ack32_128":
        return (
            f"{_fmt_rate(value)} acked msgs/s with {ACK_INFLIGHT} in flight, link down "
            f"({get('msgs'):.0f} acks)"
        )
    if name in ("store_pub_128", "store_pub_mixed_128"):
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
