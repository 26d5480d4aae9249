"""Framing of serial byte streams: bytes in, frames and rejections out.

Pure and incremental: a decoder is fed whatever ``read()`` returned (any
split of the stream) and returns the frames completed so far, in order, with
a ``Rejection`` in the place of each piece of bad input. Random splits of the
same input give the same events (tested with Hypothesis).

Every buffer is bounded by ``max_frame``. Text framings (lines, JSON lines,
CSV, NMEA 0183) end a frame at CR, LF or CRLF (empty lines are skipped, so
CRLF is one terminator); a line longer than ``max_frame`` is rejected once as
``overlong`` and the decoder resynchronises at the next line end. COBS frames
end at a zero byte and resynchronise the same way. A length-prefixed stream
has no delimiter to resynchronise at: a header announcing more than
``max_frame`` bytes is rejected and the decoder slides one byte on, looking
for the next plausible header (one rejection per run of bad headers).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

FRAMINGS = ("lines", "json", "csv", "nmea", "cobs", "length")

_LINE_END = re.compile(rb"[\r\n]")
_ZERO = re.compile(rb"\x00")
# C0 controls and DEL, except TAB: what a text device never sends on purpose.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NMEA = re.compile(rb"^[$!]([^*]*)\*([0-9A-Fa-f]{2})$")


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # the counter: overlong, invalid_utf8, garbage, bad_checksum, ...
    detail: str


Event = Frame | Rejection


class Decoder(Protocol):
    def feed(self, data: bytes) -> list[Event]: ...


class _Splitter:
    """Delimited pieces of at most ``max_frame`` bytes; longer ones become one rejection."""

    def __init__(self, delimiter: re.Pattern[bytes], max_frame: int, unit: str) -> None:
        self._delimiter = delimiter
        self._max = max_frame
        self._unit = unit
        self._buf = b""
        self._skipping = False  # inside an overlong piece already rejected

    def split(self, data: bytes) -> list[bytes | Rejection]:
        buf = self._buf + data if self._buf else data
        out: list[bytes | Rejection] = []
        start = 0
        for match in self._delimiter.finditer(buf):
            piece = buf[start : match.start()]
            start = match.end()
            if self._skipping:
                self._skipping = False  # the tail of a rejected piece
            elif len(piece) > self._max:
                out.append(self._overlong())
            elif piece:
                out.append(piece)
        rest = buf[start:]
        if len(rest) > self._max:
            if not self._skipping:
                out.append(self._overlong())
                self._skipping = True
            rest = b""
        self._buf = rest
        return out

    def _overlong(self) -> Rejection:
        return Rejection("overlong", f"{self._unit} longer than {self._max} bytes")


def _text(line: bytes) -> str | Rejection:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("invalid_utf8", "not valid UTF-8")
    if _CONTROL.search(line):
        return Rejection("garbage", "control characters in a text line")
    return text


class LineDecoder:
    """One frame per text line (valid UTF-8 without control characters)."""

    def __init__(self, max_frame: int) -> None:
        self._split = _Splitter(_LINE_END, max_frame, "line")

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for piece in self._split.split(data):
            if isinstance(piece, Rejection):
                out.append(piece)
                continue
            text = _text(piece)
            event = text if isinstance(text, Rejection) else self.frame(piece, text)
            if event is not None:
                out.append(event)
        return out

    def frame(self, line: bytes, text: str) -> Event | None:
        """The frame (or rejection) for one valid text line; None skips it."""
        return Frame(line)


class JsonDecoder(LineDecoder):
    """JSON lines; the top-level string and integer members are the frame's fields."""

    def frame(self, line: bytes, text: str) -> Event:
        try:
            value = json.loads(text)
        except ValueError:
            return Rejection("invalid_json", "not a JSON document")
        fields: dict[str, str] = {}
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str):
                    fields[key] = item
                elif isinstance(item, int) and not isinstance(item, bool):
                    fields[key] = str(item)
        return Frame(line, fields)


class CsvDecoder(LineDecoder):
    """CSV lines with named columns, published as a JSON object of strings.

    A line equal to the column names (a device printing its header) is skipped.
    """

    def __init__(self, max_frame: int, columns: Sequence[str], delimiter: str = ",") -> None:
        super().__init__(max_frame)
        self._columns = tuple(columns)
        self._delimiter = delimiter

    def frame(self, line: bytes, text: str) -> Event | None:
        try:
            values = next(csv.reader([text], delimiter=self._delimiter, strict=True))
        except csv.Error:
            return Rejection("bad_csv", "malformed CSV quoting")
        if tuple(values) == self._columns:
            return None
        if len(values) != len(self._columns):
            return Rejection(
                "bad_columns", f"{len(values)} values for {len(self._columns)} columns"
            )
        fields = dict(zip(self._columns, values, strict=True))
        return Frame(json.dumps(fields, separators=(",", ":")).encode(), fields)


def nmea_checksum(body: bytes) -> int:
    """XOR of the bytes between ``$``/``!`` and ``*``."""
    total = 0
    for byte in body:
        total ^= byte
    return total


class NmeaDecoder(LineDecoder):
    """NMEA 0183 sentences, ``$TTSSS,...*hh``, checksum verified.

    Fields: ``sentence`` (``GPGGA``), ``talker`` (``GP``), ``type`` (``GGA``).
    """

    def frame(self, line: bytes, text: str) -> Event:
        match = _NMEA.match(line)
        if line[:1] not in (b"$", b"!"):
            return Rejection("garbage", "not an NMEA sentence (no leading $ or !)")
        if match is None:
            return Rejection("bad_checksum", "no *hh checksum")
        body, given = match.group(1), int(match.group(2), 16)
        if nmea_checksum(body) != given:
            return Rejection("bad_checksum", "checksum does not match")
        sentence = body.split(b",", 1)[0].decode()
        return Frame(line, {"sentence": sentence, "talker": sentence[:2], "type": sentence[2:]})


# ---- COBS ------------------------------------------------------------------------------


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing of ``data`` (no trailing zero)."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out.append(255)
            out += block
            block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """The inverse of ``cobs_encode``; ValueError for a malformed block."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        code = data[pos]
        if code == 0:
            raise ValueError("zero byte inside a COBS frame")
        end = pos + code
        if end > len(data):
            raise ValueError("COBS block runs past the end of the frame")
        block = data[pos + 1 : end]
        if 0 in block:
            raise ValueError("zero byte inside a COBS frame")
        out += block
        pos = end
        if code < 255 and pos < len(data):
            out.append(0)
    return bytes(out)


class CobsDecoder:
    """COBS frames ending with a zero byte; decoded payloads of at most ``max_frame``."""

    def __init__(self, max_frame: int) -> None:
        self._split = _Splitter(_ZERO, max_frame + max_frame // 254 + 1, "COBS frame")

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for piece in self._split.split(data):
            if isinstance(piece, Rejection):
                out.append(piece)
                continue
            try:
                out.append(Frame(cobs_decode(piece)))
            except ValueError as exc:
                out.append(Rejection("garbage", str(exc)))
        return out


# ---- length prefix ----------------------------------------------------------------------


class LengthDecoder:
    """Frames of a big-endian ``width``-byte length followed by that many bytes."""

    def __init__(self, max_frame: int, width: int = 2) -> None:
        if width not in (1, 2, 4):
            raise ValueError(f"length width must be 1, 2 or 4, got {width}")
        self._max = max_frame
        self._width = width
        self._buf = b""
        self._resync = False  # sliding over bad headers, already rejected once

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf + data
        out: list[Event] = []
        pos = 0
        width = self._width
        while len(buf) - pos >= width:
            size = int.from_bytes(buf[pos : pos + width], "big")
            if size > self._max:
                if not self._resync:
                    out.append(Rejection("overlong", f"length header over {self._max} bytes"))
                    self._resync = True
                pos += 1
                continue
            if len(buf) - pos - width < size:
                break
            start = pos + width
            out.append(Frame(buf[start : start + size]))
            self._resync = False
            pos = start + size
        self._buf = buf[pos:]
        return out


def length_encode(data: bytes, width: int = 2) -> bytes:
    if len(data) >= 1 << (8 * width):
        raise ValueError(f"{len(data)} bytes do not fit a {width}-byte length")
    return len(data).to_bytes(width, "big") + data


def make_decoder(
    framing: str,
    *,
    max_frame: int,
    columns: Sequence[str] = (),
    csv_delimiter: str = ",",
    length_bytes: int = 2,
) -> Decoder:
    if framing == "lines":
        return LineDecoder(max_frame)
    if framing == "json":
        return JsonDecoder(max_frame)
    if framing == "csv":
        return CsvDecoder(max_frame, columns, csv_delimiter)
    if framing == "nmea":
        return NmeaDecoder(max_frame)
    if framing == "cobs":
        return CobsDecoder(max_frame)
    if framing == "length":
        return LengthDecoder(max_frame, length_bytes)
    raise ValueError(f"unknown framing {framing!r}")


def encode_downlink(
    framing: str, data: bytes, *, line_ending: bytes = b"\r\n", length_bytes: int = 2
) -> bytes:
    """Bytes to write to the port for a downlink message's payload.

    Text framings add the line ending (NMEA also ``$`` and the checksum when
    the payload is a bare sentence body); COBS stuffs and adds the zero;
    length-prefixed adds the header.
    """
    if framing == "cobs":
        return cobs_encode(data) + b"\x00"
    if framing == "length":
        return length_encode(data, length_bytes)
    data = data.rstrip(b"\r\n")
    if framing == "nmea" and not _NMEA.match(data):
        body = data.lstrip(b"$")
        data = b"$%s*%02X" % (body, nmea_checksum(body))
    return data + line_ending
