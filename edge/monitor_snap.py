"""Monitoring: frozen snapshots of the live server, for ``edge.monitor_json``
and ``edge.monitor_edge``.

Everything here runs in the server's Trio thread and reads the live objects
without awaiting (except the store's oldest-message query), so a snapshot is
consistent. Costs are linear in what is shown: /connz reads a few attributes
per client, and subscription lists only for the page returned.

Totals nats-server keeps as server counters (``in_msgs``, ``out_msgs`` ...)
are the sums over the connected clients plus what the closed ones had
(``ServerStats.closed_*``) plus the uplinks' message counters.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from edge.auth.settings import GLOBAL_ACCOUNT, ExportConfig, ImportConfig
from edge.config import parse_leaf_url
from edge.monitor_edge import ForwarderSnap, HealthSnap, LinkSnap, StoreSnap
from edge.monitor_json import (
    AccountSnap,
    ConnSnap,
    RemoteSnap,
    SublistSnap,
    SubSnap,
    VarzSnap,
)
from edge.server import PROTOCOL_VERSION, leafgate_version

if TYPE_CHECKING:
    from edge.config import RemoteConfig
    from edge.connection import ClientConnection
    from edge.router import Router
    from edge.server import Server
    from edge.uplink import Uplink
    from store.forward import Forwarder
    from store.writer import Store

OLDEST_TIMEOUT = 1.0  # longest /storez waits for the store's oldest-message query


@dataclass(frozen=True)
class Clock:
    """One instant on both clocks: wall time (ns) and Trio's clock (s)."""

    wall_ns: int
    trio_now: float

    @classmethod
    def now(cls) -> Clock:
        return cls(time.time_ns(), trio.current_time())

    def wall_of(self, trio_time: float) -> int:
        """Wall-clock ns of an instant recorded on Trio's clock."""
        return self.wall_ns - round((self.trio_now - trio_time) * 1e9)


# ---- process figures (/proc) ------------------------------------------------------


class ProcessSampler:
    """RSS from /proc/self/statm; CPU percent from /proc/self/stat deltas.

    CPU is averaged over the time since the previous sample, which is taken
    at most once a second (nats-server samples once a second too); the first
    figure covers the time since the sampler was made. 0 where /proc is missing.
    """

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._tick = os.sysconf("SC_CLK_TCK")
        self._last = (time.monotonic(), _cpu_ticks())
        self.cpu = 0.0

    def mem(self) -> int:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def cpu_percent(self) -> float:
        now, ticks = time.monotonic(), _cpu_ticks()
        then, before = self._last
        if now - then >= 1.0 and ticks >= 0 and before >= 0:
            self.cpu = round((ticks - before) / self._tick / (now - then) * 100, 1)
            self._last = (now, ticks)
        return self.cpu


def _cpu_ticks() -> int:
    """utime + stime of this process, in clock ticks; -1 if unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    except (OSError, ValueError, IndexError):
        return -1


# ---- /varz ----------------------------------------------------------------------


def varz_snap(
    server: Server, start_ns: int, sampler: ProcessSampler, requests: dict[str, int]
) -> VarzSnap:
    """``start_ns``: the server's start on the wall clock (fixed once, so that a
    wall-clock step does not move it)."""
    config = server.config
    in_msgs, in_bytes, out_msgs, out_bytes = client_totals(server)
    links = list(server.uplinks)
    return VarzSnap(
        server_id=server.server_id,
        server_name=server.name,
        version=PROTOCOL_VERSION,
        go=f"leafgate {leafgate_version()} (Python {platform.python_version()})",
        host=config.host,
        port=server.port,
        auth_required=server.credentials.required,
        max_connections=config.max_connections,
        max_subscriptions=config.max_subscriptions,
        ping_interval=config.ping_interval,
        ping_max=config.max_pings_out,
        http_host=config.http_host,
        http_port=server.http_port,
        auth_timeout=config.auth.timeout,
        max_control_line=config.max_control_line,
        max_payload=config.max_payload,
        max_pending=config.max_pending,
        write_deadline=config.write_deadline,
        start_ns=start_ns,
        now_ns=time.time_ns(),
        mem=sampler.mem(),
        cores=os.cpu_count() or 1,
        cpu=sampler.cpu_percent(),
        connections=len(server.clients),
        total_connections=server.stats.connections_total,
        leafnodes=sum(1 for link in links if link.up),
        in_msgs=in_msgs + sum(link.msgs_in for link in links),
        out_msgs=out_msgs + sum(link_out(link) for link in links),
        in_bytes=in_bytes,
        out_bytes=out_bytes,
        slow_consumers=server.stats.slow_consumers,
        stale_connections=server.stats.stale_connections,
        subscriptions=sublist_snap(server).count,
        http_req_stats=tuple(sorted(requests.items())),
        remotes=tuple(_remote(r) for r in config.leafnodes.remotes),
    )


def client_totals(server: Server) -> tuple[int, int, int, int]:
    """(in_msgs, in_bytes, out_msgs, out_bytes) of every client since start."""
    stats = server.stats
    in_msgs, in_bytes = stats.closed_in_msgs, stats.closed_in_bytes
    out_msgs, out_bytes = stats.closed_out_msgs, stats.closed_out_bytes
    for client in server.clients.values():
        in_msgs += client.in_msgs
        in_bytes += client.in_bytes
        out_msgs += client.out_msgs
        out_bytes += client.out_bytes
    return in_msgs, in_bytes, out_msgs, out_bytes


def _remote(remote: RemoteConfig) -> RemoteSnap:
    """A remote as /varz shows it: ``host:port`` URLs, without credentials."""
    shown = []
    for url in remote.urls:
        try:
            parsed = parse_leaf_url(url)
        except ValueError:
            continue
        shown.append(f"{parsed.host}:{parsed.port}")
    return RemoteSnap(tuple(shown), remote.deny_exports, remote.deny_imports)


def link_out(link: Uplink) -> int:
    """Messages sent up: live traffic plus the store's messages (resends included)."""
    return link.msgs_out + (link.forwarder.sent if link.forwarder is not None else 0)


# ---- /connz, /subsz -----------------------------------------------------------------


def conn_snaps(server: Server, clock: Clock) -> list[ConnSnap]:
    """Every open client, without its subscriptions (see ``with_subs``)."""
    return [_conn(c, clock) for c in server.clients.values()]


def client_account(client: ClientConnection) -> tuple[str, str]:
    """(account, authenticated user) of a client: the global account and no name
    without users; never a token (a token login shows no user)."""
    identity = client.identity  # an edge.auth.authn.Identity, or None without users
    if identity is None:
        return GLOBAL_ACCOUNT, ""
    return getattr(identity, "account", GLOBAL_ACCOUNT), getattr(identity, "name", "")


def account_routers(server: Server) -> dict[str, Router]:
    """Every account's router (just the global one without accounts)."""
    if server.security is None:
        return {GLOBAL_ACCOUNT: server.router}
    return server.security.accounts.routers


def _conn(c: ClientConnection, clock: Clock) -> ConnSnap:
    opts = c.session.options
    account, user = client_account(c)
    if c.server.security is not None:
        # A JWT user is shown by its public key, as nats-server shows it.
        user = c.server.security.jwt_users.get(c.cid, user)
    return ConnSnap(
        c.cid,
        c.ip,
        c.port,
        clock.wall_of(c.started),
        len(c.out),
        c.in_msgs,
        c.out_msgs,
        c.in_bytes,
        c.out_bytes,
        len(c.subs),
        opts.name,
        opts.lang,
        opts.version,
        (),
        account,
        user,
    )


def with_subs(server: Server, page: list[ConnSnap]) -> list[ConnSnap]:
    """The page's snapshots with their subscriptions filled in."""
    out = []
    for snap in page:
        client = server.clients.get(snap.cid)
        subs = client_subs(client) if client is not None else ()
        out.append(snap._replace(subs=subs))
    return out


def client_subs(client: ClientConnection) -> tuple[SubSnap, ...]:
    cid = client.cid
    account = client_account(client)[0]
    return tuple(
        SubSnap(
            sub.subject.decode(errors="replace"),
            sub.queue.decode(errors="replace") if sub.queue else None,
            sub.sid.decode(errors="replace"),
            sub.delivered,
            sub.max_msgs,
            cid,
            account,
        )
        for sub in client.subs.values()
    )


def all_subs(server: Server, account: str = "") -> list[SubSnap]:
    """The clients' subscriptions (of one account if ``account``)."""
    out: list[SubSnap] = []
    for client in server.clients.values():
        if not account or client_account(client)[0] == account:
            out.extend(client_subs(client))
    if server.security is not None:
        # A service import subscribes in its importing account (cid 0: no client).
        imports = server.security.accounts.service_imports
        for i, (name, service) in enumerate(imports, 1):
            if not account or name == account:
                subject = service.local_subject.decode(errors="replace")
                out.append(SubSnap(subject, None, str(i), service.sub.delivered, 0, 0, name))
    return out


def sublist_snap(server: Server, account: str = "") -> SublistSnap:
    """The sublist counters of one account, or summed over all of them (nats-server's
    /subsz and /varz count every account's subscriptions); an unknown account: zeros."""
    routers = account_routers(server)
    chosen = [routers[account]] if account in routers else [] if account else routers.values()
    count = cache = inserts = removes = matches = hits = 0
    for router in chosen:
        s = router.sublist.stats()
        count += s.count
        cache += s.cache_size
        inserts += s.inserts
        removes += s.removes
        matches += s.matches
        hits += s.cache_hits
    return SublistSnap(count, cache, inserts, removes, matches, hits)


def account_snaps(server: Server) -> list[AccountSnap]:
    """Every account: its clients, uplinks, sublist, and (configured or JWT) exports
    and imports."""
    clients: dict[str, int] = {}
    for client in server.clients.values():
        account = client_account(client)[0]
        clients[account] = clients.get(account, 0) + 1
    leafs: dict[str, int] = {}
    for link in server.uplinks:
        if link.up:
            account = link.remote.local_account or GLOBAL_ACCOUNT
            leafs[account] = leafs.get(account, 0) + 1
    declared = _declared(server)
    return [
        AccountSnap(
            name,
            clients.get(name, 0),
            leafs.get(name, 0),
            sublist_snap(server, name),
            *declared.get(name, ((), (), "", "")),
        )
        for name in account_routers(server)
    ]


def _declared(
    server: Server,
) -> dict[str, tuple[tuple[ExportConfig, ...], tuple[ImportConfig, ...], str, str]]:
    """Exports, imports, issuer and name of each account (config or JWT)."""
    security = server.security
    if security is None:
        return {}
    out = {a.name: (a.exports, a.imports, "", "") for a in security.settings.accounts}
    accounts = security.accounts
    for key, claims in {**accounts.exporters, **accounts.jwt_claims}.items():
        out[key] = (claims.exports, claims.imports, claims.issuer, claims.name)
    return out


# ---- /leafz, /healthz ---------------------------------------------------------------


def link_snap(link: Uplink, subs: bool = False) -> LinkSnap:
    state = link.state()
    hub = link.session.hub
    subjects: tuple[str, ...] = ()
    if subs:
        subjects = tuple(s.decode(errors="replace") for s, _q, _w in hub.entries())
    return LinkSnap(
        index=link.index,
        up=state.up,
        since_ns=round(state.since * 1e9),
        url=state.url,
        hub_name=state.hub_name,
        hub_account=state.account,
        connects=state.connects,
        reconnects=state.reconnects,
        last_error=state.last_error,
        dropped=state.dropped,
        in_msgs=link.msgs_in,
        out_msgs=link_out(link),
        hub_interest=len(hub) if state.up else 0,
        hub_subjects=subjects if state.up else (),
        forwarder=forwarder_snap(link.forwarder),
    )


def forwarder_snap(f: Forwarder | None) -> ForwarderSnap | None:
    if f is None:
        return None
    return ForwarderSnap(f.sent, f.resent, f.acked, f.nacked, len(f.window), f.window.bytes)


def health_snap(server: Server) -> HealthSnap:
    return HealthSnap(
        lame_duck=server.lame_duck,
        store_error=store_error(server.store),
        links=tuple(link_snap(link) for link in server.uplinks),
        store_low_disk=server.store is not None
        and (server.store.low_disk or server.store.disk_full),
    )


def store_error(store: Store | None) -> str | None:
    """Why the store counts as failing (not open, or its last commit failed), or None."""
    if store is None:
        return None
    if store.conn is None:
        return "the store is not open"
    return store.last_error


# ---- /storez ------------------------------------------------------------------------


async def store_snap(server: Server) -> StoreSnap | None:
    """The store's figures and, if the writer answers within ``OLDEST_TIMEOUT``,
    the age of each group's oldest message on disk."""
    store = server.store
    if store is None:
        return None
    oldest: dict[str, int | None] = {}
    with trio.move_on_after(OLDEST_TIMEOUT):
        try:
            oldest = await store.oldest()
        except sqlite3.Error:
            oldest = {}
    stats = store.stats()
    link = server.uplinks[0] if server.uplinks else None
    return StoreSnap(
        gateway_id=stats.gateway_id,
        path=stats.path,
        db_bytes=_size(stats.path),
        wal_bytes=_size(stats.path + "-wal"),
        next_seq=stats.next_seq,
        groups=tuple(
            replace(g, oldest_ts=oldest.get(g.name) if g.messages else None) for g in stats.groups
        ),
        commits=stats.commits,
        commit_seconds=stats.commit_seconds,
        bytes_committed=stats.bytes_committed,
        behind=stats.behind,
        low_disk=stats.low_disk,
        last_error=stats.last_error,
        forwarder=forwarder_snap(link.forwarder) if link else None,
        link=link_snap(link) if link else None,
    )


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
