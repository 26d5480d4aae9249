"""The leafnode wire protocol, leaf side: hub->leaf parsing and the encoders.

Expected behaviour is the hub traffic recorded from real nats-server v2.9.10 / v2.14.0
(``/work/shared/spec/transcripts/leaf_*``, ``fakeleaf_*``) and leafnode.md §2-3, §14.
Wire literals below are checked against the transcript they were copied from
(``wire()``), so a typo here cannot silently drift from what the hub really sent.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.proto import errors
from edge.proto.events import PING, PONG, Info, ParseFailed
from edge.proto.leafproto import (
    LEAF_MAX_CONTROL_LINE,
    LeafParser,
    LMsg,
    LsMinus,
    LsPlus,
    PeerErr,
    encode_lmsg,
    encode_ls_minus,
    encode_ls_plus,
)

TRANSCRIPTS = Path("/work/shared/spec/transcripts")
HDR = b"NATS/1.0\r\nK: v\r\n\r\n"  # 18 bytes, the header block of the captured HMSGs
HUB_INBOX = "_INBOX.0dcEVsYHIlEd84AMDC7cfH.0dcEVsYHIlEd84AMDC7cjJ7369"
LEAF_INBOX = "_INBOX.bsBpdlt1oSiRLnYN0pHexe.bsBpdlt1oSiRLnYN0pHf6J3777"


def transcript(name: str) -> str:
    return (TRANSCRIPTS / name).read_text()


def wire(name: str, *lines: str) -> bytes:
    """The given transcript lines as bytes on the wire; each must appear in ``name``."""
    text = transcript(name)
    for line in lines:
        assert f"| {line}\\r\\n\n" in text, f"{line!r} is not in {name}"
    return b"".join(line.encode() + b"\r\n" for line in lines)


def hub_stream(name: str, conn: str, stop_at: str | None = None) -> bytes:
    """Everything the hub sent on connection ``conn`` (H>L lines), as bytes.

    Stops before ``stop_at`` (a line fragment) so trimmed lines are left out.
    """
    out = []
    for raw in transcript(name).splitlines():
        if stop_at is not None and stop_at in raw:
            break
        marker = f" {conn} H>L | "
        if marker not in raw:
            continue
        body = raw.split(marker, 1)[1]
        assert body.endswith("\\r\\n"), raw
        out.append(body[: -len("\\r\\n")].encode() + b"\r\n")
    return b"".join(out)


def parse(data: bytes, **limits: int) -> list[Any]:
    return LeafParser(**limits).feed(data)


def feed_pieces(pieces: list[bytes], **limits: int) -> list[Any]:
    parser = LeafParser(**limits)
    events: list[Any] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def failed_with(events: list[Any], error: errors.ProtocolError) -> None:
    assert events, "expected a ParseFailed event"
    assert isinstance(events[-1], ParseFailed), events
    assert events[-1].error == error
    assert events[-1].error.close, "a malformed hub line must close the link"


# ---- every hub->leaf form seen on the wire ------------------------------------------


@pytest.mark.parametrize(
    ("source", "line", "expected"),
    [
        ("leaf_mitm_2910.txt", "LS+ hub.sub", LsPlus(b"hub.sub", None, 0)),
        ("leaf_mitm_2910.txt", "LS+ hub.>", LsPlus(b"hub.>", None, 0)),
        ("leaf_mitm_2910.txt", "LS+ $JS.hub.API.$KV.>", LsPlus(b"$JS.hub.API.$KV.>", None, 0)),
        (
            "leaf_mitm_2910.txt",
            "LS+ $LDS.SqIE2k0j28kp0bHIq0fA8z",
            LsPlus(b"$LDS.SqIE2k0j28kp0bHIq0fA8z", None, 0),
        ),
        ("leaf_mitm_2910.txt", "LS+ hub.q qg 1", LsPlus(b"hub.q", b"qg", 1)),
        ("leaf_mitm_2910.txt", "LS+ hub.q qg 2", LsPlus(b"hub.q", b"qg", 2)),
        ("leaf_mitm_2910.txt", "LS+ persist.hq g 1", LsPlus(b"persist.hq", b"g", 1)),
        (
            "leaf_mitm_2910.txt",
            "LS+ _INBOX.0dcEVsYHIlEd84AMDC7cfH.*",
            LsPlus(b"_INBOX.0dcEVsYHIlEd84AMDC7cfH.*", None, 0),
        ),
        ("leaf_mitm_2910.txt", "LS- hub.sub", LsMinus(b"hub.sub", None)),
        ("leaf_mitm_2910.txt", "LS- hub.q qg", LsMinus(b"hub.q", b"qg")),
        (
            "leaf_mitm_2910.txt",
            "LS- _INBOX.0dcEVsYHIlEd84AMDC7cfH.*",
            LsMinus(b"_INBOX.0dcEVsYHIlEd84AMDC7cfH.*", None),
        ),
        (
            "leaf_auth_mitm_214.txt",
            "LS+ $SYS.REQ.USER.INFO",
            LsPlus(b"$SYS.REQ.USER.INFO", None, 0),
        ),
        (
            "leaf_lsdup_2910.txt",
            "LS+ $SYS.REQ.ACCOUNT.PING.STATZ",
            LsPlus(b"$SYS.REQ.ACCOUNT.PING.STATZ", None, 0),
        ),
        ("fakeleaf_2910.txt", "LS+ work grp 1", LsPlus(b"work", b"grp", 1)),
        ("leaf_mitm_2910.txt", "PING", PING),
        ("leaf_mitm_2910.txt", "PONG", PONG),
    ],
)
def test_interest_and_keepalive_lines(source: str, line: str, expected: Any) -> None:
    assert parse(wire(source, line)) == [expected]


@pytest.mark.parametrize(
    ("source", "lines", "expected"),
    [
        # no reply
        ("leaf_mitm_2910.txt", ["LMSG leaf.sub 2", "hi"], LMsg(b"leaf.sub", b"", (), 0, b"hi")),
        (
            "leaf_mitm_2910.txt",
            ["LMSG persist.leaf 1", "a"],
            LMsg(b"persist.leaf", b"", (), 0, b"a"),
        ),
        # reply
        (
            "leaf_mitm_2910.txt",
            ["LMSG leaf.sub reply.x 2", "hi"],
            LMsg(b"leaf.sub", b"reply.x", (), 0, b"hi"),
        ),
        (
            "fakeleaf_2910.txt",
            ["LMSG foo _INBOX.hub.1 2", "hi"],
            LMsg(b"foo", b"_INBOX.hub.1", (), 0, b"hi"),
        ),
        # | queues
        (
            "leaf_mitm_2910.txt",
            ["LMSG leaf.q | lq 2", "q1"],
            LMsg(b"leaf.q", b"", (b"lq",), 0, b"q1"),
        ),
        ("leaf_lsdup_2910.txt", ["LMSG q | grp 1", "a"], LMsg(b"q", b"", (b"grp",), 0, b"a")),
        # + reply queues
        (
            "leaf_mitm_2910.txt",
            ["LMSG leaf.q + rep.q lq 2", "q2"],
            LMsg(b"leaf.q", b"rep.q", (b"lq",), 0, b"q2"),
        ),
        (
            "leaf_mitm_2910.txt",
            [
                f"LMSG leafsvc.echo + {HUB_INBOX} workers 5",
                "ping2",
            ],
            LMsg(
                b"leafsvc.echo",
                b"_INBOX.0dcEVsYHIlEd84AMDC7cfH.0dcEVsYHIlEd84AMDC7cjJ7369",
                (b"workers",),
                0,
                b"ping2",
            ),
        ),
        # a JetStream PubAck coming back as a plain reply
        (
            "leaf_mitm_2910.txt",
            [
                "LMSG _INBOX.bsBpdlt1oSiRLnYN0pHexe.bsBpdlt1oSiRLnYN0pHf6J3777 42",
                '{"stream":"TELE", "domain":"hub", "seq":1}',
            ],
            LMsg(
                b"_INBOX.bsBpdlt1oSiRLnYN0pHexe.bsBpdlt1oSiRLnYN0pHf6J3777",
                b"",
                (),
                0,
                b'{"stream":"TELE", "domain":"hub", "seq":1}',
            ),
        ),
        # HMSG, no reply / + reply queue
        (
            "leaf_mitm_2910.txt",
            ["HMSG leaf.sub 18 20", "NATS/1.0", "K: v", "", "hh"],
            LMsg(b"leaf.sub", b"", (), 18, HDR + b"hh"),
        ),
        (
            "leaf_mitm_2910.txt",
            ["HMSG leaf.q + rr lq 18 20", "NATS/1.0", "K: v", "", "hq"],
            LMsg(b"leaf.q", b"rr", (b"lq",), 18, HDR + b"hq"),
        ),
        (
            "fakeleaf_2910.txt",
            ["HMSG foo 12 14", "NATS/1.0", "", "hh"],
            LMsg(b"foo", b"", (), 12, b"NATS/1.0\r\n\r\nhh"),
        ),
        # HMSG with a plain reply (leaf->hub capture, same layout both ways, leafnode.md §3)
        (
            "leaf_mitm_2910.txt",
            ["HMSG hub.sub r.2 18 20", "NATS/1.0", "K: v", "", "hh"],
            LMsg(b"hub.sub", b"r.2", (), 18, HDR + b"hh"),
        ),
    ],
)
def test_message_lines(source: str, lines: list[str], expected: LMsg) -> None:
    data = wire(source, *lines)
    assert parse(data) == [expected]
    # The same bytes one at a time: the split does not change the result.
    assert feed_pieces([data[i : i + 1] for i in range(len(data))]) == [expected]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Several queue names (leafnode.md §3 grammar; the hub lists one per group).
        (b"LMSG work | q1 q2 2\r\nhi\r\n", LMsg(b"work", b"", (b"q1", b"q2"), 0, b"hi")),
        (
            b"LMSG work + _INBOX.x.1 q1 q2 2\r\nhi\r\n",
            LMsg(b"work", b"_INBOX.x.1", (b"q1", b"q2"), 0, b"hi"),
        ),
        (
            b"HMSG work | q1 q2 18 20\r\n" + HDR + b"hh\r\n",
            LMsg(b"work", b"", (b"q1", b"q2"), 18, HDR + b"hh"),
        ),
        (
            b"HMSG work + r.9 q1 q2 q3 18 20\r\n" + HDR + b"hh\r\n",
            LMsg(b"work", b"r.9", (b"q1", b"q2", b"q3"), 18, HDR + b"hh"),
        ),
        (
            b"HMSG leaf.q | lq 18 20\r\n" + HDR + b"hq\r\n",
            LMsg(b"leaf.q", b"", (b"lq",), 18, HDR + b"hq"),
        ),
        # Empty payload, as in `LMSG $JS.hub.API.INFO _INBOX.leaf.3 0`.
        (
            b"LMSG $JS.hub.API.INFO _INBOX.leaf.3 0\r\n\r\n",
            LMsg(b"$JS.hub.API.INFO", b"_INBOX.leaf.3", (), 0, b""),
        ),
        # A payload holding CRLF is taken by size, not by line.
        (b"LMSG a 6\r\nx\r\nPIN\r\n", LMsg(b"a", b"", (), 0, b"x\r\nPIN")),
        # Separators: tabs, runs of spaces, a bare \n, lower case (nats-server is as lax).
        (b"lmsg\tleaf.q \t|  lq\t 2\nq1\r\n", LMsg(b"leaf.q", b"", (b"lq",), 0, b"q1")),
        # A header block may fill the whole message.
        (b"HMSG a 2 2\r\nhi\r\n", LMsg(b"a", b"", (), 2, b"hi")),
        # Nine digits is the longest size nats-server reads.
        (b"LMSG a 000000002\r\nhi\r\n", LMsg(b"a", b"", (), 0, b"hi")),
        # Three arguments: the middle one is a reply, whatever it looks like (as nats-server).
        (b"LMSG a | 2\r\nhi\r\n", LMsg(b"a", b"|", (), 0, b"hi")),
    ],
)
def test_message_layouts(data: bytes, expected: LMsg) -> None:
    assert parse(data) == [expected]


def test_interest_line_separators() -> None:
    assert parse(b"LS+\thub.q\t qg  3 \r\nls- hub.q qg\n") == [
        LsPlus(b"hub.q", b"qg", 3),
        LsMinus(b"hub.q", b"qg"),
    ]


@pytest.mark.parametrize(
    ("source", "conn"),
    [("leaf_mitm_2910.txt", "c1"), ("leaf_mitm_2910.txt", "c2"), ("leaf_auth_mitm_214.txt", "c1")],
)
def test_info_lines_from_transcripts(source: str, conn: str) -> None:
    line = next(
        raw.split(" H>L | ", 1)[1]
        for raw in transcript(source).splitlines()
        if f" {conn} H>L | INFO " in raw
    )
    events = parse(line[: -len("\\r\\n")].encode() + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], Info)
    # The trailing space nats-server writes after the JSON is not part of it.
    info = json.loads(events[0].raw)
    assert events[0].raw.endswith(b"}")
    assert info["info_on_connect"] is True
    assert info["leafnode_urls"]


def test_err_lines() -> None:
    loop = "-ERR 'Loop detected for leafnode account=\"$G\". Delaying attempt to reconnect for 30s'"
    data = wire("fakeleaf_2910.txt", loop, "-ERR 'Stale Connection'")
    data += wire(
        "fakeleaf_2910.txt", "-ERR 'Permissions Violation for Subscription to \"private.x\"'"
    )
    assert parse(data) == [
        PeerErr('Loop detected for leafnode account="$G". Delaying attempt to reconnect for 30s'),
        PeerErr("Stale Connection"),
        PeerErr('Permissions Violation for Subscription to "private.x"'),
    ]
    # Not a closing parse error: the caller decides what an -ERR means.
    parser = LeafParser()
    parser.feed(b"-ERR 'Duplicate Remote LeafNode Connection'\r\n")
    assert not parser.failed


def test_ok_is_ignored() -> None:
    assert parse(b"+OK\r\nPING\r\n+OK\r\n") == [PING]


def test_long_control_line_is_accepted() -> None:
    # leafnode.md: max_control_line is not enforced on leaf links (a client link
    # stops at 4096); a subject of 10 kB still parses.
    subject = b"s." + b"x" * 10_000
    assert parse(b"LS+ " + subject + b"\r\n") == [LsPlus(subject, None, 0)]
    assert parse(b"LMSG " + subject + b" 1\r\nz\r\n") == [LMsg(subject, b"", (), 0, b"z")]


def test_unbounded_control_line_is_refused() -> None:
    # ... but a peer cannot make us buffer an endless line.
    parser = LeafParser()
    events: list[Any] = []
    chunk = b"LS+ " + b"x" * (64 * 1024)
    events.extend(parser.feed(chunk))
    for _ in range(LEAF_MAX_CONTROL_LINE // len(chunk) + 2):
        events.extend(parser.feed(b"x" * (64 * 1024)))
    failed_with(events, errors.MAX_CONTROL_LINE)


def test_whole_hub_side_of_a_real_link() -> None:
    # Everything hub_2910 sent to the real leaf on the first connection, up to the
    # JetStream stream-info reply (trimmed in the capture).
    data = hub_stream("leaf_mitm_2910.txt", "c1", stop_at="stream_info_response")
    events = parse(data)
    assert not any(isinstance(e, ParseFailed) for e in events)
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("Info") == 2
    assert kinds.count("LMsg") == 11
    assert LsPlus(b"hub.q", b"qg", 2) in events
    assert events.count(LsPlus(b"hub.q", b"qg", 1)) == 2
    assert LsPlus(b"_INBOX.0dcEVsYHIlEd84AMDC7cfH.*", None, 0) in events
    # The LMSG whose 716-byte payload was trimmed is left pending, not failed.
    assert events[-1] == LMsg(
        b"_INBOX.bsBpdlt1oSiRLnYN0pHexe.bsBpdlt1oSiRLnYN0pHfC56ccd",
        b"",
        (),
        0,
        b'{"stream":"TELE", "domain":"hub", "seq":2}',
    )
    # Any split of the stream gives the same events.
    for size in (1, 2, 3, 7, 64):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        assert feed_pieces(pieces) == events


# ---- failures: the link is closed ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        # fakeleaf_errors: the hub closes these without -ERR ("Bad or Missing Reply Indicator").
        (b"LMSG foo x y 2\r\nhi\r\n", errors.BAD_ARGUMENTS),
        (b"LMSG foo ++ r q 2\r\nhi\r\n", errors.BAD_ARGUMENTS),
        (b"HMSG foo x y 18 20\r\n" + HDR + b"hh\r\n", errors.BAD_ARGUMENTS),
        (b"LMSG foo\r\n", errors.BAD_ARGUMENTS),
        (b"LMSG\r\n", errors.UNKNOWN_OP),
        (b"HMSG foo 2\r\n", errors.BAD_ARGUMENTS),
        (b"LS+ a b\r\n", errors.BAD_ARGUMENTS),
        (b"LS+ a b c d\r\n", errors.BAD_ARGUMENTS),
        (b"LS+ a q x\r\n", errors.BAD_ARGUMENTS),  # non-numeric weight
        (b"LS- a b c\r\n", errors.BAD_ARGUMENTS),
        # Unknown operations, and client verbs on a leaf link (leafnode.md §14).
        (b"FOO\r\n", errors.UNKNOWN_OP),
        (b"SUB x 1\r\n", errors.UNKNOWN_OP),
        (b"MSG foo 1 2\r\nhi\r\n", errors.UNKNOWN_OP),
        (b"HLMSG foo 18 20\r\n", errors.UNKNOWN_OP),
        # The payload must be followed by exactly CRLF.
        (b"LMSG foo 2\r\nhiX\r\n", errors.UNKNOWN_OP),
        (b"LMSG foo 2\r\nhi\rX", errors.UNKNOWN_OP),
        (b"LMSG foo 2\r\nhi\n\r", errors.UNKNOWN_OP),
        (b"HMSG foo 18 20\r\n" + HDR + b"hhh\r\n", errors.UNKNOWN_OP),
        # Sizes: at most nine digits, numeric, header no larger than the total.
        (b"LMSG foo 1234567890\r\n", errors.BAD_ARGUMENTS),
        (b"LMSG foo 0000000002\r\nhi\r\n", errors.BAD_ARGUMENTS),
        (b"HMSG foo 1234567890 1234567890\r\n", errors.BAD_ARGUMENTS),
        (b"HMSG foo 18 1234567890\r\n", errors.BAD_ARGUMENTS),
        (b"LS+ a q 1234567890\r\n", errors.BAD_ARGUMENTS),
        (b"LMSG foo -1\r\n", errors.BAD_ARGUMENTS),
        (b"LMSG foo 2x\r\n", errors.BAD_ARGUMENTS),
        (b"HMSG foo 20 18\r\n", errors.BAD_ARGUMENTS),
        (b"HMSG foo 19 18\r\n", errors.BAD_ARGUMENTS),
        # Over the negotiated max_payload.
        (b"LMSG foo 1048577\r\n", errors.MAX_PAYLOAD),
        (b"HMSG foo 1 1048577\r\n", errors.MAX_PAYLOAD),
    ],
)
def test_failures_close_the_link(data: bytes, error: errors.ProtocolError) -> None:
    failed_with(parse(data), error)
    # Split anywhere, the outcome is the same.
    for cut in range(1, len(data)):
        failed_with(feed_pieces([data[:cut], data[cut:]]), error)


def test_good_events_before_a_failure_are_kept_and_the_parser_stops() -> None:
    parser = LeafParser()
    events = parser.feed(b"PING\r\nLS+ a\r\nLMSG foo x y 2\r\nhi\r\nPONG\r\n")
    assert events[:2] == [PING, LsPlus(b"a", None, 0)]
    failed_with(events, errors.BAD_ARGUMENTS)
    assert len(events) == 3
    assert parser.failed
    assert parser.feed(b"PING\r\n") == []


def test_max_payload_is_the_parsers_limit() -> None:
    assert parse(b"LMSG a 3\r\nabc\r\n", max_payload=3) == [LMsg(b"a", b"", (), 0, b"abc")]
    failed_with(parse(b"LMSG a 4\r\nabcd\r\n", max_payload=3), errors.MAX_PAYLOAD)


# ---- encoders: exact bytes, compared with what real nats-server leafs sent ----------


def test_encode_ls_plus_and_minus() -> None:
    src = "leaf_mitm_2910.txt"
    assert encode_ls_plus(b"leaf.sub") == wire(src, "LS+ leaf.sub")
    assert encode_ls_plus(b"leaf.*") == wire(src, "LS+ leaf.*")
    assert encode_ls_plus(b"$LDS.Q82alhO2Bp5HdoZrzIpWod") == wire(
        src, "LS+ $LDS.Q82alhO2Bp5HdoZrzIpWod"
    )
    assert encode_ls_plus(b"leaf.q", b"lq", 1) == wire(src, "LS+ leaf.q lq 1")
    assert encode_ls_plus(b"leaf.q", b"lq", 2) == wire(src, "LS+ leaf.q lq 2")
    assert encode_ls_plus(b"leafsvc.echo", b"workers") == wire(src, "LS+ leafsvc.echo workers 1")
    assert encode_ls_plus(b"work", b"grp", 3) == wire("fakeleaf_2910.txt", "LS+ work grp 3")
    assert encode_ls_minus(b"leaf.sub") == wire(src, "LS- leaf.sub")
    assert encode_ls_minus(b"leaf.q", b"lq") == wire(src, "LS- leaf.q lq")
    assert encode_ls_minus(b"leafsvc.echo", b"workers") == wire(src, "LS- leafsvc.echo workers")


@pytest.mark.parametrize(
    ("source", "args", "lines"),
    [
        ("leaf_mitm_2910.txt", (b"hub.sub", b"", (), 0, b"hi"), ["LMSG hub.sub 2", "hi"]),
        (
            "leaf_mitm_2910.txt",
            (b"hub.q", b"r.1", (b"qg",), 0, b"q1"),
            ["LMSG hub.q + r.1 qg 2", "q1"],
        ),
        ("leaf_mitm_2910.txt", (b"hub.q", b"", (b"qg",), 0, b"q2"), ["LMSG hub.q | qg 2", "q2"]),
        ("leaf_mitm_2910.txt", (b"hub.q", b"", [b"qg"], 0, b"q2"), ["LMSG hub.q | qg 2", "q2"]),
        (
            "leaf_mitm_2910.txt",
            (b"hub.sub", b"r.2", (), 18, HDR + b"hh"),
            ["HMSG hub.sub r.2 18 20", "NATS/1.0", "K: v", "", "hh"],
        ),
        (
            "leaf_mitm_2910.txt",
            (b"leaf.q", b"rr", (b"lq",), 18, HDR + b"hq"),
            ["HMSG leaf.q + rr lq 18 20", "NATS/1.0", "K: v", "", "hq"],
        ),
        (
            "leaf_mitm_2910.txt",
            (b"leaf.sub", b"", (), 18, HDR + b"hh"),
            ["HMSG leaf.sub 18 20", "NATS/1.0", "K: v", "", "hh"],
        ),
        (
            "leaf_mitm_2910.txt",
            (
                b"svc.echo",
                b"_INBOX.bsBpdlt1oSiRLnYN0pHexe.bsBpdlt1oSiRLnYN0pHf0X602f",
                (),
                0,
                b"ping1",
            ),
            ["LMSG svc.echo _INBOX.bsBpdlt1oSiRLnYN0pHexe.bsBpdlt1oSiRLnYN0pHf0X602f 5", "ping1"],
        ),
        (
            "leaf_mitm_2910.txt",
            (
                b"telemetry.dev1",
                b"_INBOX.bsBpdlt1oSiRLnYN0pHexe.bsBpdlt1oSiRLnYN0pHf6J3777",
                (),
                30,
                b"NATS/1.0\r\nNats-Msg-Id: m-1\r\n\r\nreading0",
            ),
            [
                f"HMSG telemetry.dev1 {LEAF_INBOX} 30 38",
                "NATS/1.0",
                "Nats-Msg-Id: m-1",
                "",
                "reading0",
            ],
        ),
        ("fakeleaf_2910.txt", (b"work", b"", (b"grp",), 0, b"qq"), ["LMSG work | grp 2", "qq"]),
        (
            "fakeleaf_2910.txt",
            (b"work", b"_INBOX.leaf.2", (b"grp",), 0, b"qr"),
            ["LMSG work + _INBOX.leaf.2 grp 2", "qr"],
        ),
        (
            "fakeleaf_2910.txt",
            (b"$JS.hub.API.INFO", b"_INBOX.leaf.3", (), 0, b""),
            ["LMSG $JS.hub.API.INFO _INBOX.leaf.3 0", ""],
        ),
        (
            "fakeleaf_2910.txt",
            (b"bar", b"", (), 12, b"NATS/1.0\r\n\r\nhh"),
            ["HMSG bar 12 14", "NATS/1.0", "", "hh"],
        ),
    ],
)
def test_encode_lmsg_matches_captures(source: str, args: tuple[Any, ...], lines: list[str]) -> None:
    assert encode_lmsg(*args) == wire(source, *lines)


def test_encode_lmsg_several_queues() -> None:
    assert encode_lmsg(b"work", b"", (b"a", b"b"), 0, b"x") == b"LMSG work | a b 1\r\nx\r\n"
    assert encode_lmsg(b"work", b"r", (b"a", b"b"), 0, b"x") == b"LMSG work + r a b 1\r\nx\r\n"
    assert (
        encode_lmsg(b"work", b"r", (b"a", b"b"), 18, HDR + b"hh")
        == b"HMSG work + r a b 18 20\r\n" + HDR + b"hh\r\n"
    )


# ---- round trip: encoded frames split anywhere parse back to the same values ---------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$",
    min_size=1,
    max_size=8,
)
_subject = st.lists(_token, min_size=1, max_size=4).map(lambda ts: ".".join(ts).encode())
_interest = st.one_of(
    _subject,
    st.tuples(_subject, st.sampled_from([b"*", b">"])).map(lambda t: t[0] + b"." + t[1]),
)
_queue = _token.map(str.encode)


@st.composite
def _message(draw: st.DrawFn) -> tuple[bytes, LMsg]:
    subject = draw(_subject)
    reply = draw(st.one_of(st.just(b""), _subject))
    queues = tuple(draw(st.lists(_queue, max_size=3)))
    data = draw(st.binary(max_size=80))
    hdr = draw(st.integers(min_value=0, max_value=len(data))) if data else 0
    return encode_lmsg(subject, reply, queues, hdr, data), LMsg(subject, reply, queues, hdr, data)


@st.composite
def _ls_plus(draw: st.DrawFn) -> tuple[bytes, LsPlus]:
    subject = draw(_interest)
    if draw(st.booleans()):
        return encode_ls_plus(subject), LsPlus(subject, None, 0)
    queue = draw(_queue)
    weight = draw(st.integers(min_value=1, max_value=999_999_999))
    return encode_ls_plus(subject, queue, weight), LsPlus(subject, queue, weight)


@st.composite
def _ls_minus(draw: st.DrawFn) -> tuple[bytes, LsMinus]:
    subject = draw(_interest)
    queue = draw(st.one_of(st.none(), _queue))
    return encode_ls_minus(subject, queue), LsMinus(subject, queue)


_frame = st.one_of(
    _message(),
    _ls_plus(),
    _ls_minus(),
    st.just((b"PING\r\n", PING)),
    st.just((b"PONG\r\n", PONG)),
)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frame, min_size=1, max_size=12), cuts=st.lists(st.integers(0, 10**6)))
def test_round_trip_split_anywhere(frames: list[tuple[bytes, Any]], cuts: list[int]) -> None:
    data = b"".join(raw for raw, _ in frames)
    expected = [value for _, value in frames]
    assert feed_pieces(split_at(data, cuts)) == expected


@settings(max_examples=50, deadline=None)
@given(frames=st.lists(_frame, min_size=1, max_size=6))
def test_round_trip_byte_by_byte(frames: list[tuple[bytes, Any]]) -> None:
    data = b"".join(raw for raw, _ in frames)
    assert feed_pieces([data[i : i + 1] for i in range(len(data))]) == [v for _, v in frames]


# ---- the one-regex path for plain LMSGs agrees with the general one ----------------

_lmsg_variant = st.one_of(
    _message().map(lambda m: m[0]),
    st.tuples(_subject, st.binary(max_size=40)).map(
        lambda t: b"LMSG %b %d\r\n%b\r\n" % (t[0], len(t[1]), t[1])
    ),
    st.sampled_from(
        [
            b"lmsg a.b 1\r\nx\r\n",  # lower case
            b"LMSG a.b  1\r\nx\r\n",  # two spaces
            b"LMSG a.b 1\nx\r\n",  # no CR
            b"LMSG a.b 1\r\nxy\r\n",  # a byte too many
            b"LMSG a.b 1\r\nx\n\n",  # no CR after the payload
            b"LMSG a.b 0000000001\r\nx\r\n",  # ten digits
            b"LMSG a.b 99\r\n" + b"y" * 99 + b"\r\n",  # past a small max_payload
            b"LMSG " + b"s" * 300 + b" 1\r\nx\r\n",  # past a small control-line limit
            b"PING\r\n",
        ]
    ),
)


class _GeneralOnly:
    """A pattern that never matches: the parser then takes its general path only."""

    @staticmethod
    def match(data: bytes, pos: int) -> None:
        return None


def _events(data: bytes, **limits: int) -> list[Any]:
    # ParseFailed holds an exception: compare what it says, not its identity.
    return [
        (type(e.error), str(e.error)) if isinstance(e, ParseFailed) else e
        for e in LeafParser(**limits).feed(data)
    ]


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_lmsg_variant, min_size=1, max_size=8))
def test_plain_lmsg_fast_path_equals_the_general_path(frames: list[bytes]) -> None:
    from unittest import mock

    import edge.proto.leafproto as leafproto

    data = b"".join(frames)
    fast = _events(data, max_payload=64)
    parser = LeafParser(max_payload=64)
    parser.max_control_line = 256
    fast_limited = parser.feed(data)
    with mock.patch.object(leafproto, "_PLAIN_LMSG", _GeneralOnly):
        assert _events(data, max_payload=64) == fast
        general = LeafParser(max_payload=64)
        general.max_control_line = 256
        assert [repr(e) for e in general.feed(data)] == [repr(e) for e in fast_limited]


def test_plain_lmsgs_take_the_one_regex_path() -> None:
    """Whole plain LMSGs never reach the general line handling (which the test
    above compares them with); the rest of the read still does."""
    from unittest import mock

    parser = LeafParser()
    data = b"LMSG _INBOX.x.7 26\r\n" + b'{"stream":"T","seq":7}    ' + b"\r\nPING\r\n"
    with mock.patch.object(
        LeafParser, "_line", side_effect=LeafParser._line, autospec=True
    ) as line:
        events = parser.feed(data * 3)
    assert events == [LMsg(b"_INBOX.x.7", b"", (), 0, b'{"stream":"T","seq":7}    '), PING] * 3
    assert line.call_count == 3  # the PINGs only
