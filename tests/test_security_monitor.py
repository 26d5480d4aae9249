"""Monitoring with accounts, leafgate next to nats-server 2.9.10 configured alike
(accounts A, B importing from A, C): /accountz's list and ``?acc=`` detail,
/connz's ``acc`` filter and ``auth`` fields, /subsz per account, /varz totals.

What cannot be equal, and is left out of the comparison: nats-server has a
system account (``$SYS``) whose three service imports every account lists and
counts as subscriptions; leafgate has none. Subscription counts are checked on
leafgate's own terms (clients' subscriptions plus its import subscriptions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge import monitor_json as mj
from edge.auth.settings import ExportConfig, ImportConfig
from tests.aio import connect, run, settle
from tests.harness import ServerProcess, start_leafgate, start_nats_server
from tests.test_monitor import SERVICE_SUBS, fetch, get_json, monitor_url
from tests.test_security_differential import ACCOUNTS


def _is_sys(entry: dict[str, Any]) -> bool:
    return str(entry.get("account")) == "$SYS" or str(entry.get("subject", "")).startswith("$SYS.")


def _views(server: ServerProcess) -> dict[str, Any]:
    url = monitor_url(server)
    out: dict[str, Any] = {"accounts": set(get_json(url + "/accountz")["accounts"]) - {"$SYS"}}
    for acc in ("A", "B", "C", "$G"):
        detail = get_json(f"{url}/accountz?acc={acc}")["account_detail"]
        out[f"detail {acc}"] = {
            "account_name": detail["account_name"],
            "client_connections": detail["client_connections"],
            "leafnode_connections": detail["leafnode_connections"],
            # nats-server lists them from maps: in no fixed order.
            "exports": sorted(json.dumps(e, sort_keys=True) for e in detail.get("exports", [])),
            "imports": sorted(
                json.dumps(i, sort_keys=True) for i in detail.get("imports", []) if not _is_sys(i)
            ),
            "stats_keys": sorted(detail["sublist_stats"]),
        }
    out["accountz unknown"] = fetch(url + "/accountz?acc=NOPE")[::2]
    for acc in ("A", "B", "C"):
        connz = get_json(f"{url}/connz?acc={acc}&auth=1&subs=1")
        out[f"connz {acc}"] = [
            (c["name"], c.get("authorized_user"), c.get("account"), sorted(c["subscriptions_list"]))
            for c in connz["connections"]
        ]
        subsz = get_json(f"{url}/subsz?acc={acc}&subs=1")
        out[f"subsz {acc}"] = sorted(
            (s["account"], s["subject"])
            for s in subsz.get("subscriptions_list", [])
            if not _is_sys(s)
        )
    plain = get_json(url + "/connz")
    out["connz"] = sorted((c["name"], "account" in c) for c in plain["connections"])
    unknown = get_json(url + "/connz?acc=NOPE")
    out["connz unknown"] = (unknown["server_id"], unknown["connections"], unknown["total"])
    nope = get_json(url + "/subsz?acc=NOPE")
    out["subsz unknown"] = (nope["num_subscriptions"], nope["num_inserts"])
    out["varz connections"] = get_json(url + "/varz")["connections"]
    return out


def _scenario(server: ServerProcess) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        a = await connect(f"nats://a:p@127.0.0.1:{server.port}", name="ca")
        b = await connect(f"nats://b:p@127.0.0.1:{server.port}", name="cb")
        await a.subscribe("time")
        await a.subscribe("x.y")
        await b.subscribe("foo")
        await settle(a)
        await settle(b)
        views = _views(server)
        await a.close()
        await b.close()
        return views

    result: dict[str, Any] = run(go())
    return result


def test_monitoring_covers_every_account(tmp_path: Path) -> None:
    ref = start_nats_server("-m", "-1", config_text=ACCOUNTS.nats, tmp_path=tmp_path / "n")
    try:
        want = _scenario(ref)
    finally:
        ref.stop()
    lg = start_leafgate("-m", "0", config_text=ACCOUNTS.toml, tmp_path=tmp_path / "l")
    try:
        got = _scenario(lg)
        url = monitor_url(lg)
        details = {
            acc: get_json(f"{url}/accountz?acc={acc}")["account_detail"]
            for acc in ("A", "B", "C", "$G")
        }
        varz = get_json(url + "/varz")
        subsz = get_json(url + "/subsz")
    finally:
        lg.stop()
    # What nats-server showed (sanity of the reference) ...
    assert want["accounts"] == {"A", "B", "C", "$G"}
    assert want["connz A"] == [("ca", "a", "A", ["time", "x.y"])]
    assert want["connz unknown"] == ("", None, 0)
    # ... and leafgate the same.
    for key in want:
        assert got[key] == want[key], (key, want[key], got[key])
    # Subscriptions on leafgate's terms, after both clients left: the imports' own
    # (A: the stream import's and the service responses'; B: the service import's),
    # and in $G leafgate's built-in services; /varz and /subsz sum every account.
    counts = [details[acc]["subscriptions"] for acc in ("A", "B", "C", "$G")]
    assert counts == [2, 1, 0, SERVICE_SUBS]
    assert varz["subscriptions"] == subsz["num_subscriptions"] == sum(counts)


def test_accountz_shapes_of_jwt_exports_and_imports() -> None:
    stats = mj.SublistSnap(1, 0, 1, 0, 0, 0)
    account = mj.AccountSnap(
        "AKEY",
        1,
        1,
        stats,
        (
            ExportConfig("stream", b"ev.>", None, "singleton", True),
            ExportConfig("service", b"many", ("B",), "stream"),
        ),
        (ImportConfig("service", "AOTHER", b"wc.*", b"x.$1"),),
    )
    detail = mj.accountz("N", 0, 0, "AKEY", [account], "ASYS")["account_detail"]
    assert detail["exports"] == [
        {
            "subject": "many",
            "type": "service",
            "response_type": "Stream",
            "approved_accounts": ["B"],
        },
        {"subject": "ev.>", "type": "stream", "token_req": True},
    ]
    assert detail["imports"] == [
        {
            "subject": "x.$1",
            "account": "AOTHER",
            "to": "wc.*",
            "type": "service",
            "invalid": False,
            "share": False,
            "tracking": False,
        }
    ]
    assert (detail["leafnode_connections"], detail["client_connections"]) == (1, 1)
    assert mj.accountz("N", 0, 0, "", [account], "ASYS")["system_account"] == "ASYS"
