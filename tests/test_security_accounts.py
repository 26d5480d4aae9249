"""Accounts with nats-py: request/reply through a service import (both servers), the
leafnode uplink bound to one local account, and the per-account and per-user limits
(leafgate's own keys)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
import pytest
import trio
from nats.aio.msg import Msg

from tests.aio import connect, run, settle
from tests.conftest import ServerFactory
from tests.harness import RawClient, ServerProcess, start_leafgate
from tests.hubs import start_hub
from tests.jwtgen import Operator
from tests.test_security_clients import _operator_config, _write
from tests.test_security_differential import ACCOUNTS
from tests.test_uplink import link_ready


def _url(server: ServerProcess, user: str) -> str:
    return f"nats://{user}:p@127.0.0.1:{server.port}"


def test_service_import_request_reply(both: ServerFactory) -> None:
    server = both(config=ACCOUNTS)

    async def scenario() -> None:
        a = await connect(_url(server, "a"))
        b = await connect(_url(server, "b"))
        c = await connect(_url(server, "c"))

        async def answer(msg: Msg) -> None:
            await msg.respond(b"12:00 for " + msg.data)

        await a.subscribe("time", cb=answer)
        await settle(a)
        reply = await b.request("a.time", b"b", timeout=5)
        assert reply.data == b"12:00 for b"
        # C imports nothing: the service does not exist there.
        with pytest.raises(nats.errors.NoRespondersError):
            await c.request("a.time", b"c", timeout=2)
        with pytest.raises(nats.errors.NoRespondersError):
            await c.request("time", b"c", timeout=2)
        for nc in (a, b, c):
            await nc.close()

    run(scenario())


LIMITS = """
[accounts.A]
users = [{ user = "a", password = "p", max_subscriptions = 2 }]
max_connections = 2
max_payload = 16
"""


async def test_account_and_user_limits(leafgate_factory: ServerFactory) -> None:
    server = leafgate_factory(config_text=LIMITS)
    login = b'CONNECT {"verbose":false,"user":"a","pass":"p"}\r\n'
    first = await RawClient.connect(server.port)
    await first.read_info()
    await first.send(login + b"SUB one 1\r\nSUB two 2\r\nSUB three 3\r\n")
    assert await first.read_line() == b"-ERR 'maximum subscriptions exceeded'"
    second = await RawClient.connect(server.port)
    await second.read_info()
    await second.send(login)
    assert await second.ping() == []
    third = await RawClient.connect(server.port)
    await third.read_info()
    await third.send(login)
    assert await third.read_line() == b"-ERR 'maximum account active connections exceeded'"
    assert await third.closed(timeout=2)
    await second.aclose()
    await trio.sleep(0.2)
    again = await RawClient.connect(server.port)  # the freed slot is usable again
    await again.read_info()
    await again.send(login + b"PUB x 17\r\n" + b"y" * 17 + b"\r\n")
    assert await again.read_line() == b"-ERR 'Maximum Payload Violation'"
    for client in (first, third, again):
        await client.aclose()


def _a_and_b_linked_as_b(leaf_port: int) -> str:
    """Accounts A and B (users a and b) and one hub link carrying B."""
    return (
        "[accounts.A]\n"
        'users = [{ user = "a", password = "p" }]\n'
        "[accounts.B]\n"
        'users = [{ user = "b", password = "p" }]\n'
        "[[leafnodes.remotes]]\n"
        f'url = "nats-leaf://127.0.0.1:{leaf_port}"\n'
        'local_account = "B"\n'
    )


def test_uplink_bound_to_local_account(tmp_path: Path) -> None:
    """Only account B's subjects go up the link; A's stay local."""
    hub = start_hub(tmp_path / "hub", jetstream=False)
    toml = _a_and_b_linked_as_b(hub.leaf_port)
    edge = start_leafgate(config_text=toml, tmp_path=tmp_path / "edge")
    try:

        async def scenario() -> None:
            a = await connect(_url(edge, "a"))
            b = await connect(_url(edge, "b"))
            h = await connect(f"nats://127.0.0.1:{hub.client_port}")
            await link_ready(b, h)
            got: list[bytes] = []

            async def on_msg(msg: Msg) -> None:
                got.append(msg.subject.encode() + b"=" + msg.data)

            await h.subscribe("up.>", cb=on_msg)
            await settle(h)
            await asyncio.sleep(0.3)  # the hub's interest reaches the edge
            await a.publish("up.a", b"1")
            await b.publish("up.b", b"2")
            await settle(a)
            await settle(b)
            deadline = asyncio.get_running_loop().time() + 5
            while not got and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert got == [b"up.b=2"]
            # And down: a hub message reaches B's subscribers only.
            sub_a = await a.subscribe("down")
            sub_b = await b.subscribe("down")
            await settle(a)
            await settle(b)
            await asyncio.sleep(0.3)
            await h.publish("down", b"3")
            msg = await sub_b.next_msg(timeout=5)
            assert msg.data == b"3"
            with pytest.raises(nats.errors.TimeoutError):
                await sub_a.next_msg(timeout=0.3)
            for nc in (a, b, h):
                await nc.close()

        run(scenario())
    finally:
        edge.stop()
        hub.stop()


def test_uplink_bound_to_jwt_account(tmp_path: Path) -> None:
    """Operator mode: a remote's local_account is an account public key; only that
    account's subjects go up, and its JWT imports serve requests from the hub
    (made when the link starts, before any of its clients came)."""
    op = Operator.create("A", "B")
    a_key, b_key = op.accounts["A"].public_key, op.accounts["B"].public_key
    op.set_claims("A", exports=[{"subject": "time", "type": "service"}])
    op.set_claims(
        "B",
        imports=[
            {"subject": "time", "account": a_key, "local_subject": "a.time", "type": "service"}
        ],
    )
    hub = start_hub(tmp_path / "hub", jetstream=False)
    toml = _operator_config(op).toml + (
        f'[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:{hub.leaf_port}"\n'
        f'local_account = "{b_key}"\n'
    )
    files = {n: _write(tmp_path, f"{n}.creds", op.accounts[n].user_creds(n)) for n in "AB"}
    edge = start_leafgate(config_text=toml, tmp_path=tmp_path / "edge")
    try:

        async def scenario() -> None:
            h = await connect(f"nats://127.0.0.1:{hub.client_port}")
            a = await connect(edge.url, user_credentials=files["A"])

            async def answer(msg: Msg) -> None:
                await msg.respond(b"12:00")

            await a.subscribe("time", cb=answer)
            await settle(a)
            # The hub reaches A's service through B's import (no B client yet).
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    reply = await h.request("a.time", b"", timeout=1)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert reply.data == b"12:00"
            b = await connect(edge.url, user_credentials=files["B"])
            sub = await h.subscribe("up.>")
            await settle(h)
            await asyncio.sleep(0.3)
            await a.publish("up.a", b"1")
            await b.publish("up.b", b"2")
            await settle(a)
            await settle(b)
            msg = await sub.next_msg(timeout=5)
            assert (msg.subject, msg.data) == ("up.b", b"2")
            with pytest.raises(nats.errors.TimeoutError):
                await sub.next_msg(timeout=0.5)
            for nc in (a, b, h):
                await nc.close()

        run(scenario())
    finally:
        edge.stop()
        hub.stop()


def test_the_store_takes_the_account_of_its_link(tmp_path: Path) -> None:
    """The first hub link carries account B (local_account): B's messages on a
    store-and-forward subject are stored, acknowledged in B and forwarded to the
    hub stream; A's on the same subject stay in A (nothing of A is stored)."""
    from tests.storehelp import read_stream, start_js_hub, store_toml, stored_rows

    hub = start_js_hub(tmp_path)
    store_dir = tmp_path / "store"
    toml = _a_and_b_linked_as_b(hub.leaf_port) + store_toml(store_dir)
    edge = start_leafgate(config_text=toml, tmp_path=tmp_path / "edge")
    try:

        async def scenario() -> None:
            a = await connect(_url(edge, "a"))
            b = await connect(_url(edge, "b"))
            local_a = await a.subscribe("telemetry.>")
            ack = await b.jetstream().publish("telemetry.b", b"from-b")
            assert (ack.stream, ack.seq) == ("default", 1)  # the store's PubAck (not the hub's)
            await a.publish("telemetry.a", b"from-a")
            await settle(a)
            assert (await local_a.next_msg(timeout=5)).data == b"from-a"
            msgs = await read_stream(hub, 1)
            assert [(m.subject, m.data) for m in msgs] == [("telemetry.b", b"from-b")]
            assert (msgs[0].msg_id or "").endswith(":1")  # forwarded by the store
            await asyncio.sleep(0.5)
            assert [r[1] for r in stored_rows(store_dir)] == []  # B's went, A's never came
            assert len(await read_stream(hub, 1)) == 1
            for nc in (a, b):
                await nc.close()

        run(scenario())
    finally:
        edge.stop()
        hub.stop()
