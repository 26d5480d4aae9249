"""Driving the power-cut fixture: a FUSE file system (``tests.powerfs.fs``, run in its own
process) that keeps unsynced writes in memory and throws them away on command.

:class:`PowerFS` mounts it on a fresh temporary mountpoint over a backing
directory and drives it through its control socket; :func:`power_cut` is the whole
fault: freeze the process (SIGSTOP), cut (drop every unsynced write; the file system
refuses everything until power returns), kill -9, reap, power on.

The semantics (what survives, how metadata behaves) are in ``tests.powerfs.fs``.
Used by tests/test_powerfs.py, tests/test_powerloss.py and ``python -m
edge.bench.powercut``; needs pyfuse3 (the ``test`` extra), fuse3 and /dev/fuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT = 15.0
COMMAND_TIMEOUT = 30.0


class PowerFSError(RuntimeError):
    pass


class PowerFS:
    """One mounted powerfs: ``backing`` is the "disk", ``mount`` the file system."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.backing = self.workdir / "disk"
        self.backing.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are short (108 bytes): socket and mountpoint in a short
        # directory of their own.
        self._private = Path(tempfile.mkdtemp(prefix="powerfs-"))
        self.mount = self._private / "mnt"
        self.mount.mkdir()
        self.control = self._private / "ctl.sock"
        self.log_path = self.workdir / "powerfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PowerFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PowerFS:
        for need in ("/dev/fuse", shutil.which("fusermount3")):
            if not need or not os.path.exists(need):
                raise PowerFSError("powerfs needs /dev/fuse and fusermount3 (Debian: fuse3)")
        ready = self._private / "ready"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        argv = [
            sys.executable,
            "-m",
            "tests.powerfs",
            str(self.backing),
            str(self.mount),
            "--control",
            str(self.control),
            "--ready",
            str(ready),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_ROOT, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (ready.exists() and os.path.ismount(self.mount)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PowerFSError(f"powerfs did not mount: {self._log_tail()}")
            time.sleep(0.02)
        return self

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "<no log>"

    def command(self, line: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(COMMAND_TIMEOUT)
            sock.connect(str(self.control))
            sock.sendall(line.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise PowerFSError(f"powerfs closed the control socket on {line!r}")
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        if "error" in reply:
            raise PowerFSError(f"powerfs {line!r}: {reply['error']}")
        return reply

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def cut(self, keep: float = 0.0, seed: int = 0) -> dict[str, Any]:
        """Drop every unsynced write (each dirty page first written back with
        probability ``keep``) and refuse every request until :meth:`on`."""
        return self.command(f"cut {keep} {seed}")

    def on(self) -> None:
        self.command("on")

    def sync(self) -> int:
        """Write every unsynced write back (sync(1)); the number of files."""
        return int(self.command("sync")["files"])

    def stop(self) -> None:
        """Unmount (fusermount3 -u, lazily if busy), then stop the process by its PID."""
        proc = self.proc
        if os.path.ismount(self.mount):
            done = subprocess.run(
                ["fusermount3", "-u", str(self.mount)], capture_output=True, timeout=10
            )
            if done.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(self.mount)], timeout=10)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.proc = None
        if not os.path.ismount(self.mount):
            shutil.rmtree(self._private, ignore_errors=True)


def _states(pid: int) -> list[str]:
    """The scheduler state of each thread of ``pid`` ([] once it is gone)."""
    states = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread just ended
        states.append(text.rsplit(")", 1)[1].split()[0])
    return states


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of the process is stopped: SIGSTOP is asynchronous, and
    a thread still running after the cut (a store's writer thread) must not be
    able to write on as if the power were still on (it would get EIO anyway)."""
    deadline = time.monotonic() + timeout
    while True:
        states = _states(pid)
        if all(state in ("T", "t", "Z", "X") for state in states):
            return
        if time.monotonic() > deadline:
            raise PowerFSError(f"process {pid} did not stop (thread states {states})")
        time.sleep(0.001)


def power_cut(
    proc: subprocess.Popen[bytes], fs: PowerFS, *, keep: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """The whole fault on one process: SIGSTOP, cut, SIGKILL, reap, power on.
    Returns what the cut discarded."""
    os.kill(proc.pid, signal.SIGSTOP)
    _wait_stopped(proc.pid)
    try:
        result = fs.cut(keep, seed)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    fs.on()
    return result
