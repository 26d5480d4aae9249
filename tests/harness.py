"""Test harness: real server processes, a raw protocol client and a session runner.

Everything here talks to real processes over 127.0.0.1 on ports chosen by the OS:

* :func:`start_nats_server` / :func:`start_leafgate` start a server subprocess with
  ``-a 127.0.0.1 -p -1 --ports_file_dir <dir>`` and read the port back from the ports
  file the server writes (``<dir>/<exe>_<pid>.ports``).  Every process is stopped by
  its PID (SIGTERM, bounded wait, SIGKILL); an ``atexit`` hook stops leftovers.
* :class:`RawClient` is a bounded raw-socket NATS client for Trio tests.
* :func:`run_session` plays a scripted session (one or more connections) and collects
  everything the server sent; :meth:`ConnResult.lines` normalises it for comparison.

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
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------------------
# Session runner
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send bytes on a connection (opened on first use)."""

    data: bytes
    conn: str = "c"


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Open:
    """Open a connection now and wait for its first line (INFO)."""

    conn: str = "c"


@dataclass(frozen=True)
class Sync:
    """PING on a connection and wait for its PONG (orders work across connections)."""

    conn: str = "c"


@dataclass(frozen=True)
class WaitClosed:
    """Wait (bounded) for the server to close a connection."""

    conn: str = "c"
    timeout: float = IO_TIMEOUT


@dataclass(frozen=True)
class Close:
    """Close a connection from the client side (the server sees EOF)."""

    conn: str = "c"


Step = Send | Pause | Open | Sync | WaitClosed | Close | bytes

CLOSED = "<closed>"
CLIENT_CLOSED = "<client closed>"
TIMEOUT = "<timeout>"
# INFO keys left out of comparisons: additions of later nats-server versions (2.14).
_INFO_IGNORED = {"git_commit", "api_lvl", "xkey"}  # 2.14-only additions
_NKEY_ID = re.compile(r"N[A-Z2-7]{55}")


@dataclass
class ConnResult:
    """Everything one connection received during a session."""

    name: str
    frames: list[Frame] = field(default_factory=list)
    closed: bool = False
    client_closed: bool = False  # by a Close step, not by the server
    timed_out: bool = False
    raw: bytearray = field(default_factory=bytearray)
    errors: list[str] = field(default_factory=list)
    # Ordinals (1-based) of the PONGs answering the runner's closing PINGs.  Their
    # position relative to messages from other connections is a race, so normalise()
    # drops them and shows one "PONG" at the end when both arrived.
    final_pongs: set[int] = field(default_factory=set)

    def info(self) -> dict[str, Any] | None:
        for frame in self.frames:
            if frame.op == "INFO":
                return dict(json.loads(frame.line.partition(b" ")[2]))
        return None

    def ops(self) -> list[str]:
        return [f.op for f in self.frames]

    def lines(self, *, port: int | None = None, strict_status: bool = True) -> list[str]:
        return normalise(self, port=port, strict_status=strict_status)


@dataclass
class SessionResult:
    port: int
    conns: dict[str, ConnResult]

    @property
    def version(self) -> str | None:
        for conn in self.conns.values():
            info = conn.info()
            if info is not None:
                return str(info.get("version"))
        return None

    def lines(self, *, strict_status: bool = True) -> dict[str, list[str]]:
        return {
            name: conn.lines(port=self.port, strict_status=strict_status)
            for name, conn in self.conns.items()
        }


class PingCounter:
    """Counts the PINGs in a client->server byte stream (PUB/HPUB payloads skipped).

    ``reliable`` turns false once the stream stops parsing (a deliberately malformed
    session); the count is then a lower bound.
    """

    def __init__(self) -> None:
        self.pings = 0
        self.reliable = True
        self._buf = bytearray()
        self._skip = 0  # payload bytes (+ CRLF) still to skip

    def feed(self, data: bytes) -> None:
        if not self.reliable:
            return
        self._buf += data
        while True:
            if self._skip:
                if len(self._buf) < self._skip:
                    return
                if self._buf[self._skip - 2 : self._skip] != b"\r\n":
                    self.reliable = False
                    return
                del self._buf[: self._skip]
                self._skip = 0
            end = self._buf.find(b"\r\n")
            if end < 0:
                return
            parts = bytes(self._buf[:end]).split()
            del self._buf[: end + 2]
            op = parts[0].upper() if parts else b""
            if op == b"PING":
                self.pings += 1
            elif op in (b"PUB", b"HPUB"):
                try:
                    self._skip = int(parts[-1]) + 2
                except ValueError:
                    self.reliable = False
                    return
                if self._skip < 2:
                    self.reliable = False
                    return


class _Conn:
    def __init__(self, name: str, client: RawClient) -> None:
        self.name = name
        self.client = client
        self.result = ConnResult(name)
        self.changed = trio.Event()
        self.sent = PingCounter()

    def count(self, op: str) -> int:
        return sum(1 for f in self.result.frames if f.op == op)

    def greeted(self) -> bool:
        return bool(self.result.frames) or self.result.closed

    def is_closed(self) -> bool:
        return self.result.closed

    async def reader(self) -> None:
        client = self.client
        while True:
            before = len(client.buf)
            more = await client.receive_more()
            self.result.raw += client.buf[before:]
            try:
                while True:
                    got = parse_frame(client.buf)
                    if got is None:
                        break
                    frame, used = got
                    del client.buf[:used]
                    self.result.frames.append(frame)
            except ProtocolError as exc:
                self.result.errors.append(str(exc))
                self.result.frames.append(Frame(b"<unparseable> " + bytes(client.buf[:200])))
                client.buf.clear()
            if not more:
                if client.buf:
                    self.result.frames.append(Frame(b"<partial> " + bytes(client.buf[:200])))
                    client.buf.clear()
                self.result.closed = True
            self._wake()
            if not more:
                return

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, cond: Callable[[], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not cond():
                await self.changed.wait()
            return True
        return False

    async def send(self, data: bytes) -> bool:
        if self.result.closed:
            return False
        self.sent.feed(data)
        try:
            await self.client.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        except TimeoutError:
            self.result.errors.append("send timed out")
            return False
        return True


async def run_session(
    port: int, steps: Iterable[Step], *, timeout: float = IO_TIMEOUT
) -> SessionResult:
    """Play ``steps`` against the server on ``port`` and collect what it sends.

    Connections open on first use (waiting for their INFO).  At the end every open
    connection gets two rounds of ``PING`` (each waiting for its ``PONG``): after the
    first round every connection's operations were processed, after the second every
    message those operations produced was delivered.  A connection the server closed
    ends with ``<closed>``; one that neither answered nor closed ends with ``<timeout>``.
    """
    conns: dict[str, _Conn] = {}
    async with trio.open_nursery() as nursery:

        async def get(name: str) -> _Conn:
            conn = conns.get(name)
            if conn is None:
                client = await RawClient.connect(port, timeout=timeout)
                conn = conns[name] = _Conn(name, client)
                nursery.start_soon(conn.reader)
                if not await conn.wait_for(conn.greeted, timeout):
                    conn.result.timed_out = True
            return conn

        async def sync(conn: _Conn) -> int | None:
            """PING and wait for its PONG; returns the PONG's ordinal (1-based)."""
            if conn.result.closed:
                return None
            before = conn.count("PONG")
            await conn.send(b"PING\r\n")
            # PONGs answer PINGs in order: ours is the one matching our PING's ordinal.
            want = conn.sent.pings if conn.sent.reliable else before + 1
            ok = await conn.wait_for(
                lambda: conn.count("PONG") >= want or conn.result.closed, timeout
            )
            if not ok:
                conn.result.timed_out = True
            return want if conn.count("PONG") >= want else None

        for step in steps:
            if isinstance(step, bytes):
                step = Send(step)
            if isinstance(step, Send):
                await (await get(step.conn)).send(step.data)
            elif isinstance(step, Pause):
                await trio.sleep(step.seconds)
            elif isinstance(step, Open):
                await get(step.conn)
            elif isinstance(step, Sync):
                await sync(await get(step.conn))
            elif isinstance(step, Close):
                conn = await get(step.conn)
                if not conn.result.closed:
                    conn.result.client_closed = True
                    await conn.client.aclose()
                    await conn.wait_for(conn.is_closed, timeout)
            elif isinstance(step, WaitClosed):
                conn = await get(step.conn)
                if not await conn.wait_for(conn.is_closed, step.timeout):
                    conn.result.timed_out = True
            else:  # pragma: no cover - a bad table entry
                raise TypeError(f"unknown step {step!r}")
        for _round in range(2):
            for conn in conns.values():
                if not conn.result.timed_out:
                    ordinal = await sync(conn)
                    if ordinal is not None:
                        conn.result.final_pongs.add(ordinal)
        nursery.cancel_scope.cancel()  # stop the readers before closing our side
    for conn in conns.values():
        await conn.client.aclose()
    return SessionResult(port, {name: conn.result for name, conn in conns.items()})


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


def normalise_info(info: dict[str, Any], port: int | None = None) -> dict[str, Any]:
    """Replace per-server/per-connection values by placeholders (keys are kept)."""
    out: dict[str, Any] = {}
    sid = info.get("server_id")
    for key, value in info.items():
        if key in _INFO_IGNORED:
            continue
        if key == "server_id":
            ok = isinstance(value, str) and _NKEY_ID.fullmatch(value) is not None
            out[key] = "<nkey-id>" if ok else value
        elif key == "server_name":
            out[key] = "<server_id>" if value == sid else "<name>"
        elif key in ("version", "go"):
            out[key] = "<str>" if isinstance(value, str) and value else value
        elif key == "client_id":
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            out[key] = "<uint>" if ok else value
        elif key == "nonce":
            out[key] = "<nonce>" if isinstance(value, str) and len(value) >= 8 else value
        elif key == "port":
            out[key] = "<port>" if port is None or value == port else value
        else:
            out[key] = value
    return out


_STATUS = re.compile(rb"NATS/1\.0 \d{3}")


def _is_status_hmsg(frame: Frame) -> bool:
    return frame.op == "HMSG" and frame.payload is not None and bool(_STATUS.match(frame.payload))


def _message_key(frame: Frame) -> tuple[bytes, ...]:
    """What identifies one published message among its copies (all but the sid)."""
    args = frame.args
    subject = args[0] if args else b""
    rest = args[2:-2] if frame.op == "HMSG" else args[2:-1]  # reply subject, if any
    return (frame.op.encode(), subject, *rest, frame.payload or b"")


def _sid(frame: Frame) -> bytes:
    args = frame.args
    return args[1] if len(args) > 1 else b""


def _show_payload(payload: bytes) -> str:
    if len(payload) <= 256:
        return repr(payload)
    digest = hashlib.sha256(payload).hexdigest()[:16]
    return f"<{len(payload)} bytes sha256:{digest} {payload[:16]!r}...>"


def normalise(
    conn: ConnResult, *, port: int | None = None, strict_status: bool = True
) -> list[str]:
    """Protocol lines for comparison.

    * INFO -> ``INFO <json>`` with volatile values replaced (see :func:`normalise_info`);
      a 2.14-style post-CONNECT INFO (``connect_info``) is dropped (optional).
    * server-initiated ``PING`` lines are dropped (timer-driven).
    * MSG/HMSG control lines with whitespace runs collapsed; the payload follows as a
      separate ``repr``.  Copies of one message delivered to several subscriptions of
      the connection (adjacent, differing only in sid) are sorted by sid.
    * with ``strict_status=False`` a status HMSG (``NATS/1.0 503`` ...) keeps only its
      status line, not sizes or further headers (they differ between server versions).
    * the PONGs answering the runner's closing PINGs become one ``PONG`` at the end;
      ``<closed>`` / ``<timeout>`` end markers.
    """
    frames = list(conn.frames)
    # Sort runs of adjacent copies of the same message by sid.
    i = 0
    while i < len(frames):
        if frames[i].op in ("MSG", "HMSG"):
            j = i + 1
            key = _message_key(frames[i])
            while (
                j < len(frames) and frames[j].op == frames[i].op and _message_key(frames[j]) == key
            ):
                j += 1
            frames[i:j] = sorted(frames[i:j], key=_sid)
            i = j
        else:
            i += 1
    out: list[str] = []
    pongs = 0
    for frame in frames:
        op = frame.op
        if op == "PING":
            continue
        if op == "PONG":
            pongs += 1
            if pongs in conn.final_pongs:
                continue
        if op == "INFO":
            try:
                info = json.loads(frame.line.partition(b" ")[2])
            except ValueError:
                out.append(frame.text())
                continue
            if isinstance(info, dict) and info.get("connect_info"):
                continue
            out.append("INFO " + json.dumps(normalise_info(info, port), sort_keys=True))
        elif op in ("MSG", "HMSG"):
            parts = frame.line.decode("utf-8", "replace").split()
            payload = frame.payload or b""
            if not strict_status and _is_status_hmsg(frame):
                parts[-2:] = ["<hdr>", "<total>"]
                out.append(" ".join(parts))
                out.append("status " + payload.split(b"\r\n", 1)[0].decode("ascii", "replace"))
            else:
                out.append(" ".join(parts))
                out.append(_show_payload(payload))
        else:
            out.append(frame.text())
    if len(conn.final_pongs) >= 2:
        out.append("PONG")  # alive at the end of the session
    if conn.client_closed:
        out.append(CLIENT_CLOSED)
    elif conn.closed:
        out.append(CLOSED)
    elif conn.timed_out:
        out.append(TIMEOUT)
    return out


def is_subsequence(needles: Sequence[str], haystack: Sequence[str]) -> bool:
    """True if ``needles`` appear in ``haystack`` in this order (not necessarily adjacent)."""
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)
