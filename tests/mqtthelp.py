"""A real mosquitto for the MQTT bridge tests, and a small paho peer.

``Mosquitto`` writes a mosquitto.conf with a plain listener (and optionally a
TLS one requiring client certificates) on free loopback ports, starts
/usr/sbin/mosquitto (or $MOSQUITTO_BIN), waits until the port answers, and
stops it by PID. ``restart()`` starts it again on the same ports.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.certs import TLSFiles

START_TIMEOUT = 10.0


def mosquitto_bin() -> str:
    path = os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(path).exists():
        raise RuntimeError(f"mosquitto not found at {path} (install it: tests/run.sh does)")
    return path


def _passwd_bin() -> str:
    path = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(path).exists():
        raise RuntimeError("mosquitto_passwd not found (it comes with the mosquitto package)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        tls: TLSFiles | None = None,
        *,
        persistence: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.users = users
        self.persistence = persistence
        self.tls = tls
        self.port = 0
        self.tls_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def _conf(self) -> Path:
        lines = [
            "user root" if os.geteuid() == 0 else "",
            "persistence true" if self.persistence else "persistence false",
            f"persistence_location {self.workdir}/" if self.persistence else "",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false" if self.users else "allow_anonymous true",
        ]
        if self.users:
            passwd = self.workdir / "mosquitto.passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    [_passwd_bin(), "-b", str(passwd), user, password], check=True, timeout=10
                )
            lines.append(f"password_file {passwd}")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
            ]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> Mosquitto:
        for _attempt in range(5):
            if not self.port:
                self.port = _free_port()
                self.tls_port = _free_port() if self.tls is not None else 0
            if self._start_once():
                return self
            self.port = 0  # taken meanwhile: pick others
        raise RuntimeError(f"mosquitto did not start; log: {self.log_path.read_text()[-2000:]}")

    def _start_once(self) -> bool:
        conf = self._conf()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        ports = [p for p in (self.port, self.tls_port) if p]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if all(_answers(p) for p in ports):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        if not self._start_once():
            raise RuntimeError("mosquitto did not restart on the same port")


class Peer:
    """A paho client on its own network thread (a test device), collecting messages."""

    def __init__(
        self, port: int, *, v5: bool = True, client_id: str = "", persistent: bool = False
    ) -> None:
        self.v5 = v5
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            # A persistent session (3.1.1): the broker queues QoS 1 while away.
            clean_session=None if v5 else not persistent,
        )
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, topic: str, qos: int = 0) -> None:
        info = self.client.subscribe(topic, qos)
        assert info[0] == paho.MQTT_ERR_SUCCESS
        time.sleep(0.2)  # SUBACK (bounded, small)

    def publish(self, topic: str, payload: bytes, qos: int = 0, **kw: Any) -> None:
        info = self.client.publish(topic, payload, qos=qos, **kw)
        if qos:
            info.wait_for_publish(5)

    def get(self, timeout: float = 5.0) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
