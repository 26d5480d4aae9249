"""Smoke test of the side-by-side benchmark (edge/bench.py): real leafgate and a
real nats-server, a short run, no figures asserted beyond "measured something"
(speed is for the benchmark report, never for a timed unit test)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edge import bench

NATS_SERVER = (
    os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server") or "/usr/sbin/nats-server"
)

pytestmark = [pytest.mark.slow]


def test_nats_server_is_installed() -> None:
    # The benchmark needs the reference server; a missing one fails loudly.
    assert Path(NATS_SERVER).is_file(), f"nats-server not found at {NATS_SERVER}"


def test_bench_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rc = bench.main(
        [
            "--cases",
            "pub_sub_128,reqrep_seq,rss_idle",
            "--duration",
            "0.5",
            "--runs",
            "1",
            "--nats-server",
            NATS_SERVER,
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads(out.read_text())
    assert set(data["cases"]) == {"pub_sub_128", "reqrep_seq", "rss_idle"}
    for name, case in data["cases"].items():
        for side in ("nats", "leafgate"):
            value = case[side]["value"]
            assert isinstance(value, float) and value > 0, (name, side, case[side])
            assert case[side]["errors"] == []
        assert case["ratio"] > 0
    assert (
        data["cases"]["reqrep_seq"]["nats"]["p99"] >= data["cases"]["reqrep_seq"]["nats"]["value"]
    )
    for name in data["cases"]:
        assert name in printed


def test_bench_leaf_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The leafnode-link cases: a real nats-server hub, leafgate and a nats-server leaf."""
    out = tmp_path / "bench.json"
    cases = {"leaf_up_128", "leaf_reconnect"}
    rc = bench.main(
        [
            "--cases",
            ",".join(sorted(cases)),
            "--duration",
            "0.5",
            "--runs",
            "1",
            "--nats-server",
            NATS_SERVER,
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads(out.read_text())
    assert set(data["cases"]) == cases
    for name, case in data["cases"].items():
        for side in ("nats", "leafgate"):
            value = case[side]["value"]
            assert isinstance(value, float) and value > 0, (name, side, case[side])
            assert case[side]["errors"] == []
        assert case["ratio"] > 0
        assert name in printed
    for side in ("nats", "leafgate"):
        up = data["cases"]["leaf_up_128"][side]["runs"][0]
        assert up["hub_cpu"] >= 0 and up["server_cpu"] > 0, up
        rec = data["cases"]["leaf_reconnect"][side]["runs"][0]
        # kill -> hub accepting -> message through: the parts add up.
        assert 0 < rec["restart_ms"] < rec["outage_ms"], rec
        assert rec["min"] <= rec["value"] <= rec["max"], rec
    # The reconnect delays in use are stated, nats-server's being its default.
    assert "default 1 s" in data["leaf_reconnect_delays"]["nats"]
    assert "leaf reconnect delay" in printed


def test_bench_rejects_unknown_case() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--cases", "nope"])


def test_bench_reports_failed_start(tmp_path: Path) -> None:
    """A server that cannot start makes the case fail with a reason, not a number."""
    out = tmp_path / "bench.json"
    rc = bench.main(
        [
            "--cases",
            "rss_idle",
            "--runs",
            "1",
            "--only",
            "leafgate",
            "--leafgate-cmd",
            "false",
            "--json",
            str(out),
        ]
    )
    assert rc == 1
    side = json.loads(out.read_text())["cases"]["rss_idle"]["leafgate"]
    assert side["value"] is None
    assert "exited at start" in side["errors"][0]


def test_bench_store_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A store-and-forward case with a tiny backlog: leafgate --forward --store and a
    nats-server leaf with a JetStream stream, each draining to a restarted JetStream hub."""
    out = tmp_path / "bench.json"
    rc = bench.main(
        [
            "--cases",
            "store_drain_1m",
            "--store-backlog",
            "2000",
            "--runs",
            "1",
            "--nats-server",
            NATS_SERVER,
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads(out.read_text())
    assert data["store_backlog"] == 2000
    case = data["cases"]["store_drain_1m"]
    for side in ("nats", "leafgate"):
        assert case[side]["errors"] == []
        run = case[side]["runs"][0]
        assert run["value"] > 0 and run["msgs"] == 2000, run
        # (times from the hub log vs. polled readiness: a few ms of slack)
        assert run["hub_ready_to_link_s"] > -0.1 and run["link_to_first_s"] >= 0, run
    # leafgate deletes what the hub confirmed.
    assert "empty_lag_s" in case["leafgate"]["runs"][0], case["leafgate"]
    assert case["ratio"] > 0
    assert "store_drain_1m leafgate: drain" in printed
