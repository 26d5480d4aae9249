"""systemd notify protocol: a real leafgate process talks to a NOTIFY_SOCKET the
test listens on (a path and an abstract address), as systemd would."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from edge.sdnotify import Notifier, socket_address, watchdog_period
from tests.harness import REPO_ROOT

WATCHDOG_USEC = 400_000  # pings every 0.2 s


def test_addresses_and_watchdog_period() -> None:
    assert socket_address("@leafgate/notify") == b"\0leafgate/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("") is None and socket_address("relative") is None
    assert socket_address("@") is None
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}, 7) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}, 7) is None
    assert watchdog_period({}, 7) is None
    off = Notifier({})
    assert not off.enabled and off.send(READY=1) is False


def test_notifier_gives_up_quietly_when_the_socket_is_gone(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert notifier.enabled
    assert notifier.send(READY=1) is False  # no listener: logged once, no exception
    assert notifier.send(WATCHDOG=1) is False


class Listener:
    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.received: list[tuple[float, dict[str, str]]] = []

    def read(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.read(max(0.01, deadline - time.monotonic()))
            if fields is not None and key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout}s; got {self.received}")

    def pings_during(self, seconds: float) -> list[float]:
        """Times of the WATCHDOG=1 pings received in the next ``seconds``."""
        end = time.monotonic() + seconds
        times = []
        while (left := end - time.monotonic()) > 0:
            fields = self.read(left)
            if fields is not None and fields.get("WATCHDOG") == "1":
                times.append(time.monotonic())
        return times

    def close(self) -> None:
        self.sock.close()


def _start(notify_socket: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket, WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.pop("WATCHDOG_PID", None)
    with open(tmp_path / "leafgate.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "-a", "127.0.0.1", "-p", "-1"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_watchdog_and_stopping(tmp_path: Path, kind: str) -> None:
    if kind == "path":
        address: str | bytes = str(tmp_path / "notify")
        notify_socket = str(address)
    else:
        name = f"leafgate-test-{uuid.uuid4().hex}"
        address, notify_socket = b"\0" + name.encode(), "@" + name
    listener = Listener(address)
    proc = _start(notify_socket, tmp_path)
    try:
        ready = listener.wait_for("READY")
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        match = re.match(r"listening on 127\.0\.0\.1:(\d+), 0 clients$", ready["STATUS"])
        assert match, ready
        # READY=1 comes once the port answers: the INFO is there at once.
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5) as c:
            c.settimeout(5)
            assert c.recv(4096).startswith(b"INFO {")

        pings = listener.pings_during(1.6)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 6 <= len(pings) <= 10, pings
        assert 0.15 <= statistics.median(gaps) <= 0.3, gaps

        # A stopped (hung) process stops pinging; systemd would restart it.
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.1)  # a datagram sent just before the stop may still be queued
        listener.pings_during(0.1)
        assert listener.pings_during(1.0) == []
        os.kill(proc.pid, signal.SIGCONT)
        assert len(listener.pings_during(1.0)) >= 3  # pinging again once it runs

        proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert proc.wait(timeout=10) == 0
    finally:
        _stop(proc)
        listener.close()
