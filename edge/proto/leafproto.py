"""The leafnode wire protocol, leaf side: parsing what a hub sends, encoding what we send.

Grammar (see shared/spec/leafnode.md §2-3)::

    LS+ <subject>[ <queue> <weight>]      LS- <subject>[ <queue>]
    LMSG <subject> [<reply>] <size>
    LMSG <subject> + <reply> <queue>... <size>
    LMSG <subject> | <queue>... <size>
    HMSG  (same argument layout, with <hdr> <total> in place of <size>)
    INFO {json}   PING   PONG   +OK   -ERR '<text>'

Queue lists name the queue groups on the receiving side that should get the
message (one member each); plain subscribers always get it. ``max_control_line``
does not apply to leaf links in nats-server; a generous bound still applies here
so a broken peer cannot make us buffer without limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from edge.proto import errors
from edge.proto.events import PING, PONG, Info
from edge.proto.parser import FrameParser

LEAF_MAX_CONTROL_LINE = 1024 * 1024
# ``LMSG <subject> <size>\r\n``, as nats-server writes it (one space, upper case).
_PLAIN_LMSG = re.compile(rb"LMSG ([^ \t\r\n]+) ([0-9]{1,9})\r\n")

_new = tuple.__new__


class LMsg(NamedTuple):
    """A message over the link (LMSG, or HMSG when ``hdr`` > 0)."""

    subject: bytes
    reply: bytes
    queues: tuple[bytes, ...]
    hdr: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LsPlus:
    subject: bytes
    queue: bytes | None
    weight: int


@dataclass(frozen=True, slots=True)
class LsMinus:
    subject: bytes
    queue: bytes | None


@dataclass(frozen=True, slots=True)
class PeerErr:
    """``-ERR '<text>'`` from the hub."""

    text: str


def _size(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 9:
        raise errors.BAD_ARGUMENTS
    return int(raw)


def _routing(args: list[bytes], nsizes: int) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """Subject, reply and queue names from LMSG/HMSG arguments before the sizes."""
    head = args[:-nsizes]
    if len(head) == 1:
        return head[0], b"", ()
    if len(head) == 2:
        return head[0], head[1], ()
    if len(head) >= 3:
        if head[1] == b"+" and len(head) >= 4:
            return head[0], head[2], tuple(head[3:])
        if head[1] == b"|":
            return head[0], b"", tuple(head[2:])
    # "Bad or Missing Reply Indicator" in nats-server: closed without -ERR.
    raise errors.BAD_ARGUMENTS


class LeafParser(FrameParser):
    """Parser for the hub's side of a leafnode connection."""

    __slots__ = ()

    def __init__(self, max_payload: int = 1024 * 1024) -> None:
        super().__init__(LEAF_MAX_CONTROL_LINE, max_payload)

    def _emit(self, fields: tuple[Any, ...], payload: bytes) -> LMsg:
        subject, reply, queues, hdr = fields
        return _new(LMsg, (subject, reply, queues, hdr, payload))

    def _parse(self, data: bytes, events: list[Any]) -> None:
        pos = self._resume(data, events)
        n = len(data)
        plain = _PLAIN_LMSG.match
        while 0 <= pos < n:
            m = plain(data, pos)
            if m is not None:
                # The commonest frame, whole in this read: an LMSG with neither
                # reply nor queues (every PubAck is one). One regex match instead
                # of the general line handling; the same event, and anything the
                # general path would refuse is left to it.
                start = m.end()
                stop = start + int(m[2])
                if (
                    stop + 2 <= n
                    and data[stop] == 13
                    and data[stop + 1] == 10
                    and stop - start <= self.max_payload
                    and start - pos <= self.max_control_line
                ):
                    events.append(_new(LMsg, (m[1], b"", (), 0, data[start:stop])))
                    pos = stop + 2
                    continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._keep_partial_line(data, pos)
                return
            if nl - pos > self.max_control_line + 1:
                self._check_line_length(data, pos, nl)
            pos = self._line(data, pos, nl, events)

    def _line(self, data: bytes, pos: int, nl: int, events: list[Any]) -> int:
        line = data[pos:nl]
        head = line[:5].upper()
        if head.startswith(b"LMSG ") or head.startswith(b"LMSG\t"):
            args = line[5:].split()
            if len(args) < 2:
                raise errors.BAD_ARGUMENTS
            size = _size(args[-1])
            self._check_size(size)
            subject, reply, queues = _routing(args, 1)
            return self._take_payload(data, nl + 1, size, (subject, reply, queues, 0), events)
        if head.startswith(b"HMSG ") or head.startswith(b"HMSG\t"):
            args = line[5:].split()
            if len(args) < 3:
                raise errors.BAD_ARGUMENTS
            hdr, total = _size(args[-2]), _size(args[-1])
            if hdr > total:
                raise errors.BAD_ARGUMENTS
            self._check_size(total)
            subject, reply, queues = _routing(args, 2)
            return self._take_payload(data, nl + 1, total, (subject, reply, queues, hdr), events)
        if head.startswith(b"LS+ ") or head.startswith(b"LS+\t"):
            events.append(self._ls_plus(line[4:].split()))
        elif head.startswith(b"LS- ") or head.startswith(b"LS-\t"):
            events.append(self._ls_minus(line[4:].split()))
        elif head.startswith(b"PING"):
            events.append(PING)
        elif head.startswith(b"PONG"):
            events.append(PONG)
        elif head.startswith(b"INFO"):
            events.append(Info(line[4:].strip()))
        elif head.startswith(b"+OK"):
            pass
        elif head.startswith(b"-ERR"):
            text = line[4:].strip().decode("utf-8", "replace")
            events.append(PeerErr(text[1:-1] if text[:1] == "'" and text[-1:] == "'" else text))
        else:
            raise errors.UNKNOWN_OP
        return nl + 1

    def _check_size(self, size: int) -> None:
        if size > self.max_payload:
            raise errors.MAX_PAYLOAD

    @staticmethod
    def _ls_plus(args: list[bytes]) -> LsPlus:
        if len(args) == 1:
            return LsPlus(args[0], None, 0)
        if len(args) == 3:
            return LsPlus(args[0], args[1], _size(args[2]))
        raise errors.BAD_ARGUMENTS

    @staticmethod
    def _ls_minus(args: list[bytes]) -> LsMinus:
        if len(args) == 1:
            return LsMinus(args[0], None)
        if len(args) == 2:
            return LsMinus(args[0], args[1])
        raise errors.BAD_ARGUMENTS


# ---- encoding ----------------------------------------------------------------


def encode_ls_plus(subject: bytes, queue: bytes | None = None, weight: int = 1) -> bytes:
    if queue is None:
        return b"LS+ " + subject + b"\r\n"
    return b"LS+ %b %b %d\r\n" % (subject, queue, weight)


def encode_ls_minus(subject: bytes, queue: bytes | None = None) -> bytes:
    if queue is None:
        return b"LS- " + subject + b"\r\n"
    return b"LS- %b %b\r\n" % (subject, queue)


def encode_lmsg(
    subject: bytes, reply: bytes, queues: tuple[bytes, ...] | list[bytes], hdr: int, data: bytes
) -> bytes:
    """One message over the link; HMSG (leaf layout, no sid) when it has headers."""
    if queues:
        route = (
            b"%b + %b %b" % (subject, reply, b" ".join(queues))
            if reply
            else b"%b | %b" % (subject, b" ".join(queues))
        )
    elif reply:
        route = subject + b" " + reply
    else:
        route = subject
    if hdr:
        return b"HMSG %b %d %d\r\n%b\r\n" % (route, hdr, len(data), data)
    return b"LMSG %b %d\r\n%b\r\n" % (route, len(data), data)
