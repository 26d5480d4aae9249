"""Events the client parser produces.

``Pub`` is the one event on the hot path (one per published message), so it is a
``NamedTuple``: immutable like a frozen dataclass, but built about twice as fast
(measured: 0.45 µs against 0.85 µs per instance), which matters at hundreds of
thousands of messages per second. The rarer events are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from edge.proto.errors import ProtocolError


class Pub(NamedTuple):
    """PUB or HPUB. ``data`` is the header block followed by the payload.

    ``hdr`` is the header block's length; 0 for a message without headers (an
    ``HPUB`` with a zero header size is a plain message, as in nats-server).
    ``reply`` is ``b""`` when there is none.
    """

    subject: bytes
    reply: bytes
    hdr: int
    data: bytes


class Run(NamedTuple):
    """Consecutive plain PUBs on one subject (no reply, no headers), as a
    ``ClientParser`` with ``runs`` on emits them: at least two. Each tail is what
    follows the subject in the PUB frame, ``<size>\\r\\n<payload>\\r\\n``, which
    is also what a MSG frame carries after its sid (see ``ClientParser._run``).
    """

    subject: bytes
    tails: list[bytes]


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT with its JSON argument still undecoded (the session decodes it)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class Sub:
    subject: bytes
    queue: bytes | None
    sid: bytes


@dataclass(frozen=True, slots=True)
class Unsub:
    sid: bytes
    max_msgs: int | None  # None: remove now; otherwise remove after this many in total


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Info:
    """An INFO sent by the peer; clients may send one and nats-server ignores it."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class ParseFailed:
    """The parser met input it cannot accept; it stops after emitting this."""

    error: ProtocolError


PING = Ping()
PONG = Pong()

Event = Pub | Run | Connect | Sub | Unsub | Ping | Pong | Info | ParseFailed
