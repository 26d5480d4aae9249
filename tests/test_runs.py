"""Runs of plain PUBs: the parser's Run events and the router's bulk framing.

A run (consecutive PUBs with the same control line) must be delivered exactly as
the same messages one by one: same events in the same order from the parser, same
bytes in every subscriber's output, the same fall-back to one-by-one delivery
whenever something could happen mid-run (UNSUB max, echo off, a client with two
matching subscriptions, a buffer near its stall mark, a non-inline subscriber).
Queue groups keep choosing a member per message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.proto import errors
from edge.proto.errors import CloseReason
from edge.proto.events import PING, Event, ParseFailed, Pub, Run, Sub
from edge.proto.parser import ClientParser, run_payload, run_payloads
from edge.router import RUN_MIN, Router, Subscription
from store.window import Record, expand
from store.writer import Store
from tests.storefakes import group, make_store

# ------------------------------------------------------------------ parser


def _pub(subject: bytes, payload: bytes, reply: bytes = b"") -> bytes:
    sep = b" " + reply + b" " if reply else b" "
    return b"PUB " + subject + sep + b"%d\r\n" % len(payload) + payload + b"\r\n"


class Recorder:
    """Feeds a parser with runs on; records the runs and every message, in order."""

    def __init__(self) -> None:
        self.parser = ClientParser()
        self.parser.runs = True
        self.seen: list[Event] = []
        self.runs: list[int] = []

    def feed(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if isinstance(event, Run):
                assert len(event.tails) >= 2
                self.runs.append(len(event.tails))
                for tail in event.tails:
                    payload = run_payload(tail)
                    assert tail == b"%d\r\n%b\r\n" % (len(payload), payload)  # canonical
                    self.seen.append(Pub(event.subject, b"", 0, payload))
            else:
                self.seen.append(event)


def test_a_run_is_one_event() -> None:
    rec = Recorder()
    payloads = [b"%03d" % i for i in range(50)]
    rec.feed(b"".join(_pub(b"a.b", p) for p in payloads))
    assert rec.runs == [50]
    assert rec.seen == [Pub(b"a.b", b"", 0, p) for p in payloads]


def test_a_run_is_one_subject_whatever_the_sizes() -> None:
    rec = Recorder()
    data = _pub(b"a", b"x") * 3 + _pub(b"a", b"yy") + _pub(b"b", b"z") * 2 + _pub(b"a", b"x")
    rec.feed(data)
    assert rec.runs == [4, 2]  # a lone PUB stays a Pub
    assert rec.seen == ClientParser().feed(data)


@pytest.mark.parametrize(
    ("odd", "runs"),
    [
        # not canonical: a Pub of its own between two runs
        (b"PUB a 01\r\nx\r\n", [2, 2]),  # leading zero: a MSG frame says 1
        (b"PUB a  1\r\nx\r\n", [2, 2]),  # two spaces
        (b"PUB a 1 \r\nx\r\n", [2, 2]),  # trailing space
        (b"PUB a 1\nx\r\n", [2, 2]),  # bare LF
        # another subject with the same start
        (b"PUB a.b 1\r\nx\r\n", [2, 2]),
        (b"PUB ab 1\r\nx\r\n", [2, 2]),
    ],
)
def test_only_canonical_lines_of_the_subject_continue_a_run(odd: bytes, runs: list[int]) -> None:
    rec = Recorder()
    data = _pub(b"a", b"x") * 2 + odd + _pub(b"a", b"x") * 2
    rec.feed(data)
    assert rec.runs == runs
    assert rec.seen == ClientParser().feed(data)


def test_runs_and_other_operations_keep_their_order() -> None:
    rec = Recorder()
    data = _pub(b"a", b"1") * 4 + b"SUB a 1\r\n" + _pub(b"a", b"2") * 4 + b"PING\r\n"
    rec.feed(data)
    assert rec.runs == [4, 4]
    assert rec.seen == [
        *[Pub(b"a", b"", 0, b"1")] * 4,
        Sub(b"a", None, b"1"),
        *[Pub(b"a", b"", 0, b"2")] * 4,
        PING,
    ]


def test_replies_and_headers_are_never_in_a_run() -> None:
    rec = Recorder()
    data = _pub(b"a", b"x", b"r") * 3 + b"HPUB a 12 13\r\nNATS/1.0\r\n\r\nx\r\n"
    rec.feed(data)
    assert rec.runs == []
    assert rec.seen == ClientParser().feed(data)


def test_a_frame_cut_by_the_read_ends_the_run() -> None:
    rec = Recorder()
    data = _pub(b"a", b"abcdef") * 5
    rec.feed(data[:-4])
    assert rec.runs == [4]
    rec.feed(data[-4:])
    assert rec.runs == [4]  # the completed message comes as a Pub
    assert rec.seen == ClientParser().feed(data)


def test_a_malformed_frame_mid_run_delivers_what_came_before() -> None:
    rec = Recorder()
    good = _pub(b"a", b"xy") * 5
    rec.feed(good + b"PUB a 2\r\nxyZZ")
    assert rec.runs == [5]
    assert isinstance(rec.seen[-1], ParseFailed)
    assert rec.seen[-1].error.err == errors.UNKNOWN_OP.err
    assert rec.seen[:-1] == [Pub(b"a", b"", 0, b"xy")] * 5


def test_payloads_that_look_like_frames_stay_payloads() -> None:
    rec = Recorder()
    tricky = _pub(b"a", b"x")  # 'PUB a 1\r\nx\r\n' as a payload of 12 bytes
    data = _pub(b"a", tricky) * 6
    rec.feed(data)
    assert rec.runs == [6]
    assert rec.seen == [Pub(b"a", b"", 0, tricky)] * 6


_ops = st.sampled_from(
    [
        _pub(b"s", b"ab"),
        _pub(b"s", b"ab"),
        _pub(b"s", b"cd"),
        _pub(b"s", b"xyz"),
        _pub(b"s", b""),
        _pub(b"s", b"0123456789"),
        b"PUB s 02\r\nab\r\n",
        _pub(b"t.u", b"ab"),
        _pub(b"s", b"ab", b"r"),
        b"PUB s 2\nab\r\n",
        b"PING\r\n",
        b"SUB s 1\r\n",
        b"PUB s 2\r\nabX\r\n",  # malformed: the parse fails there
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ops, max_size=40), st.data())
def test_runs_and_events_give_the_plain_parse_in_order(
    ops: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(ops)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    rec = Recorder()
    plain = ClientParser()
    expected: list[Event] = []
    for piece in pieces:
        rec.feed(piece)
        expected.extend(plain.feed(piece))
    assert [_key(e) for e in rec.seen] == [_key(e) for e in expected]


def _key(event: Event) -> object:
    return ("failed", event.error.err) if isinstance(event, ParseFailed) else event


# ------------------------------------------------------------------ router


class FakeClient:
    """A socket client as the router sees it (edge.router.Subscriber)."""

    local = False

    def __init__(self, router: Router, *, echo: bool = True, stall_mark: int = 1 << 40) -> None:
        self.router = router
        self.echo = echo
        self.out = bytearray()
        self.close_reason: CloseReason | None = None
        self.inline = True
        self.wake_pending = False
        self.stall_mark = stall_mark
        self.wakes = 0
        self.stalls = 0

    def appended(self, sub: Subscription) -> None:
        if len(self.out) > self.stall_mark:
            self.stalls += 1
        if not self.wake_pending:
            self.wake_pending = True
            self.wakes += 1
        if sub.max_msgs and sub.delivered >= sub.max_msgs:
            self.router.unsubscribe(sub)

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        self.out += b"MSG %b %b %d\r\n%b\r\n" % (subject, sub.sid, len(data), data)
        sub.delivered += 1
        self.appended(sub)


def _world(
    specs: Sequence[tuple[int, bytes, bytes | None, bytes]], **client_opts: object
) -> tuple[Router, list[FakeClient], list[Subscription]]:
    """A router with clients (by index) holding subscriptions (subject, queue, sid)."""
    router = Router()
    clients = [FakeClient(router, **client_opts) for _ in range(1 + max(s[0] for s in specs))]  # type: ignore[arg-type]
    subs = []
    for index, subject, queue, sid in specs:
        sub = Subscription(clients[index], subject, queue, sid)
        router.subscribe(sub)
        subs.append(sub)
    return router, clients, subs


def _one_by_one_and_run(
    specs: Sequence[tuple[int, bytes, bytes | None, bytes]],
    subject: bytes,
    payloads: list[bytes],
    *,
    origin: int | None = None,
    setup: object = None,
    **client_opts: object,
) -> tuple[list[FakeClient], list[FakeClient]]:
    results = []
    for by_run in (False, True):
        router, clients, subs = _world(specs, **client_opts)
        if callable(setup):
            setup(clients, subs)
        pub = clients[origin] if origin is not None else FakeClient(router)
        if by_run:
            router.publish_run(pub, subject, _tails(payloads))
        else:
            for p in payloads:
                router.publish(pub, subject, b"", 0, p)
        results.append(clients)
    return results[0], results[1]


def _tails(payloads: list[bytes]) -> list[bytes]:
    return [b"%d\r\n%b\r\n" % (len(p), p) for p in payloads]


def _outs(clients: list[FakeClient]) -> list[bytes]:
    return [bytes(c.out) for c in clients]


PAYLOADS = [b"%04d" % i for i in range(40)]
FAN = [
    (0, b"a.b", None, b"1"),
    (1, b"a.*", None, b"1"),
    (2, b"a.>", None, b"7"),
    (3, b">", None, b"1"),
]


def test_fan_out_run_bytes_equal_one_by_one() -> None:
    one, run = _one_by_one_and_run(FAN, b"a.b", PAYLOADS)
    assert _outs(run) == _outs(one)
    assert all(c.out for c in run)
    assert [c.wakes for c in run] == [1, 1, 1, 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=RUN_MIN, max_size=60))
def test_any_payload_run_equals_one_by_one(payloads: list[bytes]) -> None:
    one, run = _one_by_one_and_run(FAN, b"a.b", payloads)
    assert _outs(run) == _outs(one)


def test_no_subscriber_run_is_dropped_and_counted() -> None:
    router = Router()
    before = router.sublist.stats().matches
    router.publish_run(FakeClient(router), b"nobody", _tails(PAYLOADS))
    assert router.sublist.stats().matches == before + len(PAYLOADS)


@pytest.mark.parametrize(
    ("name", "specs", "kwargs"),
    [
        # one client, two matching subscriptions: copies interleave per message
        ("two_subs_one_client", [(0, b"a.b", None, b"1"), (0, b"a.*", None, b"2")], {}),
        # echo off: the publisher's own subscription is skipped
        ("echo_off", [(0, b"a.b", None, b"1"), (1, b"a.b", None, b"1")], {"origin": 0}),
        # a buffer that would pass its stall mark
        ("stall", [(0, b"a.b", None, b"1"), (1, b"a.>", None, b"2")], {"stall_mark": 200}),
    ],
)
def test_fallbacks_equal_one_by_one(
    name: str, specs: Sequence[tuple[int, bytes, bytes | None, bytes]], kwargs: dict[str, object]
) -> None:
    if name == "echo_off":
        kwargs = {**kwargs, "echo": False}
    one, run = _one_by_one_and_run(specs, b"a.b", PAYLOADS, **kwargs)  # type: ignore[arg-type]
    assert _outs(run) == _outs(one)
    if name == "stall":
        assert [c.stalls for c in run] == [c.stalls for c in one] and run[0].stalls > 0
    if name == "echo_off":
        assert run[0].out == b""


def test_unsub_max_mid_run_stops_exactly() -> None:
    def limit(clients: list[FakeClient], subs: list[Subscription]) -> None:
        subs[0].max_msgs = 7

    one, run = _one_by_one_and_run(FAN, b"a.b", PAYLOADS, setup=limit)
    assert _outs(run) == _outs(one)
    assert run[0].out.count(b"MSG ") == 7


def test_queue_group_run_picks_a_member_per_message() -> None:
    specs = [(i, b"work", b"grp", b"%d" % i) for i in range(3)] + [(3, b"work", None, b"9")]
    router, clients, _subs = _world(specs)
    payloads = [b"%05d" % i for i in range(3000)]
    router.publish_run(FakeClient(router), b"work", _tails(payloads))
    got = [_frames(bytes(c.out)) for c in clients]
    counts = [len(g) for g in got[:3]]
    assert sum(counts) == len(payloads)
    assert all(800 < c < 1200 for c in counts), counts  # ~1000 each, p(fail) < 1e-20
    for index, frames in enumerate(got[:3]):
        assert all(f[0] == b"work" and f[1] == b"%d" % index for f in frames)
        taken = [f[2] for f in frames]
        assert taken == sorted(taken)  # each member sees its messages in order
    assert sorted(f[2] for g in got[:3] for f in g) == payloads  # each exactly once
    assert [f[2] for f in got[3]] == payloads


def test_queue_members_on_one_client_go_message_by_message() -> None:
    specs = [(0, b"job", b"q", b"1"), (0, b"job", b"q", b"2")]
    router, clients, subs = _world(specs)
    router.publish_run(FakeClient(router), b"job", _tails(PAYLOADS))
    frames = _frames(bytes(clients[0].out))
    assert [f[2] for f in frames] == PAYLOADS  # one stream, in publish order
    assert Counter(f[1] for f in frames).keys() <= {b"1", b"2"}
    assert sum(s.delivered for s in subs) == len(PAYLOADS)


def _frames(out: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(subject, sid, payload) of each MSG frame in ``out``."""
    frames = []
    pos = 0
    while pos < len(out):
        eol = out.index(b"\r\n", pos)
        op, subject, sid, size = out[pos:eol].split(b" ")
        assert op == b"MSG"
        start = eol + 2
        end = start + int(size)
        assert out[end : end + 2] == b"\r\n"
        frames.append((subject, sid, out[start:end]))
        pos = end + 2
    return frames


# ------------------------------------------------------------ runs into the store


def _stored(router: Router) -> list[tuple[int, bytes, bytes | None, bytes, bytes, bool]]:
    store = router.store
    assert isinstance(store, Store)
    return [(r.seq, r.subject, r.hdr, r.data, r.reply, r.on_disk) for r in expand(store.pending)]


def _store_world(tmp_path: Path, name: str, **limits: object) -> tuple[Router, FakeClient]:
    router, clients, _ = _world([(0, b"telemetry.>", None, b"1"), (1, b"other", None, b"2")])
    (tmp_path / name).mkdir()
    router.store = make_store(tmp_path / name, group(**limits))
    return router, clients[0]


def _no_accept(*args: object) -> None:
    raise AssertionError("a run the store takes whole went message by message")


@pytest.mark.parametrize("limits", [{}, {"max_msgs": 1000}, {"durability": "memory"}])
def test_a_run_into_the_store_equals_one_by_one(tmp_path: Path, limits: dict[str, object]) -> None:
    """A run on a stored subject: the store gets the same records (sequences,
    subjects, payloads) and the local subscriber the same bytes as one by one;
    a group the short path does not serve (a limit, memory durability) gets it
    message by message through the checked path."""
    worlds = []
    for by_run in (False, True):
        router, sub_client = _store_world(tmp_path, f"run{by_run}", **limits)
        pub = FakeClient(router)
        router.publish_run(pub, b"other", _tails(PAYLOADS[:5]))  # not stored: delivered
        if by_run:
            store = router.store
            assert isinstance(store, Store)
            if not limits:  # the short path: taken whole, never message by message
                store.accept = _no_accept  # type: ignore[method-assign]
            router.publish_run(pub, b"telemetry.a", _tails(PAYLOADS))
        else:
            for p in PAYLOADS:
                router.publish(pub, b"telemetry.a", b"", 0, p)
        store = router.store
        assert isinstance(store, Store)
        state = store.groups.states[0]
        worlds.append((_stored(router), bytes(sub_client.out), state.count, state.bytes))
    assert worlds[1] == worlds[0]
    assert [s[0] for s in worlds[1][0]] == list(range(1, len(PAYLOADS) + 1))
    assert worlds[1][1].count(b"MSG telemetry.a 1 ") == len(PAYLOADS)


def test_a_run_the_store_cannot_take_whole_goes_one_by_one(tmp_path: Path) -> None:
    router, sub_client = _store_world(tmp_path, "full")
    store = router.store
    assert isinstance(store, Store)
    store.commit_failures = 1  # the short path is off until a commit succeeds again
    assert not store.takes_run(0)
    router.publish_run(FakeClient(router), b"telemetry.a", _tails(PAYLOADS))
    assert [type(r) for r in store.pending] == [Record] * len(PAYLOADS)  # the checked path
    assert [r.data for r in expand(store.pending)] == PAYLOADS
    assert bytes(sub_client.out).count(b"MSG telemetry.a 1 ") == len(PAYLOADS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=50))
def test_run_payloads_equal_run_payload(payloads: list[bytes]) -> None:
    tails = _tails(payloads)
    assert run_payloads(tails) == [run_payload(t) for t in tails] == payloads
