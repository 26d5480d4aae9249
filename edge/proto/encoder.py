"""Wire encoding of NATS client protocol operations: values in, bytes out.

Pure functions, used by the server side (INFO, MSG, HMSG, -ERR) and by tests and
clients (CONNECT, PUB, HPUB, SUB, UNSUB). Subjects, reply subjects, queue names and
sids are ``bytes``; an empty ``reply`` means "no reply subject". Arguments are
separated by single spaces and every line ends with ``\\r\\n``, as nats-server
writes them (INFO additionally has a space before the CRLF).

Nothing here validates subjects: callers that take subjects from the outside check
them first (``edge.subjects``). Header blocks are validated when built
(``encode_headers``) because a stray CR or LF would corrupt the framing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

__all__ = [
    "OK",
    "PING",
    "PONG",
    "encode_connect",
    "encode_err",
    "encode_headers",
    "encode_hmsg",
    "encode_hpub",
    "encode_info",
    "encode_msg",
    "encode_pub",
    "encode_sub",
    "encode_unsub",
    "parse_headers",
]

CRLF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
OK = b"+OK\r\n"

HEADER_VERSION = b"NATS/1.0"
_JSON_SEPARATORS = (",", ":")
# Bytes that may not appear in a header name (besides controls, checked separately).
_NAME_FORBIDDEN = frozenset(b": \t")


def _json(fields: Mapping[str, object]) -> bytes:
    return json.dumps(dict(fields), separators=_JSON_SEPARATORS, ensure_ascii=False).encode()


def encode_info(fields: Mapping[str, object]) -> bytes:
    """``INFO {json} \\r\\n``: compact JSON and, as nats-server writes it, a space before CRLF."""
    return b"INFO " + _json(fields) + b" \r\n"


def encode_connect(options: Mapping[str, object]) -> bytes:
    """``CONNECT {json}\\r\\n`` with compact JSON."""
    return b"CONNECT " + _json(options) + CRLF


def encode_err(text: str) -> bytes:
    """``-ERR 'text'\\r\\n`` (the text goes inside single quotes, unescaped)."""
    if "\r" in text or "\n" in text:
        raise ValueError("an -ERR text cannot contain CR or LF")
    return b"-ERR '" + text.encode() + b"'\r\n"


def _size(n: int) -> bytes:
    return str(n).encode()


def encode_msg(subject: bytes, sid: bytes, reply: bytes, payload: bytes) -> bytes:
    """``MSG subject sid [reply] size\\r\\npayload\\r\\n``."""
    if reply:
        head = b"MSG %b %b %b %d\r\n" % (subject, sid, reply, len(payload))
    else:
        head = b"MSG %b %b %d\r\n" % (subject, sid, len(payload))
    return head + payload + CRLF


def encode_hmsg(
    subject: bytes, sid: bytes, reply: bytes, headers_block: bytes, payload: bytes
) -> bytes:
    """``HMSG subject sid [reply] hdr_size total_size\\r\\nheaders payload\\r\\n``."""
    hdr = len(headers_block)
    total = hdr + len(payload)
    if reply:
        head = b"HMSG %b %b %b %d %d\r\n" % (subject, sid, reply, hdr, total)
    else:
        head = b"HMSG %b %b %d %d\r\n" % (subject, sid, hdr, total)
    return head + headers_block + payload + CRLF


def encode_pub(subject: bytes, reply: bytes, payload: bytes) -> bytes:
    """``PUB subject [reply] size\\r\\npayload\\r\\n``."""
    if reply:
        head = b"PUB %b %b %d\r\n" % (subject, reply, len(payload))
    else:
        head = b"PUB %b %d\r\n" % (subject, len(payload))
    return head + payload + CRLF


def encode_hpub(subject: bytes, reply: bytes, headers_block: bytes, payload: bytes) -> bytes:
    """``HPUB subject [reply] hdr_size total_size\\r\\nheaders payload\\r\\n``."""
    hdr = len(headers_block)
    total = hdr + len(payload)
    if reply:
        head = b"HPUB %b %b %d %d\r\n" % (subject, reply, hdr, total)
    else:
        head = b"HPUB %b %d %d\r\n" % (subject, hdr, total)
    return head + headers_block + payload + CRLF


def encode_sub(subject: bytes, queue: bytes | None, sid: bytes) -> bytes:
    """``SUB subject [queue] sid\\r\\n``; ``None`` or ``b""`` means no queue group."""
    if queue:
        return b"SUB %b %b %b\r\n" % (subject, queue, sid)
    return b"SUB %b %b\r\n" % (subject, sid)


def encode_unsub(sid: bytes, max_msgs: int | None = None) -> bytes:
    """``UNSUB sid [max_msgs]\\r\\n``."""
    if max_msgs is None:
        return b"UNSUB %b\r\n" % sid
    if max_msgs < 0:
        raise ValueError("max_msgs cannot be negative")
    return b"UNSUB %b %d\r\n" % (sid, max_msgs)


def _check_text(what: str, value: str) -> bytes:
    raw = value.encode()
    if b"\r" in raw or b"\n" in raw:
        raise ValueError(f"header {what} cannot contain CR or LF: {value!r}")
    return raw


def encode_headers(
    status: int | None, description: str, headers: Sequence[tuple[str, str]]
) -> bytes:
    """A header block: ``NATS/1.0[ code[ description]]``, ``Name: value`` lines, a blank line.

    ``status`` is a three-digit code (``503`` for no responders) or ``None``; a
    description needs a status. Names are non-empty and hold no ``:``, whitespace
    or control characters; values and descriptions hold no CR or LF. Text is UTF-8.
    Readers drop whitespace around values, so ``parse_headers`` gives back what was
    encoded only for values without leading or trailing spaces or tabs.
    """
    parts = [HEADER_VERSION]
    if status is not None:
        if not 100 <= status <= 999:
            raise ValueError(f"header status must have three digits: {status}")
        parts.append(b" %d" % status)
        if description:
            parts.append(b" " + _check_text("description", description))
    elif description:
        raise ValueError("a header description needs a status code")
    parts.append(CRLF)
    for name, value in headers:
        raw_name = name.encode()
        if not raw_name or any(b < 0x20 or b == 0x7F or b in _NAME_FORBIDDEN for b in raw_name):
            raise ValueError(f"invalid header name: {name!r}")
        parts.append(raw_name + b": " + _check_text("value", value) + CRLF)
    parts.append(CRLF)
    return b"".join(parts)


def parse_headers(block: bytes) -> tuple[int | None, str, list[tuple[str, str]]]:
    """Decode a header block into ``(status, description, [(name, value), ...])``.

    The inverse of ``encode_headers``, read as NATS clients read it: the status
    line is ``NATS/1.0`` optionally followed by a three-digit code and a
    description; whitespace around values and the description is dropped; names
    keep their case and order, repeated names are kept. ``ValueError`` if the block
    is malformed.
    """
    if not block.startswith(HEADER_VERSION) or not block.endswith(b"\r\n\r\n"):
        raise ValueError("a header block starts with NATS/1.0 and ends with a blank line")
    lines = block[: -len(b"\r\n\r\n")].split(CRLF)
    first = lines[0][len(HEADER_VERSION) :]
    status: int | None = None
    description = ""
    if first:
        if first[:1] not in (b" ", b"\t"):
            raise ValueError(f"malformed header status line: {lines[0]!r}")
        rest = first.strip(b" \t")
        if rest:
            code, desc = rest[:3], rest[3:]
            if len(code) != 3 or not code.isdigit() or desc[:1] not in (b"", b" ", b"\t"):
                raise ValueError(f"malformed header status: {lines[0]!r}")
            if b"\r" in desc or b"\n" in desc:
                raise ValueError(f"malformed header status: {lines[0]!r}")
            status = int(code)
            description = desc.strip(b" \t").decode()
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or any(b < 0x20 or b in _NAME_FORBIDDEN for b in name):
            raise ValueError(f"malformed header line: {line!r}")
        if b"\r" in value or b"\n" in value:
            raise ValueError(f"malformed header line: {line!r}")
        headers.append((name.decode(), value.strip(b" \t").decode()))
    return status, description, headers
