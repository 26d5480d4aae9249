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
from tests.jwtgen import Operator
from tests.test_monitor import SERVICE_SUBS, fetch, get_json, monitor_url
from tests.test_security_clients import _operator_config, _write
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


def _operator_views(server: ServerProcess, op: Operator, files: dict[str, str]) -> dict[str, Any]:
    system = op.system.public_key

    async def go() -> dict[str, Any]:
        a = await connect(server.url, user_credentials=files["A"], name="ca")
        b = await connect(server.url, user_credentials=files["B"], name="cb")
        await a.subscribe("time")
        await settle(a)
        await settle(b)
        url = monitor_url(server)
        out: dict[str, Any] = {
            "accounts": set(get_json(url + "/accountz")["accounts"]) - {system},
            "system_account": get_json(url + "/accountz")["system_account"],
        }
        for name in ("A", "B"):
            key = op.accounts[name].public_key
            detail = get_json(f"{url}/accountz?acc={key}")["account_detail"]
            out[name] = {
                k: detail.get(k)
                for k in ("account_name", "client_connections", "issuer_key", "name_tag")
            }
            out[name]["exports"] = detail.get("exports")
            out[name]["imports"] = [i for i in detail.get("imports", []) if not _is_sys(i)]
            connz = get_json(f"{url}/connz?acc={key}&auth=1")["connections"]
            out[f"connz {name}"] = [(c["name"], c["account"], c["authorized_user"]) for c in connz]
        out["unloaded"] = fetch(f"{url}/accountz?acc={op.accounts['C'].public_key}")[::2]
        await a.close()
        await b.close()
        return out

    result: dict[str, Any] = run(go())
    return result


def test_operator_mode_accounts_as_nats_server(tmp_path: Path) -> None:
    """Account JWTs: /accountz names them by public key, with their JWT's exports
    and imports, issuer and name; an account no client used yet is not loaded."""
    op = Operator.create("A", "B", "C")
    a = op.accounts["A"].public_key
    op.set_claims("A", exports=[{"subject": "time", "type": "service"}])
    op.set_claims(
        "B",
        imports=[{"subject": "time", "account": a, "local_subject": "a.time", "type": "service"}],
    )
    config = _operator_config(op)
    files = {n: _write(tmp_path, f"{n}.creds", op.accounts[n].user_creds(n)) for n in "AB"}
    ref = start_nats_server("-m", "-1", config_text=config.nats, tmp_path=tmp_path / "n")
    try:
        want = _operator_views(ref, op, files)
    finally:
        ref.stop()
    lg = start_leafgate("-m", "0", config_text=config.toml, tmp_path=tmp_path / "l")
    try:
        got = _operator_views(lg, op, files)
    finally:
        lg.stop()
    assert want["B"]["imports"][0]["to"] == "time"  # the reference, as captured
    assert want["accounts"] == {"$G", a, op.accounts["B"].public_key}
    for key in want:
        assert got[key] == want[key], (key, want[key], got[key])
