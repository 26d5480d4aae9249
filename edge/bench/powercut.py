"""``python -m edge.bench.powercut``: acknowledged messages lost to power cuts,
leafgate against nats-server with JetStream, on the same simulated power loss.

Each side runs with its store on a powerfs mount (tests/powerfs: unsynced writes
live in the fixture's memory; a cut throws them away).  A publisher keeps 32
acknowledged publishes in flight (nats-py ``js.publish``); at random moments the
server is frozen (SIGSTOP), the power is cut, it is killed (SIGKILL) and started
again on the same store.  At the end the stream is read and every acknowledged
message that is not in it counts as *acked-but-lost*.

* leafgate: three forward groups (``fsync``, ``commit``, ``memory``), forwarding
  to a nats-server hub with JetStream (the hub is not on powerfs); the link is cut
  in every third round.  Counted after the backlog drained to the hub (see
  tests/powerloss.py for the checks).
* nats-server: JetStream with ``store_dir`` on the mount, one file-storage stream
  on ``telemetry.>``.  nats-server 2.9.10 does not know ``sync_interval`` (it
  rejects the field: added in 2.10), so it runs with its default syncing; the
  number of fsyncs it made is reported from the fixture's counters.

powerfs never writes anything back without an fsync, where a kernel writes dirty
pages back after about 30 s: after setup (leafgate started, the nats-server stream
created) the bench syncs the mount once, so that the setup counts as long past
(nats-server 2.9.10 does not fsync a new stream's metadata; without this its stream
is gone after the first cut).  Each round lasts about a second, well inside that
writeback delay, so what a cut drops is what a real one would.

It needs the repository checkout (it imports the test helpers), the ``test``
extra (pyfuse3), fuse3 and /dev/fuse: ``bash tests/run.sh`` installs them.

    python -m edge.bench.powercut --cuts 50 [--seed N] [--side both] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tests.aio import connect, run
from tests.harness import start_nats_server
from tests.hubs import HubProcess, ThreadedProxy
from tests.powerfs.client import PowerFS
from tests.powerloss import (
    Log,
    drain,
    integrity,
    leafgate_rounds,
    publish_then_cut,
    set_aside_events,
    start_rig,
    verdict,
)
from tests.storehelp import STREAM, read_stream, start_js_hub

DUPLICATE_WINDOW = 3600.0  # the whole run: a resent message is always recognised


def _progress(side: str) -> Any:
    started = time.monotonic()

    def report(round_no: int, log: Log) -> None:
        cut = log.cuts[-1]
        print(
            f"  {side} cut {round_no + 1}: after {cut['after']:.2f}s, "
            f"{cut['lost_pages']} unsynced pages dropped, {len(log.acked)} acked so far "
            f"({time.monotonic() - started:.0f}s)",
            file=sys.stderr,
        )

    return report


def leafgate_side(workdir: Path, cuts: int, rng: random.Random) -> dict[str, Any]:
    hub = start_js_hub(workdir / "leafgate", stream=False)
    log = Log()
    try:
        with PowerFS(workdir / "leafgate" / "pfs") as fs, ThreadedProxy(hub.leaf_port) as proxy:
            rig = start_rig(workdir / "leafgate", hub, proxy, fs, DUPLICATE_WINDOW)
            fs.sync()  # as for nats-server: the setup counts as long past
            try:
                leafgate_rounds(rig, cuts, rng, log, on_round=_progress("leafgate"))
                msgs = drain(rig, log, timeout=180)
                set_aside = set_aside_events(rig.edge)
            finally:
                rig.edge.stop()
            checked = integrity(rig.store / "leafgate.db")
            stats = fs.stats()
    finally:
        hub.stop()
    v = verdict(log, msgs)
    return {
        "cuts": len(log.cuts),
        "acked": v.acked,
        "acked_but_lost": {mode: v.lost_count(mode) for mode in v.acked},
        "duplicates_on_hub": len(v.duplicate_payloads),
        "commit_lost_outside_documented_window": len(v.commit_outside_window),
        "store_set_aside": len(set_aside),
        "integrity_check": checked,
        "fsyncs": stats["fsyncs"],
        "unsynced_pages_dropped": sum(c["lost_pages"] for c in log.cuts),
    }


@dataclass
class _Client:
    """What read_stream needs of a hub: its client port."""

    client_port: int


async def _add_file_stream(port: int) -> None:
    nc = await connect(f"nats://127.0.0.1:{port}")
    try:
        await nc.jetstream().add_stream(name=STREAM, subjects=["telemetry.>"], storage="file")
    finally:
        await nc.close()


async def _stream_total(port: int) -> int:
    nc = await connect(f"nats://127.0.0.1:{port}")
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.messages)
    finally:
        await nc.close()


def nats_side(workdir: Path, cuts: int, rng: random.Random) -> dict[str, Any]:
    side = workdir / "nats-server"
    side.mkdir(parents=True, exist_ok=True)
    log = Log()
    report = _progress("nats-server")
    with PowerFS(side / "pfs") as fs:
        config = f'server_name: "peer"\njetstream {{ store_dir: "{fs.mount / "js"}" }}\n'
        server = start_nats_server(config_text=config, tmp_path=side)
        try:
            run(_add_file_stream(server.port))
            fs.sync()  # the stream was created long before the cuts (see the docstring)
            for round_no in range(cuts):
                after = rng.uniform(0.2, 1.0)
                keep = rng.choice((0.0, 0.0, 0.3))
                seed = rng.randrange(2**31)
                run(
                    publish_then_cut(server, fs, round_no, log, after, keep, seed, ("jetstream",)),
                    60,
                )
                server.start()
                report(round_no, log)
            total = run(_stream_total(server.port))
            msgs = run(read_stream(cast(HubProcess, _Client(server.port)), total), 120)
        finally:
            server.stop()
        stats = fs.stats()
    present = {m.data for m in msgs}
    lost = [a for a in log.acked if a.data not in present]
    return {
        "cuts": len(log.cuts),
        "acked": {"jetstream": len(log.acked)},
        "acked_but_lost": {"jetstream": len(lost)},
        "stream_messages_after": len(msgs),
        "rounds_with_loss": len({a.round for a in lost}),
        "fsyncs": stats["fsyncs"],
        "unsynced_pages_dropped": sum(c["lost_pages"] for c in log.cuts),
    }


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'side':<12} {'mode':<10} {'cuts':>5} {'acked':>8} {'acked-but-lost':>15} {'fsyncs':>8}"
    ]
    for side, r in results.items():
        for mode, acked in r["acked"].items():
            lines.append(
                f"{side:<12} {mode:<10} {r['cuts']:>5} {acked:>8} "
                f"{r['acked_but_lost'][mode]:>15} {r['fsyncs']:>8}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.bench.powercut", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cuts", type=int, default=50, help="power cuts per side (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="random moments and writeback")
    parser.add_argument("--side", choices=("both", "leafgate", "nats-server"), default="both")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.cuts < 1:
        parser.error("--cuts must be at least 1")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="powercut-") as tmp:
        workdir = Path(tmp)
        if args.side in ("both", "leafgate"):
            results["leafgate"] = leafgate_side(workdir, args.cuts, random.Random(args.seed))
        if args.side in ("both", "nats-server"):
            results["nats-server"] = nats_side(workdir, args.cuts, random.Random(args.seed))
    print(_table(results))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
