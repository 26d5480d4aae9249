"""The completeness ledger: ``hub/ledger.py`` (pure) and ``leafgate hub ledger``.

The pure part is checked case by case, byte by byte on its output, and with
Hypothesis against a brute-force model that keeps every seq.  The command runs
against a real nats-server with JetStream (``tests.hubs.start_hub``: 127.0.0.1,
OS-chosen ports, stopped by PID) with every network wait bounded.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.ledger import (
    MAX_SEQ,
    GatewayLedger,
    GatewayReport,
    StreamLedger,
    format_json,
    format_ranges,
    format_text,
    parse_ack_reply,
    parse_msg_id,
)
from hub.provision import StreamRequest, provision_stream
from hub.tool import LedgerReadError, _StreamReader
from hub.tool import main as hub_main
from tests.aio import connect, run
from tests.harness import REPO_ROOT
from tests.hubs import APP_AUTH, HubProcess, start_hub, stop_all

PROC_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------
# Nats-Msg-Id and ack reply parsing
# ---------------------------------------------------------------------------

MSG_IDS: list[tuple[str | None, tuple[str, int] | None]] = [
    ("gwA:1", ("gwA", 1)),
    ("site-7_b.north:42", ("site-7_b.north", 42)),
    ("gw:007", ("gw", 7)),  # an integer all the same
    (f"gw:{MAX_SEQ}", ("gw", MAX_SEQ)),
    (f"gw:{MAX_SEQ + 1}", None),  # beyond what the gateway store can number
    ("gw:99999999999999999999999999", None),
    ("gw:0", None),  # seqs start at 1
    ("gw:-1", None),
    ("gw:+1", None),
    ("gw: 1", None),
    ("gw:1 ", None),
    ("gw:1.5", None),
    ("gw:\u0663", None),  # an Arabic-Indic digit: int() would take it
    ("gw:\u00b2", None),
    ("gw:", None),
    (":5", None),
    ("gw", None),
    ("12345", None),
    ("a:b:3", None),  # split on the last ':', and a gateway id never holds one
    ("g w:3", None),
    ("gw\u00e9:3", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("value", "expected"), MSG_IDS)
def test_parse_msg_id(value: str | None, expected: tuple[str, int] | None) -> None:
    assert parse_msg_id(value) == expected


GATEWAY_IDS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
    min_size=1,
    max_size=20,
)


@given(GATEWAY_IDS, st.integers(1, MAX_SEQ))
def test_parse_msg_id_round_trips(gateway: str, seq: int) -> None:
    assert parse_msg_id(f"{gateway}:{seq}") == (gateway, seq)


@given(st.text(max_size=30))
def test_parse_msg_id_takes_only_what_it_can_give_back(value: str) -> None:
    parsed = parse_msg_id(value)
    if parsed is not None:
        gateway, seq = parsed
        head, _, tail = value.rpartition(":")
        assert head == gateway and tail.isascii() and int(tail) == seq


def test_parse_ack_reply() -> None:
    assert parse_ack_reply("$JS.ACK.TELEMETRY.c1.1.17.16.1700000000000000000.3") == (17, 3)
    # domain and account hash, with and without the trailing token
    v2 = "$JS.ACK.hub.ACCHASH.TELEMETRY.c1.1.17.16.1700000000000000000.0"
    assert parse_ack_reply(v2) == (17, 0)
    assert parse_ack_reply(v2 + ".tok") == (17, 0)
    assert parse_ack_reply("$JS.ACK.S.c.1.x.1.1.0") is None
    assert parse_ack_reply("_INBOX.abc") is None
    assert parse_ack_reply("") is None


# ---------------------------------------------------------------------------
# GatewayLedger, case by case
# ---------------------------------------------------------------------------


def _ledger(seqs: Sequence[int], limit: int = 10) -> GatewayLedger:
    ledger = GatewayLedger(limit)
    for seq in seqs:
        ledger.add(seq)
    return ledger


def test_in_order_is_one_range() -> None:
    ledger = _ledger(range(1, 1001))
    assert ledger.ranges == [(1, 1000)]
    assert (ledger.messages, ledger.distinct, ledger.duplicates, ledger.out_of_order) == (
        1000,
        1000,
        0,
        0,
    )
    report = ledger.report("gw")
    assert report.complete
    assert (report.first, report.last, report.missing, report.head_gap) == (1, 1000, 0, None)


def test_gaps_duplicates_and_out_of_order() -> None:
    ledger = _ledger([1, 2, 3, 6, 7, 9, 8, 10, 7, 2, 7, 14])
    assert ledger.ranges == [(1, 3), (6, 10), (14, 14)]
    assert list(ledger.gaps()) == [(4, 5), (11, 13)]
    assert ledger.duplicates == 3 and ledger.duplicate_seqs == (7, 2)
    assert ledger.out_of_order == 1  # 8 after 9; the duplicates do not count
    report = ledger.report("gw")
    assert not report.complete
    assert (report.missing, report.missing_range_count) == (5, 2)


def test_filling_a_hole_merges_both_neighbours() -> None:
    ledger = _ledger([1, 3, 5, 4, 2])
    assert ledger.ranges == [(1, 5)]
    assert ledger.out_of_order == 2  # 4 after 5, 2 after 4
    ledger = _ledger([10, 8, 9, 7])
    assert ledger.ranges == [(7, 10)]


def test_head_gap_and_from_seq() -> None:
    ledger = _ledger([5, 6, 7, 9])
    report = ledger.report("gw")
    assert report.head_gap == (1, 4) and report.head_missing == 4
    assert report.missing == 1 and not report.complete
    accepted = ledger.report("gw", allow_head_gap=True)
    assert accepted.head_gap_accepted and accepted.missing == 1
    assert _ledger([5, 6]).report("gw", allow_head_gap=True).complete
    assert _ledger([5, 6]).report("gw", from_seq=5).complete
    # seqs before from_seq are counted but never make a gap
    below = _ledger([1, 2, 8, 9, 11]).report("gw", from_seq=5)
    assert below.head_gap == (5, 7)
    assert below.missing_ranges == ((10, 10),)
    straddling = _ledger([3, 4, 5, 6, 9]).report("gw", from_seq=5)
    assert straddling.head_gap is None and straddling.missing_ranges == ((7, 8),)


def test_listed_ranges_and_duplicates_are_capped() -> None:
    seqs = list(range(1, 40, 2))  # 20 seqs, 19 one-seq gaps
    ledger = _ledger(seqs + seqs[:5], limit=3)
    report = ledger.report("gw", limit=3)
    assert report.missing == 19 and report.missing_range_count == 19
    assert report.missing_ranges == ((2, 2), (4, 4), (6, 6))
    assert report.duplicates == 5
    assert report.duplicate_seqs == (1, 3, 5) and report.duplicate_seqs_truncated
    one_dup_many_times = _ledger([1, 2, 2, 2, 2], limit=1).report("gw", limit=1)
    assert one_dup_many_times.duplicate_seqs == (2,)
    assert not one_dup_many_times.duplicate_seqs_truncated


def test_a_million_seqs_stay_a_few_ranges_and_take_little_time() -> None:
    ledger = GatewayLedger()
    start = time.perf_counter()
    for seq in range(1, 1_000_001):
        if seq % 100_000:  # ten one-seq gaps
            ledger.add(seq)
    for seq in range(500_001, 500_101):  # a re-sent burst
        ledger.add(seq)
    elapsed = time.perf_counter() - start
    assert len(ledger.ranges) == 10
    assert ledger.report("gw").missing == 9  # 1_000_000 itself is past the last seen
    assert ledger.duplicates == 100
    assert elapsed < 10, elapsed  # about 0.3 s here; catches a quadratic slip


# ---------------------------------------------------------------------------
# GatewayLedger against a brute-force model
# ---------------------------------------------------------------------------


def _compress(values: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in sorted(values):
        if out and out[-1][1] + 1 == v:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def _model(seqs: Sequence[int], from_seq: int, limit: int) -> dict[str, Any]:
    """Everything the ledger reports, computed from the full list of seqs."""
    seen: set[int] = set()
    dup_seqs: list[int] = []
    duplicates = out_of_order = previous = 0
    for seq in seqs:
        if seq in seen:
            duplicates += 1
            if seq not in dup_seqs:
                dup_seqs.append(seq)
        else:
            seen.add(seq)
            out_of_order += seq < previous
        previous = seq
    tracked = [s for s in seen if s >= from_seq]
    missing: list[int] = []
    head_gap = None
    if tracked:
        low = min(tracked)
        missing = [s for s in range(low, max(seen) + 1) if s not in seen]
        head_gap = (from_seq, low - 1) if low > from_seq else None
    gaps = _compress(missing)
    return {
        "ranges": _compress(list(seen)),
        "messages": len(seqs),
        "distinct": len(seen),
        "first": min(seen, default=None),
        "last": max(seen, default=None),
        "duplicates": duplicates,
        "duplicate_seqs": tuple(dup_seqs[:limit]),
        "duplicate_seqs_truncated": len(dup_seqs) > limit,
        "out_of_order": out_of_order,
        "head_gap": head_gap,
        "missing": len(missing),
        "missing_range_count": len(gaps),
        "missing_ranges": tuple(gaps[:limit]),
    }


@st.composite
def mostly_ordered(draw: st.DrawFn) -> list[int]:
    """What a gateway's stream looks like: a run of seqs with holes, some re-sent
    stretches and a few swaps."""
    start = draw(st.integers(1, 5))
    seqs = [s for s in range(start, start + draw(st.integers(0, 60))) if draw(st.integers(0, 9))]
    for _ in range(draw(st.integers(0, 3))):
        if seqs:
            i = draw(st.integers(0, len(seqs) - 1))
            seqs[i:i] = seqs[max(0, i - draw(st.integers(1, 5))) : i]
    for _ in range(draw(st.integers(0, 3))):
        if len(seqs) > 1:
            i = draw(st.integers(0, len(seqs) - 2))
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    return seqs


SEQ_LISTS = st.one_of(st.lists(st.integers(1, 40), max_size=80), mostly_ordered())


@settings(max_examples=400, deadline=None)
@given(SEQ_LISTS, st.integers(1, 8), st.integers(0, 4))
def test_gateway_ledger_matches_the_model(seqs: list[int], from_seq: int, limit: int) -> None:
    ledger = _ledger(seqs, limit=limit)
    report = ledger.report("gw", from_seq=from_seq, limit=limit)
    got = {
        "ranges": ledger.ranges,
        **{
            key: getattr(report, key)
            for key in (
                "messages",
                "distinct",
                "first",
                "last",
                "duplicates",
                "duplicate_seqs",
                "duplicate_seqs_truncated",
                "out_of_order",
                "head_gap",
                "missing",
                "missing_range_count",
                "missing_ranges",
            )
        },
    }
    expected = _model(seqs, from_seq, limit)
    assert got == expected
    clean = not (expected["missing"] or expected["duplicates"] or expected["head_gap"])
    assert report.complete == (bool(seqs) and clean)


FOREIGN_IDS = st.one_of(st.none(), st.sampled_from(["", "junk", "gw:0", "a:b:1", "gw:x"]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["gwA", "gwB", "x.y-z_1"]), st.integers(1, 30)),
            FOREIGN_IDS,
        ),
        max_size=60,
    ),
    st.one_of(st.none(), st.sampled_from(["gwA", "absent"])),
)
def test_stream_ledger_splits_by_gateway(
    items: list[tuple[str, int] | str | None], only: str | None
) -> None:
    stream = StreamLedger(gateway=only)
    per_gateway: dict[str, list[int]] = {}
    foreign = other = 0
    for item in items:
        if isinstance(item, tuple):
            stream.add_msg_id(f"{item[0]}:{item[1]}")
            if only is None or item[0] == only:
                per_gateway.setdefault(item[0], []).append(item[1])
            else:
                other += 1
        else:
            stream.add_msg_id(item)
            foreign += 1
    if only is not None:
        per_gateway.setdefault(only, [])
    report = stream.report(stream="S")
    assert (report.read, report.foreign, report.other) == (len(items), foreign, other)
    assert [g.gateway for g in report.gateways] == sorted(per_gateway)
    for g in report.gateways:
        assert g.messages == len(per_gateway[g.gateway])
        assert g.missing == _model(per_gateway[g.gateway], 1, 10)["missing"]
    assert report.complete == all(g.complete for g in report.gateways)


# ---------------------------------------------------------------------------
# Output, byte by byte
# ---------------------------------------------------------------------------


def test_format_ranges() -> None:
    assert format_ranges([]) == ""
    assert format_ranges([(17, 20), (45, 45)]) == "17-20, 45"
    assert format_ranges([(2, 2), (4, 9)], total=5) == "2, 4-9, ... (5 ranges in all)"
    assert format_ranges([(2, 2)], total=1) == "2"


def _sample_stream() -> StreamLedger:
    stream = StreamLedger(sample_limit=2)
    for seq in [1, 2, 3, 6, 7, 9, 8, 10, 7, 12, 14, 2, 1, 16]:
        stream.add_msg_id(f"gwA:{seq}")
    for seq in range(1, 6):
        stream.add_msg_id(f"gwB:{seq}")
    for seq in (3, 4):
        stream.add_msg_id(f"gwC:{seq}")
    for value in (None, "sensor-42", "gwC:x"):
        stream.add_msg_id(value)
    return stream


def test_text_report_byte_by_byte() -> None:
    report = _sample_stream().report(stream="TELEMETRY", last_stream_seq=30, limit=2)
    assert format_text(report) == (
        "stream TELEMETRY up to seq 30: 24 messages, 3 gateways, 3 foreign\n"
        "gwA: INCOMPLETE, 14 messages, seqs 1-16, 11 distinct\n"
        "  missing: 5 in 4 ranges: 4-5, 11, ... (4 ranges in all)\n"
        "  duplicates: 3 (seqs 7, 2, ...)\n"
        "  out of order: 1\n"
        "gwB: complete, 5 messages, seqs 1-5, 5 distinct\n"
        "gwC: INCOMPLETE, 2 messages, seqs 3-4, 2 distinct\n"
        "  head gap: 2 before the first seq (1-2), not accepted (see --allow-head-gap)\n"
        "INCOMPLETE: 2 of 3 gateways\n"
    )
    accepted = _sample_stream().report(
        stream="TELEMETRY", subject="telemetry.>", last_stream_seq=30, allow_head_gap=True
    )
    lines = format_text(accepted).splitlines()
    assert lines[0] == (
        "stream TELEMETRY (subject telemetry.>) up to seq 30: 24 messages, 3 gateways, 3 foreign"
    )
    assert "  head gap: 2 before the first seq (1-2), accepted" in lines
    assert lines[-1] == "INCOMPLETE: 1 of 3 gateways"


def test_text_report_of_complete_absent_and_empty() -> None:
    stream = StreamLedger(gateway="gwB")
    for value in ("gwB:1", "gwA:1", "gwB:2"):
        stream.add_msg_id(value)
    assert format_text(stream.report(stream="T", last_stream_seq=3)) == (
        "stream T up to seq 3: 3 messages, 1 gateway, 0 foreign, 1 of other gateways\n"
        "gwB: complete, 2 messages, seqs 1-2, 2 distinct\n"
        "complete: 1 gateway\n"
    )
    absent = StreamLedger(gateway="gwZ").report(stream="T", last_stream_seq=0)
    assert not absent.complete
    assert format_text(absent) == (
        "stream T up to seq 0: 0 messages, 1 gateway, 0 foreign\n"
        "gwZ: INCOMPLETE, no messages\n"
        "INCOMPLETE: 1 of 1 gateway\n"
    )
    empty = StreamLedger().report(stream="T")
    assert empty.complete  # no gateway has a gap
    assert format_text(empty) == (
        "stream T up to seq 0: 0 messages, 0 gateways, 0 foreign\nno gateway messages\n"
    )
    two = StreamLedger()
    for value in ("a:1", "b:1"):
        two.add_msg_id(value)
    assert format_text(two.report(stream="T")).endswith("complete: all 2 gateways\n")


def test_json_report() -> None:
    report = _sample_stream().report(stream="TELEMETRY", last_stream_seq=30, limit=2)
    text = format_json(report)
    assert text.endswith("}\n")
    data = json.loads(text)
    assert data["gateways"]["gwA"] == {
        "complete": False,
        "messages": 14,
        "first": 1,
        "last": 16,
        "distinct": 11,
        "from_seq": 1,
        "head_gap": 0,
        "head_gap_range": None,
        "head_gap_accepted": False,
        "missing": 5,
        "missing_range_count": 4,
        "missing_ranges": [[4, 5], [11, 11]],
        "duplicates": 3,
        "duplicate_seqs": [7, 2],
        "duplicate_seqs_truncated": True,
        "out_of_order": 1,
    }
    assert data["gateways"]["gwC"]["head_gap_range"] == [1, 2]
    assert {k: v for k, v in data.items() if k != "gateways"} == {
        "stream": "TELEMETRY",
        "subject": None,
        "last_stream_seq": 30,
        "read": 24,
        "foreign": 3,
        "other": 0,
        "complete": False,
    }
    assert isinstance(report.gateways[0], GatewayReport)


def test_ledger_module_is_pure() -> None:
    """The accounting must be testable and reusable without a server or event loop."""
    tree = ast.parse((ROOT / "hub" / "ledger.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & {"nats", "asyncio", "trio", "socket", "logging"}, roots


# ---------------------------------------------------------------------------
# The command: usage errors (no server needed)
# ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-seq", "0"], "--from-seq must be at least 1"),
        (["--gateway", "a:b"], "bad gateway id"),
        (["--limit", "-1"], "--limit must not be negative"),
        (["--creds", "x.creds", "--user", "u"], "--creds and --user are exclusive"),
        (["--password", "p"], "--password needs --user"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = hub_main(["ledger", "--server", f"nats://127.0.0.1:{_closed_port()}", *args])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_server_and_refused_connection_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_main(["ledger"]) == 2  # argparse: --server is required
    assert "--server" in capsys.readouterr().err
    port = _closed_port()
    assert hub_main(["ledger", "--server", f"nats://127.0.0.1:{port}", "--timeout", "2"]) == 2
    assert f"cannot connect to nats://127.0.0.1:{port}" in capsys.readouterr().err


def _delivery(sseq: int, pending: int, msg_id: str | None) -> SimpleNamespace:
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    return SimpleNamespace(reply=f"$JS.ACK.S.c.1.{sseq}.{sseq}.0.{pending}", headers=headers)


def test_stream_reader_stops_at_the_snapshot_and_skips_redeliveries() -> None:
    ledger = StreamLedger()
    reader = _StreamReader(ledger, snapshot=5)

    async def feed() -> None:
        for sseq, pending, msg_id in [
            (1, 4, "g:1"),
            (2, 3, "g:2"),
            (2, 3, "g:2"),  # the same stream message again (consumer re-created)
            (4, 9, None),
            (6, 0, "g:3"),  # published after the pass began
            (7, 0, "g:4"),
        ]:
            await reader.on_msg(_delivery(sseq, pending, msg_id))
        await reader.wait(1.0)

    asyncio.run(asyncio.wait_for(feed(), 5))
    assert (ledger.read, ledger.foreign) == (3, 1)
    assert ledger.gateways["g"].ranges == [(1, 2)]


def test_stream_reader_reports_a_stall_and_its_own_bugs() -> None:
    stalled = _StreamReader(StreamLedger(), snapshot=5)
    with pytest.raises(LedgerReadError, match=r"no message for 0\.05 s after 0 messages"):
        asyncio.run(asyncio.wait_for(stalled.wait(0.05), 5))

    class BadHeaders(dict[str, str]):
        def get(self, *args: Any) -> Any:
            raise KeyError("boom")

    broken = _StreamReader(StreamLedger(), snapshot=5)

    async def feed() -> None:
        msg = SimpleNamespace(reply="$JS.ACK.S.c.1.1.1.0.0", headers=BadHeaders(x="y"))
        await broken.on_msg(msg)
        await broken.wait(1.0)

    with pytest.raises(KeyError, match="boom"):
        asyncio.run(asyncio.wait_for(feed(), 5))


# ---------------------------------------------------------------------------
# The command against a real hub
# ---------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    started = start_hub(tmp_path, accounts=True)
    yield started
    stop_all([started])


DUP_WINDOW = 0.1  # the server's minimum; a re-send after it is stored again

# Published in this order; gwA sends 8 after 9 and re-sends 7 after the duplicate
# window, gwB's 3 is sent twice within it (stored once), gwC's store began at 3.
FIRST: list[tuple[str, str | None]] = [
    *((f"telemetry.a.{'temp' if s % 2 else 'hum'}", f"gwA:{s}") for s in (1, 2, 3, 6, 7, 9, 8, 10)),
    *(("telemetry.b.x", f"gwB:{s}") for s in (1, 2, 3, 3, 4, 5)),
    ("telemetry.c", "gwC:3"),
    ("telemetry.c", "gwC:4"),
    ("telemetry.misc", None),
    ("telemetry.misc", "sensor-42"),
    ("telemetry.misc", "gwC:x"),
]
AFTER_WINDOW: list[tuple[str, str | None]] = [("telemetry.a.temp", "gwA:7")]
STREAM_MSGS = len(FIRST) - 1 + len(AFTER_WINDOW)


async def _fill(url: str) -> int:
    nc = await connect(url)
    try:
        await provision_stream(nc, StreamRequest(duplicate_window=DUP_WINDOW), timeout=10)
        js = nc.jetstream(timeout=5)
        for subject, msg_id in FIRST:
            await js.publish(subject, b"v", headers={"Nats-Msg-Id": msg_id} if msg_id else None)
        for subject, msg_id in AFTER_WINDOW:
            # Until the server forgot the id (its purge timer runs about once a
            # window); a publish it calls a duplicate stores nothing, so retrying is safe.
            deadline = time.monotonic() + 10
            while (
                await js.publish(subject, b"v", headers={"Nats-Msg-Id": msg_id or ""})
            ).duplicate:
                assert time.monotonic() < deadline, "the duplicate window never passed"
                await asyncio.sleep(DUP_WINDOW)
        info = await js.stream_info("TELEMETRY")
        return int(info.state.messages)
    finally:
        await nc.close()


def _ledger_args(hub: HubProcess, *args: str) -> list[str]:
    return [
        "ledger",
        "--server",
        f"nats://127.0.0.1:{hub.client_port}",
        "--user",
        APP_AUTH[0],
        "--password",
        APP_AUTH[1],
        "--timeout",
        "5",
        *args,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_ledger_reports_gaps_duplicates_and_head_gaps(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_fill(hub.client_url)) == STREAM_MSGS == 19

    # As an operator runs it: a separate process, bounded.
    done = subprocess.run(
        [sys.executable, "-m", "hub", *_ledger_args(hub)],
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        env=_env(),
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == (
        "stream TELEMETRY up to seq 19: 19 messages, 3 gateways, 3 foreign\n"
        "gwA: INCOMPLETE, 9 messages, seqs 1-10, 8 distinct\n"
        "  missing: 2 in 1 range: 4-5\n"
        "  duplicates: 1 (seqs 7)\n"
        "  out of order: 1\n"
        "gwB: complete, 5 messages, seqs 1-5, 5 distinct\n"
        "gwC: INCOMPLETE, 2 messages, seqs 3-4, 2 distinct\n"
        "  head gap: 2 before the first seq (1-2), not accepted (see --allow-head-gap)\n"
        "INCOMPLETE: 2 of 3 gateways\n"
    )

    assert hub_main(_ledger_args(hub, "--gateway", "gwB")) == 0
    assert capsys.readouterr().out == (
        "stream TELEMETRY up to seq 19: 19 messages, 1 gateway, 3 foreign, "
        "11 of other gateways\n"
        "gwB: complete, 5 messages, seqs 1-5, 5 distinct\n"
        "complete: 1 gateway\n"
    )
    assert hub_main(_ledger_args(hub, "--gateway", "gwC", "--allow-head-gap")) == 0
    assert "accepted\n" in capsys.readouterr().out
    assert hub_main(_ledger_args(hub, "--gateway", "gwC", "--from-seq", "3")) == 0
    assert hub_main(_ledger_args(hub, "--gateway", "nobody")) == 1
    assert "nobody: INCOMPLETE, no messages" in capsys.readouterr().out

    assert hub_main(_ledger_args(hub, "--json", "--subject", "telemetry.a.>")) == 1
    data = json.loads(capsys.readouterr().out)
    assert (data["subject"], data["read"], data["foreign"]) == ("telemetry.a.>", 9, 0)
    assert list(data["gateways"]) == ["gwA"]
    gwa = data["gateways"]["gwA"]
    assert (gwa["missing_ranges"], gwa["duplicate_seqs"], gwa["out_of_order"]) == (
        [[4, 5]],
        [7],
        1,
    )


def test_ledger_of_an_empty_or_missing_stream(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hub_main(_ledger_args(hub)) == 2
    assert "stream TELEMETRY not found" in capsys.readouterr().err

    async def provision() -> None:
        nc = await connect(hub.client_url)
        try:
            await provision_stream(nc, StreamRequest(), timeout=10)
            await nc.jetstream(timeout=5).publish("telemetry.x", b"", headers=None)
        finally:
            await nc.close()

    run(provision())
    assert hub_main(_ledger_args(hub, "--subject", "telemetry.none")) == 0
    assert capsys.readouterr().out == (
        "stream TELEMETRY (subject telemetry.none) up to seq 1: 0 messages, 0 gateways, "
        "0 foreign\nno gateway messages\n"
    )
    assert hub_main(_ledger_args(hub)) == 0
    assert capsys.readouterr().out == (
        "stream TELEMETRY up to seq 1: 1 message, 0 gateways, 1 foreign\nno gateway messages\n"
    )


VOLUME = 20_000  # several flow-control windows of the ordered consumer
HOLES = {12_345, *range(15_000, 15_010)}


async def _fill_volume(url: str) -> None:
    nc = await connect(url)
    try:
        await provision_stream(nc, StreamRequest(), timeout=10)
        js = nc.jetstream(timeout=5)
        # Core publishes: the stream stores them without a PubAck round trip each.
        for seq in range(1, VOLUME + 1):
            if seq not in HOLES:
                await nc.publish("telemetry.v", b"x" * 64, headers={"Nats-Msg-Id": f"gwV:{seq}"})
            await nc.publish("telemetry.w", b"", headers={"Nats-Msg-Id": f"gwW:{seq}"})
        await nc.flush(timeout=10)
        want = 2 * VOLUME - len(HOLES)
        deadline = time.monotonic() + 20
        while (await js.stream_info("TELEMETRY")).state.messages < want:
            assert time.monotonic() < deadline, "stream did not take every message"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


def test_ledger_reads_a_large_stream(hub: HubProcess, capsys: pytest.CaptureFixture[str]) -> None:
    run(_fill_volume(hub.client_url), timeout=60)
    assert hub_main(_ledger_args(hub, "--json")) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["read"] == 2 * VOLUME - len(HOLES)
    gwv, gww = data["gateways"]["gwV"], data["gateways"]["gwW"]
    assert gwv["missing"] == len(HOLES)
    assert gwv["missing_ranges"] == [[12_345, 12_345], [15_000, 15_009]]
    assert (gwv["duplicates"], gwv["out_of_order"]) == (0, 0)
    assert gww["complete"] and gww["distinct"] == VOLUME
