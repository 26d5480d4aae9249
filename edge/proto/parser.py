"""The client protocol parser: bytes in, events out.

Theory of operation
-------------------
``feed(data)`` takes whatever one socket read returned and gives back every
complete event in it, in order, as a list: a server parses a whole read and then
routes the batch, which is what makes Python competitive here. Between calls the
parser keeps only what it could not finish: a partial control line, or the
control line of a PUB/HPUB and the part of its payload received so far. It is a
two-state machine (reading a control line / reading a payload of known size);
control lines end at ``\\n`` with an optional ``\\r`` before it, as nats-server
accepts; a payload must be followed by exactly ``\\r\\n``.

Argument separators are runs of spaces or tabs, trailing ones included. Operation
names are case-insensitive. Where nats-server's character-level parser is lax
(``PINGX`` is a PING, ``+OK`` from a client is ignored) this parser is equally lax;
where it closes with or without an ``-ERR``, this parser emits ``ParseFailed``
carrying the same error, and then stops: every later ``feed`` returns nothing.

``max_control_line`` is enforced on every control line, complete or not.
(nats-server checks it only on lines split across reads; being exact here costs
nothing and bounds the memory a hostile client can make us hold.)
"""

from __future__ import annotations

from edge.proto import errors
from edge.proto.errors import ProtocolError
from edge.proto.events import (
    PING,
    PONG,
    Connect,
    Event,
    Info,
    ParseFailed,
    Pub,
    Sub,
    Unsub,
)

_new_pub = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path
_SEPARATORS = b" \t"


def _split_args(arg: bytes) -> list[bytes]:
    """Split on runs of separators, ignoring leading and trailing ones.

    ``bytes.split()`` does this in one C call. It also treats vertical tab and
    form feed as separators where nats-server would keep them inside a token;
    subjects holding those control bytes are the only inputs read differently.
    """
    return arg.split()


def _size(raw: bytes) -> int:
    """A payload size as nats-server reads it: decimal digits only."""
    if not raw.isdigit():
        raise errors.BAD_ARGUMENTS
    return int(raw)


class ClientParser:
    __slots__ = ("_buf", "_failed", "_need", "_pending", "max_control_line", "max_payload")

    def __init__(self, max_control_line: int = 4096, max_payload: int = 1024 * 1024) -> None:
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        self._buf = bytearray()
        # A PUB/HPUB whose payload has not fully arrived: (subject, reply, hdr, size).
        self._pending: tuple[bytes, bytes, int, int] | None = None
        self._need = 0
        self._failed = False

    @property
    def failed(self) -> bool:
        return self._failed

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` and return the complete events in it, in order."""
        if self._failed:
            return []
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data = bytes(self._buf)
            self._buf = bytearray()
        events: list[Event] = []
        try:
            self._parse(data, events)
        except ProtocolError as exc:
            self._failed = True
            self._buf = bytearray()
            events.append(ParseFailed(exc))
        return events

    def _parse(self, data: bytes, events: list[Event]) -> None:
        # The hot loop: a plain upper-case PUB whose payload is in this buffer is
        # handled inline with local names only; everything else goes to
        # _control(). Each line here costs measurable throughput.
        append = events.append
        find = data.find
        startswith = data.startswith
        mcl = self.max_control_line + 1  # the limit counts the line without its \r
        max_payload = self.max_payload
        new = _new_pub
        n = len(data)
        pos = 0
        if self._pending is not None:
            subject, reply, hdr, size = self._pending
            self._pending = None
            pos = self._take_payload(data, 0, subject, reply, hdr, size, events)
            if pos < 0:
                return
        while pos < n:
            nl = find(b"\n", pos)
            if nl < 0:
                if n - pos > mcl:
                    raise errors.MAX_CONTROL_LINE
                self._buf = bytearray(data[pos:])
                self._need = 0
                return
            if nl - pos > mcl:
                raise errors.MAX_CONTROL_LINE
            if startswith(b"PUB ", pos):
                args = data[pos + 4 : nl].split()
                nargs = len(args)
                if nargs == 2:
                    subject, raw_size = args
                    reply = b""
                elif nargs == 3:
                    subject, reply, raw_size = args
                else:
                    raise errors.BAD_ARGUMENTS
                if not raw_size.isdigit():
                    raise errors.BAD_ARGUMENTS
                size = int(raw_size)
                if size > max_payload:
                    raise errors.MAX_PAYLOAD
                start = nl + 1
                stop = start + size
                if stop + 2 <= n:
                    if data[stop : stop + 2] != b"\r\n":
                        raise errors.UNKNOWN_OP
                    append(new(Pub, (subject, reply, 0, data[start:stop])))
                    pos = stop + 2
                    continue
                self._take_payload(data, start, subject, reply, 0, size, events)
                return
            end = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
            pos = self._control(data, pos, end, nl, events)
            if pos < 0:
                return

    def _take_payload(
        self,
        data: bytes,
        start: int,
        subject: bytes,
        reply: bytes,
        hdr: int,
        size: int,
        events: list[Event],
    ) -> int:
        """Emit the message if its payload is complete; else keep it. -1 = wait."""
        stop = start + size
        if stop + 2 > len(data):
            self._pending = (subject, reply, hdr, size)
            self._buf = bytearray(data[start:])
            self._need = size + 2
            return -1
        if data[stop] != 13 or data[stop + 1] != 10:
            raise errors.UNKNOWN_OP
        events.append(_new_pub(Pub, (subject, reply, hdr, data[start:stop])))
        return stop + 2

    def _control(self, data: bytes, pos: int, end: int, nl: int, events: list[Event]) -> int:
        """Every operation but the plain upper-case ``PUB`` fast path."""
        line = data[pos:end]
        head = line[:7].upper()
        c = head[:1]
        if c == b"P":
            if head.startswith(b"PI"):
                if head.startswith(b"PING"):
                    events.append(PING)
                    return nl + 1
            elif head.startswith(b"PO"):
                if head.startswith(b"PONG"):
                    events.append(PONG)
                    return nl + 1
            elif head.startswith(b"PUB") and line[3:4] in (b" ", b"\t"):
                return self._pub(data, line[4:], nl, events)
        elif c == b"H":
            if head.startswith(b"HPUB") and line[4:5] in (b" ", b"\t"):
                return self._hpub(data, line[5:], nl, events)
        elif c == b"S":
            if head.startswith(b"SUB") and line[3:4] in (b" ", b"\t"):
                events.append(self._sub(line[4:]))
                return nl + 1
        elif c == b"U":
            if head.startswith(b"UNSUB") and line[5:6] in (b" ", b"\t"):
                events.append(self._unsub(line[6:]))
                return nl + 1
        elif c == b"C":
            if head.startswith(b"CONNECT"):
                events.append(Connect(line[7:].lstrip(_SEPARATORS)))
                return nl + 1
        elif c == b"I":
            if head.startswith(b"INFO"):
                events.append(Info(line[4:].strip(_SEPARATORS)))
                return nl + 1
        elif c == b"+":
            if head.startswith(b"+OK"):
                return nl + 1
        elif c == b"-" and head.startswith(b"-ERR") and line[4:5] in (b" ", b"\t"):
            # A client reporting an error: nats-server closes without answering.
            raise errors.PEER_ERROR
        raise errors.UNKNOWN_OP

    def _pub(self, data: bytes, arg: bytes, nl: int, events: list[Event]) -> int:
        args = _split_args(arg)
        if len(args) == 2:
            subject, reply, size = args[0], b"", _size(args[1])
        elif len(args) == 3:
            subject, reply, size = args[0], args[1], _size(args[2])
        else:
            raise errors.BAD_ARGUMENTS
        if size > self.max_payload:
            raise errors.MAX_PAYLOAD
        return self._take_payload(data, nl + 1, subject, reply, 0, size, events)

    def _hpub(self, data: bytes, arg: bytes, nl: int, events: list[Event]) -> int:
        args = _split_args(arg)
        if len(args) == 3:
            subject, reply = args[0], b""
        elif len(args) == 4:
            subject, reply = args[0], args[1]
        else:
            raise errors.BAD_ARGUMENTS
        hdr, total = _size(args[-2]), _size(args[-1])
        if hdr > total:
            raise errors.BAD_ARGUMENTS
        if total > self.max_payload:
            raise errors.MAX_PAYLOAD
        return self._take_payload(data, nl + 1, subject, reply, hdr, total, events)

    @staticmethod
    def _sub(arg: bytes) -> Sub:
        args = _split_args(arg)
        if len(args) == 2:
            return Sub(args[0], None, args[1])
        if len(args) == 3:
            return Sub(args[0], args[1], args[2])
        raise errors.BAD_ARGUMENTS

    @staticmethod
    def _unsub(arg: bytes) -> Unsub:
        args = _split_args(arg)
        if len(args) == 1:
            return Unsub(args[0], None)
        if len(args) == 2:
            # nats-server reads a malformed or non-positive maximum as "remove now".
            raw = args[1]
            max_msgs = int(raw) if raw.isdigit() else 0
            return Unsub(args[0], max_msgs if max_msgs > 0 else None)
        raise errors.BAD_ARGUMENTS
