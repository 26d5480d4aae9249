"""``leafgate store``: status, list/inspect, export, replay, purge.

Stores are built with the store's own code (``open_store`` + ``buffer.commit``)
and the commands run in-process through ``edge.cli.main``. Replay publishes to a
real nats-server (core, and a JetStream stream that deduplicates); the purge and
replay guards are checked against a real leafgate holding the store open.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from edge.cli import main
from store import buffer, tool
from store import progress as progress_module
from store.buffer import commit
from store.db import group_ids, open_store
from store.window import Record
from tests.aio import connect, run, settle, take, wait_until
from tests.conftest import ServerFactory
from tests.harness import ServerProcess

GATEWAY = "edge-test-1"
NOW = int(time.time() * 1000)
HOUR = 3_600_000
HDR = b"NATS/1.0\r\nUnit: C\r\nNats-Msg-Id: publisher-1\r\n\r\n"
TWICE = b"NATS/1.0\r\nTag: a\r\nTag: b\r\n\r\n"
# (seq, group, ts, subject, hdr, data)
ROWS: list[tuple[int, str, int, bytes, bytes | None, bytes]] = [
    (1, "default", NOW - 3 * HOUR - 12 * 60_000, b"telemetry.dev0", None, b'{"t":1}'),
    (2, "default", NOW - 2 * HOUR, b"telemetry.dev1", None, b'{"t":2}'),
    (3, "default", NOW - HOUR, b"telemetry.dev0", HDR, b'{"t":3}'),
    (4, "default", NOW - 60_000, b"telemetry.dev1", TWICE, b"line1\nline2"),
    (5, "default", NOW - 30_000, b"telemetry.site.a.temp", None, b"x" * 3000),
    (6, "alerts", NOW - 5_000, b"alerts.fire", None, b"\xff\x00\x01"),
]


def _size(row: tuple[int, str, int, bytes, bytes | None, bytes]) -> int:
    return len(row[3]) + len(row[4] or b"") + len(row[5])


def build_store(
    directory: Path, rows: list[tuple[int, str, int, bytes, bytes | None, bytes]]
) -> None:
    conn, _ = open_store(directory, gateway_id=GATEWAY)
    try:
        ids = group_ids(conn, ["default", "alerts"])
        index = {"default": 0, "alerts": 1}
        records = [Record(s, index[g], ts, subj, hdr, data) for s, g, ts, subj, hdr, data in rows]
        last = max((r[0] for r in rows), default=0)
        gids = [ids["default"], ids["alerts"]]
        commit(conn, records, gids, [], [], sync=False, last_seq=last, recorded=0)
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def _clock_at_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ages are shown against NOW, however long after import a test runs: the
    tool reads the clock once per status (time.time_ns), so pin it there."""
    monkeypatch.setattr(tool.time, "time_ns", lambda: NOW * 1_000_000 + 500_000_000)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    directory = tmp_path / "store"
    build_store(directory, ROWS)
    return directory


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["store", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def stored_seqs(directory: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{directory / 'leafgate.db'}?mode=ro", uri=True)
    try:
        return [r.seq for r in buffer.iter_stored(conn)]
    finally:
        conn.close()


def meta(directory: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{directory / 'leafgate.db'}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- status ----------------------------------------------------------------------


def test_status_shows_the_backlog_per_group_and_subject(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(capsys, "status", "--store", str(store))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"store    {store / 'leafgate.db'} (db ")
    assert lines[1] == f"gateway  {GATEWAY}, next seq 7"
    total = sum(_size(r) for r in ROWS)
    assert (
        lines[2] == f"backlog  6 messages, {tool.human_bytes(total)}, oldest 3h12m ago, seqs 1..6"
    )
    rows = {line.split()[0]: line.split() for line in lines[4:] if line}
    assert rows["default"][1] == "5" and rows["alerts"][1] == "1" and rows["total"][1] == "6"
    assert rows["default"][-2] == "3h12m"  # oldest
    assert rows["telemetry.dev0"][1] == "2" and rows["telemetry.site.a.temp"][1] == "1"
    assert "subject (top 4 of 4)" in out


def test_status_is_the_default_command(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "--store", str(store))
    assert rc == 0 and out.startswith("store    ")


def test_status_json(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = sqlite3.connect(store / "leafgate.db")
    conn.execute("INSERT INTO events VALUES (?, 'set_aside', 'bad page; moved to x')", (NOW,))
    conn.commit()
    conn.close()
    rc, out, _ = cli(capsys, "status", "--store", str(store), "--json", "--subjects", "2")
    assert rc == 0
    status = json.loads(out)
    assert status["gateway_id"] == GATEWAY and status["next_seq"] == 7
    assert status["total"]["messages"] == 6
    assert status["total"]["bytes"] == sum(_size(r) for r in ROWS)
    assert status["total"]["oldest_ts"] == ROWS[0][2]
    assert 3 * 3600 + 12 * 60 <= status["total"]["oldest_age"] < 3 * 3600 + 13 * 60
    groups = {g["name"]: g for g in status["groups"]}
    assert groups["default"]["messages"] == 5 and groups["alerts"]["last_seq"] == 6
    assert [s["name"] for s in status["subjects"]] == ["telemetry.dev0", "telemetry.dev1"]
    assert status["subjects_total"] == 4
    assert status["files"]["db"] > 0
    assert status["events"][0]["kind"] == "set_aside"


def test_status_of_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_store(tmp_path / "s", [])
    rc, out, _ = cli(capsys, "--store", str(tmp_path / "s"))
    assert rc == 0 and "backlog  empty" in out and "next seq 1" in out


def test_the_store_dir_comes_from_the_config_file(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "leafgate.toml"
    config.write_text(f'[store]\ndir = "{store}"\n')
    rc, out, _ = cli(capsys, "status", "-c", str(config))
    assert rc == 0 and f"gateway  {GATEWAY}" in out
    rc, _, err = cli(capsys, "status", "-c", str(tmp_path / "missing.toml"))
    assert rc == 1 and "missing.toml" in err


def test_default_store_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    rc, _, err = cli(capsys, "status")
    assert rc == 1
    assert err.strip() == f"leafgate store: no store at {tmp_path / 'state/leafgate/leafgate.db'}"


def test_a_missing_store_is_an_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("status", "list", "export", "purge"):
        args = ["--all", "--yes"] if command == "purge" else []
        rc, _, err = cli(capsys, command, "--store", str(tmp_path / "nothing"), *args)
        assert rc == 1 and "no store at" in err and str(tmp_path / "nothing") in err
    assert not (tmp_path / "nothing").exists()


def test_a_file_that_is_not_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "leafgate.db").write_bytes(b"not a database, just bytes" * 100)
    rc, _, err = cli(capsys, "--store", str(tmp_path))
    assert rc == 1 and str(tmp_path / "leafgate.db") in err
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    (tmp_path / "other.db").rename(tmp_path / "leafgate.db")
    rc, _, err = cli(capsys, "--store", str(tmp_path))
    assert rc == 1 and "is not a leafgate store" in err


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0, "0s"),
        (45, "45s"),
        (192, "3m12s"),
        (3 * 3600 + 5, "3h"),
        (11520, "3h12m"),
        (2 * 86400 + 300, "2d"),
        (90000, "1d1h"),
    ],
)
def test_human_age(seconds: float | None, shown: str) -> None:
    assert tool.human_age(seconds) == shown


# ---- list / inspect ----------------------------------------------------------------


def listed(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines() if line[:8].strip().isdigit()]


@pytest.mark.parametrize(
    ("filters", "seqs"),
    [
        ([], [1, 2, 3, 4, 5, 6]),
        (["--subject", "telemetry.*"], [1, 2, 3, 4]),
        (["--subject", "telemetry.>"], [1, 2, 3, 4, 5]),
        (["--subject", "telemetry.dev0"], [1, 3]),
        (["--subject", "*.fire", "--subject", "telemetry.site.*.temp"], [5, 6]),
        (["--from-seq", "2", "--to-seq", "4"], [2, 3, 4]),
        (["--subject", "telemetry.>", "--from-seq", "4"], [4, 5]),
        (["--subject", "nothing.here"], []),
    ],
)
def test_list_filters(
    store: Path, capsys: pytest.CaptureFixture[str], filters: list[str], seqs: list[int]
) -> None:
    rc, out, err = cli(capsys, "list", "--store", str(store), *filters)
    assert rc == 0
    assert listed(out) == seqs
    assert ("no messages match" in err) == (not seqs)


def test_list_shows_time_subject_group_size_and_headers(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(capsys, "list", "--store", str(store), "--subject", "telemetry.dev1")
    assert rc == 0
    first, second = out.splitlines()
    size = tool.human_bytes(_size(ROWS[1])).split()
    assert first.split() == ["2", tool.iso_time(ROWS[1][2]), "telemetry.dev1", "[default]", *size]
    assert first.split()[1].endswith("Z")
    assert second.endswith("Tag: a  Tag: b")


def test_list_limit(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "list", "--store", str(store), "--limit", "2")
    assert rc == 0 and listed(out) == [1, 2] and "first 2 shown" in err
    rc, out, err = cli(capsys, "list", "--store", str(store), "--limit", "6")
    assert listed(out) == [1, 2, 3, 4, 5, 6] and "shown" not in err
    rc, out, _ = cli(capsys, "list", "--store", str(store), "--limit", "0")
    assert listed(out) == [1, 2, 3, 4, 5, 6]


def test_list_payloads(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "list", "--store", str(store), "--from-seq", "4", "--payload")
    assert rc == 0
    lines = out.splitlines()
    assert lines[1].strip() == "line1\\nline2"  # text, control characters escaped
    assert lines[3].strip().startswith("x" * tool.PAYLOAD_SHOWN + " ... (+1976 bytes")
    assert lines[5].strip() == "base64:" + base64.b64encode(b"\xff\x00\x01").decode()


def test_inspect_shows_whole_payloads(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "inspect", "5", "3", "--store", str(store))
    assert rc == 0
    assert listed(out) == [3, 5]
    assert "Unit: C  Nats-Msg-Id: publisher-1" in out
    assert "x" * 3000 in out and "..." not in out
    rc, out, err = cli(capsys, "inspect", "3", "99", "--store", str(store))
    assert rc == 1 and "no message with seq 99" in err and listed(out) == [3]


def test_list_json(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "list", "--store", str(store), "--json", "--to-seq", "3")
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3] and "data" not in records[0]
    assert records[2]["headers"] == {"Unit": ["C"], "Nats-Msg-Id": ["publisher-1"]}


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--subject", "foo..bar"],
        ["list", "--subject", "a.>.b"],
        ["list", "--from-seq", "-3"],
        ["inspect", "x"],
        ["bogus"],
    ],
)
def test_usage_errors_exit_2(
    store: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    rc, _, err = cli(capsys, *args, "--store", str(store))
    assert rc == 2 and err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "--help")
    assert rc == 0
    for command in ("status", "list", "inspect", "export", "replay", "purge"):
        assert command in out
    assert main(["nonsense"]) == 2
    assert "store" in capsys.readouterr().err


# ---- export ----------------------------------------------------------------------


def test_export_round_trip(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "backlog.jsonl"
    rc, out, err = cli(capsys, "export", "--store", str(store), "-o", str(target))
    assert rc == 0 and out == ""
    assert err.strip().startswith("exported 6 messages (") and str(target) in err
    assert not target.with_name("backlog.jsonl.partial").exists()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    for record, (seq, group, ts, subject, hdr, data) in zip(records, ROWS, strict=True):
        assert (record["seq"], record["group"], record["ts"]) == (seq, group, ts)
        assert record["subject"] == subject.decode()
        assert base64.b64decode(record["data"]) == data
        assert record["time"] == tool.iso_time(ts)
        assert record["size"] == len(subject) + len(hdr or b"") + len(data)
    assert records[0]["headers"] is None
    assert records[3]["headers"] == {"Tag": ["a", "b"]}


def test_export_to_stdout_with_filters(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "export", "--store", str(store), "--subject", "alerts.>")
    assert rc == 0
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["seq"] == 6 and base64.b64decode(record["data"]) == b"\xff\x00\x01"
    assert "exported 1 messages" in err and "to stdout" in err


def test_export_to_an_unwritable_place(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "export", "--store", str(store), "-o", "/nonexistent/dir/out.jsonl")
    assert rc == 1 and "-o /nonexistent/dir/out.jsonl" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(progress_module, "PROGRESS_PERIOD", 0.0)
    stream = _Terminal()
    progress = tool.Progress("exported", stream, 5, stream.isatty())
    for _ in range(5):
        progress.step()
    progress.done("exported 5 messages")
    assert stream.getvalue() == (
        "\rexported 2/5 messages\rexported 4/5 messages\r\x1b[Kexported 5 messages\n"
    )
    quiet = io.StringIO()
    progress = tool.Progress("exported", quiet, None, quiet.isatty())
    for _ in range(5):
        progress.step()
    progress.done("exported 5 messages")
    assert quiet.getvalue() == "exported 5 messages\n"


# ---- purge -----------------------------------------------------------------------


def test_purge_needs_a_selection_and_yes(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "purge", "--store", str(store))
    assert rc == 2 and "purge needs --all" in err
    rc, _, err = cli(capsys, "purge", "--store", str(store), "--all", "--to-seq", "3")
    assert rc == 2 and "not both" in err
    rc, _, err = cli(capsys, "purge", "--store", str(store), "--to-seq", "3")
    assert rc == 2 and "would purge 3 messages" in err and "--yes" in err
    assert stored_seqs(store) == [1, 2, 3, 4, 5, 6]


def test_purge_all_records_the_last_sequence(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(capsys, "purge", "--store", str(store), "--all", "--yes")
    assert rc == 0
    assert f"purged 6 messages ({tool.human_bytes(sum(_size(r) for r in ROWS))})" in out
    assert "next sequence 7" in out and "note:" not in out
    assert stored_seqs(store) == [] and meta(store)["last_seq"] == "6"
    conn, report = open_store(store)  # what the server does at start
    conn.close()
    assert report.next_seq == 7
    rc, out, _ = cli(capsys, "status", "--store", str(store))
    assert "next seq 7" in out and "purge: 6 messages" in out


def test_purge_by_subject_and_range(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "purge", "--store", str(store), "--subject", "telemetry.*", "--yes")
    assert rc == 0 and "purged 4 messages" in out
    assert stored_seqs(store) == [5, 6]
    assert "last_seq" not in meta(store)  # 6 is still stored: the next start sees it
    rc, out, _ = cli(capsys, "purge", "--store", str(store), "--from-seq", "6", "--yes")
    assert rc == 0 and "purged 1 messages" in out and "next sequence 7" in out
    assert stored_seqs(store) == [5] and meta(store)["last_seq"] == "6"
    rc, out, _ = cli(capsys, "purge", "--store", str(store), "--to-seq", "5", "--yes", "--vacuum")
    assert rc == 0 and "vacuumed" in out and stored_seqs(store) == []
    assert meta(store)["last_seq"] == "6"  # never lowered


def test_purge_keeps_a_higher_recorded_sequence(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = sqlite3.connect(store / "leafgate.db")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', '100006')")  # memory reserve
    conn.commit()
    conn.close()
    rc, out, _ = cli(capsys, "purge", "--store", str(store), "--all", "--yes")
    assert rc == 0 and "next sequence 100007" in out and meta(store)["last_seq"] == "100006"


def test_purge_refuses_a_store_in_use_unless_forced(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn, _ = open_store(store)  # as a running leafgate holds it
    try:
        rc, _, err = cli(capsys, "purge", "--store", str(store), "--all", "--yes")
        assert rc == 1 and "is in use (is leafgate running?)" in err and "--force" in err
        assert stored_seqs(store) == [1, 2, 3, 4, 5, 6]
        rc, out, _ = cli(
            capsys, "purge", "--store", str(store), "--to-seq", "2", "--yes", "--force"
        )
        assert rc == 0 and "purged 2 messages" in out and "restart leafgate" in out
        assert len(list(buffer.iter_stored(conn))) == 4
    finally:
        conn.close()


def test_a_running_leafgate_blocks_purge_and_replay_to_itself(
    leafgate_factory: ServerFactory, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = f"nats-leaf://127.0.0.1:{closed_port()}"  # unreachable: nothing is forwarded
    edge = leafgate_factory("--forward", "telemetry.>", "--store", str(store), "--hub", hub)
    rc, _, err = cli(capsys, "purge", "--store", str(store), "--all", "--yes")
    assert rc == 1 and "is in use" in err
    rc, _, err = cli(capsys, "replay", "--store", str(store), "--server", edge.url)
    assert rc == 1 and "own leafgate" in err
    rc, out, _ = cli(capsys, "status", "--store", str(store))  # reads are fine meanwhile
    assert rc == 0 and "6 messages" in out
    rc, out, _ = cli(capsys, "purge", "--store", str(store), "--all", "--yes", "--force")
    assert rc == 0 and "purged 6 messages" in out and "restart leafgate" in out
    assert stored_seqs(store) == [] and meta(store)["last_seq"] == "6"


# ---- replay ----------------------------------------------------------------------


def test_replay_dry_run(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "replay", "--store", str(store), "--dry-run", "--to-seq", "2")
    assert rc == 0
    assert out.startswith("would replay 2 messages") and "nats://127.0.0.1:4222" in out


def test_replay_publishes_with_headers_and_msg_ids(
    nats_server: ServerProcess, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> list[tuple[str, bytes, dict[str, str] | None]]:
        nc = await connect(nats_server.url)
        try:
            sub = await nc.subscribe("*.>")
            await settle(nc)
            argv = ["store", "replay", "--store", str(store), "--server", nats_server.url]
            assert await asyncio.to_thread(main, argv) == 0
            msgs = await take(sub, len(ROWS))
            return [(m.subject, m.data, m.headers) for m in msgs]
        finally:
            await nc.close()

    got = run(scenario())
    assert [(s, d) for s, d, _ in got] == [(r[3].decode(), r[5]) for r in ROWS]
    assert [h["Nats-Msg-Id"] if h else None for _, _, h in got] == [
        f"{GATEWAY}:{seq}" for seq in range(1, 7)
    ]
    assert got[2][2] == {"Unit": "C", "Nats-Msg-Id": f"{GATEWAY}:3"}  # the publisher's id replaced
    assert got[3][2] == {"Tag": "b", "Nats-Msg-Id": f"{GATEWAY}:4"}
    err = capsys.readouterr().err
    assert "replayed 6 messages" in err and "1 had repeated header keys" in err
    assert stored_seqs(store) == [1, 2, 3, 4, 5, 6]  # replay keeps them


def test_replay_twice_into_a_jetstream_stream_keeps_one_copy(
    nats_server_factory: ServerFactory,
    store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = nats_server_factory("-js", "-sd", str(tmp_path / "js"))

    async def scenario() -> int:
        nc = await connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EDGE", subjects=["telemetry.>", "alerts.>"])
            argv = ["store", "replay", "--store", str(store), "--server", server.url]
            for _ in range(2):
                assert await asyncio.to_thread(main, argv) == 0
            for _ in range(50):  # bounded: JetStream stores asynchronously
                if (await js.stream_info("EDGE")).state.messages >= len(ROWS):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # time for a copy that should not be there
            return int((await js.stream_info("EDGE")).state.messages)
        finally:
            await nc.close()

    assert run(scenario()) == len(ROWS)


def test_replay_filters(
    nats_server: ServerProcess, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> list[str]:
        nc = await connect(nats_server.url)
        try:
            got: list[str] = []

            async def handler(msg: object) -> None:
                got.append(getattr(msg, "subject", ""))

            await nc.subscribe(">", cb=handler)
            await settle(nc)
            argv = ["store", "replay", "--store", str(store), "--server", nats_server.url]
            argv += ["--subject", "telemetry.*", "--from-seq", "2"]
            assert await asyncio.to_thread(main, argv) == 0
            await wait_until(lambda: len(got) >= 3, what="3 replayed messages")
            await settle(nc)
            return got
        finally:
            await nc.close()

    assert run(scenario()) == ["telemetry.dev1", "telemetry.dev0", "telemetry.dev1"]


def test_replay_to_an_unreachable_server(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    rc, _, err = cli(capsys, "replay", "--store", str(store), "--server", url, "--timeout", "1")
    assert rc == 1 and f"--server {url}: cannot connect" in err
    assert time.monotonic() - started < 10


def test_replay_without_nats_py(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # makes `import nats` fail
    rc, _, err = cli(capsys, "replay", "--store", str(store))
    assert rc == 1 and "pip install nats-py" in err


def test_replay_creds_and_user_are_exclusive(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = cli(
        capsys, "replay", "--store", str(store), "--creds", str(tmp_path / "x"), "--user", "u"
    )
    assert rc == 2 and "exclusive" in err
