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

A row none of whose messages has a header block is laid out in *columns*
instead (the common case: telemetry without headers). Its first byte is
``COLUMNS`` (an entry-layout row starts with its first entry, whose sequence
offset is 0, so with a zero byte), then flags and the message count
(``COLUMN_HEAD``), then little-endian arrays of one value per message: the
sequence offsets (only if the sequences are not consecutive), the time offsets
(only if the times differ), the payload lengths, and the subject lengths (one
length only when every message has the same subject); then the subjects (that
one subject once) and the payloads back to back. Packing a row so is a few
passes in C over the batch instead of an entry per message in bytecode, done
in the writer's thread while it holds the GIL: measured 0.17 against 0.57 us
per 128-byte message.

A message leaves the store on its own (confirmed by the hub, trimmed,
expired, purged) before its row does: a row keeps a *gone* bitmap, bit *i* set
when message *i* is gone, and the row itself is deleted when every bit is set.
Sequences in a row rise but need not be consecutive (another group's messages,
or memory-mode ones, fall between).
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice, repeat
from operator import attrgetter, lt, sub

from store.window import Record

# seq - first seq, ts - first ts (ms), subject length, header length + 1 (0: no
# header block), payload length
ENTRY = struct.Struct(">IiHII")
ROW_MSGS = 4096
ROW_BYTES = 1 << 20
_TS_RANGE = 2**31 - 1
_SEQ_RANGE = 2**32 - 1
COLUMNS = 0xC1
COLUMN_HEAD = struct.Struct("<BBI")  # COLUMNS, flags, messages
_SPARSE = 1  # sequence offsets stored (the sequences are not consecutive)
_TIMES = 2  # time offsets stored (the times differ)
_SUBJECTS = 4  # a subject per message (they differ)
_U32, _I32 = (next(c for c in codes if array(c).itemsize == 4) for codes in ("IL", "il"))
_COLUMNS_BYTE = bytes([COLUMNS])
_SWAP = sys.byteorder == "big"  # the arrays are stored little-endian
_seq_of = attrgetter("seq")
_group_of = attrgetter("group")
_ts_of = attrgetter("ts")
_size_of = attrgetter("size")
_hdr_of = attrgetter("hdr")
_subject_of = attrgetter("subject")
_data_of = attrgetter("data")


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
    groups = set(map(_group_of, records))
    by_group: dict[int, list[Record]]
    if len(groups) == 1:  # the common case, without a loop in bytecode
        by_group = {groups.pop(): list(records)}
    else:
        by_group = {}
        for rec in records:
            by_group.setdefault(rec.group, []).append(rec)
    rows: list[Row] = []
    for group, recs in by_group.items():
        seqs = list(map(_seq_of, recs))
        if not all(map(lt, seqs, islice(seqs, 1, None))):
            recs.sort(key=_seq)
        _pack_group(group, recs, rows)
    return rows


def _pack_group(group: int, recs: list[Record], rows: list[Row]) -> None:
    count = len(recs)
    start = 0
    while start < count:
        start = _pack_plain_row(group, recs, start, rows)
        if start < 0:  # headers, or a row too wide for the entry fields
            _pack_rows(group, recs[-start - 1 :], rows)
            return


def _pack_plain_row(group: int, recs: list[Record], start: int, rows: list[Row]) -> int:
    """Pack the row starting at *start* if none of its messages has headers and
    its sequences and times fit the entry fields: the index after it. Else -1 -
    *start*, with nothing packed. The loops run in C (``map``), not bytecode: the
    writer's thread holds the GIL for all of it, once per stored message."""
    chunk = recs[start : start + ROW_MSGS]
    sizes = list(accumulate(map(_size_of, chunk)))
    n = min(len(chunk), bisect_left(sizes, ROW_BYTES) + 1)  # past ROW_BYTES by < 1 message
    if n < len(chunk):
        chunk = chunk[:n]
    first = chunk[0]
    first_seq, ts0 = first.seq, first.ts
    times = list(map(_ts_of, chunk))
    ts_last = max(times)
    if (
        ts_last - ts0 > _TS_RANGE
        or ts0 - min(times) > _TS_RANGE
        or chunk[-1].seq - first_seq > _SEQ_RANGE
        or list(map(_hdr_of, chunk)).count(None) != n  # a header block, even empty
    ):
        return -1 - start
    subjects = list(map(_subject_of, chunk))
    payloads = list(map(_data_of, chunk))
    flags = 0
    parts = [b""]
    if chunk[-1].seq - first_seq != n - 1:
        flags |= _SPARSE
        parts.append(_column(_U32, map(sub, map(_seq_of, chunk), repeat(first_seq))))
    if ts_last != ts0 or min(times) != ts0:
        flags |= _TIMES
        parts.append(_column(_I32, map(sub, times, repeat(ts0))))
    parts.append(_column(_U32, map(len, payloads)))
    if subjects.count(subjects[0]) == n:
        parts.append(_column("H", (len(subjects[0]),)))
        parts.append(subjects[0])
    else:
        flags |= _SUBJECTS
        parts.append(_column("H", map(len, subjects)))
        parts += subjects
    parts[0] = COLUMN_HEAD.pack(COLUMNS, flags, n)
    parts += payloads
    body = b"".join(parts)
    deque(map(setattr, chunk, repeat("batch"), repeat(first_seq)), 0)
    deque(map(setattr, chunk, repeat("index"), range(n)), 0)
    rows.append(Row(first_seq, chunk[-1].seq, group, ts0, ts_last, n, sizes[n - 1], body))
    return start + n


def _column(code: str, values: Iterable[int]) -> bytes:
    column = array(code, values)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def _read_column(code: str, body: bytes, off: int, n: int) -> tuple[array[int], int]:
    column = array(code)
    end = off + n * column.itemsize
    if end > len(body):
        raise ValueError("row body cut inside its columns")
    column.frombytes(body[off:end])
    if _SWAP:
        column.byteswap()
    return column, end


def _pack_rows(group: int, recs: list[Record], rows: list[Row]) -> None:
    # The general case, a message at a time: headers, clock jumps.
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
    batch: int,
    ts: int,
    body: bytes,
    group: int,
    after: int = 0,
    bits: bytes = b"",
    limit: int | None = None,
) -> Iterator[Record]:
    """The messages of row *batch* (first published at *ts*) as Records of
    *group*, in order, with their place (``batch``, ``index``); those at or
    below sequence *after* or marked in *bits* are skipped without making an
    object (once per message read back: a replay, a drain); *limit*, if
    given, is as many as the caller will take (more may come). Raises
    ValueError on a body that does not decode (a damaged row)."""
    if body[:1] == _COLUMNS_BYTE:
        yield from _column_records(batch, ts, body, group, after, bits, limit)
        return
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


def _columns(first_seq: int, ts: int, body: bytes) -> _Columns:
    """A column-layout body's columns, checked to add up to the body exactly."""
    if len(body) < COLUMN_HEAD.size:
        raise ValueError("row body cut inside its head")
    _, flags, n = COLUMN_HEAD.unpack_from(body)
    if not n or flags & ~(_SPARSE | _TIMES | _SUBJECTS):
        raise ValueError("row body has a bad head")
    off = COLUMN_HEAD.size
    if flags & _SPARSE:
        dseqs, off = _read_column(_U32, body, off, n)
        seqs: Sequence[int] = [first_seq + d for d in dseqs]
    else:
        seqs = range(first_seq, first_seq + n)
    if flags & _TIMES:
        dts, off = _read_column(_I32, body, off, n)
        times: Sequence[int] = [ts + d for d in dts]
    else:
        times = [ts] * n
    lengths, off = _read_column(_U32, body, off, n)
    subject_lengths, off = _read_column("H", body, off, n if flags & _SUBJECTS else 1)
    if 0 in subject_lengths or off + sum(subject_lengths) + sum(lengths) != len(body):
        raise ValueError("row body does not add up")
    if flags & _SUBJECTS:
        subjects = []
        for ls in subject_lengths:
            subjects.append(body[off : off + ls])
            off += ls
    else:
        subjects = [body[off : off + subject_lengths[0]]] * n
        off += subject_lengths[0]
    return _Columns(seqs, times, subjects, lengths, off)


@dataclass(frozen=True)
class _Columns:
    seqs: Sequence[int]
    times: Sequence[int]
    subjects: list[bytes]
    lengths: array[int]
    payloads_at: int


def _column_records(
    batch: int, ts: int, body: bytes, group: int, after: int, bits: bytes, limit: int | None
) -> Iterator[Record]:
    cols = _columns(batch, ts, body)
    off = cols.payloads_at
    start = bisect_right(cols.seqs, after)
    if not int.from_bytes(bits, "little") >> start:
        # Nothing to skip past the first wanted (a replay, a drain): the
        # records made in C, ``map``, as many as the reader wants.
        n = len(cols.lengths)
        stop = n if limit is None else min(n, start + limit)
        ends = list(accumulate(cols.lengths, initial=off))
        payloads = map(body.__getitem__, map(slice, ends[start:stop], ends[start + 1 : stop + 1]))
        out = list(
            map(
                Record,
                cols.seqs[start:stop],
                repeat(group),
                cols.times[start:stop],
                cols.subjects[start:stop],
                repeat(None),
                payloads,
            )
        )
        deque(map(setattr, out, repeat("batch"), repeat(batch)), 0)
        deque(map(setattr, out, repeat("index"), range(start, stop)), 0)
        yield from out
        return
    for index, (seq, msg_ts, subject, ld) in enumerate(
        zip(cols.seqs, cols.times, cols.subjects, cols.lengths, strict=True)
    ):
        stop = off + ld
        if seq > after and not (bits and is_gone(bits, index)):
            rec = Record(seq, group, msg_ts, subject, None, body[off:stop])
            rec.batch = batch
            rec.index = index
            yield rec
        off = stop


def heads(first_seq: int, ts: int, body: bytes) -> list[tuple[int, int, int]]:
    """(seq, ts, size) of each message of a row, without copying the messages."""
    if body[:1] == _COLUMNS_BYTE:
        cols = _columns(first_seq, ts, body)
        sizes = map(len, cols.subjects)
        return list(zip(cols.seqs, cols.times, map(int.__add__, sizes, cols.lengths), strict=True))
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
