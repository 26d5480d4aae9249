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
from itertools import accumulate, chain, islice, repeat
from operator import attrgetter, lt, sub

from store.window import Record, Run

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


def pack(records: Sequence[Record | Run]) -> list[Row]:
    """Rows holding *records* (each row one group's, in sequence order, within
    the row limits). Places each record where it is stored once the rows are
    committed: a Record's ``batch`` and ``index``, a Run's ``places``."""
    groups = set(map(_group_of, records))
    by_group: dict[int, list[Record | Run]]
    if len(groups) == 1:  # the common case, without a loop in bytecode
        by_group = {groups.pop(): list(records)}
    else:
        by_group = {}
        for rec in records:
            by_group.setdefault(rec.group, []).append(rec)
    rows: list[Row] = []
    for group, items in by_group.items():
        seqs = list(map(_seq_of, items))  # a Run's first: runs never overlap
        if not all(map(lt, seqs, islice(seqs, 1, None))):
            items.sort(key=_seq_of)
        if Run in set(map(type, items)):
            _pack_items(group, items, rows)
        else:
            flat = _Flat.of_records(items)  # type: ignore[arg-type]
            for start, n, row in _cut(group, flat):
                chunk = items[start : start + n]
                deque(map(setattr, chunk, repeat("batch"), repeat(row.first_seq)), 0)
                deque(map(setattr, chunk, repeat("index"), range(n)), 0)
                rows.append(row)
    return rows


def _pack_items(group: int, items: list[Record | Run], rows: list[Row]) -> None:
    """Records and Runs of one group: their messages laid flat, cut into rows,
    and each item told where its messages went (a Run may span rows)."""
    cut = list(_cut(group, _Flat.of_items(items)))
    row_starts = [start for start, _n, _row in cut]
    pos = 0
    for item in items:
        k = bisect_right(row_starts, pos) - 1
        if type(item) is Run:
            end = pos + len(item.payloads)
            places = []
            while pos < end:
                start, n, row = cut[k]
                take = min(start + n, end) - pos
                places.append((row.first_seq, pos - start, take))
                pos += take
                k += 1
            item.places = places
        else:
            assert type(item) is Record
            start, _n, row = cut[k]
            item.batch = row.first_seq
            item.index = pos - start
            pos += 1
    rows.extend(row for _start, _n, row in cut)


@dataclass(frozen=True)
class _Flat:
    """The messages to pack, a list per field (in sequence order)."""

    seqs: list[int]
    times: list[int]
    subjects: list[bytes]
    hdrs: list[bytes | None]
    payloads: list[bytes]
    sizes: list[int]

    @classmethod
    def of_records(cls, recs: list[Record]) -> _Flat:
        return cls(
            list(map(_seq_of, recs)),
            list(map(_ts_of, recs)),
            list(map(_subject_of, recs)),
            list(map(_hdr_of, recs)),
            list(map(_data_of, recs)),
            list(map(_size_of, recs)),
        )

    @classmethod
    def of_items(cls, items: list[Record | Run]) -> _Flat:
        # Per item, not per message: a Run's fields are repeated in C.
        seqs: list[Iterable[int]] = []
        times: list[Iterable[int]] = []
        subjects: list[Iterable[bytes]] = []
        hdrs: list[Iterable[bytes | None]] = []
        payloads: list[Iterable[bytes]] = []
        sizes: list[Iterable[int]] = []
        for item in items:
            if type(item) is Run:
                n = len(item.payloads)
                seqs.append(range(item.seq, item.seq + n))
                times.append(repeat(item.ts, n))
                subjects.append(repeat(item.subject, n))
                hdrs.append(repeat(None, n))
                payloads.append(item.payloads)
                sizes.append(map(len(item.subject).__add__, map(len, item.payloads)))
            else:
                assert type(item) is Record
                seqs.append((item.seq,))
                times.append((item.ts,))
                subjects.append((item.subject,))
                hdrs.append((item.hdr,))
                payloads.append((item.data,))
                sizes.append((item.size,))
        flat = chain.from_iterable
        return cls(
            list(flat(seqs)),
            list(flat(times)),
            list(flat(subjects)),
            list(flat(hdrs)),
            list(flat(payloads)),
            list(flat(sizes)),
        )


def _cut(group: int, flat: _Flat) -> Iterator[tuple[int, int, Row]]:
    """(start, messages, row) for each row the messages make, in order."""
    count = len(flat.seqs)
    start = 0
    while start < count:
        done = _column_row(group, flat, start)
        if done is None:  # headers, or a row too wide for the column fields
            done = _entry_row(group, flat, start)
        yield start, done.msgs, done
        start += done.msgs


def _column_row(group: int, flat: _Flat, start: int) -> Row | None:
    """The row starting at *start* in column layout, if none of its messages
    has headers and its sequences and times fit the fields; else None. The
    loops run in C (``map``), not bytecode: the writer's thread holds the GIL
    for all of it, once per stored message."""
    stop = min(len(flat.seqs), start + ROW_MSGS)
    sizes = list(accumulate(flat.sizes[start:stop]))
    n = min(stop - start, bisect_left(sizes, ROW_BYTES) + 1)  # past ROW_BYTES by < 1 message
    stop = start + n
    first_seq, last_seq = flat.seqs[start], flat.seqs[stop - 1]
    times = flat.times[start:stop]
    ts0, ts_last, ts_min = times[0], max(times), min(times)
    if (
        ts_last - ts0 > _TS_RANGE
        or ts0 - ts_min > _TS_RANGE
        or last_seq - first_seq > _SEQ_RANGE
        or flat.hdrs[start:stop].count(None) != n  # a header block, even empty
    ):
        return None
    subjects = flat.subjects[start:stop]
    payloads = flat.payloads[start:stop]
    flags = 0
    parts = [b""]
    if last_seq - first_seq != n - 1:
        flags |= _SPARSE
        parts.append(_column(_U32, map(sub, flat.seqs[start:stop], repeat(first_seq))))
    if ts_last != ts0 or ts_min != ts0:
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
    return Row(first_seq, last_seq, group, ts0, ts_last, n, sizes[n - 1], b"".join(parts))


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


def _entry_row(group: int, flat: _Flat, start: int) -> Row:
    # The general case, a message at a time: headers, clock jumps.
    entry = ENTRY.pack
    stop = min(len(flat.seqs), start + ROW_MSGS)
    first_seq, ts0 = flat.seqs[start], flat.times[start]
    parts: list[bytes] = []
    append = parts.append
    size = 0
    ts_last = ts0
    i = start
    while i < stop and size < ROW_BYTES:
        ts, seq = flat.times[i], flat.seqs[i]
        dts = ts - ts0
        dseq = seq - first_seq
        if i > start and (dts > _TS_RANGE or dts < -_TS_RANGE or dseq > _SEQ_RANGE):
            break  # a clock jump of weeks within a row: start another
        subject, hdr, data = flat.subjects[i], flat.hdrs[i], flat.payloads[i]
        if hdr is None:
            append(entry(dseq, dts, len(subject), 0, len(data)))
            append(subject)
        else:
            append(entry(dseq, dts, len(subject), len(hdr) + 1, len(data)))
            append(subject)
            append(hdr)
        append(data)
        size += flat.sizes[i]
        if ts > ts_last:
            ts_last = ts
        i += 1
    return Row(first_seq, flat.seqs[i - 1], group, ts0, ts_last, i - start, size, b"".join(parts))


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
