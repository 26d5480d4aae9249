"""``leafgate status``: the terminal view, built from monitoring bodies. Pure.

Takes the JSON bodies of a running server's /varz, /leafz, /storez, /subsz
(with ``subs=1``) and, when the server has bridges, /bridgez, and returns the
lines to print: the server, each hub link, the backlog per store group, the
bridges and the subjects that delivered the most messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Body = Mapping[str, Any]
TOP_SUBJECTS = 10


@dataclass(frozen=True)
class Bodies:
    varz: Body
    leafz: Body
    storez: Body
    subsz: Body
    bridgez: Body | None = None  # None: the server has no /bridgez


def render(b: Bodies, top: int = TOP_SUBJECTS) -> list[str]:
    lines = _server(b.varz)
    lines += _links(b.leafz)
    lines += _store(b.storez)
    lines += _bridges(b.bridgez)
    lines += _top_subjects(b.subsz, top)
    return lines


def _server(v: Body) -> list[str]:
    name = v.get("server_name") or v.get("server_id", "?")
    return [
        f"leafgate {name}  {v.get('go', '')}",
        f"  listening   {v.get('host')}:{v.get('port')}   up {v.get('uptime', '?')}",
        f"  clients     {v.get('connections', 0)} connected, "
        f"{v.get('total_connections', 0)} since start, "
        f"{v.get('slow_consumers', 0)} slow consumers",
        f"  messages    in {v.get('in_msgs', 0)} ({human_bytes(v.get('in_bytes', 0))}), "
        f"out {v.get('out_msgs', 0)} ({human_bytes(v.get('out_bytes', 0))})",
    ]


def _links(leafz: Body) -> list[str]:
    links: Sequence[Body] = leafz.get("leafgate_links", [])
    if not links:
        return ["", "hub links: none configured"]
    lines = ["", "hub links:"]
    for link in links:
        state = "UP  " if link.get("up") else "DOWN"
        hub = f" hub {link['hub_name']}" if link.get("hub_name") else ""
        lines.append(
            f"  [{link.get('remote')}] {state} {link.get('url') or '(not connected)'}{hub}"
            f"  since {link.get('since', '?')}, reconnects {link.get('reconnects', 0)}, "
            f"dropped {link.get('dropped_msgs', 0)}"
        )
        if not link.get("up") and link.get("last_error"):
            lines.append(f"        last error: {link['last_error']}")
    return lines


def _store(s: Body) -> list[str]:
    if not s.get("enabled"):
        return ["", "store: off"]
    state = []
    if s.get("behind"):
        state.append("reading from disk")
    if s.get("low_disk"):
        state.append("LOW DISK")
    if s.get("last_error"):
        state.append(f"ERROR {s['last_error']}")
    lines = [
        "",
        f"store {s.get('path')}: {s.get('messages', 0)} msgs, "
        f"{human_bytes(s.get('bytes', 0))} held" + (f"  ({', '.join(state)})" if state else ""),
    ]
    header = f"  {'group':<16} {'msgs':>8} {'bytes':>9} {'oldest':>8} {'confirmed':>10}  dropped"
    lines.append(header)
    for g in s.get("groups", []):
        age = g.get("oldest_age_seconds")
        dropped = g.get("dropped") or {}
        drops = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items())) or "-"
        lines.append(
            f"  {g.get('name', '?'):<16} {g.get('messages', 0):>8} "
            f"{human_bytes(g.get('bytes', 0)):>9} {human_age(age):>8} "
            f"{g.get('confirmed', 0):>10}  {drops}"
        )
    f = s.get("forwarder")
    if f:
        lines.append(
            f"  forwarder: sent {f.get('sent', 0)}, acked {f.get('acked', 0)}, "
            f"resent {f.get('resent', 0)}, in flight {f.get('inflight', 0)}"
        )
    return lines


def _bridges(bridgez: Body | None) -> list[str]:
    if bridgez is None:
        return []
    bridges: Sequence[Body] = bridgez.get("bridges", [])
    if not bridges:
        return ["", "bridges: none"]
    lines = ["", "bridges:"]
    for bridge in bridges:
        extra = {k: v for k, v in bridge.items() if k not in ("name", "kind", "state")}
        detail = ", ".join(f"{k} {v}" for k, v in sorted(extra.items()) if _scalar(v))
        lines.append(
            f"  {bridge.get('kind', '?'):<7} {bridge.get('name', '?'):<16} "
            f"{bridge.get('state', '?')}" + (f"  {detail}" if detail else "")
        )
    return lines


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _top_subjects(subsz: Body, top: int) -> list[str]:
    delivered: dict[str, int] = {}
    for sub in subsz.get("subscriptions_list", []):
        subject = str(sub.get("subject", "?"))
        delivered[subject] = delivered.get(subject, 0) + int(sub.get("msgs", 0))
    ranked = sorted(delivered.items(), key=lambda item: (-item[1], item[0]))[:top]
    if not ranked:
        return ["", "subscriptions: none"]
    lines = ["", f"top subjects (messages delivered to {subsz.get('total', len(delivered))} subs):"]
    lines += [f"  {n:>10}  {subject}" for subject, n in ranked]
    return lines


def human_bytes(n: object) -> str:
    size = float(n) if isinstance(n, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover (the loop returns)


def human_age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
