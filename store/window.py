"""The uplink's in-flight window for stored messages. Pure: no I/O, no clock.

Theory of operation
-------------------
Stored messages go up in sequence order. Each one sent is *in flight* until the
hub confirms it, in one of two ways:

* ``JETSTREAM``: the hub stream's PubAck, which comes back on a reply subject
  that names the message's sequence (``ack(seq)``). A PubAck reporting a
  duplicate counts: the hub already holds the message.
* ``LINK``: no stream holds the subject, so the best proof is that the hub has
  processed the message: a PING sent after it, answered by a PONG
  (``confirm_through(mark)``; the hub answers PINGs in order).

The window is bounded by count and bytes: the sender waits for room. When the
oldest message in flight has waited longer than the ack timeout, the sender
takes the whole window back (``take_all``) and sends it again in order
("go back N"): the hub's duplicate window drops what it already had, and the
order per subject is kept, which selective resending would not guarantee. A
lost link also takes the window back; the store still holds every record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import Enum
from itertools import repeat
from operator import attrgetter


class Confirm(Enum):
    JETSTREAM = "jetstream"
    LINK = "link"


class Record:
    """One stored message. Mutable ``on_disk``: a memory-mode record is spilled
    when the link goes down. Slots, not a dataclass: one is made per message."""

    __slots__ = (
        "batch",
        "data",
        "group",
        "hdr",
        "index",
        "on_disk",
        "reply",
        "seq",
        "size",
        "subject",
        "ts",
    )

    def __init__(
        self,
        seq: int,
        group: int,
        ts: int,
        subject: bytes,
        hdr: bytes | None,
        data: bytes,
        on_disk: bool = True,
        reply: bytes = b"",
    ) -> None:
        self.seq = seq
        self.group = group
        self.ts = ts  # publish time, milliseconds since the epoch
        self.subject = subject
        self.hdr = hdr  # the NATS header block, or None
        self.data = data  # the payload, without headers
        self.on_disk = on_disk
        self.reply = reply  # the publisher's reply subject (for its PubAck); not stored
        self.size = len(subject) + len(data) + (len(hdr) if hdr else 0)
        # Where the record is stored (store.buffer): its row's key and its place
        # in the row; batch 0 until a commit has written it.
        self.batch = 0
        self.index = 0

    def __repr__(self) -> str:
        return f"Record(seq={self.seq}, subject={self.subject!r}, on_disk={self.on_disk})"


class Run:
    """Messages accepted together (``store.writer.Store.accept_run``): one
    group, subject and publish time, consecutive sequences from ``seq``, no
    headers, no replies, written to disk. It stands in the writer's queue for
    their Records, one object for the lot: the rows are packed from it, and
    the Records are made only if the forwarder takes them from memory (in a
    burst the forwarder falls behind and reads them back from the rows).
    ``places``: where its messages went, (row, index of the first, how many)
    per row, once packed."""

    __slots__ = ("group", "payloads", "places", "seq", "size", "subject", "ts")
    hdr: bytes | None = None
    reply: bytes = b""
    on_disk: bool = True

    def __init__(
        self, seq: int, group: int, ts: int, subject: bytes, payloads: list[bytes], size: int
    ) -> None:
        self.seq = seq
        self.group = group
        self.ts = ts
        self.subject = subject
        self.payloads = payloads
        self.size = size  # subjects and payloads added up
        self.places: list[tuple[int, int, int]] = []

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.payloads) - 1

    def records(self) -> list[Record]:
        """Its messages as Records, placed where the commit wrote them."""
        n = len(self.payloads)
        out = list(
            map(
                Record,
                range(self.seq, self.seq + n),
                repeat(self.group),
                repeat(self.ts),
                repeat(self.subject),
                repeat(None),
                self.payloads,
            )
        )
        at = 0
        for batch, index, count in self.places:
            part = out[at : at + count]
            deque(map(setattr, part, repeat("batch"), repeat(batch)), 0)
            deque(map(setattr, part, repeat("index"), range(index, index + count)), 0)
            at += count
        return out

    def __repr__(self) -> str:
        return f"Run(seq={self.seq}..{self.last_seq}, subject={self.subject!r})"


def expand(items: Iterable[Record | Run]) -> list[Record]:
    """Records and Runs as Records only."""
    out: list[Record] = []
    for item in items:
        if isinstance(item, Run):
            out += item.records()
        else:
            out.append(item)
    return out


def last_seq_of(item: Record | Run) -> int:
    return item.last_seq if type(item) is Run else item.seq


class InFlight:
    """Messages sent and not yet confirmed, oldest first."""

    def __init__(self, max_msgs: int, max_bytes: int) -> None:
        if max_msgs < 1 or max_bytes < 1:
            raise ValueError("the window needs room for at least one message")
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        # seq -> (record, how it is confirmed, when it was sent); dicts keep order.
        self._entries: dict[int, tuple[Record, Confirm, float]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def worth_filling(self) -> bool:
        """Whether to send now: the window is empty, or a quarter of it is free.
        A full window refilled at every ack would send a few messages per
        read of acks, and each such round costs a wake-up, a send and a read
        on both sides: measured, 6 us per forwarded message while publishers
        kept the loop busy, against about 1 us in batches."""
        entries = len(self._entries)
        if not entries:
            return True
        return (
            self.max_msgs - entries >= max(1, self.max_msgs // 4)
            and self.max_bytes - self.bytes >= self.max_bytes // 4
        )

    def add(self, record: Record, confirm: Confirm, now: float) -> None:
        previous = self._entries.pop(record.seq, None)
        if previous is not None:
            self.bytes -= previous[0].size
        self._entries[record.seq] = (record, confirm, now)
        self.bytes += record.size

    def add_many(self, records: list[Record], confirm: Confirm, now: float) -> None:
        """``add`` for each of *records*, in C when none is in flight already."""
        entries = self._entries
        if not entries.keys().isdisjoint(map(_seq_of, records)):
            for rec in records:  # a resend of some: each goes to the end again
                self.add(rec, confirm, now)
            return
        pairs = zip(records, repeat(confirm), repeat(now))
        entries.update(zip(map(_seq_of, records), pairs, strict=True))
        self.bytes += sum(map(_size_of, records))

    def ack(self, seq: int) -> Record | None:
        """A PubAck for *seq*: the record, or None if it is no longer in flight
        (a late ack for a message already confirmed or taken back)."""
        entry = self._entries.pop(seq, None)
        if entry is None:
            return None
        self.bytes -= entry[0].size
        return entry[0]

    def confirm_through(self, mark: int) -> list[Record]:
        """The PONG answering a PING sent after *mark*: every LINK-confirmed
        record up to *mark* is confirmed."""
        done = [
            rec
            for seq, (rec, how, _t) in self._entries.items()
            if seq <= mark and how is Confirm.LINK
        ]
        for rec in done:
            del self._entries[rec.seq]
            self.bytes -= rec.size
        return done

    def oldest_sent(self) -> float | None:
        for _rec, _how, sent in self._entries.values():
            return sent
        return None

    def overdue(self, now: float, timeout: float) -> bool:
        oldest = self.oldest_sent()
        return oldest is not None and now - oldest >= timeout

    def overdue_acks(self, now: float, timeout: float) -> bool:
        """Whether the oldest PubAck-confirmed record has waited *timeout*."""
        for _rec, how, sent in self._entries.values():
            if how is Confirm.JETSTREAM:
                return now - sent >= timeout
        return False

    def take_unacked(self) -> list[Record]:
        """Go back N for PubAck-confirmed records: take them back, in sequence
        order. PING-confirmed records stay: their PONG comes on this link (or
        the link ends and the whole window is taken back), and a second copy
        would reach the hub's subscribers twice (no duplicate window)."""
        again = sorted(
            (e[0] for e in self._entries.values() if e[1] is Confirm.JETSTREAM), key=_seq
        )
        for rec in again:
            del self._entries[rec.seq]
            self.bytes -= rec.size
        return again

    def take_all(self) -> list[Record]:
        """Empty the window; its records in sequence order, to send again."""
        records = sorted((entry[0] for entry in self._entries.values()), key=_seq)
        self._entries.clear()
        self.bytes = 0
        return records

    def records(self) -> list[Record]:
        return [entry[0] for entry in self._entries.values()]


_seq_of = attrgetter("seq")
_size_of = attrgetter("size")


def _seq(record: Record) -> int:
    return record.seq


def ack_seq(subject: bytes, prefix: bytes) -> int | None:
    """The sequence an ack subject (``<prefix><seq>``) names, or None."""
    if not subject.startswith(prefix):
        return None
    tail = subject[len(prefix) :]
    if not tail.isdigit() or len(tail) > 19:
        return None
    return int(tail)


def pub_ack_ok(payload: bytes) -> tuple[bool, str | None]:
    """Whether a JetStream reply confirms the message, and the error otherwise.

    A PubAck is ``{"stream": ..., "seq": N}`` (``"duplicate": true`` when the hub
    already had it); an error reply is ``{"error": {"code": ..., "description":
    ...}}``. The fast path avoids parsing JSON for the common success."""
    if b'"error"' not in payload:
        if b'"seq"' in payload and b'"stream"' in payload:
            return True, None
        return False, "reply is not a JetStream PubAck"
    import json

    try:
        reply = json.loads(payload)
        if isinstance(reply, dict) and reply.get("error") is None:
            # "error" was only a name (a stream or domain called "error").
            if "seq" in reply and "stream" in reply:
                return True, None
            return False, "reply is not a JetStream PubAck"
        error = reply.get("error") or {}
        description = str(error.get("description") or error)
        return False, f"{description} (code {error.get('code')}, err_code {error.get('err_code')})"
    except (ValueError, AttributeError):
        return False, "unparsable JetStream error reply"


def with_msg_id(hdr: bytes | None, msg_id: bytes) -> bytes:
    """The header block sent up: the publisher's headers (if any) with
    ``Nats-Msg-Id`` set to *msg_id* (a publisher's own Nats-Msg-Id is replaced:
    the gateway's id is what the hub deduplicates and the ledger checks)."""
    line = b"Nats-Msg-Id: " + msg_id + b"\r\n"
    if not hdr:
        return b"NATS/1.0\r\n" + line + b"\r\n"
    end = hdr.find(b"\r\n")
    if end < 0:
        return b"NATS/1.0\r\n" + line + b"\r\n"
    kept = [
        h for h in hdr[end + 2 :].split(b"\r\n") if h and not h.lower().startswith(b"nats-msg-id:")
    ]
    return hdr[: end + 2] + line + b"".join(h + b"\r\n" for h in kept) + b"\r\n"
