"""Scripted sessions for the differential tests: play the same steps against
nats-server and leafgate (tests.harness servers and RawClient) and normalise
what each sent back for comparison (:meth:`ConnResult.lines`)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from tests.harness import IO_TIMEOUT, Frame, ProtocolError, RawClient, parse_frame

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
