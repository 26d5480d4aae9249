"""Operator mode (JWTs) with nats-py, against leafgate and nats-server 2.9.10 alike
(``both``): the exports and imports of account JWTs, in both spellings 2.9.10
reads (``local_subject``, with ``$N`` references, and the older ``to``).

Captured from 2.9.10 (nats-server -DV, /tmp capture of this test's set-up): with
the exporter's JWT listing the export and the importer's JWT the import (the
exporter's public key as ``account``) both spellings route; an import the
exporter does not export, or that needs an activation token the import lacks,
is not made (requests get no responders).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg

from edge.nkeys import PREFIX_USER, KeyPair
from tests.aio import connect, run, settle
from tests.conftest import ServerFactory
from tests.harness import RawClient, ServerProcess, is_nats_server_command
from tests.jwtgen import UNLIMITED_USER, Account, Operator, decode_claims, encode_jwt
from tests.marks import leafgate_only
from tests.test_security_clients import _operator_config, _refused, _round_trip, _write


def _exporter_and_importers() -> Operator:
    op = Operator.create("A", "B", "OLD", "C")
    a = op.accounts["A"].public_key
    op.set_claims(
        "A",
        exports=[
            {"name": "t", "subject": "time", "type": "service"},
            {"name": "w", "subject": "wc.*.*", "type": "service"},
            {"name": "e", "subject": "events.>", "type": "stream"},
            {"name": "s", "subject": "secret", "type": "service", "token_req": True},
            {"name": "m", "subject": "many", "type": "service", "response_type": "Stream"},
        ],
    )
    op.set_claims(
        "B",
        imports=[
            {"subject": "time", "account": a, "local_subject": "a.time", "type": "service"},
            {"subject": "wc.*.*", "account": a, "local_subject": "x.$2.$1", "type": "service"},
            {"subject": "events.>", "account": a, "local_subject": "from_a.>", "type": "stream"},
            {"subject": "secret", "account": a, "type": "service"},
            {"subject": "private", "account": a, "type": "service"},
            {"subject": "many", "account": a, "type": "service"},
        ],
    )
    op.set_claims(
        "OLD",
        imports=[
            {"subject": "a.time", "account": a, "to": "time", "type": "service"},
            {"subject": "events.>", "account": a, "to": "from_a", "type": "stream"},
        ],
    )
    # C imports from B, which exports nothing.
    op.set_claims(
        "C",
        imports=[{"subject": "a.time", "account": op.accounts["B"].public_key, "type": "service"}],
    )
    return op


def _creds(op: Operator, tmp_path: Path, account: str) -> str:
    return _write(tmp_path, f"{account}.creds", op.accounts[account].user_creds(account.lower()))


async def _answer(msg: Msg) -> None:
    await msg.respond(msg.subject.encode() + b" <- " + msg.data)


async def _no_reply(nc: nats.NATS, subject: str) -> None:
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await nc.request(subject, b"?", timeout=1)


async def _stream(nc: nats.NATS, subject: str) -> nats.aio.subscription.Subscription:
    sub = await nc.subscribe(subject)
    await settle(nc)
    return sub


def test_jwt_service_and_stream_imports(both: ServerFactory, tmp_path: Path) -> None:
    op = _exporter_and_importers()
    server: ServerProcess = both(config=_operator_config(op))
    files = {name: _creds(op, tmp_path, name) for name in ("A", "B", "OLD", "C")}

    async def scenario() -> None:
        a, b, old, c = [await connect(server.url, user_credentials=files[n]) for n in files]
        for subject in ("time", "wc.*.*", "secret", "private"):
            await a.subscribe(subject, cb=_answer)

        async def twice(msg: Msg) -> None:
            await msg.respond(b"1")
            await msg.respond(b"2")

        await a.subscribe("many", cb=twice)
        await settle(a)
        assert (await b.request("a.time", b"b", timeout=5)).data == b"time <- b"
        assert (await old.request("a.time", b"o", timeout=5)).data == b"time <- o"
        # $2.$1: the importer's tokens go back to the exporter swapped.
        assert (await b.request("x.p.q", b"b", timeout=5)).data == b"wc.q.p <- b"
        await _no_reply(b, "time")  # the exporter's name is not B's
        await _no_reply(b, "secret")  # token required, none given
        await _no_reply(b, "private")  # not exported
        await _no_reply(c, "a.time")  # B exports nothing
        # A stream response type: both answers reach the requester.
        inbox = b.new_inbox()
        answers = await _stream(b, inbox)
        await b.publish("many", b"?", reply=inbox)
        got = [(await answers.next_msg(timeout=5)).data for _ in range(2)]
        assert got == [b"1", b"2"]

        sub_b = await _stream(b, ">")
        sub_old = await _stream(old, "from_a.>")
        await a.publish("events.one", b"ev")
        await settle(a)
        msg = await sub_b.next_msg(timeout=5)
        assert (msg.subject, msg.data) == ("from_a.one", b"ev")
        msg = await sub_old.next_msg(timeout=5)
        assert (msg.subject, msg.data) == ("from_a.events.one", b"ev")
        await asyncio.sleep(0.2)
        with pytest.raises(nats.errors.TimeoutError):
            extra = await sub_b.next_msg(timeout=0.3)
            raise AssertionError(f"unexpected {extra.subject}")
        for nc in (a, b, old, c):
            await nc.close()

    run(scenario())


# ---- user JWT claims: src, times, revocations ---------------------------------------


def _clock_in(hours: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(time.time() + hours * 3600))


def test_jwt_src_times_and_revocations(both: ServerFactory, tmp_path: Path) -> None:
    op = Operator.create("APP")
    app = op.accounts["APP"]
    whole_day = [{"start": "00:00:00", "end": "23:59:59"}]
    later = [{"start": _clock_in(6), "end": _clock_in(6.01)}]
    cases = {
        "src_loopback": ({"src": ["127.0.0.0/8"]}, True),
        "src_list_string": ({"src": "10.0.0.0/8, 127.0.0.1/32"}, True),
        "src_elsewhere": ({"src": ["10.0.0.0/8", "192.168.0.0/16"]}, False),
        "src_bare_address": ({"src": ["127.0.0.1"]}, False),
        "times_now": ({"times": whole_day, "times_location": "UTC"}, True),
        "times_tokyo": ({"times": whole_day, "times_location": "Asia/Tokyo"}, True),
        "times_later": ({"times": later, "times_location": "UTC"}, False),
        "times_bad_zone": ({"times": whole_day, "times_location": "Nowhere/Else"}, False),
        "times_bad_clock": ({"times": [{"start": "9am", "end": "5pm"}]}, False),
        "type_standard": ({"allowed_connection_types": ["STANDARD"]}, True),
        "type_and_unknown": ({"allowed_connection_types": ["STANDARD", "FOO"]}, True),
        "type_lower_case": ({"allowed_connection_types": ["standard"]}, True),
        "type_leafnode": ({"allowed_connection_types": ["LEAFNODE", "MQTT"]}, False),
        "type_unknown": ({"allowed_connection_types": ["FOO"]}, False),
    }
    files = {
        name: _write(tmp_path, f"{name}.creds", app.user_creds(name, **fields))
        for name, (fields, _) in cases.items()
    }
    revoked_text = app.user_creds("revoked")
    revoked_key = decode_claims(revoked_text.split("\n")[1])["sub"]
    files["revoked"] = _write(tmp_path, "revoked.creds", revoked_text)
    now = int(time.time())
    op.set_claims("APP", revocations={revoked_key: now + 5})
    server = both(config=_operator_config(op))
    # Issued after the time of a revocation of all users: still good.
    fresh = _write(tmp_path, "fresh.creds", op.accounts["APP"].user_creds("fresh"))

    async def scenario() -> None:
        await _round_trip(server.url, user_credentials=fresh)
        for name, (_, accepted) in cases.items():
            if accepted:
                await _round_trip(server.url, user_credentials=files[name])
            else:
                err = await _refused(server.url, user_credentials=files[name])
                assert "authorization violation" in err.lower(), (name, err)
        err = await _refused(server.url, user_credentials=files["revoked"])
        assert "authorization violation" in err.lower()

    run(scenario())
    if not is_nats_server_command(server.argv(0)):
        log = server.log_tail(200_000)
        for reason in ("src networks", "connect times", "revoked by its account"):
            assert reason in log
        for name in files:
            seed = Path(files[name]).read_text().split("\n")[-5]
            assert seed.startswith("SU") and seed not in log


def test_jwt_revoke_all_users(both: ServerFactory, tmp_path: Path) -> None:
    """``*`` revokes every user JWT issued at or before its time."""
    op = Operator.create("APP")
    old = _write(tmp_path, "old.creds", op.accounts["APP"].user_creds("old"))
    op.set_claims("APP", revocations={"*": int(time.time()) + 5})
    server = both(config=_operator_config(op))

    async def scenario() -> None:
        err = await _refused(server.url, user_credentials=old)
        assert "authorization violation" in err.lower()

    run(scenario())


async def _jwt_client(port: int, account: Account, expires: int | None, **fields: Any) -> RawClient:
    user = KeyPair.generate(PREFIX_USER)
    nats = {"type": "user", "version": 2, **UNLIMITED_USER, **fields}
    jwt = encode_jwt(account.keys, user.public_key(), "u", nats, expires)
    client = await RawClient.connect(port)
    info = await client.read_info()
    sig = base64.urlsafe_b64encode(user.sign(info["nonce"].encode())).decode().rstrip("=")
    connect = {"verbose": False, "jwt": jwt, "sig": sig}
    await client.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
    assert await client.ping() == []
    return client


async def test_jwt_expiry_closes_the_connection(both: ServerFactory) -> None:
    """At the user JWT's exp, and at the end of its connect-time window, the
    connection gets nats-server's 'User Authentication Expired' and is closed."""
    op = Operator.create("APP")
    server = both(config=_operator_config(op))
    app = op.accounts["APP"]
    start = time.monotonic()
    by_exp = await _jwt_client(server.port, app, int(time.time()) + 2)
    window = [{"start": "00:00:00", "end": _clock_in(3 / 3600)}]
    by_times = await _jwt_client(server.port, app, None, times=window, times_location="UTC")
    forever = await _jwt_client(server.port, app, None)
    for client in (by_exp, by_times):
        frames = await client.read_frames_until(lambda f: f.op == "-ERR", timeout=8)
        assert frames[-1].text() == "-ERR 'User Authentication Expired'"
        assert await client.closed(timeout=3)
    assert 1.0 < time.monotonic() - start < 6
    assert await forever.ping() == []
    for client in (by_exp, by_times, forever):
        await client.aclose()


def test_jwt_imports_unusable_or_invalid(both: ServerFactory, tmp_path: Path) -> None:
    """As 2.9.10: an import naming no account key, or a local subject that is no
    subject, is left out and the account works; an import with an invalid subject
    or a ``$N`` naming a missing wildcard makes the account JWT invalid: its users
    are refused (the exporter's are not)."""
    op = Operator.create("A", "B", "BAD")
    a = op.accounts["A"].public_key
    op.set_claims("A", exports=[{"subject": "time", "type": "service"}])
    op.set_claims(
        "B",
        imports=[
            {"subject": "time", "account": "not-a-key", "type": "service"},
            {"subject": "time", "account": a, "local_subject": "a..b", "type": "service"},
            {"subject": "time", "account": a, "local_subject": "a.time", "type": "service"},
        ],
    )
    op.set_claims(
        "BAD",
        imports=[
            {"subject": "time", "account": a, "local_subject": "a.time", "type": "service"},
            {"subject": "x y", "account": a, "type": "service"},
        ],
    )
    server = both(config=_operator_config(op))
    files = {name: _creds(op, tmp_path, name) for name in ("A", "B", "BAD")}

    async def scenario() -> None:
        a_nc = await connect(server.url, user_credentials=files["A"])
        await a_nc.subscribe("time", cb=_answer)
        await settle(a_nc)
        b_nc = await connect(server.url, user_credentials=files["B"])
        assert (await b_nc.request("a.time", b"b", timeout=5)).data == b"time <- b"
        err = await _refused(server.url, user_credentials=files["BAD"])
        assert "authorization violation" in err.lower()
        await a_nc.close()
        await b_nc.close()

    run(scenario())
    if not is_nats_server_command(server.argv(0)):
        log = server.log_tail(100_000)
        assert "account_import_refused" in log
        # The refusal of BAD's user says why: its account's JWT.
        assert "account_jwt_refused" in log and "needs type stream/service" in log
        assert f"account {op.accounts['BAD'].public_key} unknown or its JWT invalid" in log


@leafgate_only
def test_dir_resolver_account_update_remakes_imports(
    leafgate_factory: ServerFactory, tmp_path: Path
) -> None:
    """A new account JWT file takes effect at the account's next CONNECT, imports
    included. (nats-server's directory resolver learns updates from its system
    account's claim-update messages, not from the files: not compared.)"""
    op = Operator.create("A", "B")
    a_key, b_key = op.accounts["A"].public_key, op.accounts["B"].public_key
    op.set_claims("A", exports=[{"subject": "time", "type": "service"}])
    jwts = tmp_path / "jwt"
    jwts.mkdir()
    for account in (op.system, *op.accounts.values()):
        (jwts / f"{account.public_key}.jwt").write_text(account.jwt)
    server = leafgate_factory(
        config_text=(
            f'operator = "{op.jwt}"\nsystem_account = "{op.system.public_key}"\n'
            f'resolver = {{ type = "dir", dir = "{jwts}" }}\n'
        )
    )
    files = {name: _creds(op, tmp_path, name) for name in ("A", "B")}

    async def scenario() -> None:
        a = await connect(server.url, user_credentials=files["A"])
        await a.subscribe("time", cb=_answer)
        await settle(a)
        b = await connect(server.url, user_credentials=files["B"])
        await _no_reply(b, "a.time")
        op.set_claims(
            "B",
            imports=[
                {"subject": "time", "account": a_key, "local_subject": "a.time", "type": "service"}
            ],
        )
        (jwts / f"{b_key}.jwt").write_text(op.accounts["B"].jwt)
        b2 = await connect(server.url, user_credentials=files["B"])
        assert (await b2.request("a.time", b"2", timeout=5)).data == b"time <- 2"
        assert (await b.request("a.time", b"1", timeout=5)).data == b"time <- 1"
        for nc in (a, b, b2):
            await nc.close()

    run(scenario())
