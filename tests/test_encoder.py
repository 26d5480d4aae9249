"""Wire encoding: exact bytes for every operation, header blocks both ways."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.proto import errors
from edge.proto.encoder import (
    OK,
    PING,
    PONG,
    encode_connect,
    encode_err,
    encode_headers,
    encode_hmsg,
    encode_hpub,
    encode_info,
    encode_msg,
    encode_pub,
    encode_sub,
    encode_unsub,
    parse_headers,
)


def test_constants() -> None:
    assert PING == b"PING\r\n"
    assert PONG == b"PONG\r\n"
    assert OK == b"+OK\r\n"


def test_info_compact_json_and_space_before_crlf() -> None:
    fields = {"server_id": "NABC", "proto": 1, "headers": True, "max_payload": 1048576}
    assert encode_info(fields) == (
        b'INFO {"server_id":"NABC","proto":1,"headers":true,"max_payload":1048576} \r\n'
    )


def test_info_round_trips_through_json() -> None:
    fields = {"connect_urls": ["127.0.0.1:4222", "10.0.0.1:4222"], "ldm": False, "name": "é"}
    line = encode_info(fields)
    assert line.startswith(b"INFO ") and line.endswith(b" \r\n")
    assert line.count(b"\n") == 1
    assert json.loads(line[5:-3]) == fields


def test_info_empty() -> None:
    assert encode_info({}) == b"INFO {} \r\n"


def test_connect() -> None:
    assert encode_connect({"verbose": False, "pedantic": False, "protocol": 1}) == (
        b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'
    )
    assert encode_connect({}) == b"CONNECT {}\r\n"


def test_err_matches_protocol_error_wire() -> None:
    assert encode_err("Unknown Protocol Operation") == b"-ERR 'Unknown Protocol Operation'\r\n"
    for error in (errors.UNKNOWN_OP, errors.MAX_PAYLOAD, errors.INVALID_SUBJECT):
        assert error.err is not None
        assert encode_err(error.err) == error.wire()
    assert encode_err('Permissions Violation for Publish to "bar"') == (
        b"-ERR 'Permissions Violation for Publish to \"bar\"'\r\n"
    )


def test_err_refuses_line_breaks() -> None:
    with pytest.raises(ValueError):
        encode_err("a\r\nPING")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((b"foo", b"1", b"", b"hello"), b"MSG foo 1 5\r\nhello\r\n"),
        ((b"foo.bar", b"3", b"reply.to", b"abc"), b"MSG foo.bar 3 reply.to 3\r\nabc\r\n"),
        ((b"foo", b"1", b"", b""), b"MSG foo 1 0\r\n\r\n"),
        ((b"foo", b"sid", b"", b"a\r\nb"), b"MSG foo sid 4\r\na\r\nb\r\n"),
    ],
)
def test_msg(args: tuple[bytes, bytes, bytes, bytes], expected: bytes) -> None:
    assert encode_msg(*args) == expected


def test_hmsg() -> None:
    hdrs = b"NATS/1.0\r\nA: B\r\n\r\n"
    assert encode_hmsg(b"foo", b"1", b"", hdrs, b"hello") == (
        b"HMSG foo 1 18 23\r\nNATS/1.0\r\nA: B\r\n\r\nhello\r\n"
    )
    assert encode_hmsg(b"foo", b"1", b"r.1", hdrs, b"") == (
        b"HMSG foo 1 r.1 18 18\r\nNATS/1.0\r\nA: B\r\n\r\n\r\n"
    )


def test_hmsg_no_responders_as_nats_server_2_9_sends_it() -> None:
    block = encode_headers(503, "", [])
    assert encode_hmsg(b"_INBOX.abc", b"10", b"", block, b"") == (
        b"HMSG _INBOX.abc 10 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((b"foo", b"", b"hello"), b"PUB foo 5\r\nhello\r\n"),
        ((b"foo.bar", b"reply.to", b"abc"), b"PUB foo.bar reply.to 3\r\nabc\r\n"),
        ((b"nobody.home", b"_INBOX.abc", b""), b"PUB nobody.home _INBOX.abc 0\r\n\r\n"),
        ((b"x", b"", b"\r\n"), b"PUB x 2\r\n\r\n\r\n"),
    ],
)
def test_pub(args: tuple[bytes, bytes, bytes], expected: bytes) -> None:
    assert encode_pub(*args) == expected


def test_hpub() -> None:
    hdrs = b"NATS/1.0\r\nA: B\r\n\r\n"
    assert encode_hpub(b"foo", b"", hdrs, b"hello") == (
        b"HPUB foo 18 23\r\nNATS/1.0\r\nA: B\r\n\r\nhello\r\n"
    )
    assert encode_hpub(b"foo", b"bar", hdrs, b"") == (
        b"HPUB foo bar 18 18\r\nNATS/1.0\r\nA: B\r\n\r\n\r\n"
    )
    assert encode_hpub(b"foo", b"", b"", b"hi") == b"HPUB foo 0 2\r\nhi\r\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((b"foo.*", b"q1", b"2"), b"SUB foo.* q1 2\r\n"),
        ((b"foo", None, b"1"), b"SUB foo 1\r\n"),
        ((b"foo", b"", b"1"), b"SUB foo 1\r\n"),
        ((b"$SRV.PING", None, b"abc"), b"SUB $SRV.PING abc\r\n"),
    ],
)
def test_sub(args: tuple[bytes, bytes | None, bytes], expected: bytes) -> None:
    assert encode_sub(*args) == expected


def test_unsub() -> None:
    assert encode_unsub(b"10") == b"UNSUB 10\r\n"
    assert encode_unsub(b"10", None) == b"UNSUB 10\r\n"
    assert encode_unsub(b"10", 5) == b"UNSUB 10 5\r\n"
    assert encode_unsub(b"abc", 0) == b"UNSUB abc 0\r\n"
    with pytest.raises(ValueError):
        encode_unsub(b"1", -1)


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("status", "description", "headers", "expected"),
    [
        (None, "", [], b"NATS/1.0\r\n\r\n"),
        (None, "", [("A", "B")], b"NATS/1.0\r\nA: B\r\n\r\n"),
        (503, "", [], b"NATS/1.0 503\r\n\r\n"),
        (
            503,
            "",
            [("Nats-Subject", "nobody.home")],
            b"NATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n",
        ),
        (404, "No Messages", [], b"NATS/1.0 404 No Messages\r\n\r\n"),
        (
            408,
            "Request Timeout",
            [("Nats-Pending-Messages", "1"), ("Nats-Pending-Bytes", "0")],
            b"NATS/1.0 408 Request Timeout\r\n"
            b"Nats-Pending-Messages: 1\r\nNats-Pending-Bytes: 0\r\n\r\n",
        ),
        (
            None,
            "",
            [("Nats-Service-Error", "boom"), ("Nats-Service-Error-Code", "500")],
            b"NATS/1.0\r\nNats-Service-Error: boom\r\nNats-Service-Error-Code: 500\r\n\r\n",
        ),
        (None, "", [("X", "1"), ("X", "2")], b"NATS/1.0\r\nX: 1\r\nX: 2\r\n\r\n"),
        (None, "", [("K", "")], b"NATS/1.0\r\nK: \r\n\r\n"),
        (None, "", [("Ü", "ß")], "NATS/1.0\r\nÜ: ß\r\n\r\n".encode()),
    ],
)
def test_encode_headers(
    status: int | None, description: str, headers: list[tuple[str, str]], expected: bytes
) -> None:
    assert encode_headers(status, description, headers) == expected
    assert parse_headers(expected) == (status, description, headers)


def test_header_sizes_seen_on_the_wire() -> None:
    assert len(encode_headers(None, "", [("A", "B")])) == 18
    assert len(encode_headers(503, "", [])) == 16
    assert len(encode_headers(503, "", [("Nats-Subject", "nobody.home")])) == 43


@pytest.mark.parametrize(
    ("status", "description", "headers"),
    [
        (None, "desc without status", []),
        (50, "", []),
        (1000, "", []),
        (503, "bad\r\ndescription", []),
        (None, "", [("", "v")]),
        (None, "", [("A:B", "v")]),
        (None, "", [("A B", "v")]),
        (None, "", [("A\tB", "v")]),
        (None, "", [("A\r\nB", "v")]),
        (None, "", [("A", "v\r\nInjected: 1")]),
        (None, "", [("A", "v\n")]),
        (None, "", [("A", "v\rx")]),
    ],
)
def test_encode_headers_refuses(
    status: int | None, description: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError):
        encode_headers(status, description, headers)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        # Readers trim whitespace around values and the description.
        (b"NATS/1.0\r\nA:B\r\n\r\n", (None, "", [("A", "B")])),
        (b"NATS/1.0\r\nA:   B  \r\n\r\n", (None, "", [("A", "B")])),
        (b"NATS/1.0  503   \r\n\r\n", (503, "", [])),
        (b"NATS/1.0 404   No Messages  \r\n\r\n", (404, "No Messages", [])),
        (b"NATS/1.0 503\r\nA: x: y\r\n\r\n", (503, "", [("A", "x: y")])),
        (b"NATS/1.0\r\nnats-msg-id: 1\r\n\r\n", (None, "", [("nats-msg-id", "1")])),
    ],
)
def test_parse_headers_lenient_forms(
    block: bytes, expected: tuple[int | None, str, list[tuple[str, str]]]
) -> None:
    assert parse_headers(block) == expected


@pytest.mark.parametrize(
    "block",
    [
        b"",
        b"NATS/1.0\r\n",  # no blank line
        b"NATS/1.0\r\nA: B\r\n",  # no blank line
        b"HTTP/1.1\r\n\r\n",
        b"NATS/1.1\r\n\r\n",
        b"NATS/1.0503\r\n\r\n",
        b"NATS/1.0 50\r\n\r\n",
        b"NATS/1.0 abc\r\n\r\n",
        b"NATS/1.0 5034\r\n\r\n",
        b"NATS/1.0\r\nno colon\r\n\r\n",
        b"NATS/1.0\r\n: empty name\r\n\r\n",
        b"NATS/1.0\r\nA B: v\r\n\r\n",
        b"NATS/1.0\r\n\r\nA: B\r\n\r\n",  # a header after the blank line
        b"NATS/1.0\r\nA: \xff\r\n\r\n",  # not UTF-8
    ],
)
def test_parse_headers_refuses(block: bytes) -> None:
    with pytest.raises(ValueError):
        parse_headers(block)


_NAME_CHARS = st.characters(
    min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"
) | st.sampled_from("äßЖ")
_header_names = st.text(_NAME_CHARS, min_size=1, max_size=20)
_header_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
).map(lambda v: v.strip(" \t"))
_descriptions = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
).map(lambda v: v.strip(" \t"))


@st.composite
def _header_blocks(draw: st.DrawFn) -> tuple[int | None, str, list[tuple[str, str]]]:
    status = draw(st.none() | st.integers(100, 999))
    description = "" if status is None else draw(_descriptions)
    headers = draw(st.lists(st.tuples(_header_names, _header_values), max_size=8))
    return status, description, headers


@given(_header_blocks())
def test_headers_round_trip(parts: tuple[int | None, str, list[tuple[str, str]]]) -> None:
    block = encode_headers(*parts)
    assert block.startswith(b"NATS/1.0") and block.endswith(b"\r\n\r\n")
    assert block.count(b"\r\n\r\n") == 1
    assert parse_headers(block) == parts
