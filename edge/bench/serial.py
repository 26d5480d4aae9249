"""Serial bridge benchmark: line frames at a real 115200 baud pace, none lost.

``python -m edge.bench.serial [--duration 10] [--baud 115200] [--json FILE]``

A socat pty pair stands in for the device; leafgate (a subprocess, ``python
-m edge run``) has a ``[[bridges.serial]]`` port on one end; this script
writes numbered line frames into the other end, paced to the baud rate
(8N1: ten bits per byte), while a NATS subscriber on leafgate's client port
collects them. Reported: frames sent and received, loss (must be 0), order,
and leafgate's CPU use over the send window (share of one core). Exits 1 on
any loss, duplicate or reordering.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import BenchError
from .protocol import connect
from .servers import cpu_seconds, start_server, stop_server

SUBJECT = b"bench.serial"
LINK_TIMEOUT = 5.0
DRAIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class SerialResult:
    baud: int
    duration_s: float
    frame_bytes: int
    sent: int
    received: int
    lost: int
    out_of_order: int
    duplicates: int
    bytes_per_s: float
    frames_per_s: float
    leafgate_cpu_pct: float  # of one core, over the send window
    max_write_block_ms: float  # longest the pty was full (the bridge behind)


class _Pty:
    """``socat pty,link=dev pty,link=sensor``, stopped by its PID."""

    def __init__(self, tmp: Path) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise BenchError("socat not found")
        self.dev, self.sensor = tmp / "dev", tmp / "sensor"
        links = [f"pty,raw,echo=0,link={self.dev}", f"pty,raw,echo=0,link={self.sensor}"]
        self.proc = subprocess.Popen(
            [socat, *links], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + LINK_TIMEOUT
        while not (self.dev.exists() and self.sensor.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError("socat did not make the pty pair")
            time.sleep(0.01)
        self.fd = os.open(self.sensor, os.O_WRONLY | os.O_NOCTTY)

    def stop(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class _Subscriber(threading.Thread):
    """A raw NATS subscriber collecting the payloads of ``SUBJECT``."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = connect(port)
        self.sock.sendall(
            b'CONNECT {"verbose":false,"headers":true}\r\nSUB %s 1\r\nPING\r\n' % SUBJECT
        )
        self.payloads: list[bytes] = []
        self.ready = threading.Event()
        self.stop_flag = False

    def run(self) -> None:
        buf = bytearray()
        sock = self.sock
        sock.settimeout(0.2)
        while not self.stop_flag:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                return
            buf += data
            self._parse(buf)

    def _parse(self, buf: bytearray) -> None:
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            args = bytes(buf[:eol]).split()
            op = args[0].upper() if args else b""
            if op in (b"MSG", b"HMSG"):
                size = int(args[-1])
                hdr = int(args[-2]) if op == b"HMSG" else 0
                end = eol + 2 + size + 2
                if len(buf) < end:
                    return
                self.payloads.append(bytes(buf[eol + 2 + hdr : eol + 2 + size]))
                del buf[:end]
                continue
            del buf[: eol + 2]
            if op == b"PONG":
                self.ready.set()
            elif op == b"PING":
                self.sock.sendall(b"PONG\r\n")


def _wait_log(log: Path, event: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while f'"{event}"' not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise BenchError(f"leafgate did not log {event} within {timeout:g} s")
        time.sleep(0.02)


DEFAULT_FRAME = 33  # ``00000042,21.50,40.10,1013.25,ok`` and CRLF
MIN_FRAME = 10  # eight digits and CRLF


def _frame(seq: int, size: int = DEFAULT_FRAME) -> bytes:
    """Frame ``seq``: its number, padding, CRLF; ``size`` bytes in all."""
    body = b"%08d,21.50,40.10,1013.25,ok" % seq
    return body[: size - 2].ljust(size - 2, b"x") + b"\r\n"


def _send(fd: int, baud: int, duration: float, size: int) -> tuple[int, float]:
    """Numbered frames at ``baud`` (ten bits a byte) for ``duration`` seconds.

    Returns the frames sent and the longest a write blocked (the pty full:
    the bridge fell behind the line rate for that long)."""
    rate = baud / 10.0
    total = int(duration * rate) // size
    start = time.monotonic()
    sent = 0
    stall = 0.0
    while sent < total:
        elapsed = time.monotonic() - start
        due = total if elapsed >= duration else int(elapsed * rate) // size
        if due > sent:
            t = time.monotonic()
            os.write(fd, b"".join(_frame(i, size) for i in range(sent, due)))
            stall = max(stall, time.monotonic() - t)
            sent = due
        time.sleep(0.002)
    return sent, stall


def run(duration: float, baud: int, cmd: list[str], size: int = DEFAULT_FRAME) -> SerialResult:
    tmp = Path(tempfile.mkdtemp(prefix="leafgate-bench-serial-"))
    pty = _Pty(tmp)
    try:
        config = (
            f'[[bridges.serial]]\nname = "bench"\npath = "{pty.dev}"\nbaud = {baud}\n'
            f'subject = "{SUBJECT.decode()}"\n'
        )
        server = start_server(cmd, config=config)
        try:
            _wait_log(server.log, "serial_port_open", 10.0)
            sub = _Subscriber(server.port)
            sub.start()
            if not sub.ready.wait(5):
                raise BenchError("the subscriber got no PONG")
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            sent, stall = _send(pty.fd, baud, duration, size)
            window = time.monotonic() - t0
            cpu = cpu_seconds(server.pid) - cpu0
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while len(sub.payloads) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # anything extra (duplicates) arrives too
            sub.stop_flag = True
            sub.join(2)
            sub.sock.close()
        finally:
            stop_server(server)
    finally:
        pty.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    seqs = [int(p[:8]) for p in sub.payloads]
    unique = set(seqs)
    return SerialResult(
        baud=baud,
        duration_s=round(window, 3),
        frame_bytes=size,
        sent=sent,
        received=len(seqs),
        lost=len(set(range(sent)) - unique),
        out_of_order=sum(1 for a, b in itertools.pairwise(seqs) if b <= a),
        duplicates=len(seqs) - len(unique),
        bytes_per_s=round(sent * size / window, 1),
        frames_per_s=round(sent / window, 1),
        leafgate_cpu_pct=round(100.0 * cpu / window, 1),
        max_write_block_ms=round(stall * 1000, 1),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.bench.serial", description=__doc__)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument(
        "--frame-bytes",
        type=int,
        default=DEFAULT_FRAME,
        help=f"bytes per line frame, CRLF included (at least {MIN_FRAME})",
    )
    ap.add_argument("--leafgate-cmd", default=None, help="command starting leafgate")
    ap.add_argument("--json", metavar="FILE", default=None)
    args = ap.parse_args(argv)
    cmd = args.leafgate_cmd.split() if args.leafgate_cmd else [sys.executable, "-m", "edge", "run"]
    if args.frame_bytes < MIN_FRAME:
        ap.error(f"--frame-bytes must be at least {MIN_FRAME}")
    try:
        result = run(args.duration, args.baud, cmd, args.frame_bytes)
    except BenchError as exc:
        print(f"bench serial: {exc}", file=sys.stderr)
        return 2
    for key, value in asdict(result).items():
        print(f"{key:>18}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if result.lost == 0 and result.duplicates == 0 and result.out_of_order == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
