"""Monitoring: the JSON bodies, built from frozen snapshots. Pure: no I/O, no trio.

The shell (``edge.monitor``) takes a snapshot of the live server (the
dataclasses below), parses the query string with the ``*Query.parse``
functions and calls one builder per endpoint; each builder returns a plain dict
that ``encode`` turns into nats-server's pretty-printed JSON. The links, the
health rule and the store are ``edge.monitor_edge``'s.

Field names and units are nats-server's (v2.9.10 / v2.14.0, see
shared/spec/monitoring.md): durations in config fields are integer
nanoseconds, ``uptime``/``idle`` are Go-style durations (``"1m5s"``),
timestamps are RFC 3339 with nanoseconds in UTC. Values leafgate does not know
are ``null`` rather than invented (``last_activity``, ``idle``); fields
nats-server omits when empty are omitted here too. Query errors carry
nats-server's error text where it has one (``QueryError``; HTTP 400, plain
text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from edge.auth.settings import ExportConfig, ImportConfig
from edge.subjects import is_valid_publish_subject, matches

__all__ = [
    "DEFAULT_LIST_SIZE",
    "ConnSnap",
    "ConnzQuery",
    "QueryError",
    "RemoteSnap",
    "SubSnap",
    "SublistSnap",
    "SubszQuery",
    "VarzSnap",
    "accountz",
    "connz",
    "encode",
    "go_uptime",
    "page_conns",
    "rfc3339",
    "subsz",
    "varz",
]

DEFAULT_LIST_SIZE = 1024  # nats-server's DefaultConnListSize / DefaultSubListSize
GLOBAL_ACCOUNT = "$G"
NS = 1_000_000_000

Body = dict[str, Any]
Params = Mapping[str, str]  # the first value of each query parameter


class QueryError(ValueError):
    """A query parameter nats-server would refuse: HTTP 400, this text as the body."""


# ---- formats --------------------------------------------------------------------


def go_uptime(seconds: float) -> str:
    """nats-server's ``myUptime``: whole seconds as ``1y2d3h4m5s``, leading units dropped."""
    secs = max(0, int(seconds))
    mins, hours, days = secs // 60, secs // 3600, secs // 86400
    years = days // 365
    if years:
        return f"{years}y{days % 365}d{hours % 24}h{mins % 60}m{secs % 60}s"
    if days:
        return f"{days}d{hours % 24}h{mins % 60}m{secs % 60}s"
    if hours:
        return f"{hours}h{mins % 60}m{secs % 60}s"
    if mins:
        return f"{mins}m{secs % 60}s"
    return f"{secs}s"


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC: nanoseconds with trailing zeros dropped."""
    secs, frac = divmod(ns, NS)
    stamp = _utc_second(secs)
    digits = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


@lru_cache(maxsize=4096)
def _utc_second(secs: int) -> str:
    # Cached: /connz formats one start time per client, and they share seconds.
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _ns(seconds: float) -> int:
    return round(seconds * NS)


_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def encode(body: Body, *, pretty: bool = True) -> bytes:
    """JSON as nats-server writes it: indent 2 (``json.MarshalIndent``), UTF-8,
    and ``<``, ``>``, ``&`` escaped as Go's encoder does (they can only occur
    inside strings, so the replacement is safe)."""
    if pretty:
        text = json.dumps(body, indent=2, ensure_ascii=False)
    else:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return text.translate(_GO_ESCAPES).encode()


# ---- query parameters (nats-server's decodeInt / decodeBool / ... texts) ----------


def _go_quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def parse_int(params: Params, name: str) -> int:
    text = params.get(name, "")
    if not text:
        return 0
    try:
        return int(text, 10)
    except ValueError:
        raise QueryError(
            f"Error decoding int for '{name}': strconv.Atoi: parsing {_go_quote(text)}: "
            "invalid syntax"
        ) from None


def parse_uint(params: Params, name: str) -> int:
    text = params.get(name, "")
    if not text:
        return 0
    if not text.isdigit():
        raise QueryError(
            f"Error decoding uint64 for '{name}': strconv.ParseUint: parsing "
            f"{_go_quote(text)}: invalid syntax"
        )
    return int(text)


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(params: Params, name: str) -> bool:
    text = params.get(name, "")
    if not text or text in _FALSE:
        return False
    if text in _TRUE:
        return True
    raise QueryError(
        f"Error decoding boolean for '{name}': strconv.ParseBool: parsing {_go_quote(text)}: "
        "invalid syntax"
    )


def _list_window(params: Params) -> tuple[int, int]:
    offset = max(0, parse_int(params, "offset"))
    limit = parse_int(params, "limit")
    return offset, limit if limit > 0 else DEFAULT_LIST_SIZE


# ---- /varz ----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSnap:
    """One configured leafnode remote, as /varz shows it."""

    urls: tuple[str, ...]  # host:port, no credentials
    deny_exports: tuple[str, ...] = ()
    deny_imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class VarzSnap:
    server_id: str
    server_name: str
    version: str
    go: str
    host: str
    port: int
    auth_required: bool
    max_connections: int
    max_subscriptions: int
    ping_interval: float  # seconds
    ping_max: int
    http_host: str
    http_port: int
    auth_timeout: float
    max_control_line: int
    max_payload: int
    max_pending: int
    write_deadline: float  # seconds
    start_ns: int
    now_ns: int
    mem: int
    cores: int
    cpu: float
    connections: int
    total_connections: int
    leafnodes: int
    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    slow_consumers: int
    stale_connections: int
    subscriptions: int
    http_req_stats: tuple[tuple[str, int], ...]
    remotes: tuple[RemoteSnap, ...]


def varz(s: VarzSnap) -> Body:
    body: Body = {
        "server_id": s.server_id,
        "server_name": s.server_name,
        "version": s.version,
        "proto": 1,
        "go": s.go,
        "host": s.host,
        "port": s.port,
    }
    if s.auth_required:
        body["auth_required"] = True
    body["max_connections"] = s.max_connections
    if s.max_subscriptions:
        body["max_subscriptions"] = s.max_subscriptions
    body.update(
        {
            "ping_interval": _ns(s.ping_interval),
            "ping_max": s.ping_max,
            "http_host": s.http_host,
            "http_port": s.http_port,
            "http_base_path": "",
            "https_port": 0,
            "auth_timeout": s.auth_timeout,
            "max_control_line": s.max_control_line,
            "max_payload": s.max_payload,
            "max_pending": s.max_pending,
            "cluster": {},
            "gateway": {},
            "leaf": _varz_leaf(s.remotes),
            "mqtt": {},
            "websocket": {},
            "jetstream": {},
            "write_deadline": _ns(s.write_deadline),
        }
    )
    body.update(_varz_runtime(s))
    return body


def _varz_leaf(remotes: Sequence[RemoteSnap]) -> Body:
    if not remotes:
        return {}
    out = []
    for remote in remotes:
        entry: Body = {"local_account": GLOBAL_ACCOUNT, "urls": list(remote.urls)}
        deny: Body = {}
        if remote.deny_exports:
            deny["exports"] = list(remote.deny_exports)
        if remote.deny_imports:
            deny["imports"] = list(remote.deny_imports)
        if deny:
            entry["deny"] = deny
        out.append(entry)
    return {"remotes": out}


def _varz_runtime(s: VarzSnap) -> Body:
    return {
        "start": rfc3339(s.start_ns),
        "now": rfc3339(s.now_ns),
        "uptime": go_uptime((s.now_ns - s.start_ns) / NS),
        "mem": s.mem,
        "cores": s.cores,
        "cpu": s.cpu,
        "connections": s.connections,
        "total_connections": s.total_connections,
        "routes": 0,
        "remotes": 0,
        "leafnodes": s.leafnodes,
        "in_msgs": s.in_msgs,
        "out_msgs": s.out_msgs,
        "in_bytes": s.in_bytes,
        "out_bytes": s.out_bytes,
        "slow_consumers": s.slow_consumers,
        "stale_connections": s.stale_connections,
        "subscriptions": s.subscriptions,
        "http_req_stats": dict(s.http_req_stats),
        "config_load_time": rfc3339(s.start_ns),  # no reload: the config is the start's
    }


# ---- /connz ---------------------------------------------------------------------


# The per-client and per-subscription snapshots are NamedTuples (immutable like
# the dataclasses, and built three times faster: /connz makes one per client).


class SubSnap(NamedTuple):
    subject: str
    queue: str | None
    sid: str
    msgs: int
    max: int
    cid: int
    account: str = GLOBAL_ACCOUNT


class ConnSnap(NamedTuple):
    cid: int
    ip: str
    port: int
    start_ns: int
    pending: int
    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    num_subs: int
    name: str = ""
    lang: str = ""
    version: str = ""
    subs: tuple[SubSnap, ...] = ()
    account: str = GLOBAL_ACCOUNT
    user: str = ""  # the authenticated user's name, nkey or JWT key ("" for tokens)


# Sort keys leafgate's data allows; cid and start sort ascending, uptime from the
# youngest, the others descending (nats-server's order). Ties go by cid.
_SORTS: dict[str, Callable[[ConnSnap], tuple[int, int]]] = {
    "cid": lambda c: (c.cid, 0),
    "start": lambda c: (c.cid, 0),
    "subs": lambda c: (-c.num_subs, c.cid),
    "pending": lambda c: (-c.pending, c.cid),
    "msgs_to": lambda c: (-c.out_msgs, c.cid),
    "msgs_from": lambda c: (-c.in_msgs, c.cid),
    "bytes_to": lambda c: (-c.out_bytes, c.cid),
    "bytes_from": lambda c: (-c.in_bytes, c.cid),
    "uptime": lambda c: (-c.start_ns, c.cid),
}
_UNTRACKED_SORTS = {
    "last": "leafgate does not track the time of a connection's last activity",
    "idle": "leafgate does not track the time of a connection's last activity",
    "rtt": "leafgate does not measure client round-trip times",
}
_CLOSED_ONLY_SORTS = ("stop", "reason")
NO_CLOSED = "leafgate keeps no list of closed connections; only state=open is supported"


@dataclass(frozen=True)
class ConnzQuery:
    sort: str = "cid"
    subs: bool = False
    detail: bool = False
    offset: int = 0
    limit: int = DEFAULT_LIST_SIZE
    cid: int = 0
    auth: bool = False
    acc: str = ""

    @classmethod
    def parse(cls, params: Params) -> ConnzQuery:
        """Raises QueryError, with nats-server's text where it has one."""
        sort = params.get("sort", "") or "cid"
        detail = params.get("subs", "").lower() == "detail"
        subs = detail or parse_bool(params, "subs")
        auth = parse_bool(params, "auth")
        offset, limit = _list_window(params)
        cid = parse_uint(params, "cid")
        _check_state(params.get("state", ""))
        if sort in _CLOSED_ONLY_SORTS:
            raise QueryError(f"sort by {sort} only valid on closed connections")
        if sort in _UNTRACKED_SORTS:
            raise QueryError(f"sort by {sort} is not supported: {_UNTRACKED_SORTS[sort]}")
        if sort not in _SORTS:
            raise QueryError(f"invalid sorting option: {sort}")
        limit = 1 if cid else limit
        return cls(sort, subs, detail, offset, limit, cid, auth, params.get("acc", ""))


def _check_state(state: str) -> None:
    lowered = state.lower()
    if lowered in ("", "open"):
        return
    if lowered in ("closed", "any", "all"):
        raise QueryError(f"state={state} is not supported: {NO_CLOSED}")
    raise QueryError(f"Error decoding state for {state}")


def page_conns(conns: Sequence[ConnSnap], q: ConnzQuery) -> tuple[int, list[ConnSnap]]:
    """(total, the requested page): filtered by cid and account, sorted, offset and
    limit applied."""
    if q.acc:
        conns = [c for c in conns if c.account == q.acc]
    if q.cid:
        chosen = [c for c in conns if c.cid == q.cid]
        return len(chosen), chosen
    ordered = sorted(conns, key=_SORTS[q.sort])
    return len(ordered), ordered[q.offset : q.offset + q.limit]


def connz(server_id: str, now_ns: int, total: int, page: Sequence[ConnSnap], q: ConnzQuery) -> Body:
    return {
        "server_id": server_id,
        "now": rfc3339(now_ns),
        "num_connections": len(page),
        "total": total,
        "offset": q.offset,
        "limit": q.limit,
        # None (null) when an unknown account was asked for, as nats-server answers.
        "connections": [_conn_info(c, now_ns, q) for c in page] if server_id else None,
    }


def _conn_info(c: ConnSnap, now_ns: int, q: ConnzQuery) -> Body:
    info: Body = {
        "cid": c.cid,
        "kind": "Client",
        "type": "nats",
        "ip": c.ip,
        "port": c.port,
        "start": rfc3339(c.start_ns),
        "last_activity": None,  # not tracked (see module docstring)
        "uptime": go_uptime((now_ns - c.start_ns) / NS),
        "idle": None,
        "pending_bytes": c.pending,
        "in_msgs": c.in_msgs,
        "out_msgs": c.out_msgs,
        "in_bytes": c.in_bytes,
        "out_bytes": c.out_bytes,
        "subscriptions": c.num_subs,
    }
    for key in ("name", "lang", "version"):
        value = getattr(c, key)
        if value:
            info[key] = value
    if q.auth:
        # nats-server names the global account nowhere; it would show a token
        # here, leafgate does not (c.user is "" for token logins).
        if c.user:
            info["authorized_user"] = c.user
        if c.account != GLOBAL_ACCOUNT:
            info["account"] = c.account
    if c.subs and q.detail:
        info["subscriptions_list_detail"] = [_sub_detail(s) for s in c.subs]
    elif c.subs and q.subs:
        info["subscriptions_list"] = [s.subject for s in c.subs]
    return info


def _sub_detail(s: SubSnap, account: str | None = None) -> Body:
    out: Body = {"account": account} if account else {}
    out["subject"] = s.subject
    if s.queue:
        out["qgroup"] = s.queue
    out["sid"] = s.sid
    out["msgs"] = s.msgs
    if s.max:
        out["max"] = s.max
    out["cid"] = s.cid
    return out


# ---- /subsz ---------------------------------------------------------------------


@dataclass(frozen=True)
class SublistSnap:
    count: int
    cache_size: int
    inserts: int
    removes: int
    matches: int
    cache_hits: int


@dataclass(frozen=True)
class SubszQuery:
    subs: bool = False
    offset: int = 0
    limit: int = DEFAULT_LIST_SIZE
    test: str = ""
    acc: str = ""

    @classmethod
    def parse(cls, params: Params) -> SubszQuery:
        subs = parse_bool(params, "subs")
        offset, limit = _list_window(params)
        test = params.get("test", "")
        if test and not is_valid_publish_subject(test.encode()):
            raise QueryError(f"invalid test subject, must be valid publish subject: {test}")
        return cls(subs, offset, limit, test, params.get("acc", ""))


def subsz(
    server_id: str, now_ns: int, stats: SublistSnap, subs: Sequence[SubSnap], q: SubszQuery
) -> Body:
    """v2.14's shape (server_id, now, total, offset, limit always present).

    ``max_fanout``/``avg_fanout`` are 0: the sublist does not report the
    fan-out of its cached results.
    """
    hit_rate = stats.cache_hits / stats.matches if stats.matches else 0.0
    body: Body = {
        "server_id": server_id,
        "now": rfc3339(now_ns),
        "num_subscriptions": stats.count,
        "num_cache": stats.cache_size,
        "num_inserts": stats.inserts,
        "num_removes": stats.removes,
        "num_matches": stats.matches,
        "cache_hit_rate": hit_rate,
        "max_fanout": 0,
        "avg_fanout": 0.0,
        "total": 0,
        "offset": q.offset,
        "limit": q.limit,
    }
    if q.subs:
        chosen = [s for s in subs if not q.test or _sub_matches(s, q.test)]
        body["total"] = len(chosen)
        page = chosen[q.offset : q.offset + q.limit]
        if page:
            body["subscriptions_list"] = [_sub_detail(s, s.account) for s in page]
    return body


def _sub_matches(sub: SubSnap, subject: str) -> bool:
    return matches(sub.subject.encode(), subject.encode())


# ---- /accountz ------------------------------------------------------------------


@dataclass(frozen=True)
class AccountSnap:
    name: str
    clients: int
    leafs: int
    stats: SublistSnap
    exports: tuple[ExportConfig, ...] = ()
    imports: tuple[ImportConfig, ...] = ()
    issuer: str = ""  # operator mode: who signed the account JWT, and its name
    name_tag: str = ""


def accountz(
    server_id: str,
    now_ns: int,
    start_ns: int,
    acc: str,
    accounts: Sequence[AccountSnap],
    system_account: str | None,
) -> Body:
    """nats-server's /accountz: the names of the accounts, or ``?acc=NAME``'s detail.
    leafgate has no system account of its own (``system_account`` only when one is
    configured), so its accounts lack the system imports nats-server lists."""
    body: Body = {"server_id": server_id, "now": rfc3339(now_ns)}
    if system_account:
        body["system_account"] = system_account
    if not acc:
        body["accounts"] = [a.name for a in accounts]
        return body
    account = next((a for a in accounts if a.name == acc), None)
    if account is None:
        raise QueryError(f"Account {acc} does not exist")
    detail: Body = {
        "account_name": account.name,
        "update_time": rfc3339(start_ns),
        "expired": False,
        "complete": True,
        "jetstream_enabled": False,
        "leafnode_connections": account.leafs,
        "client_connections": account.clients,
        "subscriptions": account.stats.count,
    }
    if account.exports:
        # Services first, then streams, as nats-server lists them.
        ordered = sorted(account.exports, key=lambda e: e.kind != "service")
        detail["exports"] = [_export(e) for e in ordered]
    if account.imports:
        detail["imports"] = [_import(i) for i in account.imports]
    if account.issuer:
        detail["issuer_key"] = account.issuer
        detail["name_tag"] = account.name_tag
    detail["sublist_stats"] = _sublist_stats(account.stats)
    body["account_detail"] = detail
    return body


def _export(export: ExportConfig) -> Body:
    out: Body = {"subject": export.subject.decode(), "type": export.kind}
    if export.kind == "service":
        out["response_type"] = export.response_type.capitalize()
    if export.accounts is not None:
        out["approved_accounts"] = list(export.accounts)
    if export.token_required:
        out["token_req"] = True
    return out


def _import(imp: ImportConfig) -> Body:
    """As nats-server shows them: a stream by the exporter's subject and its
    ``local_subject``; a service by the importer's subject and its ``to``."""
    local = (imp.to or imp.subject).decode()
    out: Body
    if imp.kind == "stream":
        out = {"subject": imp.subject.decode(), "account": imp.account, "local_subject": local}
    else:
        out = {"subject": local, "account": imp.account, "to": imp.subject.decode()}
    out.update(type=imp.kind, invalid=False, share=False, tracking=False)
    return out


def _sublist_stats(stats: SublistSnap) -> Body:
    return {
        "num_subscriptions": stats.count,
        "num_cache": stats.cache_size,
        "num_inserts": stats.inserts,
        "num_removes": stats.removes,
        "num_matches": stats.matches,
        "cache_hit_rate": stats.cache_hits / stats.matches if stats.matches else 0.0,
        "max_fanout": 0,
        "avg_fanout": 0.0,
    }
