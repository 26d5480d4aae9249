"""Completeness ledger: per gateway, which sequence numbers reached the hub stream.

Every message a gateway forwards carries ``Nats-Msg-Id: <gateway>:<seq>``, with
``<seq>`` counting from 1 across all of that gateway's forwarded subjects.  Reading
the hub stream once and feeding each message id to a :class:`StreamLedger` tells,
per gateway, which seqs are missing (gaps), which arrived more than once
(duplicates: re-sent after the stream's duplicate window) and which arrived after a
higher one (out of order).

This module is pure (no nats, no asyncio): ``leafgate hub ledger`` in
:mod:`hub.tool` reads the stream and feeds it.

Memory per gateway is bounded by the number of gaps, not of messages: the seqs seen
are kept as sorted, disjoint, inclusive ranges, merged as they are added.
"""

from __future__ import annotations

import json
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MSG_ID_HEADER = "Nats-Msg-Id"
DEFAULT_LIMIT = 10  # ranges / seqs listed per gateway
# The gateway store numbers messages with an SQLite INTEGER; larger tails are not ours.
MAX_SEQ = 2**63 - 1
# Same alphabet as ``store.gateway_id`` in edge/config.py.
_GATEWAY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# ASCII digits only: str.isdigit() and int() would also take '²' or '٣'.
_DIGITS = re.compile(r"[0-9]+")


def parse_msg_id(value: str | None) -> tuple[str, int] | None:
    """``(gateway, seq)`` from a ``Nats-Msg-Id`` value, or None if it is not one of
    a gateway's (no header, no ':', bad gateway id, tail not a decimal seq >= 1)."""
    if not value:
        return None
    gateway, sep, tail = value.rpartition(":")
    if not sep or not gateway or not _GATEWAY_CHARS.issuperset(gateway):
        return None
    if len(tail) > 19 or not _DIGITS.fullmatch(tail):  # 19 digits hold MAX_SEQ
        return None
    seq = int(tail)
    if not 1 <= seq <= MAX_SEQ:
        return None
    return gateway, seq


def parse_ack_reply(reply: str) -> tuple[int, int] | None:
    """``(stream_seq, num_pending)`` from a JetStream delivery's reply subject.

    Two layouts exist: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.
    <pending>`` and, from servers with domains/account hashes, ``$JS.ACK.<domain>.
    <hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]``.
    """
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    base = 5 if len(tokens) == 9 else 7
    try:
        return int(tokens[base]), int(tokens[base + 3])
    except (ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------
# One gateway
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayReport:
    """What the ledger found for one gateway (see :meth:`GatewayLedger.report`)."""

    gateway: str
    messages: int
    first: int | None  # lowest seq seen
    last: int | None  # highest seq seen
    distinct: int
    from_seq: int
    head_gap: tuple[int, int] | None  # seqs from_seq..first-1, never seen
    head_gap_accepted: bool
    missing: int  # seqs between the first and the last, never seen
    missing_range_count: int
    missing_ranges: tuple[tuple[int, int], ...]  # the first ``limit`` of them
    duplicates: int  # messages whose seq had been seen before
    duplicate_seqs: tuple[int, ...]  # the first ``limit`` seqs seen more than once
    duplicate_seqs_truncated: bool  # more seqs than those were seen more than once
    out_of_order: int  # new seqs lower than the seq of the gateway's previous message

    @property
    def head_missing(self) -> int:
        return 0 if self.head_gap is None else self.head_gap[1] - self.head_gap[0] + 1

    @property
    def complete(self) -> bool:
        """Seen at least once, no gap, no duplicate, no head gap unless accepted.
        Out-of-order delivery is reported but loses nothing, so it does not count."""
        return (
            self.messages > 0
            and self.missing == 0
            and self.duplicates == 0
            and (self.head_gap is None or self.head_gap_accepted)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "messages": self.messages,
            "first": self.first,
            "last": self.last,
            "distinct": self.distinct,
            "from_seq": self.from_seq,
            "head_gap": self.head_missing,
            "head_gap_range": list(self.head_gap) if self.head_gap else None,
            "head_gap_accepted": self.head_gap_accepted,
            "missing": self.missing,
            "missing_range_count": self.missing_range_count,
            "missing_ranges": [list(r) for r in self.missing_ranges],
            "duplicates": self.duplicates,
            "duplicate_seqs": list(self.duplicate_seqs),
            "duplicate_seqs_truncated": self.duplicate_seqs_truncated,
            "out_of_order": self.out_of_order,
        }


class GatewayLedger:
    """The seqs one gateway's messages carried, in stream order.

    Seen seqs are disjoint inclusive ranges ``[starts[i], ends[i]]`` in ascending
    order (arrays of int64: 16 bytes a range).  Messages mostly arrive in order, so
    :meth:`add` first tries to extend the last range; anything else is a binary
    search and at most one insertion.
    """

    __slots__ = (
        "_dup_sample",
        "_dup_truncated",
        "_ends",
        "_previous",
        "_sample_limit",
        "_starts",
        "distinct",
        "duplicates",
        "messages",
        "out_of_order",
    )

    def __init__(self, sample_limit: int = DEFAULT_LIMIT) -> None:
        self._starts: array[int] = array("q")
        self._ends: array[int] = array("q")
        self._previous = 0
        self._sample_limit = sample_limit
        self._dup_sample: list[int] = []
        self._dup_truncated = False
        self.messages = 0
        self.distinct = 0
        self.duplicates = 0
        self.out_of_order = 0

    @property
    def first(self) -> int | None:
        return self._starts[0] if self._starts else None

    @property
    def last(self) -> int | None:
        return self._ends[-1] if self._ends else None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The seen seqs as ascending disjoint ``(start, end)`` ranges."""
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def duplicate_seqs(self) -> tuple[int, ...]:
        return tuple(self._dup_sample)

    def add(self, seq: int) -> None:
        """Account for one message carrying ``seq`` (1 <= seq <= MAX_SEQ)."""
        self.messages += 1
        previous, self._previous = self._previous, seq
        ends = self._ends
        if ends and seq == ends[-1] + 1:
            # Fast path: the next seq after the highest one.  It is new, in order,
            # and there is no later range to merge with.
            ends[-1] = seq
            self.distinct += 1
            return
        if self._insert(seq):
            self.distinct += 1
            if seq < previous:
                self.out_of_order += 1
            return
        self.duplicates += 1
        sample = self._dup_sample
        if seq in sample:
            return
        if len(sample) < self._sample_limit:
            sample.append(seq)
        else:
            self._dup_truncated = True

    def _insert(self, seq: int) -> bool:
        """Mark ``seq`` seen; False if it already was."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, seq) - 1  # the range starting at or before seq
        if i >= 0 and seq <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:  # seq fills a one-seq gap: two ranges become one
            ends[i] = ends[i + 1]
            del starts[i + 1]
            del ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        return True

    def gaps(self, from_seq: int = 1) -> Iterator[tuple[int, int]]:
        """Unseen ``(start, end)`` ranges between the first seq >= ``from_seq`` that
        was seen and the last seq seen (the head gap is not one of them)."""
        previous_end: int | None = None
        for start, end in zip(self._starts, self._ends, strict=True):
            if end < from_seq:
                continue
            if previous_end is not None:
                yield previous_end + 1, start - 1
            previous_end = end

    def head_gap(self, from_seq: int = 1) -> tuple[int, int] | None:
        """Unseen seqs from ``from_seq`` up to the first seen seq at or after it."""
        i = bisect_right(self._ends, from_seq - 1)  # first range ending at/after from_seq
        if i == len(self._starts) or self._starts[i] <= from_seq:
            return None
        return from_seq, self._starts[i] - 1

    def report(
        self,
        gateway: str,
        *,
        from_seq: int = 1,
        allow_head_gap: bool = False,
        limit: int = DEFAULT_LIMIT,
    ) -> GatewayReport:
        missing = 0
        count = 0
        listed: list[tuple[int, int]] = []
        for start, end in self.gaps(from_seq):
            missing += end - start + 1
            count += 1
            if len(listed) < limit:
                listed.append((start, end))
        return GatewayReport(
            gateway=gateway,
            messages=self.messages,
            first=self.first,
            last=self.last,
            distinct=self.distinct,
            from_seq=from_seq,
            head_gap=self.head_gap(from_seq),
            head_gap_accepted=allow_head_gap,
            missing=missing,
            missing_range_count=count,
            missing_ranges=tuple(listed),
            duplicates=self.duplicates,
            duplicate_seqs=tuple(self._dup_sample[:limit]),
            duplicate_seqs_truncated=self._dup_truncated or len(self._dup_sample) > limit,
            out_of_order=self.out_of_order,
        )


# ---------------------------------------------------------------------------
# A whole stream
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerReport:
    """A stream's ledger: where it was read and what each gateway sent."""

    stream: str
    subject: str | None  # consumer filter, None: the whole stream
    last_stream_seq: int  # the stream was read up to this seq
    read: int  # messages read
    foreign: int  # messages without a gateway's Nats-Msg-Id
    other: int  # messages of gateways left out by a --gateway filter
    gateways: tuple[GatewayReport, ...]  # sorted by id

    @property
    def complete(self) -> bool:
        return all(g.complete for g in self.gateways)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "subject": self.subject,
            "last_stream_seq": self.last_stream_seq,
            "read": self.read,
            "foreign": self.foreign,
            "other": self.other,
            "complete": self.complete,
            "gateways": {g.gateway: g.as_dict() for g in self.gateways},
        }


class StreamLedger:
    """Ledgers of all gateways (or only ``gateway``) met in one read of a stream."""

    def __init__(self, *, gateway: str | None = None, sample_limit: int = DEFAULT_LIMIT) -> None:
        self.only = gateway
        self.sample_limit = sample_limit
        self.gateways: dict[str, GatewayLedger] = {}
        self.read = 0
        self.foreign = 0
        self.other = 0
        if gateway is not None:
            # Listed even if it never shows up: absent is not complete.
            self.gateways[gateway] = GatewayLedger(sample_limit)

    def add_msg_id(self, value: str | None) -> None:
        """Account for one stream message, given its ``Nats-Msg-Id`` (or None)."""
        self.read += 1
        parsed = parse_msg_id(value)
        if parsed is None:
            self.foreign += 1
            return
        gateway, seq = parsed
        if self.only is not None and gateway != self.only:
            self.other += 1
            return
        ledger = self.gateways.get(gateway)
        if ledger is None:
            ledger = self.gateways[gateway] = GatewayLedger(self.sample_limit)
        ledger.add(seq)

    def report(
        self,
        *,
        stream: str,
        subject: str | None = None,
        last_stream_seq: int = 0,
        from_seq: int = 1,
        allow_head_gap: bool = False,
        limit: int = DEFAULT_LIMIT,
    ) -> LedgerReport:
        return LedgerReport(
            stream=stream,
            subject=subject,
            last_stream_seq=last_stream_seq,
            read=self.read,
            foreign=self.foreign,
            other=self.other,
            gateways=tuple(
                self.gateways[name].report(
                    name, from_seq=from_seq, allow_head_gap=allow_head_gap, limit=limit
                )
                for name in sorted(self.gateways)
            ),
        )


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def format_ranges(ranges: Sequence[tuple[int, int]], total: int | None = None) -> str:
    """``17-20, 45``; with ``total`` > len(ranges): ``..., (N ranges in all)``."""
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
    if total is not None and total > len(ranges):
        text += f", ... ({total} ranges in all)"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _format_gateway(g: GatewayReport) -> list[str]:
    status = "complete" if g.complete else "INCOMPLETE"
    if g.messages == 0:
        return [f"{g.gateway}: {status}, no messages"]
    lines = [
        f"{g.gateway}: {status}, {_count(g.messages, 'message')}, "
        f"seqs {format_ranges([(g.first or 0, g.last or 0)])}, {g.distinct} distinct"
    ]
    if g.head_gap is not None:
        note = "accepted" if g.head_gap_accepted else "not accepted (see --allow-head-gap)"
        lines.append(
            f"  head gap: {g.head_missing} before the first seq "
            f"({format_ranges([g.head_gap])}), {note}"
        )
    if g.missing:
        lines.append(
            f"  missing: {g.missing} in {_count(g.missing_range_count, 'range')}: "
            f"{format_ranges(g.missing_ranges, g.missing_range_count)}"
        )
    if g.duplicates:
        shown = ", ".join(str(s) for s in g.duplicate_seqs)
        more = ", ..." if g.duplicate_seqs_truncated else ""
        lines.append(f"  duplicates: {g.duplicates} (seqs {shown}{more})")
    if g.out_of_order:
        lines.append(f"  out of order: {g.out_of_order}")
    return lines


def format_text(report: LedgerReport) -> str:
    """The operator's view: a header, a block per gateway, a verdict."""
    where = f"stream {report.stream}"
    if report.subject:
        where += f" (subject {report.subject})"
    total = len(report.gateways)
    lines = [
        f"{where} up to seq {report.last_stream_seq}: {_count(report.read, 'message')}, "
        f"{_count(total, 'gateway')}, {report.foreign} foreign"
        + (f", {report.other} of other gateways" if report.other else "")
    ]
    for gateway in report.gateways:
        lines += _format_gateway(gateway)
    bad = sum(1 for g in report.gateways if not g.complete)
    if not total:
        lines.append("no gateway messages")
    elif bad:
        lines.append(f"INCOMPLETE: {bad} of {_count(total, 'gateway')}")
    else:
        lines.append(f"complete: {'all ' if total > 1 else ''}{_count(total, 'gateway')}")
    return "\n".join(lines) + "\n"


def format_json(report: LedgerReport) -> str:
    return json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n"
