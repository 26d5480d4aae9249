"""The uplink authenticates with a ``.creds`` file against a real nats-server hub in
operator (decentralized JWT) mode: the user JWT goes in CONNECT with ``sig``, the
hub's nonce signed by the user's seed.

The hub (nats-server 2.9.10, or NATS_SERVER_BIN) trusts a test operator and knows its
accounts through a memory resolver; every JWT is built by :mod:`tests.jwtgen`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from edge.nkeys import parse_creds
from tests.aio import connect, run, settle, wait_until
from tests.harness import ServerProcess, start_leafgate
from tests.hubs import HubProcess, start_hub
from tests.jwtgen import Operator, creds_file_text, decode_claims
from tests.test_uplink import _cpu_seconds, _edge_log_after, collect, link_ready

SUBJECT = "jwt.test"


@pytest.fixture
def operator() -> Operator:
    return Operator.create("EDGE")


@pytest.fixture
def hub(tmp_path: Path, operator: Operator) -> Iterator[HubProcess]:
    process = start_hub(tmp_path / "hub", jetstream=False, extra=operator.hub_config())
    yield process
    process.stop()


def write_creds(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def start_creds_edge(tmp_path: Path, hub: HubProcess, creds: Path) -> ServerProcess:
    toml = (
        "[[leafnodes.remotes]]\n"
        f'url = "nats-leaf://127.0.0.1:{hub.leaf_port}"\n'
        f'credentials = "{creds}"\n'
    )
    return start_leafgate("-n", "edge-jwt", config_text=toml, tmp_path=tmp_path / "edge")


async def connect_with_creds(url: str, creds: Path) -> Client:
    """nats-py with a .creds file, signing with edge.nkeys (nats-py's own
    ``user_credentials`` needs the ``nkeys`` package, which the project does not use)."""
    parsed = parse_creds(creds.read_text())

    def user_jwt() -> bytes:
        return parsed.jwt.encode()

    def signature(nonce: str) -> bytes:
        return base64.b64encode(parsed.keypair.sign(nonce.encode()))

    return await connect(url, user_jwt_cb=user_jwt, signature_cb=signature)


def test_operator_mode_hub_requires_credentials(hub: HubProcess, operator: Operator) -> None:
    """The hub really runs in operator mode: anonymous clients are refused, a user of
    a preloaded account is let in and bound to that account."""
    creds = write_creds(hub.workdir / "app.creds", operator.accounts["EDGE"].user_creds("app"))

    async def scenario() -> None:
        # nats-py reports the -ERR or, if the close wins the race, the closed socket.
        with pytest.raises(Exception):  # noqa: B017
            await connect(hub.url)
        await wait_until(
            lambda: re.search(r"cid:\d+ .*authentication error", hub.log_tail(100000)) is not None,
            what="the hub refusing the anonymous client",
        )
        nc = await connect_with_creds(hub.url, creds)
        await settle(nc)
        conns = hub.monitor("connz?auth=1")["connections"]
        assert [c.get("account") for c in conns] == [operator.accounts["EDGE"].public_key]
        await nc.close()

    run(scenario())
    assert "Trusted Operators" in hub.log_tail(100000)


def test_creds_file_links_edge_to_operator_mode_hub(
    tmp_path: Path, hub: HubProcess, operator: Operator
) -> None:
    account = operator.accounts["EDGE"]
    leaf_creds = write_creds(tmp_path / "creds" / "leaf.creds", account.user_creds("leaf"))
    app_creds = write_creds(tmp_path / "creds" / "app.creds", account.user_creds("app"))
    edge = start_creds_edge(tmp_path, hub, leaf_creds)
    try:

        async def scenario() -> None:
            e = await connect(edge.url)  # leafgate's own clients: no auth
            h = await connect_with_creds(hub.url, app_creds)
            await link_ready(e, h, timeout=15)
            # Edge -> hub, on the subject of interest.
            up = await collect(h, SUBJECT)
            await settle(h)
            deadline = time.monotonic() + 10
            while not up:
                assert time.monotonic() < deadline, "edge -> hub: nothing arrived"
                await e.publish(SUBJECT, b"from-edge")
                await settle(e)
                await asyncio.sleep(0.05)
            assert up[0].data == b"from-edge"
            # Hub -> edge.
            down = await collect(e, SUBJECT)
            await settle(e)
            deadline = time.monotonic() + 10
            while not down:
                assert time.monotonic() < deadline, "hub -> edge: nothing arrived"
                await h.publish(SUBJECT, b"from-hub")
                await settle(h)
                await asyncio.sleep(0.05)
            assert down[0].data == b"from-hub"
            await e.close()
            await h.close()

        run(scenario())
        # The hub bound the leafnode connection to the creds' account.
        leafz = hub.monitor("leafz")
        assert leafz["leafnodes"] == 1, leafz
        assert leafz["leafs"][0]["account"] == account.public_key, leafz
        assert edge.running
        assert "uplink_down" not in edge.log_tail(100000)
    finally:
        edge.stop()


def test_creds_of_unknown_account_are_refused_without_busy_loop(
    tmp_path: Path, hub: HubProcess, operator: Operator
) -> None:
    stranger = Operator.create("STRANGER").accounts["STRANGER"]  # never preloaded
    bad = write_creds(tmp_path / "creds" / "stranger.creds", stranger.user_creds("leaf"))
    assert decode_claims(parse_creds(bad.read_text()).jwt)["iss"] == stranger.public_key
    app_creds = write_creds(
        tmp_path / "creds" / "app.creds", operator.accounts["EDGE"].user_creds("app")
    )
    edge = start_creds_edge(tmp_path, hub, bad)
    try:
        log = _edge_log_after(edge, "uplink_down", timeout=15)
        downs = [json.loads(line) for line in log.splitlines() if '"uplink_down"' in line]
        assert downs, log
        assert "authorization" in downs[0]["error"].lower(), downs[0]
        assert downs[0]["was_up"] is False
        assert "uplink_up" not in log
        before = _cpu_seconds(edge.pid)
        time.sleep(3)
        assert edge.running, "leafgate exited on refused credentials"
        assert _cpu_seconds(edge.pid) - before < 0.3, "busy loop while the hub refuses"
        attempts = edge.log_tail(100000).count("Authorization Violation")
        assert 1 <= attempts <= 5, f"{attempts} refused attempts in ~4 s: no backoff"

        # No link: the hub has no leafnode, and nothing crosses.
        assert hub.monitor("leafz")["leafnodes"] == 0

        async def scenario() -> list[Any]:
            e = await connect(edge.url)
            h = await connect_with_creds(hub.url, app_creds)
            got = await collect(h, SUBJECT)
            await settle(h)
            for _ in range(10):
                await e.publish(SUBJECT, b"must-not-arrive")
                await settle(e)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            await e.close()
            await h.close()
            return got

        assert run(scenario()) == []
        # The hub looked the JWT's issuer up and refused it: unknown account.
        hub_log = hub.log_tail(100000)
        assert "Account fetch failed: account missing" in hub_log, hub_log
        assert "authentication error" in hub_log, hub_log
    finally:
        edge.stop()


def test_creds_with_a_foreign_seed_are_refused(
    tmp_path: Path, hub: HubProcess, operator: Operator
) -> None:
    """A valid user JWT of a known account, but the nonce signed with another seed:
    the hub checks ``sig`` against the JWT's subject and refuses the link."""
    good = parse_creds(operator.accounts["EDGE"].user_creds("leaf"))
    other = parse_creds(operator.accounts["EDGE"].user_creds("other"))
    bad = write_creds(
        tmp_path / "creds" / "mixed.creds", creds_file_text(good.jwt, other.keypair.seed())
    )
    edge = start_creds_edge(tmp_path, hub, bad)
    try:
        log = _edge_log_after(edge, "uplink_down", timeout=15)
        downs = [json.loads(line) for line in log.splitlines() if '"uplink_down"' in line]
        assert "authorization" in downs[0]["error"].lower(), downs[0]
        assert "uplink_up" not in log
        assert edge.running
        assert hub.monitor("leafz")["leafnodes"] == 0
        hub_log = hub.log_tail(100000)
        assert "authentication error" in hub_log, hub_log
        assert "account missing" not in hub_log  # the account was found: the sig failed
    finally:
        edge.stop()
