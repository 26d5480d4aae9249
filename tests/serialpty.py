"""Real pseudo-terminal pairs made by socat, for the serial bridge's tests and benchmark.

``PtyPair.start()`` runs ``socat pty,link=<dev> pty,link=<sensor>`` and waits
(bounded) until both links exist; the bridge opens ``dev``, the test plays
the device on ``sensor``. ``stop()`` ends that socat by its PID (the links go
with it), which is how a test unplugs the device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import trio

START_TIMEOUT = 5.0


def socat_bin() -> str:
    found = shutil.which("socat")
    if found is None:
        raise RuntimeError("socat is not installed (tests/run.sh installs it)")
    return found


class PtyPair:
    def __init__(self, tmp: Path, name: str = "tty") -> None:
        self.dev = tmp / name
        self.sensor = tmp / f"{name}-sensor"
        self.log = tmp / f"{name}-socat.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd: int | None = None

    def start(self) -> PtyPair:
        assert self.proc is None
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    socat_bin(),
                    "-d",
                    "-d",
                    f"pty,raw,echo=0,link={self.dev}",
                    f"pty,raw,echo=0,link={self.sensor}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.dev.exists() and self.sensor.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"socat did not make the pty pair: {self.log.read_text()}")
            time.sleep(0.01)
        self.fd = os.open(self.sensor, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        return self

    def stop(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # socat removes its links on SIGTERM; make sure a restart makes fresh ones.
        for link in (self.dev, self.sensor):
            if link.is_symlink():
                link.unlink()

    async def write(self, data: bytes, timeout: float = 5.0) -> None:
        """Write as the device, waiting for room in the pty (bounded)."""
        assert self.fd is not None
        view = memoryview(data)
        with trio.fail_after(timeout):
            while view:
                try:
                    view = view[os.write(self.fd, view) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.fd)

    async def read(self, size: int, timeout: float = 5.0) -> bytes:
        """Read exactly ``size`` bytes the bridge wrote to the device (bounded)."""
        assert self.fd is not None
        out = b""
        with trio.fail_after(timeout):
            while len(out) < size:
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    out += os.read(self.fd, size - len(out))
                except BlockingIOError:
                    continue
        return out

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
