"""Options, the run loop and the output of ``leafgate bench``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .authcases import AUTH_RUNNERS, overheads
from .cases import CLIENT_RUNNERS
from .common import (
    CASES,
    IDLE_CONNECTIONS,
    NATS_LEAF_RECONNECT_DEFAULT,
    OTHER_CPU_WARN,
    RECONNECT_CYCLES,
    SIDE_LABEL,
    SIDES,
    BenchError,
    Runner,
    Target,
    raise_nofile,
)
from .leafcases import LEAF_RUNNERS
from .report import SideResult, report, run_summary
from .servers import start_server, stop_server
from .storecases import STORE_RUNNERS
from .storecases import summary as store_summary
from .storeside import DEFAULT_BACKLOG, DEFAULT_BYTES_MSGS, NOTES
from .storeside import configure as configure_store

RUNNERS: dict[str, Runner] = {
    **CLIENT_RUNNERS,
    **AUTH_RUNNERS,
    **LEAF_RUNNERS,
    **STORE_RUNNERS,
}

Results = dict[str, dict[str, SideResult]]


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="leafgate bench",
        description="Run leafgate and nats-server side by side on the same load.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases:\n"
        + "\n".join(f"  {c.name:<16}{c.description} [{c.unit}]" for c in CASES.values())
        + "\n\nleaf_* cases: a fresh nats-server hub per run, and as the leaf leafgate --hub\n"
        "or a nats-server with leafnodes.remotes; leaf_reconnect does "
        f"{RECONNECT_CYCLES} hub kill + restart\ncycles per run (--duration does not apply).\n"
        "store_* cases: a hub with JetStream; as the leaf leafgate --forward --store, or a\n"
        "nats-server leaf with a JetStream stream the hub's stream sources.",
    )
    ap.add_argument("--cases", default="all", help="comma-separated case names (default: all)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per case")
    ap.add_argument("--runs", type=int, default=3, help="runs per case; the median is reported")
    ap.add_argument(
        "--nats-server",
        default=None,
        help="nats-server binary (default: $NATS_SERVER_BIN or nats-server on PATH)",
    )
    ap.add_argument(
        "--leafgate-cmd",
        default=None,
        help="command starting leafgate, shell-split (default: python -m edge run)",
    )
    ap.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")
    ap.add_argument("--only", choices=SIDES, default=None, help="run one side only")
    ap.add_argument(
        "--store-backlog",
        type=int,
        default=DEFAULT_BACKLOG,
        metavar="N",
        help=f"messages in the store_drain_1m backlog (default {DEFAULT_BACKLOG})",
    )
    ap.add_argument(
        "--store-msgs",
        type=int,
        default=DEFAULT_BYTES_MSGS,
        metavar="N",
        help=f"messages stored by store_bytes_128 (default {DEFAULT_BYTES_MSGS})",
    )
    args = ap.parse_args(list(argv))
    if args.store_backlog < 1 or args.store_msgs < 1:
        ap.error("--store-backlog and --store-msgs must be at least 1")
    if args.duration <= 0:
        ap.error("--duration must be positive")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    args.case_names = names
    return args


def _nats_bin(args: argparse.Namespace) -> str:
    nats = args.nats_server or os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    if not nats:
        raise BenchError("nats-server not found: use --nats-server or NATS_SERVER_BIN")
    return str(nats)


def _commands(args: argparse.Namespace) -> dict[str, list[str]]:
    sides = [args.only] if args.only else list(SIDES)
    cmds: dict[str, list[str]] = {}
    if "nats" in sides:
        cmds["nats"] = [_nats_bin(args)]
    if "leafgate" in sides:
        if args.leafgate_cmd:
            cmds["leafgate"] = shlex.split(args.leafgate_cmd)
        else:
            cmds["leafgate"] = [sys.executable, "-m", "edge", "run"]
    return cmds


def _version(cmd: Sequence[str]) -> str:
    """Version from the INFO line of a freshly started server."""
    try:
        server = start_server(cmd)
    except BenchError as e:
        return f"unavailable ({e})"
    try:
        info = server.info
        return f"{info.get('version', '?')} (INFO go={info.get('go', '?')})"
    finally:
        stop_server(server)


def _leafgate_reconnect_default() -> str:
    try:
        from edge.config import RemoteConfig
    except ImportError:  # pragma: no cover - bench copied out of the tree
        return "its default backoff"
    d = {f.name: f.default for f in dataclasses.fields(RemoteConfig)}
    return (
        f"default backoff {d['reconnect_delay']:g} s doubling to {d['reconnect_max']:g} s, "
        "jittered (edge.config.RemoteConfig of this tree)"
    )


def _print_setup(
    argv: Sequence[str],
    names: list[str],
    cmds: dict[str, list[str]],
    hub_cmd: tuple[str, ...],
    versions: dict[str, str],
) -> dict[str, str]:
    """Print what is compared (filling ``versions``); return the leaf reconnect delays."""
    sides = list(cmds)
    print(f"command: {shlex.join(sys.argv)}")
    if list(argv) != sys.argv[1:]:
        print(f"bench arguments: {shlex.join(argv)}")
    for side in sides:
        versions[side] = _version(cmds[side])
        print(f"{SIDE_LABEL[side]}: {shlex.join(cmds[side])}  -> version {versions[side]}")
    delays: dict[str, str] = {}
    if any(CASES[n].leaf for n in names):
        if "nats" not in sides:
            versions["hub"] = _version(hub_cmd)
        hub_version = versions.get("hub", versions.get("nats"))
        print(f"leaf cases: hub {shlex.join(hub_cmd)} -> version {hub_version} (fresh per run)")
    if "leaf_reconnect" in names:
        delays = {
            "nats": f"leafnodes.reconnect not set: default {NATS_LEAF_RECONNECT_DEFAULT:g} s",
            "leafgate": _leafgate_reconnect_default(),
        }
        for side in sides:
            print(f"leaf_reconnect: {SIDE_LABEL[side]} leaf reconnect delay: {delays[side]}")
    return delays


def _run_all(
    args: argparse.Namespace, targets: dict[str, Target], warmup: float
) -> tuple[Results, float]:
    """Every run of every case on every side (alternating the order of the sides);
    return the results and the most CPU unrelated processes used in a window."""
    names: list[str] = args.case_names
    sides = list(targets)
    results: Results = {n: {s: SideResult() for s in sides} for n in names}
    busiest = 0.0
    for run in range(args.runs):
        for name in names:
            order = sides if run % 2 == 0 else sides[::-1]
            for side in order:
                res = results[name][side]
                t = time.monotonic()
                try:
                    m = RUNNERS[name](targets[side], warmup, args.duration)
                except BenchError as e:
                    res.errors.append(str(e))
                    msg = f"FAILED: {e}"
                else:
                    res.runs.append(m)
                    msg = run_summary(CASES[name], m)
                    busiest = max(busiest, m.extra.get("other_cpu", 0.0))
                print(
                    f"  run {run + 1}/{args.runs} {name:<15} {SIDE_LABEL[side]:<11} {msg}"
                    f"  ({time.monotonic() - t:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    return results, busiest


def _print_results(
    names: list[str], results: Results, sides: list[str], busiest: float, elapsed: float
) -> tuple[dict[str, Any], bool]:
    """Print the table, the failures and warnings; return the JSON data and "any failed"."""
    lines, data = report(names, results, sides)
    print()
    print("\n".join(lines))
    failed = [
        (n, s, err) for n in names for s in sides for err in dict.fromkeys(results[n][s].errors)
    ]
    for n, s, err in failed:
        print(f"FAILED {n} on {SIDE_LABEL[s]}: {err}")
    store_lines = store_summary(names, results)
    if store_lines:
        print()
        print("\n".join(store_lines))
    overhead_lines, data_overheads = overheads(names, results)
    if overhead_lines:
        print()
        print("\n".join(overhead_lines))
    if busiest > OTHER_CPU_WARN:
        print(
            f"WARNING: other processes on this machine used up to {busiest:.2f} CPU during "
            "the measurements; throughput figures are contended (compare ratios only)"
        )
    print(f"\ntotal time {elapsed:.0f} s")
    return {"cases": data, "overheads": data_overheads}, bool(failed)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    names: list[str] = args.case_names
    configure_store(backlog=args.store_backlog, bytes_msgs=args.store_msgs)
    leaf_cases = any(CASES[n].leaf for n in names)
    try:
        cmds = _commands(args)
        hub_cmd = (_nats_bin(args),) if leaf_cases else ()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    sides = list(cmds)
    targets = {s: Target(s, tuple(cmds[s]), hub_cmd) for s in sides}
    warmup = min(0.5, args.duration / 2)
    started = time.monotonic()
    raise_nofile(IDLE_CONNECTIONS + 256)

    versions: dict[str, str] = {}
    delays = _print_setup(argv, names, cmds, hub_cmd, versions)
    print(
        f"cases={','.join(names)} duration={args.duration:g}s warmup={warmup:g}s "
        f"runs={args.runs} (median reported); python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    sys.stdout.flush()

    results, busiest = _run_all(args, targets, warmup)
    elapsed = time.monotonic() - started
    data, failed = _print_results(names, results, sides, busiest, elapsed)

    if args.json:
        doc = {
            "command": sys.argv,
            "argv": list(argv),
            "commands": cmds,
            "versions": versions,
            "hub_command": list(hub_cmd),
            "leaf_reconnect_delays": delays,
            "store_backlog": args.store_backlog,
            "store_msgs": args.store_msgs,
            "store_notes": NOTES,
            "duration": args.duration,
            "warmup": warmup,
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "elapsed_s": round(elapsed, 1),
            **data,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed else 0
