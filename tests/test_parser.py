"""The client protocol parser: valid forms, the failure corpus, arbitrary read splits.

Expected behaviour is nats-server's (protocol.md); the cases marked "probed" were
checked by hand against the local nats-server v2.9.10 with a raw socket.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.proto import errors
from edge.proto.encoder import (
    encode_connect,
    encode_headers,
    encode_hpub,
    encode_info,
    encode_pub,
    encode_sub,
    encode_unsub,
)
from edge.proto.errors import ProtocolError
from edge.proto.events import (
    PING,
    PONG,
    Connect,
    Event,
    Info,
    ParseFailed,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
)
from edge.proto.parser import ClientParser

MiB = 1024 * 1024
HDR = b"NATS/1.0\r\nA: B\r\n\r\n"  # 18 bytes, as captured
NATS_PY_CONNECT = (
    b'{"echo": true, "headers": true, "lang": "python3", "name": "n", "no_responders": true,'
    b' "pedantic": false, "protocol": 1, "verbose": false, "version": "2.16.0"}'
)


def parse(data: bytes, **limits: int) -> list[Event]:
    return ClientParser(**limits).feed(data)


def feed_pieces(pieces: list[bytes], **limits: int) -> list[Event]:
    parser = ClientParser(**limits)
    events: list[Event] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events


def dribble(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def assert_error(actual: ProtocolError, expected: ProtocolError) -> None:
    """Same ``-ERR`` text (or none) and the same close flag."""
    assert (actual.err, actual.close) == (expected.err, expected.close)


def failure_of(events: list[Event]) -> ProtocolError:
    assert events, "expected a ParseFailed event"
    last = events[-1]
    assert isinstance(last, ParseFailed), f"no failure, got {events!r}"
    assert not any(isinstance(e, ParseFailed) for e in events[:-1])
    return last.error


# --------------------------------------------------------------- valid forms

VALID: list[tuple[bytes, list[Event]]] = [
    # PING / PONG, any case, lax about what follows (nats-server reads to the newline)
    (b"PING\r\n", [PING]),
    (b"PONG\r\n", [PONG]),
    (b"ping\r\n", [PING]),
    (b"PiNg\r\n", [PING]),
    (b"pong\r\n", [PONG]),
    (b"PINGX\r\n", [PING]),  # probed: PONG
    (b"PONGX\r\n", [PONG]),
    (b"PING foo\r\n", [PING]),
    (b"PING\n", [PING]),  # bare LF, probed
    (b"PING\r\nPING\r\n", [PING, PING]),
    # +OK from a client is ignored
    (b"+OK\r\n", []),
    (b"+ok\r\n", []),
    (b"+OKAY\r\n", []),
    (b"+OK\r\nPING\r\n", [PING]),
    # INFO from a client is passed up (nats-server decodes and ignores it)
    (b"INFO {}\r\n", [Info(b"{}")]),
    (b"INFO {} \r\n", [Info(b"{}")]),
    (b'info\t{"a":1}\r\n', [Info(b'{"a":1}')]),
    # CONNECT
    (b"CONNECT {}\r\n", [Connect(b"{}")]),
    (b"CONNECT\t{}\r\n", [Connect(b"{}")]),
    (b"CONNECT  \t {}\r\n", [Connect(b"{}")]),
    (b"connect {}\r\n", [Connect(b"{}")]),
    (b"Connect {}\n", [Connect(b"{}")]),
    (b"CONNECT{}\r\n", [Connect(b"{}")]),  # probed: nats-server accepts it too
    (b"CONNECT " + NATS_PY_CONNECT + b"\r\n", [Connect(NATS_PY_CONNECT)]),
    # SUB
    (b"SUB foo 1\r\n", [Sub(b"foo", None, b"1")]),
    (b"SUB foo.* q1 2\r\n", [Sub(b"foo.*", b"q1", b"2")]),
    (b"SUB $SRV.PING  1\r\n", [Sub(b"$SRV.PING", None, b"1")]),  # nats-py, empty queue
    (b"SUB foo 1 \r\n", [Sub(b"foo", None, b"1")]),
    (b"SUB\tfoo\t\tq\t1\t\r\n", [Sub(b"foo", b"q", b"1")]),
    (b"sUb \t foo  \t 1\r\n", [Sub(b"foo", None, b"1")]),
    (b"sub foo 4\r\n", [Sub(b"foo", None, b"4")]),
    (b"SUB foo abc\n", [Sub(b"foo", None, b"abc")]),
    (b"SUB > q> q*\r\n", [Sub(b">", b"q>", b"q*")]),
    ("SUB ñ.ü 1\r\n".encode(), [Sub("ñ.ü".encode(), None, b"1")]),
    # UNSUB
    (b"UNSUB 1\r\n", [Unsub(b"1", None)]),
    (b"UNSUB 10 \r\n", [Unsub(b"10", None)]),  # nats-py
    (b"UNSUB abc\r\n", [Unsub(b"abc", None)]),
    (b"UNSUB 1 5\r\n", [Unsub(b"1", 5)]),
    (b"unsub\t1\t\t5\t\n", [Unsub(b"1", 5)]),
    (b"UNSUB 1 x\r\n", [Unsub(b"1", None)]),  # malformed max: remove now
    (b"UNSUB 1 0\r\n", [Unsub(b"1", None)]),
    (b"UNSUB 1 -1\r\n", [Unsub(b"1", None)]),
    (b"UNSUB 1 +5\r\n", [Unsub(b"1", None)]),
    (b"UNSUB 1 999999999\r\n", [Unsub(b"1", 999999999)]),  # probed: the largest nats-server reads
    # PUB
    (b"PUB foo 5\r\nhello\r\n", [Pub(b"foo", b"", 0, b"hello")]),
    (b"PUB foo.bar reply.to 3\r\nabc\r\n", [Pub(b"foo.bar", b"reply.to", 0, b"abc")]),
    (b"PUB subj  5\r\nhello\r\n", [Pub(b"subj", b"", 0, b"hello")]),  # nats-py, empty reply
    (b"PUB foo 5 \r\nhello\r\n", [Pub(b"foo", b"", 0, b"hello")]),
    (b"PUB\tfoo\t\tr\t5\r\nhello\r\n", [Pub(b"foo", b"r", 0, b"hello")]),
    (b"pub foo 0\r\n\r\n", [Pub(b"foo", b"", 0, b"")]),
    (b"Pub foo 1\r\nx\r\n", [Pub(b"foo", b"", 0, b"x")]),
    (b"PUB foo 5\nhello\r\n", [Pub(b"foo", b"", 0, b"hello")]),  # bare LF on the control line
    (b"PUB nobody.home _INBOX.abc 0\r\n\r\n", [Pub(b"nobody.home", b"_INBOX.abc", 0, b"")]),
    (b"PUB foo 2\r\n\r\n\r\n", [Pub(b"foo", b"", 0, b"\r\n")]),
    (b"PUB foo 12\r\nPING\r\nPONG\r\n\r\n", [Pub(b"foo", b"", 0, b"PING\r\nPONG\r\n")]),
    (b"PUB foo 3\r\n\n\r\r\r\n", [Pub(b"foo", b"", 0, b"\n\r\r")]),
    (b"PUB foo 003\r\nabc\r\n", [Pub(b"foo", b"", 0, b"abc")]),
    (b"PUB foo 1048576\r\n" + b"x" * MiB + b"\r\n", [Pub(b"foo", b"", 0, b"x" * MiB)]),
    # HPUB
    (b"HPUB foo 18 23\r\n" + HDR + b"hello\r\n", [Pub(b"foo", b"", 18, HDR + b"hello")]),
    (b"HPUB foo bar 18 18\r\n" + HDR + b"\r\n", [Pub(b"foo", b"bar", 18, HDR)]),
    (b"hpub\tfoo  r \t18 20 \r\n" + HDR + b"hi\r\n", [Pub(b"foo", b"r", 18, HDR + b"hi")]),
    (b"HPUB foo 0 2\r\nhi\r\n", [Pub(b"foo", b"", 0, b"hi")]),  # hdr 0: a plain message
    (b"HPUB foo 0 0\r\n\r\n", [Pub(b"foo", b"", 0, b"")]),
    (
        b"HPUB _INBOX.x 16 16\r\nNATS/1.0 503\r\n\r\n\r\n",
        [Pub(b"_INBOX.x", b"", 16, b"NATS/1.0 503\r\n\r\n")],
    ),
    # a batch
    (
        b"CONNECT {}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\nUNSUB 1\r\nPING\r\n",
        [
            Connect(b"{}"),
            Sub(b"foo", None, b"1"),
            Pub(b"foo", b"", 0, b"hi"),
            Unsub(b"1", None),
            PING,
        ],
    ),
    (b"", []),
]


@pytest.mark.parametrize(("data", "expected"), VALID, ids=[repr(d[:40]) for d, _ in VALID])
def test_valid(data: bytes, expected: list[Event]) -> None:
    assert parse(data) == expected
    assert feed_pieces([data[: len(data) // 2], data[len(data) // 2 :]]) == expected


@pytest.mark.parametrize(("data", "expected"), [v for v in VALID if len(v[0]) < 1000], ids=repr)
def test_valid_dribbled(data: bytes, expected: list[Event]) -> None:
    assert feed_pieces(dribble(data)) == expected


def test_pub_event_types() -> None:
    (pub,) = parse(b"PUB foo r 2\r\nhi\r\n")
    assert type(pub) is Pub
    assert (pub.subject, pub.reply, pub.hdr, pub.data) == (b"foo", b"r", 0, b"hi")
    assert all(type(x) is bytes for x in (pub.subject, pub.reply, pub.data))
    (sub,) = parse(b"SUB foo q 1\r\n")
    assert all(type(x) is bytes for x in (sub.subject, sub.queue, sub.sid))
    assert isinstance(parse(b"PING\r\n")[0], Ping)
    assert isinstance(parse(b"PONG\r\n")[0], Pong)


def test_nats_py_connect_json_is_passed_verbatim() -> None:
    (event,) = parse(b"CONNECT " + NATS_PY_CONNECT + b"\r\n")
    assert isinstance(event, Connect)
    assert json.loads(event.raw)["lang"] == "python3"


def test_incomplete_input_waits() -> None:
    parser = ClientParser()
    assert parser.feed(b"PUB foo 5\r\nhel") == []
    assert parser.feed(b"lo") == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\nPI") == [Pub(b"foo", b"", 0, b"hello")]
    assert parser.feed(b"NG\r") == []
    assert parser.feed(b"\n") == [PING]
    assert not parser.failed


# --------------------------------------------------------------- failures

UNKNOWN = errors.UNKNOWN_OP
BAD = errors.BAD_ARGUMENTS
MAX_P = errors.MAX_PAYLOAD

FAILURES: list[tuple[bytes, ProtocolError]] = [
    # unknown operations: -ERR 'Unknown Protocol Operation' and close (all probed)
    (b"FOO bar\r\n", UNKNOWN),
    (b"P\r\n", UNKNOWN),
    (b"PI\r\n", UNKNOWN),
    (b"\r\n", UNKNOWN),
    (b"\n", UNKNOWN),
    (b" PING\r\n", UNKNOWN),
    (b"\tPING\r\n", UNKNOWN),
    (b"MSG foo 1 1\r\nx\r\n", UNKNOWN),
    (b"MSG\r\n", UNKNOWN),
    (b"HMSG foo 1 0 0\r\n\r\n", UNKNOWN),
    (b"-ERR\r\n", UNKNOWN),
    (b"PUB\r\n", UNKNOWN),
    (b"SUB\r\n", UNKNOWN),
    (b"UNSUB\r\n", UNKNOWN),
    (b"HPUB\r\n", UNKNOWN),
    (b"PUBX foo 1\r\n", UNKNOWN),
    (b"UNSUBX 1\r\n", UNKNOWN),
    (b"SUBX foo 1\r\n", UNKNOWN),
    (b"+O\r\n", UNKNOWN),
    (b"+\r\n", UNKNOWN),
    # payload not followed by CRLF
    (b"PUB foo 3\r\nhello\r\n", UNKNOWN),
    (b"PUB foo 1\r\nx\nPING\r\n", UNKNOWN),
    (b"PUB foo 1\r\nx\r\r\n", UNKNOWN),
    (b"PUB foo 1\r\nxyz", UNKNOWN),
    (b"pub foo 1\r\nx\n\r", UNKNOWN),
    (b"PUB foo 0\r\nx\r\n", UNKNOWN),
    (b"HPUB foo 18 20\r\n" + HDR + b"hiX\r\n", UNKNOWN),
    # wrong argument counts and sizes: close without -ERR (all probed)
    (b"PUB foo\r\n", BAD),
    (b"PUB \r\n", BAD),
    (b"PUB\tfoo\r\n", BAD),
    (b"pub foo\r\n", BAD),
    (b"PUB a b c d\r\n", BAD),
    (b"PUB foo -1\r\n", BAD),
    (b"PUB foo +1\r\n", BAD),
    (b"PUB foo abc\r\n", BAD),
    (b"PUB foo 1.0\r\n", BAD),
    (b"PUB foo 0x1\r\n", BAD),
    (b"PUB foo bar x\r\n", BAD),
    (b"PUB foo \xd9\xa1\r\n", BAD),  # ARABIC-INDIC DIGIT ONE is not a digit on the wire
    (b"SUB foo\r\n", BAD),
    (b"SUB \r\n", BAD),
    (b"SUB x y z w\r\n", BAD),
    (b"UNSUB \r\n", BAD),
    (b"UNSUB 1 2 3\r\n", BAD),
    (b"HPUB \r\n", BAD),
    (b"HPUB foo 5 4\r\n", BAD),  # header larger than total
    (b"HPUB foo 4\r\n", BAD),
    (b"HPUB foo r x 4\r\n", BAD),
    (b"HPUB foo 4 x\r\n", BAD),
    (b"HPUB a b c d e\r\n", BAD),
    (b"HPUB foo 5 4000000\r\n", MAX_P),
    # a client sending -ERR: close, no answer (probed)
    (b"-ERR 'x'\r\n", errors.PEER_ERROR),
    (b"-err 'x'\r\n", errors.PEER_ERROR),
    (b"-ERR\t'Stale Connection'\r\n", errors.PEER_ERROR),
    # max payload, decided by the control line alone
    (b"PUB foo 1048577\r\n", MAX_P),
    (b"PUB foo r 1048577\r\n", MAX_P),
    (b"pub foo 1048577\r\n", MAX_P),
    (b"HPUB foo 0 1048577\r\n", MAX_P),
    (b"HPUB foo r 18 1048577\r\n", MAX_P),
    (b"PUB foo 999999999\r\n", MAX_P),  # probed
]


@pytest.mark.parametrize(("data", "expected"), FAILURES, ids=[repr(d) for d, _ in FAILURES])
def test_failure(data: bytes, expected: ProtocolError) -> None:
    parser = ClientParser()
    assert_error(failure_of(parser.feed(data)), expected)
    assert parser.failed
    assert parser.feed(b"PING\r\n") == []
    assert parser.feed(b"PUB foo 1\r\nx\r\n") == []


@pytest.mark.parametrize(("data", "expected"), FAILURES, ids=[repr(d) for d, _ in FAILURES])
def test_failure_dribbled(data: bytes, expected: ProtocolError) -> None:
    parser = ClientParser()
    events: list[Event] = []
    for piece in dribble(data):
        events.extend(parser.feed(piece))
    assert_error(failure_of(events), expected)
    assert parser.feed(b"PING\r\n") == []


def test_error_texts_and_close_flags() -> None:
    assert (UNKNOWN.err, UNKNOWN.close) == ("Unknown Protocol Operation", True)
    assert (MAX_P.err, MAX_P.close) == ("Maximum Payload Violation", True)
    assert (errors.MAX_CONTROL_LINE.err, errors.MAX_CONTROL_LINE.close) == (
        "maximum control line exceeded",
        True,
    )
    assert (BAD.err, BAD.close) == (None, True)
    assert (errors.PEER_ERROR.err, errors.PEER_ERROR.close) == (None, True)
    assert UNKNOWN.wire() == b"-ERR 'Unknown Protocol Operation'\r\n"
    assert BAD.wire() == b""


def test_protocol_error_survives_a_generator_context_manager() -> None:
    # Regression test: Python assigns attributes of a propagating exception
    # (contextlib's @contextmanager / @asynccontextmanager `__exit__` sets
    # `exc.__traceback__`, `add_note()` sets `__notes__`), so ProtocolError must not be
    # a frozen dataclass.
    @contextlib.contextmanager
    def block() -> Iterator[None]:
        yield

    with pytest.raises(ProtocolError), block():
        raise errors.BAD_ARGUMENTS
    try:
        raise errors.UNKNOWN_OP
    except ProtocolError as exc:
        exc.add_note("context")


def test_events_before_a_failure_are_kept() -> None:
    parser = ClientParser()
    events = parser.feed(b"PING\r\nSUB foo 1\r\nFOO\r\nPING\r\n")
    assert events[:2] == [PING, Sub(b"foo", None, b"1")]
    assert_error(failure_of(events), UNKNOWN)
    assert len(events) == 3


def test_failure_while_a_payload_is_pending() -> None:
    parser = ClientParser()
    assert parser.feed(b"PUB foo 3\r\nab") == []
    assert_error(failure_of(parser.feed(b"cX\r\nPING\r\n")), UNKNOWN)
    assert parser.feed(b"PING\r\n") == []


# max payload: the error comes before any payload byte arrives


@pytest.mark.parametrize(
    "line", [b"PUB foo 17\r\n", b"PUB foo r 17\r\n", b"HPUB foo 0 17\r\n", b"HPUB foo 16 17\r\n"]
)
def test_small_max_payload(line: bytes) -> None:
    assert_error(failure_of(parse(line, max_payload=16)), MAX_P)


def test_small_max_payload_boundary() -> None:
    assert parse(b"PUB foo 16\r\n" + b"x" * 16 + b"\r\n", max_payload=16) == [
        Pub(b"foo", b"", 0, b"x" * 16)
    ]
    assert parse(b"HPUB foo 16 16\r\n" + b"y" * 16 + b"\r\n", max_payload=16) == [
        Pub(b"foo", b"", 16, b"y" * 16)
    ]


def test_default_max_payload_boundary_waits_for_the_payload() -> None:
    parser = ClientParser()
    assert parser.feed(b"PUB foo 1048576\r\n") == []
    assert not parser.failed
    assert parser.feed(b"HPUB x 0 1048576\r\n") == []  # payload bytes of that PUB
    assert not parser.failed


def test_max_payload_before_payload_split_control_line() -> None:
    parser = ClientParser(max_payload=16)
    assert parser.feed(b"PUB foo 1") == []
    assert_error(failure_of(parser.feed(b"7\r\n")), MAX_P)


# max control line

_MCL = 4096


def _sub_line(length: int, ending: bytes = b"\r\n") -> bytes:
    """A SUB control line of exactly ``length`` bytes before its line ending."""
    line = b"SUB " + b"a" * (length - 6) + b" 1"
    assert len(line) == length
    return line + ending


def test_control_line_at_the_limit_is_accepted() -> None:
    for ending in (b"\r\n", b"\n"):
        line = _sub_line(_MCL, ending)
        expected = [Sub(b"a" * (_MCL - 6), None, b"1")]
        assert parse(line) == expected
        assert feed_pieces([line[:2000], line[2000:4000], line[4000:]]) == expected
        assert feed_pieces([line[:-1], line[-1:]]) == expected


@pytest.mark.parametrize("length", [4200, 5000, 70_000])
def test_control_line_over_the_limit_complete(length: int) -> None:
    assert_error(failure_of(parse(_sub_line(length))), errors.MAX_CONTROL_LINE)


@pytest.mark.parametrize("length", [4200, 5000])
def test_control_line_over_the_limit_split(length: int) -> None:
    line = _sub_line(length)
    for cut in (100, 2000, 4090, 4097, len(line) - 2, len(line) - 1):
        events = feed_pieces([line[:cut], line[cut:]])
        assert_error(failure_of(events), errors.MAX_CONTROL_LINE)


def test_unterminated_line_over_the_limit_fails_without_a_newline() -> None:
    parser = ClientParser()
    assert parser.feed(b"SUB " + b"a" * 3000) == []
    assert_error(failure_of(parser.feed(b"a" * 3000)), errors.MAX_CONTROL_LINE)
    assert parser.feed(b" 1\r\n") == []

    assert_error(failure_of(parse(b"PUB " + b"x" * 10_000)), errors.MAX_CONTROL_LINE)
    assert_error(failure_of(parse(b"X" * 5000)), errors.MAX_CONTROL_LINE)


def test_unterminated_line_at_the_limit_keeps_waiting() -> None:
    parser = ClientParser()
    assert parser.feed(_sub_line(_MCL, b"\r")) == []  # could still be a valid line
    assert parser.feed(b"\n") == [Sub(b"a" * (_MCL - 6), None, b"1")]


def test_unterminated_line_dribbled_fails_at_the_limit() -> None:
    parser = ClientParser(max_control_line=64)
    events: list[Event] = []
    fed = 0
    for piece in dribble(b"SUB " + b"a" * 200):
        events.extend(parser.feed(piece))
        fed += 1
        if events:
            break
    assert_error(failure_of(events), errors.MAX_CONTROL_LINE)
    assert fed <= 64 + 8  # the limit, a possible \r, and the op with its separator


@pytest.mark.parametrize(
    "line",
    [
        b"PUB " + b"s" * 5000 + b" 1\r\nx\r\n",
        b"pub " + b"s" * 5000 + b" 1\r\nx\r\n",
        b"HPUB " + b"s" * 5000 + b" 0 1\r\nx\r\n",
        b"CONNECT {" + b" " * 5000 + b"}\r\n",
        b"UNSUB " + b"1" * 5000 + b"\r\n",
        b"INFO {" + b" " * 5000 + b"}\r\n",
    ],
)
def test_every_control_line_is_limited(line: bytes) -> None:
    assert_error(failure_of(parse(line)), errors.MAX_CONTROL_LINE)


def test_configured_max_control_line() -> None:
    ok = b"SUB " + b"a" * 58 + b" 1\r\n"  # 64 bytes before CRLF
    assert parse(ok, max_control_line=64) == [Sub(b"a" * 58, None, b"1")]
    too_long = b"SUB " + b"a" * 63 + b" 1\r\n"  # 65 bytes of arguments
    assert_error(failure_of(parse(too_long, max_control_line=64)), errors.MAX_CONTROL_LINE)


def test_payload_is_not_a_control_line() -> None:
    # A payload far over max_control_line, without any newline, is fine.
    data = b"PUB foo 10000\r\n" + b"z" * 10_000 + b"\r\n"
    assert parse(data) == [Pub(b"foo", b"", 0, b"z" * 10_000)]
    assert feed_pieces([data[:20], data[20:5000], data[5000:]]) == [
        Pub(b"foo", b"", 0, b"z" * 10_000)
    ]


# Divergences from nats-server v2.9.10 (probed with a raw socket).


@pytest.mark.parametrize(
    "pieces",
    [
        [b"PUB foo 1\r\nx\n"],
        [b"PUB foo 1\r\n", b"x\n"],
        [b"PUB foo 1\r\nx", b"\n"],
        [b"HPUB foo 0 1\r\nxX"],
        [b"PUB foo 3\r\nab", b"cd"],
    ],
)
def test_bad_byte_right_after_the_payload_fails_at_once(pieces: list[bytes]) -> None:
    # Regression test (nats-server behaviour): nats-server fails on the first byte after the
    # payload that is not `\r` (probed: `PUB foo 1\r\nx\n` alone draws -ERR 'Unknown Protocol
    # Operation' and the close).
    assert_error(failure_of(feed_pieces(pieces)), UNKNOWN)


def test_control_line_limit_counts_the_arguments_only() -> None:
    # Regression test (nats-server behaviour): nats-server measures the argument part of the
    # line (after the op and its separators): a SUB line of 4100 bytes with 4096 bytes of
    # arguments is accepted (probed), `SUB ` + 4097 argument bytes is refused.
    line = b"SUB " + b"a" * 4094 + b" 1\r\n"  # arguments: 4096 bytes
    assert parse(line) == [Sub(b"a" * 4094, None, b"1")]
    assert_error(failure_of(parse(b"SUB " + b"a" * 4095 + b" 1\r\n")), errors.MAX_CONTROL_LINE)


@pytest.mark.parametrize(
    "line",
    [b"PUB foo 0000000003\r\nabc\r\n", b"PUB foo 10000000000\r\n", b"HPUB foo 0 0000000002\r\n"],
)
def test_sizes_over_nine_digits_are_malformed(line: bytes) -> None:
    # Regression test (nats-server behaviour): nats-server's parseSize reads at most 9 digits; a
    # longer size is "bad size", closed without -ERR (probed: `PUB foo 0000000003` and `PUB foo
    # 10000000000` both close silently).
    assert_error(failure_of(parse(line)), BAD)


def test_unsub_max_over_nine_digits_removes_now() -> None:
    # Regression test (nats-server behaviour): nats-server reads a 10+-digit max as invalid and
    # unsubscribes at once (probed: `UNSUB 1 99999999999` then a PUB delivers nothing).
    assert parse(b"UNSUB 1 99999999999\r\n") == [Unsub(b"1", None)]


# --------------------------------------------------------------- large payloads


def test_one_mib_payload_in_one_kib_chunks() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value, CRLFs included
    payload = payload[:-2] + b"\r\n"
    data = b"PUB big r 1048576\r\n" + payload + b"\r\nPING\r\n"
    parser = ClientParser()
    events: list[Event] = []
    for i in range(0, len(data), 1024):
        got = parser.feed(data[i : i + 1024])
        if i + 1024 < len(data) - 8:
            assert got == []
        events.extend(got)
    assert events == [Pub(b"big", b"r", 0, payload), PING]


def test_one_mib_hpub_in_one_kib_chunks() -> None:
    block = encode_headers(None, "", [("K", "v")])
    body = b"\xab" * (MiB - len(block))
    data = encode_hpub(b"big", b"", block, body) + encode_pub(b"next", b"", b"x")
    events = feed_pieces([data[i : i + 1024] for i in range(0, len(data), 1024)])
    assert events == [Pub(b"big", b"", len(block), block + body), Pub(b"next", b"", 0, b"x")]


# --------------------------------------------------------------- random splits

_subjects = st.text("abcxyz019.*>$_-", min_size=1, max_size=16).map(str.encode)
_sids = st.text("abc0123456789", min_size=1, max_size=6).map(str.encode)
_payloads = st.binary(max_size=80) | st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b"x", b"PING\r\n", b"PUB a 1\r\n", b" "]), max_size=12
).map(b"".join)
_header_lists = st.lists(
    st.tuples(
        st.text("ABCdef-", min_size=1, max_size=8),
        st.text("abc 123:", max_size=10).map(lambda v: v.strip()),
    ),
    max_size=4,
)
_json_objects = st.dictionaries(
    st.text("abcdefgh_", min_size=1, max_size=8),
    st.booleans() | st.integers(-5, 5) | st.text("abc ", max_size=5),
    max_size=4,
)


@st.composite
def _commands(draw: st.DrawFn) -> tuple[bytes, Event]:
    kind = draw(st.sampled_from(["pub", "hpub", "sub", "unsub", "ping", "pong", "connect", "info"]))
    if kind == "pub":
        subject, payload = draw(_subjects), draw(_payloads)
        reply = draw(st.just(b"") | _subjects)
        return encode_pub(subject, reply, payload), Pub(subject, reply, 0, payload)
    if kind == "hpub":
        subject, payload = draw(_subjects), draw(_payloads)
        reply = draw(st.just(b"") | _subjects)
        status = draw(st.none() | st.sampled_from([503, 404, 408]))
        block = encode_headers(status, "", draw(_header_lists))
        if draw(st.integers(0, 9)) == 0:
            block = b""  # HPUB with a zero header size
        wire = encode_hpub(subject, reply, block, payload)
        return wire, Pub(subject, reply, len(block), block + payload)
    if kind == "sub":
        subject, sid = draw(_subjects), draw(_sids)
        queue = draw(st.none() | _subjects)
        return encode_sub(subject, queue, sid), Sub(subject, queue, sid)
    if kind == "unsub":
        sid = draw(_sids)
        max_msgs = draw(st.none() | st.integers(1, 999_999_999))
        return encode_unsub(sid, max_msgs), Unsub(sid, max_msgs)
    if kind == "ping":
        return b"PING\r\n", PING
    if kind == "pong":
        return b"PONG\r\n", PONG
    obj = draw(_json_objects)
    if kind == "connect":
        wire = encode_connect(obj)
        return wire, Connect(wire[len(b"CONNECT ") : -2])
    wire = encode_info(obj)
    return wire, Info(wire[len(b"INFO ") : -3])


@st.composite
def _splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    if draw(st.integers(0, 9)) == 0:
        return dribble(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_commands(), max_size=12), st.data())
def test_random_splits_round_trip(commands: list[tuple[bytes, Event]], data: st.DataObject) -> None:
    stream = b"".join(wire for wire, _ in commands)
    expected = [event for _, event in commands]
    whole = parse(stream)
    assert whole == expected
    pieces = data.draw(_splits(stream))
    assert b"".join(pieces) == stream
    assert feed_pieces(pieces) == whole


# The same, spelled untidily: any case, runs of spaces and tabs, trailing separators,
# bare LF line endings on control lines.

_seps = st.sampled_from([b" ", b"\t", b"  ", b" \t ", b"\t\t"])


@st.composite
def _untidy(draw: st.DrawFn) -> tuple[bytes, Event]:
    def op(name: str) -> bytes:
        return bytes(c ^ 0x20 if draw(st.booleans()) else c for c in name.encode())

    def line(name: str, *args: bytes, trailing: bool = True) -> bytes:
        out = op(name)
        for arg in args:
            out += draw(_seps) + arg
        if trailing and draw(st.booleans()):
            out += draw(_seps)
        return out + draw(st.sampled_from([b"\r\n", b"\n"]))

    kind = draw(st.sampled_from(["pub", "hpub", "sub", "unsub", "ping", "connect"]))
    if kind in ("pub", "hpub"):
        subject, payload = draw(_subjects), draw(_payloads)
        reply = draw(st.none() | _subjects)
        block = encode_headers(None, "", draw(_header_lists)) if kind == "hpub" else b""
        sizes = (
            [b"%d" % len(payload)]
            if kind == "pub"
            else [
                b"%d" % len(block),
                b"%d" % (len(block) + len(payload)),
            ]
        )
        args = [subject, *([reply] if reply else []), *sizes]
        wire = line(kind, *args) + block + payload + b"\r\n"
        return wire, Pub(subject, reply or b"", len(block), block + payload)
    if kind == "sub":
        subject, sid, queue = draw(_subjects), draw(_sids), draw(st.none() | _subjects)
        args = [subject, *([queue] if queue else []), sid]
        return line("sub", *args), Sub(subject, queue, sid)
    if kind == "unsub":
        sid, max_msgs = draw(_sids), draw(st.none() | st.integers(1, 10**6))
        args = [sid, *([b"%d" % max_msgs] if max_msgs else [])]
        return line("unsub", *args), Unsub(sid, max_msgs)
    if kind == "ping":
        return line("ping"), PING
    raw = json.dumps(draw(_json_objects)).encode()
    return line("connect", raw, trailing=False), Connect(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_untidy(), max_size=10), st.data())
def test_random_splits_untidy_spelling(
    commands: list[tuple[bytes, Event]], data: st.DataObject
) -> None:
    stream = b"".join(wire for wire, _ in commands)
    expected = [event for _, event in commands]
    assert parse(stream) == expected
    assert feed_pieces(data.draw(_splits(stream))) == expected
