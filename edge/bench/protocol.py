"""The bits of the NATS client protocol the load generator speaks, on raw sockets."""

from __future__ import annotations

import socket
import time

from .common import (
    CONNECT_LINE,
    HOST,
    PAYLOAD_BYTE,
    PING,
    PONG,
    SOCKET_TIMEOUT,
    BenchError,
)


def pub_frame(subject: bytes, size: int, reply: bytes | None = None) -> bytes:
    head = b"PUB " + subject + (b" " + reply if reply else b"") + b" %d\r\n" % size
    return head + PAYLOAD_BYTE * size + b"\r\n"


def msg_frame(subject: bytes, sid: bytes, size: int, payload: bytes | None = None) -> bytes:
    body = PAYLOAD_BYTE * size if payload is None else payload
    return b"MSG " + subject + b" " + sid + b" %d\r\n" % len(body) + body + b"\r\n"


def connect(port: int, timeout: float = SOCKET_TIMEOUT) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_line(sock: socket.socket, buf: bytearray, deadline: float) -> bytes:
    """Return the next CRLF-terminated line (without CRLF), reading as needed."""
    while True:
        eol = buf.find(b"\r\n")
        if eol >= 0:
            line = bytes(buf[:eol])
            del buf[: eol + 2]
            return line
        if time.monotonic() > deadline:
            raise BenchError("timed out waiting for a line from the server")
        data = sock.recv(65536)
        if not data:
            raise BenchError("server closed the connection")
        buf += data


def await_pong(sock: socket.socket, buf: bytearray, deadline: float) -> None:
    """Read until PONG, skipping INFO/+OK and answering server PINGs."""
    while True:
        line = recv_line(sock, buf, deadline)
        op = line.split(b" ", 1)[0].upper()
        if op == b"PONG":
            return
        if op == b"PING":
            sock.sendall(PONG)
        elif op.startswith(b"-ERR"):
            raise BenchError(f"server error: {line.decode(errors='replace')}")
        elif op not in (b"INFO", b"+OK"):
            raise BenchError(f"unexpected line from server: {line[:80]!r}")


def handshake(port: int, extra: bytes = b"") -> tuple[socket.socket, bytearray]:
    """Connect, send CONNECT (+ ``extra``, e.g. SUB) and PING, wait for the PONG."""
    sock = connect(port)
    buf = bytearray()
    deadline = time.monotonic() + SOCKET_TIMEOUT
    try:
        sock.sendall(CONNECT_LINE + extra + PING)
        await_pong(sock, buf, deadline)
    except BaseException:
        sock.close()
        raise
    return sock, buf


def consume_replies(sock: socket.socket, buf: bytearray, frame: bytes) -> int:
    """Consume complete reply MSG frames from ``buf``; answer PINGs; return the count.

    ``frame`` is the exact expected frame; anything else that is a well-formed MSG is
    still counted (tolerant of spacing differences), anything else is an error.
    """
    count = 0
    pos = 0
    n = len(buf)
    flen = len(frame)
    while pos < n:
        if buf.startswith(frame, pos):
            count += 1
            pos += flen
            continue
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            break
        line = bytes(buf[pos:eol])
        op = line.split(None, 1)[0].upper() if line.strip() else b""
        if op == b"MSG":
            parts = line.split()
            try:
                size = int(parts[-1])
            except (ValueError, IndexError):
                raise BenchError(f"bad MSG line from server: {line[:80]!r}") from None
            end = eol + 2 + size + 2
            if end > n:
                break
            count += 1
            pos = end
        elif op == b"PING":
            sock.sendall(PONG)
            pos = eol + 2
        elif op in (b"PONG", b"+OK", b"INFO"):
            pos = eol + 2
        else:
            raise BenchError(f"unexpected from server: {line[:80]!r}")
    del buf[:pos]
    return count


def wait_msg(sock: socket.socket, buf: bytearray, frame: bytes, until: float) -> bool:
    """Read until a MSG arrives (True) or ``until`` passes (False); answers PINGs."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise BenchError("server closed the probe subscriber connection")
        buf += data
        if consume_replies(sock, buf, frame):
            return True
