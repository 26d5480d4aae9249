"""HTTP monitoring: the JSON builders on their own, then a real leafgate process
(``-m 0``) with real nats-py clients, then a real hub with a store and a cut link.

Field names are checked against nats-server's captured samples
(shared/spec/transcripts/monitoring/): every top-level key leafgate emits in
/varz and /connz exists there, and the important ones nats-server has are
present. Every HTTP request is bounded by a timeout; so is every wait.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from edge import monitor_edge as me
from edge import monitor_json as mj
from edge.config import ServerConfig
from edge.server import open_server
from edge.service_json import SUBSCRIPTIONS
from store.stats import GroupStats
from tests.aio import connect, run, settle
from tests.harness import (
    RawClient,
    ServerProcess,
    is_nats_server_command,
    leafgate_command,
    start_leafgate,
)
from tests.hubs import ThreadedProxy
from tests.marks import leafgate_only
from tests.storehelp import (
    publish_many,
    start_js_hub,
    store_toml,
    stored_rows,
)

HTTP_TIMEOUT = 5.0
SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "transcripts" / "monitoring"
CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"name":"raw","lang":"raw"}\r\n'

# nats-server /varz keys leafgate does not emit, and why.
VARZ_NOT_EMITTED = {
    "gomaxprocs": "Go runtime setting",
    "git_commit": "Go build metadata",
    "config_digest": "no digest of the configuration is kept",
    "feature_flags": "nats-server feature flags",
    "tls_timeout": "no TLS for clients",
    "system_account": "no system account",
    "slow_consumer_stats": "2.14 per-kind breakdown; slow_consumers is there",
    "stale_connection_stats": "2.14 per-kind breakdown; stale_connections is there",
    "stalled_clients": "stalls are counted per server, not per client",
}
CONN_NOT_EMITTED = {"rtt": "client round-trip times are not measured"}


# ---- helpers ------------------------------------------------------------------------


def monitor_url(server: ServerProcess) -> str:
    """The monitoring URL from the server's ports file (``"monitoring": [url]``)."""
    for path in server.ports_dir.glob(f"*_{server.pid}.ports"):
        return str(json.loads(path.read_text())["monitoring"][0])
    raise AssertionError(f"no ports file for {server!r}")


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> dict[str, Any]:
    status, headers, body = fetch(url)
    assert status == 200, (url, status, body)
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def wait_json(
    url: str, cond: Callable[[dict[str, Any]], bool], timeout: float = 20.0, what: str = ""
) -> dict[str, Any]:
    """Poll ``url`` (bounded) until ``cond`` holds for its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        data = get_json(url)
        if cond(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or url}: {data}")
        time.sleep(0.1)


def spec_keys(name: str) -> set[str]:
    """Top-level keys of one sample, over both captured versions."""
    keys: set[str] = set()
    for version in ("2910", "214"):
        keys |= set(json.loads((SPEC / version / name).read_text()))
    return keys


def spec_conn_keys() -> set[str]:
    keys: set[str] = set()
    for version in ("2910", "214"):
        sample = json.loads((SPEC / version / "hub_connz_subs-1.json").read_text())
        for conn in sample["connections"]:
            if conn["kind"] == "Client":
                keys |= set(conn)
    return keys


# The process tests check leafgate's own answers (-m 0, /storez ...).


def check_varz_keys(varz: dict[str, Any]) -> None:
    nats = spec_keys("hub_varz.json") | spec_keys("leaf_varz.json")
    assert set(varz) <= nats, f"not in nats-server's /varz: {set(varz) - nats}"
    missing = nats - set(varz) - set(VARZ_NOT_EMITTED)
    assert not missing, f"nats-server /varz keys missing: {missing}"


def check_connz_keys(connz: dict[str, Any]) -> None:
    nats = spec_keys("hub_connz_subs-1.json")
    assert set(connz) == nats, set(connz) ^ nats
    conn_keys = spec_conn_keys()
    for conn in connz["connections"]:
        assert set(conn) <= conn_keys, f"not in nats-server's connz: {set(conn) - conn_keys}"
        missing = conn_keys - set(conn) - set(CONN_NOT_EMITTED)
        assert not missing, f"nats-server connz keys missing: {missing}"


# ---- the pure builders ----------------------------------------------------------------


def _varz_snap(**kw: Any) -> mj.VarzSnap:
    base: dict[str, Any] = dict(
        server_id="NID",
        server_name="edge",
        version="2.10.0",
        go="leafgate",
        host="127.0.0.1",
        port=4222,
        auth_required=False,
        max_connections=65536,
        max_subscriptions=0,
        ping_interval=120.0,
        ping_max=2,
        http_host="127.0.0.1",
        http_port=8222,
        auth_timeout=2.0,
        max_control_line=4096,
        max_payload=1048576,
        max_pending=67108864,
        write_deadline=10.0,
        start_ns=1_000 * mj.NS,
        now_ns=1_065 * mj.NS + 5,
        mem=1,
        cores=2,
        cpu=0.5,
        connections=1,
        total_connections=2,
        leafnodes=1,
        in_msgs=3,
        out_msgs=4,
        in_bytes=5,
        out_bytes=6,
        slow_consumers=0,
        stale_connections=0,
        subscriptions=7,
        http_req_stats=(("/varz", 1),),
        remotes=(mj.RemoteSnap(("hub:7422",), deny_exports=("secret.>",)),),
    )
    base.update(kw)
    return mj.VarzSnap(**base)


def _conn(cid: int, **kw: Any) -> mj.ConnSnap:
    base: dict[str, Any] = dict(
        cid=cid,
        ip="127.0.0.1",
        port=5000 + cid,
        start_ns=cid * mj.NS,
        pending=0,
        in_msgs=0,
        out_msgs=0,
        in_bytes=0,
        out_bytes=0,
        num_subs=0,
        name=f"c{cid}",
        lang="python3",
        version="2.16.0",
    )
    base.update(kw)
    return mj.ConnSnap(**base)


def test_formats() -> None:
    assert mj.go_uptime(0) == "0s"
    assert mj.go_uptime(65.9) == "1m5s"
    assert mj.go_uptime(3600 * 2 + 3) == "2h0m3s"
    assert mj.go_uptime(86400 + 61) == "1d0h1m1s"
    assert mj.go_uptime(366 * 86400) == "1y1d0h0m0s"
    assert mj.rfc3339(1_700_000_000 * mj.NS) == "2023-11-14T22:13:20Z"
    assert mj.rfc3339(1_700_000_000 * mj.NS + 443_913_760) == "2023-11-14T22:13:20.44391376Z"
    # Go's encoder escapes <, > and & (a subject "foo.>" reads as "foo.\u003e").
    assert mj.encode({"s": "a.>", "t": "µs"}) == b'{\n  "s": "a.\\u003e",\n  "t": "\xc2\xb5s"\n}'
    assert mj.encode({"status": "ok"}, pretty=False) == b'{"status":"ok"}'


def test_varz_fields() -> None:
    body = mj.varz(_varz_snap())
    assert body["ping_interval"] == 120_000_000_000
    assert body["write_deadline"] == 10_000_000_000
    assert body["uptime"] == "1m5s"
    assert body["start"] == body["config_load_time"]
    assert body["leaf"] == {
        "remotes": [
            {"local_account": "$G", "urls": ["hub:7422"], "deny": {"exports": ["secret.>"]}}
        ]
    }
    assert body["routes"] == body["remotes"] == 0
    assert "auth_required" not in body and "max_subscriptions" not in body
    assert mj.varz(_varz_snap(remotes=()))["leaf"] == {}
    assert mj.varz(_varz_snap(auth_required=True, max_subscriptions=9))["max_subscriptions"] == 9


def test_field_names_match_nats_server_samples() -> None:
    check_varz_keys(mj.varz(_varz_snap()))
    subs = (mj.SubSnap("a.b", None, "1", 0, 0, 6),)
    query = mj.ConnzQuery.parse({"subs": "1"})
    check_connz_keys(mj.connz("NID", 10 * mj.NS, 1, [_conn(6, num_subs=1, subs=subs)], query))
    # Same shapes as the samples for the smaller endpoints (leafgate extras excepted).
    accounts = [mj.AccountSnap("$G", 1, 0, mj.SublistSnap(0, 0, 0, 0, 0, 0))]
    assert set(mj.accountz("NID", 0, 0, "", accounts, None)) <= spec_keys("hub_accountz.json")
    assert set(mj.subsz("NID", 0, mj.SublistSnap(0, 0, 0, 0, 0, 0), [], mj.SubszQuery())) == (
        spec_keys("hub_subsz.json")
    )
    link = _link(up=True)
    leafz = me.leafz("NID", 0, [link], subs=False)
    assert set(leafz) - {"leafgate_links"} == spec_keys("leaf_leafz.json")
    sample = json.loads((SPEC / "214" / "leaf_leafz.json").read_text())["leafs"][0]
    assert set(leafz["leafs"][0]) <= set(sample)
    assert set(sample) - set(leafz["leafs"][0]) == {"id", "rtt", "compression"}


def test_connz_sorting_and_paging() -> None:
    conns = [
        _conn(1, num_subs=1, in_msgs=9, out_bytes=1),
        _conn(2, num_subs=5, out_msgs=3, pending=10),
        _conn(3, num_subs=3, in_bytes=7, out_msgs=8),
        _conn(4, num_subs=5),
        _conn(5),
    ]

    def order(**params: str) -> list[int]:
        _total, page = mj.page_conns(conns, mj.ConnzQuery.parse(params))
        return [c.cid for c in page]

    assert order() == [1, 2, 3, 4, 5]
    assert order(sort="subs") == [2, 4, 3, 1, 5]  # descending, ties by cid
    assert order(sort="msgs_from") == [1, 2, 3, 4, 5]
    assert order(sort="msgs_to")[:2] == [3, 2]
    assert order(sort="bytes_from")[0] == 3
    assert order(sort="bytes_to")[0] == 1
    assert order(sort="pending")[0] == 2
    assert order(sort="uptime") == [5, 4, 3, 2, 1]  # the youngest first
    assert order(sort="start") == [1, 2, 3, 4, 5]
    assert order(offset="1", limit="2") == [2, 3]
    assert order(offset="9") == []
    assert order(offset="-3", limit="0") == [1, 2, 3, 4, 5]  # nats-server's defaults
    assert order(cid="4") == [4]
    assert order(cid="99") == []
    q = mj.ConnzQuery.parse({"offset": "1", "limit": "2"})
    total, page = mj.page_conns(conns, q)
    body = mj.connz("NID", 10 * mj.NS, total, page, q)
    assert (body["num_connections"], body["total"], body["offset"], body["limit"]) == (2, 5, 1, 2)
    assert body["connections"][0]["uptime"] == "8s"
    assert body["connections"][0]["last_activity"] is None


def test_connz_query_errors_use_nats_server_texts() -> None:
    def error(**params: str) -> str:
        with pytest.raises(mj.QueryError) as info:
            mj.ConnzQuery.parse(params)
        return str(info.value)

    assert error(sort="bogus") == "invalid sorting option: bogus"
    assert error(sort="stop") == "sort by stop only valid on closed connections"
    assert error(sort="reason") == "sort by reason only valid on closed connections"
    assert "not supported" in error(sort="idle")
    assert "not supported" in error(sort="rtt")
    assert error(limit="x") == (
        "Error decoding int for 'limit': strconv.Atoi: parsing \"x\": invalid syntax"
    )
    assert error(cid="-1").startswith("Error decoding uint64 for 'cid'")
    assert error(subs="maybe").startswith("Error decoding boolean for 'subs'")
    assert error(state="weird") == "Error decoding state for weird"
    assert "no list of closed connections" in error(state="closed")
    assert mj.ConnzQuery.parse({"subs": "detail"}).detail
    assert mj.ConnzQuery.parse({"state": "OPEN", "auth": "true"}).sort == "cid"


def test_subscription_lists() -> None:
    subs = (
        mj.SubSnap("a.b", None, "1", 2, 0, 6),
        mj.SubSnap("q.*", "workers", "2", 0, 10, 6),
    )
    conn = _conn(6, num_subs=2, subs=subs)
    plain = mj.connz("N", 0, 1, [conn], mj.ConnzQuery.parse({"subs": "1"}))["connections"][0]
    assert plain["subscriptions_list"] == ["a.b", "q.*"]
    detail = mj.connz("N", 0, 1, [conn], mj.ConnzQuery.parse({"subs": "detail"}))
    assert detail["connections"][0]["subscriptions_list_detail"] == [
        {"subject": "a.b", "sid": "1", "msgs": 2, "cid": 6},
        {"subject": "q.*", "qgroup": "workers", "sid": "2", "msgs": 0, "max": 10, "cid": 6},
    ]
    stats = mj.SublistSnap(2, 1, 3, 1, 4, 1)
    body = mj.subsz("N", 0, stats, subs, mj.SubszQuery.parse({"subs": "1", "test": "q.x"}))
    assert body["total"] == 1 and body["cache_hit_rate"] == 0.25
    assert body["subscriptions_list"][0]["account"] == "$G"
    assert body["subscriptions_list"][0]["subject"] == "q.*"
    assert "subscriptions_list" not in mj.subsz("N", 0, stats, subs, mj.SubszQuery())
    with pytest.raises(mj.QueryError, match=r"must be valid publish subject: q\.\*"):
        mj.SubszQuery.parse({"test": "q.*"})


def _link(**kw: Any) -> me.LinkSnap:
    base: dict[str, Any] = dict(
        index=0,
        up=False,
        since_ns=0,
        url="nats-leaf://127.0.0.1:7422",
        hub_name="hub",
        hub_account="TELEMETRY",
        connects=1,
        reconnects=0,
        last_error="connection refused",
        dropped=0,
        in_msgs=1,
        out_msgs=2,
        hub_interest=3,
    )
    base.update(kw)
    return me.LinkSnap(**base)


def test_leafz_and_healthz_rules() -> None:
    up, down = _link(up=True, last_error=None), _link(index=1)
    body = me.leafz("N", 0, [up, down], subs=False)
    assert body["leafnodes"] == 1 and len(body["leafs"]) == 1
    assert body["leafs"][0]["port"] == 7422 and body["leafs"][0]["is_spoke"] is True
    assert [link["up"] for link in body["leafgate_links"]] == [True, False]

    def health(ready: bool, **kw: Any) -> tuple[int, dict[str, Any]]:
        base: dict[str, Any] = dict(lame_duck=False, store_error=None, links=(up, down))
        base.update(kw)
        return me.healthz(me.HealthSnap(**base), ready)

    link_down = "leafnode uplink 1 down: nats-leaf://127.0.0.1:7422 (connection refused)"
    # Live with a link down: healthy, and the body says what is degraded.
    assert health(False) == (200, {"status": "ok", "degraded": [link_down]})
    status, answer = health(True)
    assert status == 503 and answer["status"] == "unavailable"
    assert answer["error"] == link_down and "degraded" not in answer
    assert health(True, links=(up,)) == (200, {"status": "ok"})
    low = health(True, links=(up,), store_low_disk=True)
    assert low == (
        200,
        {"status": "ok", "degraded": ["store-and-forward store is low on disk space"]},
    )
    failing = health(False, links=(up,), store_error="disk I/O error", store_low_disk=True)
    assert failing[0] == 503 and failing[1]["degraded"] == [
        "store-and-forward store is low on disk space"
    ]
    assert health(False, store_error="disk I/O error")[0] == 503
    assert health(False, lame_duck=True)[1]["error"] == "server is in lame duck mode"


def test_storez_body() -> None:
    group = GroupStats(
        name="default",
        subjects=("telemetry.>",),
        durability="fsync",
        policy="drop_oldest",
        messages=2,
        bytes=40,
        oldest_ts=9_000,
        accepted=5,
        confirmed=3,
        rejected=0,
        duplicates=4,
        dropped=(("max_msgs", 1),),
    )
    snap = me.StoreSnap(
        gateway_id="gw",
        path="/x/leafgate.db",
        db_bytes=4096,
        wal_bytes=0,
        next_seq=6,
        groups=(group,),
        commits=2,
        commit_seconds=0.0123456789,
        bytes_committed=100,
        behind=True,
        low_disk=False,
        last_error=None,
        forwarder=me.ForwarderSnap(3, 0, 3, 0, 0, 0),
        link=_link(),
    )
    body = me.storez("N", 10 * mj.NS, snap)
    assert body["enabled"] and body["messages"] == 2 and body["bytes"] == 40
    assert body["groups"][0]["oldest_age_seconds"] == 1.0
    assert body["groups"][0]["dropped"] == {"max_msgs": 1}
    assert body["groups"][0]["dropped_total"] == 1
    assert body["groups"][0]["duplicates"] == 4
    assert body["forwarder"]["acked"] == 3 and body["link"]["up"] is False
    empty = me.storez("N", 10 * mj.NS, replace(snap, groups=(replace(group, oldest_ts=None),)))
    assert empty["groups"][0]["oldest_age_seconds"] is None
    assert me.storez("N", 0, None) == {"server_id": "N", "now": mj.rfc3339(0), "enabled": False}


def test_json_builders_are_pure() -> None:
    code = (
        "import sys, edge.monitor_json, edge.monitor_edge; "
        "print(sorted({'trio', 'socket', 'structlog'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=30
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---- a leafgate process with nats-py clients -------------------------------------------


@leafgate_only
def test_endpoints_with_clients(tmp_path: Path) -> None:
    server = start_leafgate("-m", "0", tmp_path=tmp_path)
    try:
        run(_clients_scenario(server, monitor_url(server)))
    finally:
        server.stop()


async def _clients_scenario(server: ServerProcess, url: str) -> None:
    clients = [await connect(server.url, name=f"c{i}") for i in range(5)]
    try:
        for i, nc in enumerate(clients):
            for k in range(i + 1):
                await nc.subscribe(f"s.{i}.{k}")
        await clients[0].subscribe("foo.*", queue="workers")
        for nc in clients:
            await settle(nc)  # every SUB is in place before the first PUB
        for _ in range(3):
            await clients[1].publish("s.0.0", b"hello")
        for nc in clients:
            await settle(nc)
        await asyncio.to_thread(_check_varz, server, url)
        await asyncio.to_thread(_check_connz, url)
        await asyncio.to_thread(_check_subsz, url)
        for probe in ("/healthz", "/healthz?js-enabled-only=true", "/healthz?ready=1"):
            status, _headers, body = await asyncio.to_thread(fetch, url + probe)
            assert (status, body) == (200, b'{"status":"ok"}'), probe
    finally:
        for nc in clients:
            await nc.close()


# leafgate's own admin service subscribes too (edge.service).
SERVICE_SUBS = 0 if is_nats_server_command(leafgate_command()) else SUBSCRIPTIONS


def _check_varz(server: ServerProcess, url: str) -> None:
    varz = get_json(url + "/varz")
    assert varz["port"] == server.port
    assert varz["http_port"] == int(url.rpartition(":")[2])
    assert varz["connections"] == 5 and varz["total_connections"] >= 5
    # The clients' subscriptions and those of leafgate's own admin service.
    assert varz["subscriptions"] == 1 + 2 + 3 + 4 + 5 + 1 + SERVICE_SUBS
    assert varz["in_msgs"] == 3 and varz["out_msgs"] == 3
    assert varz["in_bytes"] > 0 and varz["out_bytes"] > 0
    assert varz["mem"] > 0 and varz["cores"] >= 1
    assert varz["http_req_stats"]["/varz"] == 1
    if SPEC.is_dir():
        check_varz_keys(varz)


def _check_connz(url: str) -> None:
    connz = get_json(url + "/connz")
    assert connz["num_connections"] == connz["total"] == 5 and connz["limit"] == 1024
    conns = connz["connections"]
    cids = [c["cid"] for c in conns]
    assert cids == sorted(cids)
    assert [c["name"] for c in conns] == [f"c{i}" for i in range(5)]
    assert all(c["lang"] == "python3" and c["kind"] == "Client" for c in conns)
    assert [c["subscriptions"] for c in conns] == [2, 2, 3, 4, 5]
    assert conns[0]["out_msgs"] == 3 and conns[1]["in_msgs"] == 3
    if SPEC.is_dir():
        check_connz_keys(get_json(url + "/connz?subs=1"))
    by_subs = get_json(url + "/connz?sort=subs")["connections"]
    assert [c["subscriptions"] for c in by_subs] == [5, 4, 3, 2, 2]
    assert get_json(url + "/connz?sort=msgs_from")["connections"][0]["name"] == "c1"
    assert get_json(url + "/connz?sort=msgs_to")["connections"][0]["name"] == "c0"
    page = get_json(url + "/connz?offset=1&limit=2")
    assert [c["cid"] for c in page["connections"]] == cids[1:3]
    assert (page["num_connections"], page["total"], page["offset"]) == (2, 5, 1)
    one = get_json(f"{url}/connz?cid={cids[3]}&subs=1")["connections"]
    assert len(one) == 1 and sorted(one[0]["subscriptions_list"]) == [
        "s.3.0",
        "s.3.1",
        "s.3.2",
        "s.3.3",
    ]
    detail = get_json(f"{url}/connz?cid={cids[0]}&subs=detail")["connections"][0]
    queue = [d for d in detail["subscriptions_list_detail"] if d["subject"] == "foo.*"]
    assert queue[0]["qgroup"] == "workers" and queue[0]["cid"] == cids[0]
    status, headers, body = fetch(url + "/connz?sort=bogus")
    assert (status, body) == (400, b"invalid sorting option: bogus")
    assert headers["Content-Type"].startswith("text/plain")
    assert fetch(url + "/connz?state=closed")[0] == 400


def _check_subsz(url: str) -> None:
    stats = get_json(url + "/subsz")
    assert stats["num_subscriptions"] == 16 + SERVICE_SUBS and "subscriptions_list" not in stats
    found = get_json(url + "/subsz?subs=1&test=s.0.0")
    assert found["total"] == 1
    assert [(s["subject"], s["msgs"]) for s in found["subscriptions_list"]] == [("s.0.0", 3)]
    wild = get_json(url + "/subsz?subs=1&test=foo.bar")["subscriptions_list"]
    assert [(s["subject"], s["qgroup"]) for s in wild] == [("foo.*", "workers")]
    paged = get_json(url + "/subscriptionsz?subs=1&offset=14&limit=5")
    assert paged["total"] == 16 and len(paged["subscriptions_list"]) == 2
    assert fetch(url + "/subsz?test=foo.*")[0] == 400
    accountz = get_json(url + "/accountz")
    assert accountz["accounts"] == ["$G"]
    detail = get_json(url + "/accountz?acc=$G")["account_detail"]
    assert detail["client_connections"] == 5 and detail["subscriptions"] == 16 + SERVICE_SUBS
    status, _headers, body = fetch(url + "/accountz?acc=NOPE")
    assert (status, body) == (400, b"Account NOPE does not exist")


@leafgate_only
def test_http_keep_alive_head_404_405(tmp_path: Path) -> None:
    server = start_leafgate("-m", "0", tmp_path=tmp_path)
    try:
        host_port = monitor_url(server).partition("://")[2]
        conn = http.client.HTTPConnection(host_port, timeout=HTTP_TIMEOUT)
        try:
            conn.request("GET", "/varz")
            first = conn.getresponse()
            assert first.status == 200 and json.loads(first.read())["server_id"]
            sock = conn.sock
            conn.request("GET", "/healthz")
            second = conn.getresponse()
            assert (second.status, second.read()) == (200, b'{"status":"ok"}')
            assert conn.sock is sock, "the second request did not reuse the connection"
            conn.request("HEAD", "/connz")
            head = conn.getresponse()
            assert head.status == 200 and int(head.headers["Content-Length"]) > 0
            assert head.read() == b""
            conn.request("GET", "/nope")
            missing = conn.getresponse()
            assert (missing.status, missing.read()) == (404, b"404 page not found\n")
            assert conn.sock is sock
            conn.request("POST", "/varz", body=b"{}")
            refused = conn.getresponse()
            assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD"
            refused.read()
        finally:
            conn.close()
    finally:
        server.stop()


# ---- the HTTP shell in-process: timeouts and bounds --------------------------------------


async def test_slow_and_oversized_requests_are_cut_off() -> None:
    async with open_server(ServerConfig(port=0, http_port=0)) as server:
        assert server.monitor is not None and server.http_port == server.monitor.port
        server.monitor.read_timeout = 0.3
        # A request that never completes is dropped after the read timeout.
        async with await RawClient.connect(server.http_port) as slow:
            await slow.send(b"GET /varz HTTP/1.1\r\nHost: x\r\n")
            started = trio.current_time()
            assert await slow.closed(timeout=3)
            assert trio.current_time() - started < 2
        # So is a keep-alive connection left idle after its response.
        async with await RawClient.connect(server.http_port) as idle:
            await idle.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await idle.read_until(b'{"status":"ok"}')
            assert await idle.closed(timeout=3)
        # A head over the bound gets 431 and the connection is closed.
        async with await RawClient.connect(server.http_port) as big:
            await big.send(b"GET /varz HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
            assert await big.closed(timeout=3)
            assert bytes(big.buf).startswith(b"HTTP/1.1 431 ")
        # Garbage gets 400.
        async with await RawClient.connect(server.http_port) as bad:
            await bad.send(b"NOT HTTP AT ALL\r\n\r\n")
            assert await bad.closed(timeout=3)
            assert bytes(bad.buf).startswith(b"HTTP/1.1 400 ")


async def test_connection_limit() -> None:
    async with open_server(ServerConfig(port=0, http_port=0)) as server:
        assert server.monitor is not None
        server.monitor.max_connections = 2
        held = [await RawClient.connect(server.http_port) for _ in range(2)]
        await trio.sleep(0.1)
        async with await RawClient.connect(server.http_port) as extra:
            assert await extra.closed(timeout=3)
        assert server.monitor.refused == 1
        for client in held:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await client.read_until(b'{"status":"ok"}')
            await client.aclose()


class _FakeBridge:
    """A bridge as the monitor sees one (the real MQTT and serial bridges are
    checked end to end in their own tests)."""

    def __init__(self, name: str, state: str) -> None:
        self.name, self.kind, self.state = name, "serial", state

    def status(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "state": self.state, "frames_in": 3}


async def test_bridgez_lists_every_bridge_with_its_state() -> None:
    async with open_server(ServerConfig(port=0, http_port=0)) as server:
        base = f"http://127.0.0.1:{server.http_port}"
        empty = await trio.to_thread.run_sync(get_json, base + "/bridgez")
        assert (empty["num_bridges"], empty["bridges"], empty["states"]) == (0, [], {})
        server.bridges = [_FakeBridge("gps", "open"), _FakeBridge("meter", "waiting")]
        body = await trio.to_thread.run_sync(get_json, base + "/bridgez")
        assert body["num_bridges"] == 2 and body["server_id"] == server.server_id
        assert body["states"] == {"open": 1, "waiting": 1}
        assert [b["name"] for b in body["bridges"]] == ["gps", "meter"]
        assert body["bridges"][0]["frames_in"] == 3


# ---- /connz on many clients ----------------------------------------------------------------


def _raise_fd_limit(wanted: int) -> None:
    """Raise the soft limit on open files to *wanted* (a hard limit below it
    fails the test: the machine cannot run it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, f"hard fd limit {hard}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.mark.slow
@leafgate_only
async def test_connz_with_1000_idle_clients(tmp_path: Path) -> None:
    """/connz with 1000 idle clients: every client listed, served in bounded time.
    Prints the median of five requests (the figure quoted in reviews)."""
    _raise_fd_limit(2500)  # this process holds the clients, leafgate inherits it
    server = await trio.to_thread.run_sync(lambda: start_leafgate("-m", "0", tmp_path=tmp_path))
    clients: list[RawClient] = []
    try:
        url = monitor_url(server)
        for _ in range(1000):
            client = await RawClient.connect(server.port)
            await client.read_info()
            await client.send(CONNECT)
            clients.append(client)
        await clients[-1].ping()
        times = []
        for _ in range(5):
            started = time.perf_counter()
            body = await trio.to_thread.run_sync(get_json, url + "/connz")
            times.append(time.perf_counter() - started)
            assert body["total"] == 1000 and body["num_connections"] == 1000
        median = statistics.median(times) * 1000
        print(f"/connz with 1000 idle clients: median {median:.1f} ms over 5")
        assert median < 2000
    finally:
        for client in clients:
            await client.aclose()
        await trio.to_thread.run_sync(server.stop)


# ---- a hub, a store and a cut link -----------------------------------------------------------


@pytest.mark.slow
@leafgate_only
def test_leafz_storez_and_readiness_with_a_cut_link(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store_dir = tmp_path / "store"
    try:
        with ThreadedProxy(hub.leaf_port) as proxy:
            # The link goes through the proxy only: the hub's advertised leafnode
            # URL would let the edge reconnect around a cut.
            toml = (
                "http_port = 0\n"
                "[[leafnodes.remotes]]\n"
                f'url = "nats-leaf://127.0.0.1:{proxy.port}"\n'
                "use_advertised_urls = false\n" + store_toml(store_dir)
            )
            edge = start_leafgate("-n", "edge1", config_text=toml, tmp_path=tmp_path)
            try:
                _link_scenario(edge, monitor_url(edge), proxy, store_dir, hub.server_name)
            finally:
                edge.stop()
    finally:
        hub.stop()


def _link_scenario(
    edge: ServerProcess, url: str, proxy: ThreadedProxy, store_dir: Path, hub_name: str
) -> None:
    leafz = wait_json(url + "/leafz", lambda d: d["leafnodes"] == 1, what="the link up")
    leaf = leafz["leafs"][0]
    assert (leaf["name"], leaf["is_spoke"], leaf["account"]) == (hub_name, True, "$G")
    assert (leaf["ip"], leaf["port"]) == ("127.0.0.1", proxy.port)
    assert leafz["leafgate_links"][0]["up"] is True
    assert fetch(url + "/healthz?ready=1")[0] == 200
    storez = wait_json(url + "/storez", lambda d: d["link"]["up"], what="storez link up")
    assert storez["groups"][0]["subjects"] == ["telemetry.>"] and storez["forwarder"] is not None

    proxy.cut()
    down = wait_json(url + "/leafz", lambda d: d["leafnodes"] == 0, what="the link down")
    assert down["leafs"] == [] and down["leafgate_links"][0]["up"] is False
    assert down["leafgate_links"][0]["last_error"]
    status, _headers, body = fetch(url + "/healthz?ready=1")
    answer = json.loads(body)
    assert status == 503 and answer["status"] == "unavailable"
    assert "uplink 0 down" in answer["error"]
    status, _headers, body = fetch(url + "/healthz")
    assert status == 200  # liveness does not depend on the hub, but it shows
    degraded = json.loads(body)["degraded"]
    assert len(degraded) == 1 and degraded[0].startswith("leafnode uplink 0 down")

    run(_publish(edge.url, 25))
    held = wait_json(url + "/storez", lambda d: d["messages"] == 25, what="25 messages held")
    group = held["groups"][0]
    assert (group["messages"], group["accepted"], group["confirmed"]) == (25, 25, 0)
    assert group["bytes"] > 0 and group["dropped"] == {}
    assert group["oldest_age_seconds"] is not None and 0 <= group["oldest_age_seconds"] < 60
    assert held["link"]["up"] is False and held["behind"] is True
    time.sleep(1.0)  # several reconnect attempts: the link stays down, the backlog stays
    again = get_json(url + "/storez")
    assert again["messages"] == 25 and again["link"]["connects"] == 1
    assert held["db_bytes"] > 0 and held["commits"] >= 1 and held["bytes_committed"] > 0
    assert len(stored_rows(store_dir)) == 25

    proxy.restore()
    done = wait_json(
        url + "/storez",
        lambda d: d["messages"] == 0 and d["groups"][0]["confirmed"] == 25,
        timeout=30,
        what="the backlog forwarded",
    )
    assert done["forwarder"]["acked"] >= 25 and done["link"]["up"] is True
    assert done["groups"][0]["oldest_age_seconds"] is None
    assert fetch(url + "/healthz?ready=1")[0] == 200


async def _publish(url: str, n: int) -> None:
    nc = await connect(url)
    try:
        await publish_many(nc, n)
    finally:
        await nc.close()
