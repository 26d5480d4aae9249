"""Power cuts (tests/powerfs: SIGSTOP, drop every unsynced write, kill -9) of
leafgate at random moments while publishers wait for PubAcks in all three
durability modes; leafgate restarts on the same store each time.

What store/README.md promises, checked against the hub stream after the backlog
drained:

* ``fsync``: every acknowledged message reaches the hub, exactly once, under the
  Nats-Msg-Id its PubAck named;
* ``commit``: a lost acknowledged message is one no later fsync covered (an
  fsync-mode commit after it syncs the WAL);
* ``memory``: losses are counted, not bounded (held in memory, lost by design);
* every mode: nothing reaches the hub twice or that was never published; the store
  always opens (no ``store_set_aside``) and passes ``PRAGMA integrity_check``.

The long run (>= 50 cuts) and the same fault against nats-server are in
``python -m edge.bench.powercut``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.hubs import ThreadedProxy
from tests.powerfs.client import PowerFS
from tests.powerloss import (
    Acked,
    Log,
    drain,
    integrity,
    leafgate_rounds,
    set_aside_events,
    start_rig,
    verdict,
)
from tests.storehelp import StoredMsg, start_js_hub

CUTS = 18


@pytest.mark.slow
def test_power_cuts_lose_no_acknowledged_fsync_message(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path, stream=False)
    log = Log()
    try:
        with PowerFS(tmp_path / "pfs") as fs, ThreadedProxy(hub.leaf_port) as proxy:
            rig = start_rig(tmp_path, hub, proxy, fs, duplicate_window=600.0)
            try:
                leafgate_rounds(rig, CUTS, random.Random(2024), log)
                msgs = drain(rig, log)
                set_aside = set_aside_events(rig.edge)
            finally:
                rig.edge.stop()
            checked = integrity(rig.store / "leafgate.db")
            stats = fs.stats()
    finally:
        hub.stop()

    v = verdict(log, msgs)
    print(
        "power-loss figures:",
        v.summary(),
        "unsynced pages dropped:",
        sum(c["lost_pages"] for c in log.cuts),
    )
    assert stats["cuts"] == CUTS and len(log.cuts) == CUTS
    # The cuts hit unsynced data: the fixture is not a no-op here.
    assert sum(c["lost_pages"] for c in log.cuts) > 0, log.cuts
    assert v.acked.get("fsync", 0) > 300, v.summary()
    assert not set_aside, set_aside
    assert checked == ["ok"]
    lost_fsync = v.lost.get("fsync", [])
    assert not lost_fsync, f"acknowledged fsync messages lost: {lost_fsync[:5]} {v.summary()}"
    assert not v.duplicate_payloads, v.duplicate_payloads[:5]
    assert v.duplicate_ids == 0
    assert not v.foreign, v.foreign[:5]
    assert not v.wrong_seq, v.wrong_seq[:5]
    assert not v.commit_outside_window, v.commit_outside_window[:5]


def _acked(mode: str, n: int, round_no: int, sent: float, acked: float) -> Acked:
    return Acked(
        mode, f"telemetry.{mode}.dev0", b"%s-%d" % (mode.encode(), n), n, round_no, sent, acked
    )


def _on_hub(*acked: Acked) -> list[StoredMsg]:
    return [StoredMsg(i + 1, a.subject, a.data, f"powercut:{a.seq}") for i, a in enumerate(acked)]


def test_the_verdict_finds_each_kind_of_failure() -> None:
    """The checks above can fail: each broken promise is reported."""
    f1 = _acked("fsync", 1, 0, 0.0, 0.1)
    c2 = _acked("commit", 2, 0, 0.2, 0.3)  # acked before f3 was sent: f3's fsync covers it
    f3 = _acked("fsync", 3, 0, 0.4, 0.5)
    c4 = _acked("commit", 4, 0, 0.6, 0.7)  # after the last fsync: may be lost
    m5 = _acked("memory", 5, 1, 0.0, 0.1)
    log = Log(acked=[f1, c2, f3, c4, m5], sent={a.data for a in (f1, c2, f3, c4, m5)})
    clean = verdict(log, _on_hub(f1, c2, f3))
    assert clean.lost_count("fsync") == 0 and clean.lost_count("commit") == 1
    assert clean.lost_count("memory") == 1 and not clean.commit_outside_window
    assert not clean.duplicate_payloads and clean.duplicate_ids == 0

    broken = verdict(log, _on_hub(f1, f1, f3))  # c2 lost, f1 twice
    assert [a.data for a in broken.commit_outside_window] == [c2.data]
    assert broken.duplicate_payloads == [f1.data] and broken.duplicate_ids == 1
    lost_fsync = verdict(log, _on_hub(f1, c2, c4))
    assert [a.data for a in lost_fsync.lost["fsync"]] == [f3.data]
    wrong = verdict(log, [StoredMsg(1, f1.subject, f1.data, "powercut:99"), *_on_hub(f3)])
    assert [a.data for a in wrong.wrong_seq] == [f1.data]
    foreign = verdict(log, _on_hub(f1, f3, _acked("fsync", 9, 0, 0.0, 0.0)))
    assert foreign.foreign == [b"fsync-9"]


def test_the_bench_refuses_a_run_without_cuts(capsys: pytest.CaptureFixture[str]) -> None:
    from edge.bench.powercut import main

    with pytest.raises(SystemExit) as exc:
        main(["--cuts", "0"])
    assert exc.value.code == 2
    assert "--cuts must be at least 1" in capsys.readouterr().err
