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

from operator import itemgetter
from typing import Any

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
    Run,
    Sub,
    Unsub,
)

_new_pub = _new_run = tuple.__new__  # skips NamedTuple's Python-level __new__
_SEPARATORS = b" \t"


def _split_args(arg: bytes) -> list[bytes]:
    """Split on runs of separators, ignoring leading and trailing ones.

    ``bytes.split()`` does this in one C call. It also treats vertical tab and
    form feed as separators where nats-server would keep them inside a token;
    subjects holding those control bytes are the only inputs read differently.
    """
    return arg.split()


def _size(raw: bytes) -> int:
    """A payload size as nats-server reads it: at most 9 decimal digits."""
    if not raw.isdigit() or len(raw) > 9:
        raise errors.BAD_ARGUMENTS
    return int(raw)


# Parsed PUB argument lines without a reply subject, shared by all connections:
# a device publishes the same "subject size" line over and over, and a dict hit
# is far cheaper than splitting and converting it again. Lines with a reply
# subject are usually unique (request inboxes) and are not kept. Bounded.
_PUB_LINES: dict[bytes, tuple[bytes, bytes, int, int]] = {}
_PUB_LINES_MAX = 8192
# The subset of those lines in canonical form ("<subject> <size>\r", the size
# without leading zeros), with their size: only these can start or continue a run
# (see ClientParser._run). Filled and cleared with _PUB_LINES.
_RUN_LINES: dict[bytes, int] = {}


def _pub_line(line: bytes) -> tuple[bytes, bytes, int, int]:
    """Subject, reply and size from the arguments of a PUB line, and where the
    next frame would have the space after the subject if it continued a run
    (0: this line cannot start one: a reply, or not in canonical form)."""
    args = line.split()
    if len(args) == 2:
        subject, raw_size = args
        reply = b""
    elif len(args) == 3:
        subject, reply, raw_size = args
    else:
        raise errors.BAD_ARGUMENTS
    if not raw_size.isdigit() or len(raw_size) > 9:
        raise errors.BAD_ARGUMENTS
    size = int(raw_size)
    canonical = not reply and line == b"%b %d\r" % (subject, size)
    # frame end + CRLF + "PUB " + subject: the space that must follow it
    parsed = (subject, reply, size, len(subject) + 6 if canonical else 0)
    if not reply:
        if len(_PUB_LINES) >= _PUB_LINES_MAX:
            _PUB_LINES.clear()
            _RUN_LINES.clear()
        _PUB_LINES[line] = parsed
        if canonical:
            _RUN_LINES[line] = size
    return parsed


def _new_run_line(args: bytes, digits_at: int) -> int:
    """The size in PUB arguments not seen before, if canonical for a run
    (``<subject> <size>\\r``, the subject known good); else -1."""
    digits = args[digits_at:-1]
    if (
        args[-1:] != b"\r"
        or not digits.isdigit()
        or len(digits) > 9
        or (digits[0] == 48 and len(digits) > 1)
    ):
        return -1
    _pub_line(args)  # cannot fail now; caches the line for the next time
    return int(digits)


def run_payload(tail: bytes) -> bytes:
    """The payload in a run's tail (``<size>\\r\\n<payload>\\r\\n``)."""
    return tail[tail.index(b"\n") + 1 : -2]


def run_payloads(tails: list[bytes]) -> list[bytes]:
    """The payloads of a run's tails. Tails of one length have one size line
    (the size and its digits grow together), so one slice serves them all,
    taken in C."""
    cut = slice(tails[0].index(b"\n") + 1, -2)
    if len(set(map(len, tails))) == 1:
        return list(map(itemgetter(cut), tails))
    return [run_payload(tail) for tail in tails]


class FrameParser:
    """Buffering shared by the client and leafnode parsers.

    Subclasses parse control lines in ``_parse`` and turn a completed message
    into an event in ``_emit``; this class keeps what a read left unfinished.
    """

    __slots__ = ("_buf", "_failed", "_need", "_pending", "max_control_line", "max_payload")

    def __init__(self, max_control_line: int = 4096, max_payload: int = 1024 * 1024) -> None:
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        self._buf = bytearray()
        # A message whose payload has not fully arrived: (fields for _emit, size).
        self._pending: tuple[tuple[Any, ...], int] | None = None
        self._need = 0
        self._failed = False

    @property
    def failed(self) -> bool:
        return self._failed

    def feed(self, data: bytes) -> list[Any]:
        """Parse ``data`` and return the complete events in it, in order."""
        if self._failed:
            return []
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data = bytes(self._buf)
            self._buf = bytearray()
        events: list[Any] = []
        try:
            self._parse(data, events)
        except ProtocolError as exc:
            self._failed = True
            self._buf = bytearray()
            # Drop the traceback: it would keep this read's buffer alive.
            events.append(ParseFailed(exc.with_traceback(None)))
        return events

    def _parse(self, data: bytes, events: list[Any]) -> None:
        raise NotImplementedError

    def _emit(self, fields: tuple[Any, ...], payload: bytes) -> Any:
        raise NotImplementedError

    def _resume(self, data: bytes, events: list[Any]) -> int:
        """Finish the message left pending by the previous read; -1 = still waiting."""
        if self._pending is None:
            return 0
        fields, size = self._pending
        self._pending = None
        return self._take_payload(data, 0, size, fields, events)

    def _take_payload(
        self, data: bytes, start: int, size: int, fields: tuple[Any, ...], events: list[Any]
    ) -> int:
        """Emit the message if its payload is complete; else keep it. -1 = wait."""
        stop = start + size
        n = len(data)
        if stop + 2 > n:
            # Refuse a wrong byte after the payload as soon as it arrives.
            if stop < n and data[stop] != 13:
                raise errors.UNKNOWN_OP
            self._pending = (fields, size)
            self._buf = bytearray(data[start:])
            self._need = size + 1 if stop >= n else size + 2
            return -1
        if data[stop] != 13 or data[stop + 1] != 10:
            raise errors.UNKNOWN_OP
        events.append(self._emit(fields, data[start:stop]))
        return stop + 2

    def _check_line_length(self, data: bytes, pos: int, end: int) -> None:
        """Enforce ``max_control_line`` on a long line, as nats-server counts it.

        nats-server counts the arguments only (after the operation name and its
        separators); called only for lines longer than the limit, off the hot path.
        """
        i = pos
        while i < end and data[i] not in b" \t":
            i += 1
        if i - pos > 16:
            raise errors.MAX_CONTROL_LINE  # no operation name is this long
        while i < end and data[i] in b" \t":
            i += 1
        if end > pos and data[end - 1] == 13:
            end -= 1
        if end - i > self.max_control_line:
            raise errors.MAX_CONTROL_LINE

    def _keep_partial_line(self, data: bytes, pos: int) -> None:
        if len(data) - pos > self.max_control_line:
            self._check_line_length(data, pos, len(data))
        self._buf = bytearray(data[pos:])
        self._need = 0


class ClientParser(FrameParser):
    """Parser for what a client sends: CONNECT, PUB, HPUB, SUB, UNSUB, PING, PONG.

    With ``runs`` on, consecutive plain PUBs on the same subject (no reply, the
    control line in canonical form: what a client publishing a stream sends)
    come as one ``Run`` event instead of one ``Pub`` each (see ``_run``).
    """

    __slots__ = ("runs",)

    def __init__(self, max_control_line: int = 4096, max_payload: int = 1024 * 1024) -> None:
        super().__init__(max_control_line, max_payload)
        self.runs = False

    def _emit(self, fields: tuple[Any, ...], payload: bytes) -> Pub:
        subject, reply, hdr = fields
        return _new_pub(Pub, (subject, reply, hdr, payload))

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
        pub_lines_get = _PUB_LINES.get
        n = len(data)
        runs = self.runs
        pos = self._resume(data, events)
        if pos < 0:
            return
        while pos < n:
            nl = find(b"\n", pos)
            if nl < 0:
                self._keep_partial_line(data, pos)
                return
            if nl - pos > mcl:
                self._check_line_length(data, pos, nl)
            if startswith(b"PUB ", pos):
                line = data[pos + 4 : nl]
                known = pub_lines_get(line)
                if known is None:
                    known = _pub_line(line)
                subject, reply, size, run_at = known
                if size > max_payload:
                    raise errors.MAX_PAYLOAD
                start = nl + 1
                stop = start + size
                if stop + 2 <= n:
                    if data[stop] != 13 or data[stop + 1] != 10:  # no slice: no allocation
                        raise errors.UNKNOWN_OP
                    # The next frame on the same subject starts a run. The first
                    # tests (a space where the subject would end) cost no call:
                    # they are what a stream mixing subjects pays per message.
                    if (
                        run_at
                        and runs
                        and stop + run_at < n
                        and data[stop + run_at] == 32
                        and startswith(subject, stop + 6)
                        and startswith(b"PUB ", stop + 2)
                    ):
                        pos = self._run(data, pos, nl, size, subject, events)
                        continue
                    append(new(Pub, (subject, reply, 0, data[start:stop])))
                    pos = stop + 2
                    continue
                self._take_payload(data, start, size, (subject, reply, 0), events)
                return
            end = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
            pos = self._control(data, pos, end, nl, events)
            if pos < 0:
                return

    def _run(
        self, data: bytes, pos: int, nl: int, size: int, subject: bytes, events: list[Event]
    ) -> int:
        """Emit the run of plain PUBs on ``subject`` starting at ``pos`` (its first
        frame checked by the caller) as a ``Run``; return where the run ends.

        A frame belongs to the run if its control line is ``PUB <subject>
        <size>\\r\\n`` in canonical form, and its tail (what follows the subject
        and its space: size line, payload, CRLF) is then exactly what a MSG frame
        carries after its sid. A frame with the previous frame's line costs a
        prefix test, a bounds test and a slice. The first frame that is anything
        else (cut off, malformed, another operation) ends the run and is parsed
        again by the general path.
        """
        startswith = data.startswith
        find = data.find
        run_lines_get = _RUN_LINES.get
        mcl = self.max_control_line + 1
        max_payload = self.max_payload
        n = len(data)
        skip = 5 + len(subject)  # b"PUB " + subject + b" "
        nl_first, size_first = nl, size
        prefix = data[pos : pos + skip]
        line = data[pos : nl + 1]
        step = nl + 1 - pos + size + 2
        end = pos + step
        tails = [data[pos + skip : end]]
        add = tails.append
        pos = end
        while pos < n:
            if startswith(line, pos):
                end = pos + step
                if end > n or data[end - 2] != 13 or data[end - 1] != 10:
                    break
            elif startswith(prefix, pos):
                nl = find(b"\n", pos, pos + mcl + 5)
                if nl < 0:
                    break
                args = data[pos + 4 : nl]
                size = run_lines_get(args, -1)
                if size < 0:
                    size = _new_run_line(args, skip - 4)
                if size < 0 or size > max_payload:
                    break
                line = data[pos : nl + 1]
                step = nl + 1 - pos + size + 2
                end = pos + step
                if end > n or data[end - 2] != 13 or data[end - 1] != 10:
                    break
            else:
                break
            add(data[pos + skip : end])
            pos = end
        if len(tails) == 1:  # the next frame was not one of the run after all
            start = nl_first + 1
            events.append(_new_pub(Pub, (subject, b"", 0, data[start : start + size_first])))
        else:
            events.append(_new_run(Run, (subject, tails)))
        return pos

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
        return self._take_payload(data, nl + 1, size, (subject, reply, 0), events)

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
        return self._take_payload(data, nl + 1, total, (subject, reply, hdr), events)

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
            max_msgs = int(raw) if raw.isdigit() and len(raw) <= 9 else 0
            return Unsub(args[0], max_msgs if max_msgs > 0 else None)
        raise errors.BAD_ARGUMENTS
