"""Test harness: real server processes, a raw protocol client and a session runner.

Everything here talks to real processes over 127.0.0.1 on ports chosen by the OS:

* :func:`start_nats_server` / :func:`start_leafgate` start a server subprocess with
  ``-a 127.0.0.1 -p -1 --ports_file_dir <dir>`` and read the port back from the ports
  file the server writes (``<dir>/<exe>_<pid>.ports``).  Every process is stopped by
  its PID (SIGTERM, bounded wait, SIGKILL); an ``atexit`` hook stops leftovers.
* :class:`RawClient` is a bounded raw-socket NATS client for Trio tests.
* tests.sessions plays scripted sessions (one or more connections) and collects
  everything the server sent, normalised for comparison.

Environment:

* ``NATS_SERVER_BIN``: the reference nats-server binary (default: ``nats-server`` on
  PATH, else ``/usr/sbin/nats-server``).
* ``LEAFGATE_CMD``: the command that starts leafgate (shell-split; default
  ``<python> -m edge run``).  ``LEAFGATE_CMD=nats-server`` runs the whole suite against
  nats-server on both sides, which checks the harness itself.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NATS_SERVER = "/usr/sbin/nats-server"
INSTALL_HINT = (
    "nats-server is required by the tests (the reference implementation). "
    "Install it with `apt-get install -y nats-server` (Debian/Ubuntu) or run "
    "`bash tests/run.sh`, or point NATS_SERVER_BIN at a nats-server binary."
)

START_TIMEOUT = 20.0  # seconds for a server to write its ports file
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
IO_TIMEOUT = 5.0  # default bound for one network wait


class HarnessError(RuntimeError):
    """A test prerequisite or a server process misbehaved."""


# ---------------------------------------------------------------------------
# Locating the binaries
# ---------------------------------------------------------------------------


def nats_server_bin() -> str:
    """Path of the reference nats-server; raises :class:`HarnessError` if missing."""
    wanted = os.environ.get("NATS_SERVER_BIN") or "nats-server"
    found = shutil.which(wanted)
    if found is None and wanted == "nats-server" and os.access(DEFAULT_NATS_SERVER, os.X_OK):
        found = DEFAULT_NATS_SERVER
    if found is None:
        raise HarnessError(f"nats-server not found ({wanted!r}). {INSTALL_HINT}")
    return found


def leafgate_command() -> list[str]:
    """The command that starts leafgate (``LEAFGATE_CMD`` overrides, shell-split)."""
    override = os.environ.get("LEAFGATE_CMD", "").strip()
    if override:
        cmd = shlex.split(override)
        exe = shutil.which(cmd[0])
        if exe is None:
            raise HarnessError(f"LEAFGATE_CMD: {cmd[0]!r} not found")
        return [exe, *cmd[1:]]
    return [sys.executable, "-m", "edge", "run"]


def is_nats_server_command(cmd: Sequence[str]) -> bool:
    """True when a command runs nats-server (it then needs nats-server config syntax)."""
    return Path(cmd[0]).name.startswith("nats-server")


# ---------------------------------------------------------------------------
# Server processes
# ---------------------------------------------------------------------------

_LIVE: set[ServerProcess] = set()


def _stop_all_live() -> None:
    for proc in list(_LIVE):
        proc.stop()


atexit.register(_stop_all_live)


class ServerProcess:
    """One server subprocess (nats-server or leafgate) listening on 127.0.0.1.

    ``port``/``url`` are known once :meth:`start` returned.  :meth:`restart` starts the
    same command again on the same port (``-p <port>``), for reconnect tests.
    """

    _counter = 0

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        extra_args: Sequence[str],
        workdir: Path,
        config_text: str | None = None,
        config_suffix: str = ".conf",
    ) -> None:
        ServerProcess._counter += 1
        self.name = name
        self.command = list(command)
        self.extra_args = [str(a) for a in extra_args]
        self.workdir = Path(workdir)
        tag = f"{name}-{ServerProcess._counter}"
        self.ports_dir = self.workdir / f"{tag}-ports"
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{tag}.log"
        self.config_path: Path | None = None
        if config_text is not None:
            self.config_path = self.workdir / f"{tag}{config_suffix}"
            self.config_path.write_text(config_text)
            # Config files may hold passwords: leafgate refuses them world-readable.
            self.config_path.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int = 0
        self.url: str = ""

    # -- properties -----------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HarnessError(f"{self.name} is not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self, port: int) -> list[str]:
        argv = [
            *self.command,
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--ports_file_dir",
            str(self.ports_dir),
        ]
        if self.config_path is not None:
            argv += ["-c", str(self.config_path)]
        return argv + self.extra_args

    def log_tail(self, limit: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text[-limit:]

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name} pid={self.proc and self.proc.pid} port={self.port}>"

    # -- lifecycle ------------------------------------------------------------

    def start(self, port: int = -1, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Start the process and wait (bounded) until its ports file names the port.

        With a fixed ``port`` (restart) a failed start is retried until ``timeout``,
        since the old socket may still be in the kernel's hands for a moment.
        """
        if self.running:
            raise HarnessError(f"{self!r} already running")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._start_once(port, deadline)
                return self
            except HarnessError:
                if port <= 0 or time.monotonic() + 0.2 >= deadline:
                    raise
                time.sleep(0.2)

    def _start_once(self, port: int, deadline: float) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = self.argv(port)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {shlex.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                env=env,
            )
        _LIVE.add(self)
        pid = self.proc.pid
        while True:
            url = self._read_ports_file(pid)
            if url:
                break
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.stop()
                raise HarnessError(
                    f"{self.name} exited with status {rc} before listening.\n"
                    f"command: {shlex.join(argv)}\nlog tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise HarnessError(
                    f"{self.name} wrote no ports file within the time limit.\n"
                    f"command: {shlex.join(argv)}\nlog tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1" or not parts.port:
            self.stop()
            raise HarnessError(f"{self.name}: unexpected client URL {url!r} in ports file")
        if port > 0 and parts.port != port:
            self.stop()
            raise HarnessError(f"{self.name}: asked for port {port}, got {parts.port}")
        self.port = parts.port
        self.url = f"nats://127.0.0.1:{self.port}"

    def _read_ports_file(self, pid: int) -> str | None:
        for path in self.ports_dir.glob(f"*_{pid}.ports"):
            try:
                data = json.loads(path.read_text())
                urls = data["nats"]
            except (OSError, ValueError, KeyError, TypeError):
                return None  # not completely written yet
            if urls:
                return str(urls[0])
        return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Idempotent. Returns exit status."""
        proc = self.proc
        _LIVE.discard(self)
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL right away (a crash, for reconnect tests)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
        _LIVE.discard(self)

    def restart(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Stop (if running) and start again on the same port."""
        port = self.port
        if port <= 0:
            raise HarnessError("restart() before a successful start()")
        self.stop()
        return self.start(port=port, timeout=timeout)


def start_nats_server(
    *extra_args: str, config_text: str | None = None, tmp_path: Path
) -> ServerProcess:
    """Start the reference nats-server (config_text in nats-server config syntax)."""
    return ServerProcess(
        "nats-server", [nats_server_bin()], extra_args, tmp_path, config_text, ".conf"
    ).start()


def start_leafgate(
    *extra_args: str, config_text: str | None = None, tmp_path: Path
) -> ServerProcess:
    """Start leafgate (config_text in TOML, or nats syntax when LEAFGATE_CMD is nats-server)."""
    cmd = leafgate_command()
    suffix = ".conf" if is_nats_server_command(cmd) else ".toml"
    return ServerProcess("leafgate", cmd, extra_args, tmp_path, config_text, suffix).start()


@dataclass(frozen=True)
class Config:
    """The same server configuration written in both dialects.

    ``nats`` is nats-server config syntax, ``toml`` is leafgate's TOML.  When leafgate is
    replaced by nats-server (``LEAFGATE_CMD=nats-server``) the nats text is used for it.
    """

    nats: str
    toml: str

    def for_command(self, cmd: Sequence[str]) -> str:
        return self.nats if is_nats_server_command(cmd) else self.toml


# ---------------------------------------------------------------------------
# Protocol frames
# ---------------------------------------------------------------------------


class ProtocolError(Exception):
    """The server sent bytes that do not parse as NATS protocol."""


@dataclass(frozen=True)
class Frame:
    """One server->client protocol item: control line (no CRLF) and payload if any."""

    line: bytes
    payload: bytes | None = None

    @property
    def op(self) -> str:
        head = self.line.split(None, 1)
        return head[0].decode("ascii", "replace").upper() if head else ""

    @property
    def args(self) -> list[bytes]:
        return self.line.split()[1:]

    def text(self) -> str:
        return self.line.decode("utf-8", "replace")


def parse_frame(buf: bytes | bytearray) -> tuple[Frame, int] | None:
    """Parse one frame from the start of ``buf``: (frame, bytes used) or None if incomplete."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    line = bytes(buf[:end])
    parts = line.split()
    op = parts[0].upper() if parts else b""
    if op not in (b"MSG", b"HMSG"):
        return Frame(line), end + 2
    try:
        size = int(parts[-1])
    except (ValueError, IndexError) as exc:
        raise ProtocolError(f"bad size in {line!r}") from exc
    start = end + 2
    stop = start + size
    if len(buf) < stop + 2:
        return None
    if buf[stop : stop + 2] != b"\r\n":
        raise ProtocolError(f"payload of {line!r} not followed by CRLF")
    return Frame(line, bytes(buf[start:stop])), stop + 2


# ---------------------------------------------------------------------------
# Raw client
# ---------------------------------------------------------------------------


class ConnectionClosed(EOFError):
    """The server closed the connection before the awaited data arrived."""


@contextlib.contextmanager
def bounded(timeout: float, what: str) -> Iterator[None]:
    """``trio.fail_after`` raising the builtin ``TimeoutError`` with a message."""
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        raise TimeoutError(f"{what}: not done within {timeout} s") from None


class RawClient:
    """A raw NATS connection for Trio tests; every wait is bounded.

    Only one task may receive at a time (Trio streams enforce this).
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False
        self.reset = False  # closed by a reset rather than a FIN

    @classmethod
    async def connect(cls, port: int, *, timeout: float = IO_TIMEOUT) -> RawClient:
        with bounded(timeout, f"connect to 127.0.0.1:{port}"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(stream)

    @classmethod
    async def connected(
        cls, port: int, connect: bytes = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
    ) -> RawClient:
        """A client past the handshake: INFO read, ``connect`` sent, a PING answered."""
        client = await cls.connect(port)
        await client.read_info()
        await client.send(connect)
        await client.ping()
        return client

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.aclose()

    async def send(self, data: bytes, *, timeout: float = IO_TIMEOUT) -> None:
        with bounded(timeout, "send"):
            await self.stream.send_all(data)

    async def receive_more(self) -> bool:
        """Read one chunk into ``buf``. False once the server closed (EOF or reset)."""
        if self.eof:
            return False
        try:
            chunk = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            chunk = b""
            self.reset = True
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    async def read_until(
        self,
        what: bytes | Callable[[bytearray], int | bool | None],
        timeout: float = IO_TIMEOUT,
    ) -> bytes:
        """Return (and consume) the buffer up to and including ``what``.

        ``what`` is a delimiter, or a predicate on the buffer returning the number of
        bytes to consume (``True``: all of it; ``None``/``False``/``0``: keep waiting).
        Raises ``TimeoutError`` or :class:`ConnectionClosed`.
        """

        def match() -> int:
            if isinstance(what, bytes):
                idx = self.buf.find(what)
                return idx + len(what) if idx >= 0 else 0
            got = what(self.buf)
            if got is True:
                return len(self.buf)
            return int(got or 0)

        with bounded(timeout, f"read_until({what!r})"):
            while True:
                n = match()
                if n:
                    out = bytes(self.buf[:n])
                    del self.buf[:n]
                    return out
                if not await self.receive_more():
                    raise ConnectionClosed(f"closed; unread: {bytes(self.buf)[:200]!r}")

    async def read_line(self, timeout: float = IO_TIMEOUT) -> bytes:
        return (await self.read_until(b"\r\n", timeout))[:-2]

    async def read_frame(self, timeout: float = IO_TIMEOUT) -> Frame:
        with bounded(timeout, "read_frame"):
            while True:
                got = parse_frame(self.buf)
                if got is not None:
                    frame, used = got
                    del self.buf[:used]
                    return frame
                if not await self.receive_more():
                    raise ConnectionClosed(f"closed; unread: {bytes(self.buf)[:200]!r}")

    async def read_info(self, timeout: float = IO_TIMEOUT) -> dict[str, Any]:
        line = await self.read_line(timeout)
        op, _, rest = line.partition(b" ")
        if op != b"INFO":
            raise ProtocolError(f"expected INFO, got {line[:200]!r}")
        info: dict[str, Any] = json.loads(rest)
        return info

    async def read_frames_until(
        self, stop: Callable[[Frame], bool], timeout: float = IO_TIMEOUT
    ) -> list[Frame]:
        """Frames up to and including the first one for which ``stop`` is true."""
        frames: list[Frame] = []
        with bounded(timeout, "read_frames_until"):
            while True:
                frame = await self.read_frame(timeout)
                frames.append(frame)
                if stop(frame):
                    return frames

    async def ping(self, timeout: float = IO_TIMEOUT) -> list[Frame]:
        """Send PING; return the frames received up to the PONG (server PINGs dropped)."""
        await self.send(b"PING\r\n")
        frames = await self.read_frames_until(lambda f: f.op == "PONG", timeout)
        return [f for f in frames[:-1] if f.op != "PING"]

    async def closed(self, timeout: float = IO_TIMEOUT) -> bool:
        """Wait up to ``timeout`` for the server to close; received data stays in ``buf``."""
        with trio.move_on_after(timeout):
            while await self.receive_more():
                pass
            return True
        return False
