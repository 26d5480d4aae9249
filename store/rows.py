"""How stored messages are laid out: many messages to a row. Pure: no SQL, no I/O.

Why rows of messages
--------------------
The store's one writer runs in a worker thread. Inserting one SQLite row per
message hands the GIL back and forth with the event loop at every row
(``sqlite3`` releases it around each step), and a busy event loop then starves
the writer: measured here, 323 k rows/s with an idle loop, 2 k rows/s with a
busy one. One row per group per commit (cut at ``ROW_MSGS`` messages or
``ROW_BYTES`` bytes) is one step per row: 740 k messages/s with a busy loop,
and fewer b-tree pages written per message.

A row's *body* is its messages back to back, each an entry header
(``ENTRY``: sequence and publish time relative to the row's first message, the
subject, header and payload lengths; a header length of 0 means no header
block, n + 1 one of n bytes)
followed by the subject, the header block and the payload. A message is
identified in its row by its *index*, 0 for the first.

A message leaves the store on its own (confirmed by the hub, trimmed,
expired, purged) before its row does: a row keeps a *gone* bitmap, bit *i* set
when message *i* is gone, and the row itself is deleted when every bit is set.
Sequences in a row rise but need not be consecutive (another group's messages,
or memory-mode ones, fall between).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from store.window import Record

# seq - first seq, ts - first ts (ms), subject length, header length + 1 (0: no
# header block), payload length
ENTRY = struct.Struct(">IiHII")
ROW_MSGS = 4096
ROW_BYTES = 1 << 20
_TS_RANGE = 2**31 - 1
_SEQ_RANGE = 2**32 - 1


@dataclass(frozen=True)
class Row:
    """One row to insert: messages of one group, in sequence order."""

    first_seq: int
    last_seq: int
    group: int  # the records' group index (the caller maps it to the store's id)
    ts: int  # publish time of the first message
    ts_last: int  # the latest publish time in the row
    msgs: int
    size: int  # the messages' sizes added up
    body: bytes

    @property
    def crc(self) -> int:
        return checksum(self.body)


def checksum(body: bytes) -> int:
    """CRC-32 of a row's body: a salvage keeps only rows that still match it
    (a damaged page can leave a row that reads, with other bytes in it)."""
    return zlib.crc32(body)


def pack(records: Sequence[Record]) -> list[Row]:
    """Rows holding *records* (each row one group's, in sequence order, within
    the row limits). Sets each record's ``batch`` and ``index``: where it is
    stored once the rows are committed."""
    by_group: dict[int, list[Record]] = {}
    for rec in records:
        by_group.setdefault(rec.group, []).append(rec)
    rows: list[Row] = []
    for group, recs in by_group.items():
        if any(recs[i].seq >= recs[i + 1].seq for i in range(len(recs) - 1)):
            recs.sort(key=_seq)
        _pack_group(group, recs, rows)
    return rows


def _pack_group(group: int, recs: list[Record], rows: list[Row]) -> None:
    # Once per stored message, in the writer's thread while it holds the GIL:
    # local names, and no work a message without headers does not need.
    entry = ENTRY.pack
    count = len(recs)
    start = 0
    while start < count:
        first = recs[start]
        first_seq, ts0 = first.seq, first.ts
        stop = min(count, start + ROW_MSGS)
        parts: list[bytes] = []
        append = parts.append
        size = 0
        ts_last = ts0
        i = start
        while i < stop and size < ROW_BYTES:
            rec = recs[i]
            dts = rec.ts - ts0
            dseq = rec.seq - first_seq
            if dts > _TS_RANGE or dts < -_TS_RANGE or dseq > _SEQ_RANGE:
                break  # a clock jump of weeks within a row: start another
            subject, hdr, data = rec.subject, rec.hdr, rec.data
            if hdr is None:
                append(entry(dseq, dts, len(subject), 0, len(data)))
                append(subject)
            else:
                append(entry(dseq, dts, len(subject), len(hdr) + 1, len(data)))
                append(subject)
                append(hdr)
            append(data)
            rec.batch = first_seq
            rec.index = i - start
            size += rec.size
            if rec.ts > ts_last:
                ts_last = rec.ts
            i += 1
        last = recs[i - 1]
        rows.append(Row(first_seq, last.seq, group, ts0, ts_last, i - start, size, b"".join(parts)))
        start = i


def _seq(rec: Record) -> int:
    return rec.seq


def records(
    batch: int, ts: int, body: bytes, group: int, after: int = 0, bits: bytes = b""
) -> Iterator[Record]:
    """The messages of row *batch* (first published at *ts*) as Records of
    *group*, in order, with their place (``batch``, ``index``); those at or
    below sequence *after* or marked in *bits* are skipped without making an
    object (once per message read back: a replay, a drain). Raises ValueError
    on a body that does not decode (a damaged row)."""
    unpack = ENTRY.unpack_from
    head = ENTRY.size
    end = len(body)
    off = 0
    index = -1
    while off < end:
        if off + head > end:
            raise ValueError("row body cut inside an entry header")
        dseq, dts, ls, lh, ld = unpack(body, off)
        off += head
        index += 1
        seq = batch + dseq
        hdr_len = lh - 1 if lh else 0
        stop = off + ls + hdr_len + ld
        if stop > end or not ls:
            raise ValueError("row body cut inside a message")
        if seq <= after or (bits and is_gone(bits, index)):
            off = stop
            continue
        cut = off + ls
        rec = Record(
            seq,
            group,
            ts + dts,
            body[off:cut],
            body[cut : cut + hdr_len] if lh else None,
            body[cut + hdr_len : stop],
        )
        rec.batch = batch
        rec.index = index
        yield rec
        off = stop


def heads(first_seq: int, ts: int, body: bytes) -> list[tuple[int, int, int]]:
    """(seq, ts, size) of each message of a row, without copying the messages."""
    unpack = ENTRY.unpack_from
    head = ENTRY.size
    end = len(body)
    out: list[tuple[int, int, int]] = []
    off = 0
    while off + head <= end:
        dseq, dts, ls, lh, ld = unpack(body, off)
        size = ls + (lh - 1 if lh else 0) + ld
        out.append((first_seq + dseq, ts + dts, size))
        off += head + size
    if off != end:
        raise ValueError("row body does not decode")
    return out


# ---- the gone bitmap ------------------------------------------------------------


def is_gone(bits: bytes, index: int) -> bool:
    byte = index >> 3
    return byte < len(bits) and bool(bits[byte] & (1 << (index & 7)))


def mark(bits: bytearray, index: int) -> bool:
    """Set bit *index* (growing *bits*); True if it was not set yet."""
    byte = index >> 3
    if byte >= len(bits):
        bits.extend(bytes(byte + 1 - len(bits)))
    flag = 1 << (index & 7)
    if bits[byte] & flag:
        return False
    bits[byte] |= flag
    return True


def count_gone(bits: bytes) -> int:
    return int.from_bytes(bits, "little").bit_count()
