"""Lifecycle of a leafgate process: signals, lame duck, keep-alive, slow consumers, exit codes.

Each test runs the real ``leafgate`` command as a subprocess and talks raw protocol
to it, so what is checked is what a user's process supervisor and clients see.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from tests.harness import RawClient, start_leafgate

CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'


async def _connected(port: int) -> RawClient:
    client = await RawClient.connect(port)
    await client.read_info()
    await client.send(CONNECT)
    await client.ping()
    return client


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return proc.wait(timeout=timeout)


async def test_sigterm_closes_clients_and_exits_zero(tmp_path: Path) -> None:
    server = start_leafgate(tmp_path=tmp_path)
    client = await _connected(server.port)
    assert server.proc is not None
    os.kill(server.pid, signal.SIGTERM)
    assert await client.closed(timeout=10), "client was not closed on SIGTERM"
    code = await trio.to_thread.run_sync(_wait_exit, server.proc, 10)
    assert code == 0
    # The ports file is removed on a clean exit, as nats-server does.
    assert not list(server.ports_dir.glob("leafgate_*.ports"))


async def test_sigint_exits_zero(tmp_path: Path) -> None:
    server = start_leafgate(tmp_path=tmp_path)
    assert server.proc is not None
    os.kill(server.pid, signal.SIGINT)
    code = await trio.to_thread.run_sync(_wait_exit, server.proc, 10)
    assert code == 0


async def test_lame_duck_warns_then_closes_and_refuses_new_clients(tmp_path: Path) -> None:
    toml = 'lame_duck_duration = "3s"\nlame_duck_grace_period = "1s"\n'
    server = start_leafgate(config_text=toml, tmp_path=tmp_path)
    clients = [await _connected(server.port) for _ in range(3)]
    assert server.proc is not None
    started = time.monotonic()
    os.kill(server.pid, signal.SIGUSR2)
    for client in clients:
        line = await client.read_line(timeout=5)
        assert line.startswith(b"INFO ")
        info = json.loads(line[5:])
        assert info["ldm"] is True
    # New connections are refused while in lame duck mode.
    await trio.sleep(0.2)
    refused = False
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.settimeout(2)
            refused = sock.recv(100) == b""
    except OSError:
        refused = True
    assert refused, "a new connection was accepted in lame duck mode"
    for client in clients:
        assert await client.closed(timeout=10)
    elapsed = time.monotonic() - started
    # Closed after the grace period, not before.
    assert elapsed >= 1.0
    code = await trio.to_thread.run_sync(_wait_exit, server.proc, 10)
    assert code == 0


async def test_stale_connection_is_closed(tmp_path: Path) -> None:
    toml = 'ping_interval = "1s"\nping_max = 2\n'
    server = start_leafgate(config_text=toml, tmp_path=tmp_path)
    client = await RawClient.connect(server.port)
    await client.read_info()
    await client.send(b'CONNECT {"verbose":false}\r\n')
    frames = await client.read_frames_until(lambda f: f.op == "-ERR", timeout=10)
    assert [f.op for f in frames].count("PING") == 2
    assert frames[-1].text() == "-ERR 'Stale Connection'"
    assert await client.closed(timeout=5)
    server.stop()


async def test_client_answering_pings_stays(tmp_path: Path) -> None:
    toml = 'ping_interval = "1s"\nping_max = 2\n'
    server = start_leafgate(config_text=toml, tmp_path=tmp_path)
    client = await RawClient.connect(server.port)
    await client.read_info()
    await client.send(b'CONNECT {"verbose":false}\r\n')
    for _ in range(4):
        frame = await client.read_frame(timeout=5)
        assert frame.op == "PING"
        await client.send(b"PONG\r\n")
    frames = await client.ping()
    assert frames == []
    server.stop()


async def test_slow_consumer_is_closed_and_publisher_keeps_going(tmp_path: Path) -> None:
    server = start_leafgate(
        config_text='max_pending = "256KB"\nmax_payload = "128KB"\n', tmp_path=tmp_path
    )
    # A subscriber with a tiny receive buffer that never reads.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b'CONNECT {"verbose":false}\r\nSUB flood 1\r\nPING\r\n')
    seen = b""
    while b"PONG" not in seen:
        seen += sock.recv(4096)
    publisher = await _connected(server.port)
    payload = b"x" * 60000
    for _ in range(200):
        await publisher.send(b"PUB flood %d\r\n%b\r\n" % (len(payload), payload))
    # The publisher is never blocked: its PING is answered promptly.
    assert await publisher.ping(timeout=5) == []
    # The subscriber was dropped: draining its socket reaches EOF.
    deadline = time.monotonic() + 10
    eof = False
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            eof = True
            break
    sock.close()
    assert eof, "slow consumer was not disconnected"
    log = server.log_tail()
    server.stop()
    assert "slow_consumer" in log


def test_port_in_use_exits_one(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "edge", "run", "-a", "127.0.0.1", "-p", str(port)],
            capture_output=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert b"listen_failed" in result.stderr


def test_config_error_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('max_payload = "lots"\n')
    result = subprocess.run(
        [sys.executable, "-m", "edge", "run", "-c", str(config)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert b"max_payload" in result.stderr
    assert b"Traceback" not in result.stderr


def test_fast_publisher_does_not_make_a_reading_subscriber_slow(tmp_path: Path) -> None:
    """A publisher faster than the server can write to a subscriber that reads:
    the publisher is held back briefly (as nats-server stalls producers) instead
    of the subscriber being dropped as a slow consumer; every message arrives."""
    import threading

    server = start_leafgate(
        config_text='max_pending = "2MB"\nmax_payload = "64KB"\n', tmp_path=tmp_path
    )
    payload = b"x" * 1024
    frame = b"MSG load 1 1024\r\n" + payload + b"\r\n"
    sub = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sub.sendall(b'CONNECT {"verbose":false}\r\nSUB load 1\r\nPING\r\n')
    seen = b""
    while b"PONG\r\n" not in seen:
        seen += sub.recv(4096)
    received = [len(seen.split(b"PONG\r\n", 1)[1])]
    closed = threading.Event()

    def read() -> None:
        try:
            while True:
                chunk = sub.recv(1 << 20)
                if not chunk:
                    closed.set()
                    return
                received[0] += len(chunk)
        except OSError:
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pub = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    pub.sendall(b'CONNECT {"verbose":false}\r\n')
    batch = (b"PUB load 1024\r\n" + payload + b"\r\n") * 256
    sent = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        pub.sendall(batch)
        sent += 256
    pub.sendall(b"PING\r\n")
    answer = b""
    while b"PONG" not in answer:
        answer += pub.recv(4096)
    # Everything published was delivered to the subscriber, which stayed connected.
    end = time.monotonic() + 20
    while received[0] < sent * len(frame) and time.monotonic() < end and not closed.is_set():
        time.sleep(0.05)
    assert not closed.is_set(), "the subscriber was dropped as a slow consumer"
    assert received[0] == sent * len(frame)
    sub.close()
    pub.close()
    server.stop()
    assert "slow_consumer" not in server.log_tail()
