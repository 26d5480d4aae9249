"""store.window: the uplink's in-flight window, ack subjects, PubAck replies and
the header block sent up (Nats-Msg-Id). Pure: no sockets, no clock."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from store.window import Confirm, InFlight, Record, ack_seq, pub_ack_ok, with_msg_id

# ---- Record ------------------------------------------------------------------------------


def rec(seq: int, size: int = 10, *, group: int = 0, hdr: bytes | None = None) -> Record:
    """A record whose size is exactly *size* bytes when there is no header."""
    subject = b"s"
    return Record(seq, group, 1000 + seq, subject, hdr, b"x" * (size - len(subject)))


def test_record_fields_and_size() -> None:
    r = Record(7, 2, 1234, b"tele.a", b"NATS/1.0\r\nA: b\r\n\r\n", b"hello")
    assert (r.seq, r.group, r.ts, r.subject, r.data) == (7, 2, 1234, b"tele.a", b"hello")
    assert r.size == len(b"tele.a") + len(b"hello") + len(b"NATS/1.0\r\nA: b\r\n\r\n")
    assert r.on_disk is True
    assert r.reply == b""
    assert "seq=7" in repr(r)


def test_record_size_without_headers() -> None:
    assert Record(1, 0, 0, b"abc", None, b"12345").size == 8
    assert Record(1, 0, 0, b"abc", b"", b"").size == 3
    assert Record(1, 0, 0, b"abc", None, b"", on_disk=False, reply=b"r").on_disk is False


# ---- InFlight: examples ------------------------------------------------------------------


@pytest.mark.parametrize(("msgs", "size"), [(0, 10), (10, 0), (-1, 10), (1, -5)])
def test_inflight_needs_room_for_one(msgs: int, size: int) -> None:
    with pytest.raises(ValueError):
        InFlight(msgs, size)


def test_inflight_add_ack_counts_bytes() -> None:
    w = InFlight(10, 1000)
    a, b = rec(1, 30), rec(2, 50)
    w.add(a, Confirm.JETSTREAM, 0.0)
    w.add(b, Confirm.JETSTREAM, 1.0)
    assert len(w) == 2
    assert w.bytes == 80
    assert w.ack(1) is a
    assert (len(w), w.bytes) == (1, 50)
    assert w.ack(1) is None  # a late ack for a confirmed message
    assert w.ack(99) is None  # never in flight
    assert w.ack(2) is b
    assert (len(w), w.bytes) == (0, 0)


def test_inflight_is_worth_filling_when_empty_or_a_quarter_free() -> None:
    w = InFlight(8, 10_000)
    assert w.worth_filling()
    for seq in range(1, 7):
        w.add(rec(seq), Confirm.JETSTREAM, 0.0)
    assert w.worth_filling()  # 2 of 8 free
    w.add(rec(7), Confirm.JETSTREAM, 0.0)
    assert not w.worth_filling()  # 1 of 8: wait for more acks
    w.ack(1)
    assert w.worth_filling()


def test_inflight_is_worth_filling_by_bytes() -> None:
    w = InFlight(100, 100)
    w.add(rec(1, 60), Confirm.JETSTREAM, 0.0)
    assert w.worth_filling()  # 40 of 100 bytes free
    w.add(rec(2, 60), Confirm.JETSTREAM, 0.0)
    assert w.bytes == 120
    assert not w.worth_filling()
    w.ack(2)
    assert w.worth_filling()
    w.ack(1)
    assert w.worth_filling() and len(w) == 0


def test_inflight_confirm_through_only_link_records_up_to_mark() -> None:
    w = InFlight(10, 10_000)
    records = {seq: rec(seq) for seq in range(1, 7)}
    how = {1: Confirm.LINK, 2: Confirm.JETSTREAM, 3: Confirm.LINK, 4: Confirm.LINK}
    how |= {5: Confirm.JETSTREAM, 6: Confirm.LINK}
    for seq, r in records.items():
        w.add(r, how[seq], float(seq))
    done = w.confirm_through(4)
    assert [r.seq for r in done] == [1, 3, 4]
    assert all(r is records[r.seq] for r in done)
    assert [r.seq for r in w.records()] == [2, 5, 6]
    assert w.bytes == 30
    assert w.confirm_through(4) == []  # a second PONG for the same mark
    assert w.confirm_through(0) == []
    assert [r.seq for r in w.confirm_through(100)] == [6]
    assert [r.seq for r in w.records()] == [2, 5]


def test_inflight_overdue_follows_the_oldest() -> None:
    w = InFlight(10, 10_000)
    assert w.oldest_sent() is None
    assert not w.overdue(1e9, 1.0)
    w.add(rec(1), Confirm.JETSTREAM, 10.0)
    w.add(rec(2), Confirm.JETSTREAM, 12.0)
    assert w.oldest_sent() == 10.0
    assert not w.overdue(10.9, 1.0)
    assert w.overdue(11.0, 1.0)  # exactly the timeout counts
    w.ack(1)
    assert w.oldest_sent() == 12.0
    assert not w.overdue(12.5, 1.0)
    assert w.overdue(13.0, 1.0)
    w.ack(2)
    assert not w.overdue(1e9, 1.0)


def test_inflight_take_all_in_sequence_order() -> None:
    w = InFlight(10, 10_000)
    for seq in (5, 2, 9, 1):
        w.add(rec(seq), Confirm.LINK if seq % 2 else Confirm.JETSTREAM, 0.0)
    assert [r.seq for r in w.records()] == [5, 2, 9, 1]  # in the order sent
    assert [r.seq for r in w.take_all()] == [1, 2, 5, 9]
    assert (len(w), w.bytes, w.records()) == (0, 0, [])
    assert w.take_all() == []
    assert w.ack(5) is None
    assert w.confirm_through(100) == []


def test_inflight_resend_after_take_all() -> None:
    """Go back N: the records taken back are added again and confirmed as usual."""
    w = InFlight(3, 10_000)
    for seq in (1, 2, 3):
        w.add(rec(seq), Confirm.JETSTREAM, 0.0)
    again = w.take_all()
    for r in again:
        w.add(r, Confirm.JETSTREAM, 5.0)
    assert (len(w), w.bytes) == (3, 30)
    assert w.oldest_sent() == 5.0
    assert w.ack(2) is again[1]


# ---- InFlight against a model ------------------------------------------------------------


class InFlightModel(RuleBasedStateMachine):
    """The window against a plain list of (record, how, sent), in the order sent."""

    def __init__(self) -> None:
        super().__init__()
        self.window = InFlight(1, 1)
        self.model: list[tuple[Record, Confirm, float]] = []
        self.now = 0.0

    @initialize(max_msgs=st.integers(1, 12), max_bytes=st.integers(1, 600))
    def start(self, max_msgs: int, max_bytes: int) -> None:
        self.window = InFlight(max_msgs, max_bytes)

    def _seqs(self) -> list[int]:
        return [r.seq for r, _how, _t in self.model]

    @rule(
        seq=st.integers(1, 40),
        size=st.integers(1, 120),
        link=st.booleans(),
        dt=st.floats(0, 3, allow_nan=False),
    )
    def add(self, seq: int, size: int, link: bool, dt: float) -> None:
        # The forwarder never sends a sequence that is still in flight (it is
        # sent again only after take_all).
        if seq in self._seqs():
            return
        self.now += dt
        how = Confirm.LINK if link else Confirm.JETSTREAM
        r = rec(seq, size)
        self.window.add(r, how, self.now)
        self.model.append((r, how, self.now))

    @rule(
        seqs=st.lists(st.integers(1, 40), min_size=1, max_size=6, unique=True),
        size=st.integers(1, 120),
        link=st.booleans(),
        dt=st.floats(0, 3, allow_nan=False),
    )
    def add_many(self, seqs: list[int], size: int, link: bool, dt: float) -> None:
        # In bulk, a sequence still in flight may come again (a resend): it then
        # moves to the end with its new time, as add does it.
        self.now += dt
        how = Confirm.LINK if link else Confirm.JETSTREAM
        records = [rec(seq, size) for seq in seqs]
        self.window.add_many(records, how, self.now)
        self.model = [e for e in self.model if e[0].seq not in seqs]
        self.model += [(r, how, self.now) for r in records]

    @rule(seq=st.integers(0, 45))
    def ack(self, seq: int) -> None:
        expected = next((r for r, _how, _t in self.model if r.seq == seq), None)
        self.model = [e for e in self.model if e[0].seq != seq]
        got = self.window.ack(seq)
        assert got is expected

    @rule(mark=st.integers(0, 45))
    def confirm_through(self, mark: int) -> None:
        expected = [r for r, how, _t in self.model if r.seq <= mark and how is Confirm.LINK]
        self.model = [e for e in self.model if not (e[0].seq <= mark and e[1] is Confirm.LINK)]
        got = self.window.confirm_through(mark)
        assert [r.seq for r in got] == [r.seq for r in expected]
        assert all(a is b for a, b in zip(got, expected, strict=True))

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def take_all(self) -> None:
        expected = sorted((r for r, _how, _t in self.model), key=lambda r: r.seq)
        self.model = []
        got = self.window.take_all()
        assert [r.seq for r in got] == [r.seq for r in expected]
        assert got == sorted(got, key=lambda r: r.seq)

    @rule(timeout=st.floats(0, 10, allow_nan=False), ahead=st.floats(0, 10, allow_nan=False))
    def overdue(self, timeout: float, ahead: float) -> None:
        now = self.now + ahead
        expected = bool(self.model) and now - self.model[0][2] >= timeout
        assert self.window.overdue(now, timeout) is expected

    @invariant()
    def counts_agree(self) -> None:
        w = self.window
        assert len(w) == len(self.model)
        assert w.bytes == sum(r.size for r, _how, _t in self.model)
        assert w.bytes == sum(r.size for r in w.records())
        assert [r.seq for r in w.records()] == self._seqs()
        quarter_free = (
            w.max_msgs - len(self.model) >= max(1, w.max_msgs // 4)
            and w.max_bytes - w.bytes >= w.max_bytes // 4
        )
        assert w.worth_filling() is (not self.model or quarter_free)
        assert w.oldest_sent() == (self.model[0][2] if self.model else None)


TestInFlightModel = InFlightModel.TestCase
TestInFlightModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# ---- ack_seq -----------------------------------------------------------------------------

INBOX = b"_INBOX.k3Jf9aa."


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (INBOX + b"1", 1),
        (INBOX + b"42", 42),
        (INBOX + b"0", 0),
        (INBOX + b"007", 7),
        (INBOX + b"9" * 19, int("9" * 19)),
        (INBOX + b"9" * 20, None),  # longer than any sequence
        (INBOX, None),
        (INBOX + b"lookup0", None),  # a stream lookup reply shares the inbox
        (INBOX + b"12x", None),
        (INBOX + b"-1", None),
        (INBOX + b"+1", None),
        (INBOX + b" 1", None),
        (INBOX + b"1.2", None),
        (INBOX + b"1 ", None),
        (INBOX + "\u0661".encode(), None),  # a non-ASCII digit
    ],
)
def test_ack_seq(subject: bytes, expected: int | None) -> None:
    assert ack_seq(subject, INBOX) == expected


@given(st.integers(0, 10**19 - 1))
def test_ack_seq_round_trip(seq: int) -> None:
    assert ack_seq(INBOX + b"%d" % seq, INBOX) == seq


# ---- pub_ack_ok --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"stream":"TELE","seq":1}',
        b'{"stream":"TELE", "domain":"hub", "seq":1}',
        b'{"stream":"TELE","seq":5,"duplicate":true}',
        b'{"stream": "TELE", "seq": 18446744073709551615, "duplicate": true}',
        b'{ "stream" : "TELE" , "seq" : 3 }',
        b'{"seq":1,"stream":"TELE"}',
        b'{"stream":"TELE","domain":"hub","seq":12,"duplicate":false}\r\n',
    ],
)
def test_pub_ack_ok_accepts_pub_acks(payload: bytes) -> None:
    assert pub_ack_ok(payload) == (True, None)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (
            b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}',
            "maximum messages exceeded (code 503, err_code 10077)",
        ),
        (
            b'{"error": {"code": 400, "description": "bad request"}}',
            "bad request (code 400, err_code None)",
        ),
        (
            b'{"error":{"code":503,"err_code":10039,"description":"jetstream not enabled"},'
            b'"stream":"TELE","seq":0}',
            "jetstream not enabled (code 503, err_code 10039)",
        ),
        (b"", "reply is not a JetStream PubAck"),
        (b"+OK", "reply is not a JetStream PubAck"),
        (b'{"stream":"TELE"}', "reply is not a JetStream PubAck"),
        (b'{"seq":1}', "reply is not a JetStream PubAck"),
        (b'{"error":', "unparsable JetStream error reply"),
        (b'{"error":"no"}', "unparsable JetStream error reply"),
        (b'["error"]', "unparsable JetStream error reply"),
        (b'{"error":{"code":5}}\xff', "unparsable JetStream error reply"),
    ],
)
def test_pub_ack_ok_refusals(payload: bytes, error: str) -> None:
    assert pub_ack_ok(payload) == (False, error)


def test_pub_ack_ok_error_without_description_names_the_error() -> None:
    ok, error = pub_ack_ok(b'{"error":{"code":500}}')
    assert not ok
    assert error is not None
    assert "500" in error


@pytest.mark.parametrize(
    "payload",
    [
        b'{"stream":"error","seq":3}',
        b'{"stream":"TELE","domain":"error","seq":3}',
        b'{"stream":"error","seq":3,"duplicate":true}',
    ],
)
def test_pub_ack_ok_stream_or_domain_named_error(payload: bytes) -> None:
    """A stream (or domain) may be called "error": its PubAcks are PubAcks. (The
    fast path's substring test sends them to the error branch, which then calls
    them refusals: every message to such a stream would be resent forever.)"""
    assert pub_ack_ok(payload) == (True, None)


_NAME = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\.*> '),
    min_size=1,
    max_size=12,
)


@given(
    stream=_NAME.filter(lambda s: s != "error"),  # "error": test_pub_ack_ok_stream_or_domain...
    seq=st.integers(0, 2**64 - 1),
    domain=st.none() | _NAME.filter(lambda s: s != "error"),
    duplicate=st.none() | st.booleans(),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]),
)
def test_pub_ack_ok_any_pub_ack(
    stream: str,
    seq: int,
    domain: str | None,
    duplicate: bool | None,
    separators: tuple[str, str],
) -> None:
    body: dict[str, object] = {"stream": stream}
    if domain is not None:
        body["domain"] = domain
    body["seq"] = seq
    if duplicate is not None:
        body["duplicate"] = duplicate
    payload = json.dumps(body, separators=separators).encode()
    assert pub_ack_ok(payload) == (True, None)


@given(
    code=st.integers(100, 599),
    err_code=st.integers(10000, 10999),
    description=st.text(min_size=1, max_size=40),
)
def test_pub_ack_ok_any_error(code: int, err_code: int, description: str) -> None:
    payload = json.dumps(
        {"error": {"code": code, "err_code": err_code, "description": description}}
    ).encode()
    assert pub_ack_ok(payload) == (
        False,
        f"{description} (code {code}, err_code {err_code})",
    )


# ---- with_msg_id -------------------------------------------------------------------------

ID = b"edge-1:42"
ID_LINE = b"Nats-Msg-Id: edge-1:42\r\n"


@pytest.mark.parametrize(
    ("hdr", "expected"),
    [
        (None, b"NATS/1.0\r\n" + ID_LINE + b"\r\n"),
        (b"", b"NATS/1.0\r\n" + ID_LINE + b"\r\n"),
        (b"NATS/1.0\r\n\r\n", b"NATS/1.0\r\n" + ID_LINE + b"\r\n"),
        (
            b"NATS/1.0\r\nFoo: bar\r\n\r\n",
            b"NATS/1.0\r\n" + ID_LINE + b"Foo: bar\r\n\r\n",
        ),
        (
            b"NATS/1.0\r\nA: 1\r\nB: two words\r\nA: 3\r\n\r\n",
            b"NATS/1.0\r\n" + ID_LINE + b"A: 1\r\nB: two words\r\nA: 3\r\n\r\n",
        ),
        # A publisher's own id is replaced, whatever its case.
        (
            b"NATS/1.0\r\nNats-Msg-Id: mine\r\nFoo: bar\r\n\r\n",
            b"NATS/1.0\r\n" + ID_LINE + b"Foo: bar\r\n\r\n",
        ),
        (
            b"NATS/1.0\r\nnats-msg-id: a\r\nX: y\r\nNATS-MSG-ID: b\r\nnAtS-mSg-Id:c\r\n\r\n",
            b"NATS/1.0\r\n" + ID_LINE + b"X: y\r\n\r\n",
        ),
        # Look-alikes stay: another header name, or the words in a value.
        (
            b"NATS/1.0\r\nNats-Msg-Id-Extra: 1\r\nX-Note: Nats-Msg-Id: 9\r\n\r\n",
            b"NATS/1.0\r\n" + ID_LINE + b"Nats-Msg-Id-Extra: 1\r\nX-Note: Nats-Msg-Id: 9\r\n\r\n",
        ),
        # The status line is kept as it is.
        (b"NATS/1.0 503\r\n\r\n", b"NATS/1.0 503\r\n" + ID_LINE + b"\r\n"),
        (
            b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n",
            b"NATS/1.0 408 Request Timeout\r\n" + ID_LINE + b"Nats-Pending-Messages: 1\r\n\r\n",
        ),
        # Without the closing blank line, the block is closed.
        (b"NATS/1.0\r\nFoo: bar", b"NATS/1.0\r\n" + ID_LINE + b"Foo: bar\r\n\r\n"),
        (b"NATS/1.0\r\nFoo: bar\r\n", b"NATS/1.0\r\n" + ID_LINE + b"Foo: bar\r\n\r\n"),
        # Not a header block at all: a fresh one.
        (b"NATS/1.0", b"NATS/1.0\r\n" + ID_LINE + b"\r\n"),
    ],
)
def test_with_msg_id_bytes(hdr: bytes | None, expected: bytes) -> None:
    assert with_msg_id(hdr, ID) == expected


_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1
)
_HEADER_NAME = st.sampled_from(
    ["Nats-Msg-Id", "nats-msg-id", "NATS-MSG-ID", "Nats-Msg-ID", "Nats-Expected-Stream"]
) | _TOKEN.map(lambda s: s[:16])
_HEADER_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20
).map(str.strip)
_STATUS = st.sampled_from(["NATS/1.0", "NATS/1.0 503", "NATS/1.0 408 Request Timeout"])
_MSG_ID = st.from_regex(rb"\A[a-z0-9-]{1,20}:[0-9]{1,19}\Z")


@given(
    status=_STATUS,
    headers=st.lists(st.tuples(_HEADER_NAME, _HEADER_VALUE, st.booleans()), max_size=8),
    msg_id=_MSG_ID,
)
@settings(max_examples=300)
def test_with_msg_id_properties(
    status: str, headers: list[tuple[str, str, bool]], msg_id: bytes
) -> None:
    lines = [f"{name}:{' ' if space else ''}{value}".encode() for name, value, space in headers]
    hdr = status.encode() + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    out = with_msg_id(hdr, msg_id)

    assert out.startswith(status.encode() + b"\r\n")
    assert out.endswith(b"\r\n\r\n")
    body = out[len(status) + 2 : -4]
    got = body.split(b"\r\n")
    # Every line is a header line "Name: value".
    for line in got:
        name, colon, _value = line.partition(b":")
        assert colon and name and b" " not in name
    ids = [line for line in got if line.partition(b":")[0].lower() == b"nats-msg-id"]
    assert ids == [b"Nats-Msg-Id: " + msg_id]
    assert got[0] == b"Nats-Msg-Id: " + msg_id  # first: what the hub's lookup finds
    others = [line for line in lines if line.partition(b":")[0].lower() != b"nats-msg-id"]
    assert got[1:] == others
    # Idempotent: the block sent again carries the same single id.
    assert with_msg_id(out, msg_id) == out


@given(hdr=st.none() | st.binary(max_size=60), msg_id=_MSG_ID)
def test_with_msg_id_any_input_gives_one_block(hdr: bytes | None, msg_id: bytes) -> None:
    out = with_msg_id(hdr, msg_id)
    assert out.endswith(b"\r\n\r\n")
    assert out.count(b"\r\nNats-Msg-Id: " + msg_id + b"\r\n") >= 1
    if not hdr or b"\r\n" not in hdr:
        assert out == b"NATS/1.0\r\nNats-Msg-Id: " + msg_id + b"\r\n\r\n"
    else:
        assert out.startswith(hdr[: hdr.find(b"\r\n") + 2] + b"Nats-Msg-Id: " + msg_id)


@given(
    st.integers(1, 2**62),
    st.binary(min_size=1, max_size=30).filter(lambda b: b" " not in b and b"\r" not in b),
    st.one_of(st.none(), st.just(b"NATS/1.0\r\nA: b\r\n\r\n")),
    st.binary(max_size=100),
    st.sampled_from([(), (b"q1",), (b"q1", b"q2")]),
)
def test_the_stored_message_framing_matches_the_general_encoder(
    seq: int, subject: bytes, hdr: bytes | None, data: bytes, route: tuple[bytes, ...]
) -> None:
    """forward.encode_stored's one-step framing (no header, no queue route) is
    byte for byte what the general encoder makes."""
    from edge.proto.leafproto import encode_lmsg
    from store.forward import encode_stored

    rec = Record(seq, 0, 0, subject, hdr, data)
    block = with_msg_id(hdr, b"gw-x:%d" % seq)
    expected = encode_lmsg(subject, b"_INBOX.abc.%d" % seq, route, len(block), block + data)
    assert encode_stored(rec, b"gw-x", b"_INBOX.abc.", route) == expected


@given(
    st.lists(st.integers(1, 2**40), min_size=1, max_size=30, unique=True).map(sorted),
    st.binary(min_size=1, max_size=30).filter(lambda b: b" " not in b and b"\r" not in b),
    st.lists(st.binary(max_size=100), min_size=30, max_size=30),
    st.sampled_from([b"gw", b"gateway-with-a-long-name"]),
    st.one_of(st.none(), st.integers(0, 100)),
)
def test_a_plain_segment_is_framed_as_each_record_alone(
    seqs: list[int],
    subject: bytes,
    payloads: list[bytes],
    gateway: bytes,
    one_size: int | None,
) -> None:
    """forward.encode_plain (the bulk framing) equals encode_stored of each
    record in turn, whatever the sequence lengths and payload sizes, and when
    all share them (the joined-pieces path); one subject or several."""
    from store.forward import encode_plain, encode_stored

    if one_size is not None:
        seqs = [10**9 + seq % 10**8 for seq in seqs]  # ten digits each
        seqs = sorted(set(seqs))
        payloads = [p.ljust(one_size, b"z")[:one_size] for p in payloads]
    records = [
        Record(seq, 0, 0, subject, None, data)
        for seq, data in zip(seqs, payloads[: len(seqs)], strict=True)
    ]
    expected = b"".join(encode_stored(r, gateway, b"_INBOX.abc.", ()) for r in records)
    subjects = [r.subject for r in records]
    assert encode_plain(records, subjects, gateway, b"_INBOX.abc.") == expected
    mixed = [Record(r.seq, 0, 0, b"%b.%d" % (subject, r.seq % 3), None, r.data) for r in records]
    expected = b"".join(encode_stored(r, gateway, b"_INBOX.abc.", ()) for r in mixed)
    assert encode_plain(mixed, [r.subject for r in mixed], gateway, b"_INBOX.abc.") == expected
