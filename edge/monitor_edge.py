"""Monitoring: leafgate's own bodies, built from frozen snapshots. Pure: no I/O.

The hub links (/leafz, and the ``leafgate_links`` extra that lists links that
are down too), the health rule (/healthz) and the store (/storez). Formats and
conventions are ``edge.monitor_json``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.monitor_json import GLOBAL_ACCOUNT, Body, rfc3339
from store.stats import GroupStats

__all__ = [
    "ForwarderSnap",
    "HealthSnap",
    "LinkSnap",
    "StoreSnap",
    "healthz",
    "leafz",
    "storez",
]


# ---- /leafz ---------------------------------------------------------------------


@dataclass(frozen=True)
class ForwarderSnap:
    sent: int
    resent: int
    acked: int
    nacked: int
    inflight: int
    inflight_bytes: int


@dataclass(frozen=True)
class LinkSnap:
    """One configured uplink (up or not), from ``Uplink.state()`` and its counters."""

    index: int
    up: bool
    since_ns: int
    url: str | None
    hub_name: str | None
    hub_account: str | None
    connects: int
    reconnects: int
    last_error: str | None
    dropped: int
    in_msgs: int
    out_msgs: int
    hub_interest: int
    hub_subjects: tuple[str, ...] = ()  # filled only when asked (?subs=1)
    forwarder: ForwarderSnap | None = None


def leafz(server_id: str, now_ns: int, links: Sequence[LinkSnap], subs: bool) -> Body:
    """Connected links in ``leafs`` (nats-server lists only live connections);
    every configured link, up or down, in the leafgate extra ``leafgate_links``."""
    up = [link for link in links if link.up]
    return {
        "server_id": server_id,
        "now": rfc3339(now_ns),
        "leafnodes": len(up),
        "leafs": [_leaf_info(link, subs) for link in up],
        "leafgate_links": [_link_state(link) for link in links],
    }


def _leaf_info(link: LinkSnap, subs: bool) -> Body:
    host, port = _host_port(link.url)
    info: Body = {
        "name": link.hub_name or "",
        "is_spoke": True,
        "account": GLOBAL_ACCOUNT,
        "ip": host,
        "port": port,
        "in_msgs": link.in_msgs,
        "out_msgs": link.out_msgs,
        "in_bytes": None,  # the uplink does not count bytes
        "out_bytes": None,
        "subscriptions": link.hub_interest,
    }
    if subs and link.hub_subjects:
        info["subscriptions_list"] = list(link.hub_subjects)
    return info


def _link_state(link: LinkSnap) -> Body:
    return {
        "remote": link.index,
        "up": link.up,
        "since": rfc3339(link.since_ns),
        "url": link.url,
        "hub_name": link.hub_name,
        "hub_account": link.hub_account,
        "connects": link.connects,
        "reconnects": link.reconnects,
        "last_error": link.last_error,
        "dropped_msgs": link.dropped,
        "hub_interest": link.hub_interest,
    }


def _host_port(url: str | None) -> tuple[str, int]:
    """``scheme://host:port`` -> (host, port); IPv6 brackets removed."""
    if not url:
        return "", 0
    hostport = url.partition("://")[2] or url
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


# ---- /healthz -------------------------------------------------------------------


@dataclass(frozen=True)
class HealthSnap:
    lame_duck: bool
    store_error: str | None  # None: no store, or the store works
    links: tuple[LinkSnap, ...]


def healthz(h: HealthSnap, ready: bool) -> tuple[int, Body]:
    """(HTTP status, body). The rule:

    * 200 ``{"status":"ok"}`` while the server accepts clients and, if a store
      is configured, the store is open and its last commit succeeded;
    * 503 ``{"status":"unavailable","error":...}`` in lame duck mode or when the
      store fails;
    * with ``ready=1`` (leafgate's readiness probe) also 503 while any
      configured uplink is down.

    nats-server's JetStream parameters (``js-enabled-only`` ...) are ignored.
    """
    error = _health_error(h, ready)
    if error is None:
        return 200, {"status": "ok"}
    return 503, {"status": "unavailable", "error": error}


def _health_error(h: HealthSnap, ready: bool) -> str | None:
    if h.lame_duck:
        return "server is in lame duck mode"
    if h.store_error is not None:
        return f"store-and-forward store is failing: {h.store_error}"
    if ready:
        for link in h.links:
            if not link.up:
                why = f" ({link.last_error})" if link.last_error else ""
                return f"leafnode uplink {link.index} down: {link.url or 'not connected'}{why}"
    return None


# ---- /storez (leafgate) -----------------------------------------------------------


@dataclass(frozen=True)
class StoreSnap:
    gateway_id: str
    path: str
    db_bytes: int | None
    wal_bytes: int | None
    next_seq: int
    groups: tuple[GroupStats, ...]  # oldest_ts filled in when the writer answered
    commits: int
    commit_seconds: float
    bytes_committed: int
    behind: bool
    low_disk: bool
    last_error: str | None
    forwarder: ForwarderSnap | None
    link: LinkSnap | None


def storez(server_id: str, now_ns: int, s: StoreSnap | None) -> Body:
    """The store-and-forward buffer; ``{"enabled": false}`` without a store.

    Store-wide: ``gateway_id``, ``path``, ``db_bytes``/``wal_bytes`` (file
    sizes, null if absent), ``next_seq``, ``messages``/``bytes`` (held, all
    groups), ``commits``, ``commit_seconds``, ``bytes_committed``, ``behind``
    (the forwarder reads from disk), ``low_disk``, ``last_error``; per group:
    ``subjects``, ``durability``, ``policy``, ``messages``, ``bytes``,
    ``oldest_age_seconds``, ``accepted``, ``confirmed``, ``rejected``, ``duplicates``,
    ``dropped`` (by reason) and ``dropped_total``; ``forwarder`` (``sent``,
    ``resent``, ``acked``, ``nacked``, ``inflight``, ``inflight_bytes``) and
    ``link``, the state of the uplink the store forwards through.

    ``oldest_age_seconds`` is the age of the oldest message held *on disk*; it
    is null when the group is empty, when it holds only memory-mode messages
    not yet spilled, or when the writer did not answer in time.
    """
    body: Body = {"server_id": server_id, "now": rfc3339(now_ns), "enabled": s is not None}
    if s is None:
        return body
    body.update(
        {
            "gateway_id": s.gateway_id,
            "path": s.path,
            "db_bytes": s.db_bytes,
            "wal_bytes": s.wal_bytes,
            "next_seq": s.next_seq,
            "messages": sum(g.messages for g in s.groups),
            "bytes": sum(g.bytes for g in s.groups),
            "groups": [_group(g, now_ns) for g in s.groups],
            "commits": s.commits,
            "commit_seconds": round(s.commit_seconds, 6),
            "bytes_committed": s.bytes_committed,
            "behind": s.behind,
            "low_disk": s.low_disk,
            "last_error": s.last_error,
            "forwarder": _forwarder(s.forwarder),
            "link": _link_state(s.link) if s.link else None,
        }
    )
    return body


def _group(g: GroupStats, now_ns: int) -> Body:
    age = None if g.oldest_ts is None else max(0.0, (now_ns // 1_000_000 - g.oldest_ts) / 1000)
    return {
        "name": g.name,
        "subjects": list(g.subjects),
        "durability": g.durability,
        "policy": g.policy,
        "messages": g.messages,
        "bytes": g.bytes,
        "oldest_age_seconds": age,
        "accepted": g.accepted,
        "confirmed": g.confirmed,
        "rejected": g.rejected,
        "duplicates": g.duplicates,
        "dropped": dict(g.dropped),
        "dropped_total": sum(n for _reason, n in g.dropped),
    }


def _forwarder(f: ForwarderSnap | None) -> Body | None:
    if f is None:
        return None
    return {
        "sent": f.sent,
        "resent": f.resent,
        "acked": f.acked,
        "nacked": f.nacked,
        "inflight": f.inflight,
        "inflight_bytes": f.inflight_bytes,
    }


def bridgez(server_id: str, now_ns: int, statuses: Sequence[Body]) -> Body:
    """Every bridge (MQTT broker, serial port) with its state and counters, as
    each reports it (``status()``: at least ``name``, ``kind``, ``state``)."""
    states: dict[str, int] = {}
    for status in statuses:
        state = str(status.get("state", "unknown"))
        states[state] = states.get(state, 0) + 1
    return {
        "server_id": server_id,
        "now": rfc3339(now_ns),
        "num_bridges": len(statuses),
        "states": states,
        "bridges": list(statuses),
    }
