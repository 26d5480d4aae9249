"""MQTT bridge throughput: paho-mqtt alone vs mosquitto -> leafgate bridge -> NATS.

    python -m edge.bench.mqtt [--messages 100000] [--runs 3] [--protocol 3.1.1]

Both receivers take the same QoS 0 flood from the same local mosquitto: a raw
publisher process writes pre-encoded PUBLISH packets as fast as the socket
takes them. The first receiver is a bare paho-mqtt client (its own network
thread, ``on_message`` counting); the second is a raw NATS subscriber
(counting MSG/HMSG frames) on a leafgate whose MQTT bridge maps ``bench/#``.
Rate = messages received / time from the first to the last one; the medians
of ``--runs`` runs and their ratio are printed. Not run by the tests (speed belongs in benchmarks).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IDLE_END = 2.0  # seconds without a message: the flood is over
TOPIC = "bench/t"
PAYLOAD = b"x" * 16


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _remaining(len(body)) + body


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def publish_flood(port: int, count: int) -> None:
    """A raw MQTT 3.1.1 publisher: CONNECT, ``count`` QoS 0 PUBLISHes, DISCONNECT."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        connect = _utf8("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big")
        sock.sendall(_packet(0x10, connect + _utf8(f"bench-pub-{os.getpid()}")))
        if sock.recv(4)[:1] != b"\x20":
            raise SystemExit("no CONNACK")
        one = _packet(0x30, _utf8(TOPIC) + PAYLOAD)
        chunk = one * 1000
        sent = 0
        while sent + 1000 <= count:
            sock.sendall(chunk)
            sent += 1000
        sock.sendall(one * (count - sent))
        sock.sendall(b"\xe0\x00")
        time.sleep(0.5)


def _flood(port: int, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.bench.mqtt", "--publish", str(port), str(count)]
    )


class _Counter:
    def __init__(self) -> None:
        self.n = 0
        self.first = 0.0
        self.last = 0.0

    def hit(self) -> None:
        now = time.perf_counter()
        if not self.n:
            self.first = now
        self.n += 1
        self.last = now

    def rate(self) -> float:
        return (self.n - 1) / (self.last - self.first) if self.n > 1 else 0.0


def _wait_idle(counter: _Counter, proc: subprocess.Popen[bytes]) -> None:
    proc.wait(120)
    while time.perf_counter() - max(counter.last, counter.first) < IDLE_END or not counter.n:
        time.sleep(0.1)


def run_paho(port: int, count: int, protocol: str) -> tuple[float, int]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    counter = _Counter()
    proto = paho.MQTTv5 if protocol == "5" else paho.MQTTv311
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=proto)
    client.on_message = lambda *_: counter.hit()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("bench/#", 0)
    if not subscribed.wait(5):
        raise SystemExit("paho: no SUBACK")
    _wait_idle(counter, _flood(port, count))
    client.disconnect()
    client.loop_stop()
    return counter.rate(), counter.n


def run_bridge(port: int, count: int, protocol: str) -> tuple[float, int]:
    from edge.bench.servers import start_server, stop_server

    toml = (
        f'[[bridges.mqtt]]\nname = "bench"\nport = {port}\nprotocol = "{protocol}"\n'
        'inbound_max = 20000\n[[bridges.mqtt.map]]\nmqtt = "bench/#"\n'
    )
    server = start_server([sys.executable, "-m", "edge", "run"], config=toml)
    try:
        return _nats_side(server.port, port, count)
    finally:
        stop_server(server)


class _RawNats:
    """A minimal NATS subscriber counting MSG/HMSG frames (nats-py's header
    parsing would be slower than the bridge it measures)."""

    def __init__(self, port: int, counter: _Counter) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.counter = counter
        self.buf = b""
        self.warm = False
        self.sock.recv(65536)  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"headers":true}\r\nSUB bench.> 1\r\nPING\r\n')

    def read_some(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise SystemExit("leafgate closed the connection")
        buf = self.buf + data
        pos = 0
        counter = self.counter
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line = buf[pos:end]
            if line.startswith((b"MSG ", b"HMSG ")):
                size = int(line.rsplit(b" ", 1)[1])
                if end + 2 + size + 2 > len(buf):
                    break
                pos = end + 2 + size + 2
                if self.warm:
                    counter.hit()
                else:
                    self.warm = True
                continue
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            pos = end + 2
        self.buf = buf[pos:]


def _nats_side(nats_port: int, mqtt_port: int, count: int) -> tuple[float, int]:
    counter = _Counter()
    raw = _RawNats(nats_port, counter)
    deadline = time.monotonic() + 15
    raw.sock.settimeout(0.3)
    while not raw.warm:  # until the bridge is connected and subscribed
        if time.monotonic() > deadline:
            raise SystemExit("bridge never delivered")
        publish_flood(mqtt_port, 1)
        try:
            while not raw.warm:
                raw.read_some()
        except TimeoutError:
            continue
    time.sleep(0.5)
    proc = _flood(mqtt_port, count)
    raw.sock.settimeout(IDLE_END)
    try:
        while True:
            raw.read_some()
    except TimeoutError:
        pass
    proc.wait(30)
    raw.sock.close()
    return counter.rate(), counter.n


def _mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}persistence false\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_queued_messages 0\n"
    )
    log = (tmp / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.bench.mqtt")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    parser.add_argument("--publish", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish:
        publish_flood(*args.publish)
        return 0
    with tempfile.TemporaryDirectory(prefix="leafgate-bench-mqtt-") as tmp:
        proc, port = _mosquitto(Path(tmp))
        try:
            paho_rates, bridge_rates = [], []
            for i in range(args.runs):
                rate, got = run_paho(port, args.messages, args.protocol)
                print(f"run {i + 1}: paho alone   {rate:10.0f} msgs/s ({got}/{args.messages})")
                paho_rates.append(rate)
                rate, got = run_bridge(port, args.messages, args.protocol)
                print(f"run {i + 1}: via bridge   {rate:10.0f} msgs/s ({got}/{args.messages})")
                bridge_rates.append(rate)
        finally:
            proc.terminate()
            proc.wait(5)
    a, b = statistics.median(paho_rates), statistics.median(bridge_rates)
    print(f"MQTT {args.protocol} QoS 0, {args.messages} msgs of {len(PAYLOAD)} B, medians:")
    print(f"  paho-mqtt alone:             {a:10.0f} msgs/s")
    print(f"  mosquitto -> bridge -> NATS: {b:10.0f} msgs/s")
    print(f"  ratio: {b / a:.2f}x (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
