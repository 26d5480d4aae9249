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
    Log,
    drain,
    integrity,
    leafgate_rounds,
    set_aside_events,
    start_rig,
    verdict,
)
from tests.storehelp import start_js_hub

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
