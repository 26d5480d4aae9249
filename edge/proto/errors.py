"""Protocol errors: each carries the exact text nats-server sends and whether it closes.

A peer's mistake becomes one of these; our own bugs are ordinary exceptions and
propagate. ``err`` is ``None`` where nats-server closes the connection without
writing any ``-ERR`` (malformed CONNECT JSON, bad argument counts).
"""

from __future__ import annotations

from enum import Enum


class CloseReason(Enum):
    """Why a connection ended; shown in logs and, later, in /connz."""

    CLIENT_CLOSED = "Client Closed"
    PARSE_ERROR = "Parse Error"
    PROTOCOL_VIOLATION = "Protocol Violation"
    MAX_PAYLOAD = "Maximum Message Payload Exceeded"
    MAX_CONTROL_LINE = "Maximum Control Line Exceeded"
    MAX_CONNECTIONS = "Maximum Connections Exceeded"
    AUTH_VIOLATION = "Authentication Failure"
    AUTH_TIMEOUT = "Authentication Timeout"
    STALE = "Stale Connection"
    SLOW_CONSUMER_PENDING = "Slow Consumer (Pending Bytes)"
    SLOW_CONSUMER_DEADLINE = "Slow Consumer (Write Deadline)"
    WRITE_ERROR = "Write Error"
    READ_ERROR = "Read Error"
    SERVER_SHUTDOWN = "Server Shutdown"
    LAME_DUCK = "Lame Duck Mode"
    INTERNAL_ERROR = "Internal Error"


class ProtocolError(Exception):
    """A violation by the peer. ``err`` is the text inside ``-ERR '...'``.

    Not a frozen dataclass: Python must be able to set ``__traceback__`` on an
    exception as it propagates. Treat the attributes as read-only.
    """

    def __init__(self, err: str | None, close: bool, reason: CloseReason) -> None:
        super().__init__(err, close, reason)
        self.err = err
        self.close = close
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProtocolError):
            return NotImplemented
        return (self.err, self.close, self.reason) == (other.err, other.close, other.reason)

    def __hash__(self) -> int:
        return hash((self.err, self.close, self.reason))

    def __repr__(self) -> str:
        return f"ProtocolError(err={self.err!r}, close={self.close}, reason={self.reason})"

    def __str__(self) -> str:
        return self.err or self.reason.value

    def wire(self) -> bytes:
        """The ``-ERR`` line to send, or ``b""`` when nats-server sends none."""
        if self.err is None:
            return b""
        return b"-ERR '" + self.err.encode() + b"'\r\n"


def _fatal(err: str | None, reason: CloseReason) -> ProtocolError:
    return ProtocolError(err, True, reason)


UNKNOWN_OP = _fatal("Unknown Protocol Operation", CloseReason.PARSE_ERROR)
MAX_PAYLOAD = _fatal("Maximum Payload Violation", CloseReason.MAX_PAYLOAD)
MAX_CONTROL_LINE = _fatal("maximum control line exceeded", CloseReason.MAX_CONTROL_LINE)
MAX_CONNECTIONS = _fatal("maximum connections exceeded", CloseReason.MAX_CONNECTIONS)
AUTH_VIOLATION = _fatal("Authorization Violation", CloseReason.AUTH_VIOLATION)
AUTH_TIMEOUT = _fatal("Authentication Timeout", CloseReason.AUTH_TIMEOUT)
STALE_CONNECTION = _fatal("Stale Connection", CloseReason.STALE)
INVALID_PROTOCOL = _fatal("invalid client protocol", CloseReason.PROTOCOL_VIOLATION)
NO_RESPONDERS_NEEDS_HEADERS = _fatal(
    "no responders requires headers support", CloseReason.PROTOCOL_VIOLATION
)
# Closed with no -ERR at all, as nats-server does.
BAD_ARGUMENTS = _fatal(None, CloseReason.PARSE_ERROR)
BAD_CONNECT = _fatal(None, CloseReason.PARSE_ERROR)
HEADERS_NOT_SUPPORTED = _fatal(None, CloseReason.PROTOCOL_VIOLATION)
PEER_ERROR = _fatal(None, CloseReason.CLIENT_CLOSED)

# Non-fatal: the connection stays open.
INVALID_SUBJECT = ProtocolError("Invalid Subject", False, CloseReason.PROTOCOL_VIOLATION)
INVALID_PUBLISH_SUBJECT = ProtocolError(
    "Invalid Publish Subject", False, CloseReason.PROTOCOL_VIOLATION
)
MAX_SUBSCRIPTIONS = ProtocolError(
    "maximum subscriptions exceeded", False, CloseReason.PROTOCOL_VIOLATION
)
