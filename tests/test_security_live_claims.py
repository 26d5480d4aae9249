"""Account JWTs that change while their users are connected, against leafgate
and nats-server 2.9.10 alike (``both``; raw protocol for the exact texts).

Two ways a memory resolver's account JWT changes live, both confirmed with
2.9.10 by these tests: a reload (SIGHUP) with a new ``resolver_preload``, and a
claims update the system account publishes to
``$SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE`` (answered with ``"code": 200,
"message": "jwt updated"``). Then a connected user the new JWT revokes gets
``-ERR 'User Authentication Revoked'`` and is closed, the account's other users
stay; an account whose JWT left the preload closes its users with ``-ERR
'Authorization Violation'``; a new import works for connections made before;
a new ``exp`` closes the account's users then with ``-ERR 'Account
Authentication Expired'``; an update with an expired JWT is refused
(``"code": 500``) and changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from pathlib import Path

import nats.errors
import trio

from edge.nkeys import PREFIX_ACCOUNT, PREFIX_USER, KeyPair
from tests.aio import connect, run, settle
from tests.conftest import ServerFactory
from tests.harness import RawClient, ServerProcess, is_nats_server_command
from tests.jwtgen import (
    UNLIMITED_ACCOUNT,
    UNLIMITED_USER,
    Account,
    Operator,
    account_jwt,
    activation_jwt,
    encode_jwt,
)
from tests.marks import leafgate_only
from tests.test_security_clients import _operator_config, _write

REVOKED = "-ERR 'User Authentication Revoked'"


async def _user(port: int, account: Account, issued_at: int | None = None) -> tuple[RawClient, str]:
    """A connected raw client of a new user of ``account``, and the user's key."""
    user = KeyPair.generate(PREFIX_USER)
    nats = {"type": "user", "version": 2, **UNLIMITED_USER}
    jwt = encode_jwt(account.keys, user.public_key(), "u", nats, issued_at=issued_at)
    client = await RawClient.connect(port)
    info = await client.read_info()
    sig = base64.urlsafe_b64encode(user.sign(info["nonce"].encode())).decode().rstrip("=")
    connect_line = {"verbose": False, "jwt": jwt, "sig": sig}
    await client.send(b"CONNECT " + json.dumps(connect_line).encode() + b"\r\n")
    assert await client.ping() == []
    return client, user.public_key()


async def _closed_with(client: RawClient, error: str, timeout: float = 10) -> None:
    frames = await client.read_frames_until(lambda f: f.op == "-ERR", timeout=timeout)
    assert frames[-1].text() == error
    assert await client.closed(timeout=5)


def _reload(both: ServerFactory, server: ServerProcess, op: Operator) -> None:
    config = _operator_config(op)
    assert server.config_path is not None
    server.config_path.write_text(config.nats if both.config_dialect == "nats" else config.toml)
    os.kill(server.pid, signal.SIGHUP)


async def _flows(sender: RawClient, receiver: RawClient, sub: bytes, pub: bytes) -> bytes:
    """*receiver* subscribes (*sub*), *sender* publishes (*pub*): the payload
    *receiver* gets (it must get one within 5 s)."""
    await receiver.send(sub)
    assert await receiver.ping() == []
    await sender.send(pub)
    frames = await receiver.read_frames_until(lambda f: f.op == "MSG", timeout=5)
    return frames[-1].payload


async def _update(system: RawClient, account: Account, jwt: str) -> dict[str, object]:
    """Publish a claims update as the system account; the server's answer."""
    inbox = b"_INBOX.claims." + os.urandom(4).hex().encode()
    subject = f"$SYS.REQ.ACCOUNT.{account.public_key}.CLAIMS.UPDATE".encode()
    body = jwt.encode()
    await system.send(b"SUB " + inbox + b" 9\r\n")
    await system.send(b"PUB %s %s %d\r\n%s\r\n" % (subject, inbox, len(body), body))
    frames = await system.read_frames_until(lambda f: f.op == "MSG", timeout=10)
    await system.send(b"UNSUB 9\r\n")
    answer: dict[str, object] = json.loads(frames[-1].payload or b"{}")
    return answer


async def test_reload_closes_revoked_users_and_applies_new_claims(both: ServerFactory) -> None:
    op = Operator.create("APP", "GONE", "A", "IMP")
    a = op.accounts["A"]
    op.set_claims("A", exports=[{"subject": "time", "type": "service"}])
    server = both(config=_operator_config(op))
    app, gone = op.accounts["APP"], op.accounts["GONE"]
    iat = int(time.time()) - 10
    victim, victim_key = await _user(server.port, app, iat)
    other, _ = await _user(server.port, app, iat)
    lost, _ = await _user(server.port, gone)
    exporter, _ = await _user(server.port, a)
    importer, _ = await _user(server.port, op.accounts["IMP"])
    await exporter.send(b"SUB time 1\r\n")
    assert await exporter.ping() == []
    await importer.send(b"SUB _INBOX.r 1\r\nPUB a.time _INBOX.r 1\r\n?\r\n")
    assert await importer.ping() == []  # no import yet: nothing reaches the exporter

    op.set_claims("APP", revocations={victim_key: iat})
    del op.accounts["GONE"]
    imp = {"subject": "time", "account": a.public_key, "local_subject": "a.time"}
    op.set_claims("IMP", imports=[{**imp, "type": "service"}])
    _reload(both, server, op)
    await _closed_with(victim, REVOKED)
    await _closed_with(lost, "-ERR 'Authorization Violation'")
    assert await other.ping() == []  # the account's other user stays
    # IMP's connection made before the reload uses the new import.
    await importer.send(b"PUB a.time _INBOX.r 2\r\nhi\r\n")
    frames = await exporter.read_frames_until(lambda f: f.op == "MSG", timeout=5)
    assert frames[-1].args[0] == b"time" and frames[-1].payload == b"hi"
    for client in (victim, other, lost, exporter, importer):
        await client.aclose()
    if not is_nats_server_command(server.argv(0)):
        closes = [
            json.loads(line)
            for line in server.log_tail(200_000).splitlines()
            if "client_closed_by_account_update" in line
        ]
        assert sorted((c["account"], c["reason"]) for c in closes) == sorted(
            [
                (app.public_key, "user JWT revoked by its account"),
                (gone.public_key, "account JWT gone or invalid"),
            ]
        )
        assert closes[0]["user"] == victim_key or closes[1]["user"] == victim_key


async def test_claims_update_from_the_system_account(both: ServerFactory) -> None:
    op = Operator.create("APP", "EXP")
    server = both(config=_operator_config(op))
    app, exp = op.accounts["APP"], op.accounts["EXP"]
    system, _ = await _user(server.port, op.system)
    iat = int(time.time()) - 10
    victim, victim_key = await _user(server.port, app, iat)
    other, _ = await _user(server.port, app, iat)
    ending, _ = await _user(server.port, exp)

    answer = await _update(
        system, app, account_jwt(op.keys, app.keys, "APP", revocations={victim_key: iat})
    )
    assert answer["data"] == {"account": app.public_key, "code": 200, "message": "jwt updated"}
    await _closed_with(victim, REVOKED)
    assert await other.ping() == []
    # An update that is already expired is refused; the account's users stay.
    stale = encode_jwt(
        op.keys,
        exp.public_key,
        "EXP",
        {"type": "account", "version": 2, "limits": dict(UNLIMITED_ACCOUNT)},
        expires=int(time.time()) - 5,
    )
    answer = await _update(system, exp, stale)
    error = answer["error"]
    assert isinstance(error, dict) and error["code"] == 500
    assert await ending.ping() == []
    # An exp two seconds away: the users are closed then.
    start = time.monotonic()
    soon = encode_jwt(
        op.keys,
        exp.public_key,
        "EXP",
        {"type": "account", "version": 2, "limits": dict(UNLIMITED_ACCOUNT)},
        expires=int(time.time()) + 2,
    )
    answer = await _update(system, exp, soon)
    assert answer["data"] == {"account": exp.public_key, "code": 200, "message": "jwt updated"}
    await _closed_with(ending, "-ERR 'Account Authentication Expired'", timeout=8)
    assert 0.5 < time.monotonic() - start < 6
    assert await other.ping() == [] and await system.ping() == []
    for client in (system, victim, other, ending):
        await client.aclose()
    await trio.sleep(0)


def test_nats_py_client_revoked_on_reload(both: ServerFactory, tmp_path: Path) -> None:
    op = Operator.create("APP")
    server = both(config=_operator_config(op))
    app = op.accounts["APP"]
    victim_creds = app.user_creds("victim")
    victim_key = json.loads(
        base64.urlsafe_b64decode(victim_creds.split("\n")[1].split(".")[1] + "==")
    )["sub"]
    files = {
        "victim": _write(tmp_path, "victim.creds", victim_creds),
        "other": _write(tmp_path, "other.creds", app.user_creds("other")),
    }

    async def scenario() -> None:
        errors: list[str] = []
        closed: list[bool] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        async def on_closed() -> None:
            closed.append(True)

        victim = await connect(
            server.url, user_credentials=files["victim"], error_cb=on_error, closed_cb=on_closed
        )
        other = await connect(server.url, user_credentials=files["other"])
        sub = await other.subscribe("still.here")
        await settle(other)
        op.set_claims("APP", revocations={victim_key: int(time.time())})
        _reload(both, server, op)
        for _ in range(200):
            if closed:
                break
            await asyncio.sleep(0.05)
        assert closed, "the revoked user's connection stayed open"
        errors.append(str(victim.last_error))
        assert any("user authentication revoked" in e.lower() for e in errors), errors
        await other.publish("still.here", b"yes")
        assert (await sub.next_msg(timeout=5)).data == b"yes"
        try:
            await connect(server.url, user_credentials=files["victim"])
        except nats.errors.Error as exc:
            assert "authorization violation" in str(exc).lower()
        else:
            raise AssertionError("the revoked user connected again")
        await other.close()

    run(scenario())


async def test_an_activation_token_running_out_undoes_its_import(both: ServerFactory) -> None:
    """At the token's exp the import stops working (2.9.10: checkActivation's timer)."""
    op = Operator.create("A", "B")
    a, b = op.accounts["A"], op.accounts["B"]
    op.set_claims("A", exports=[{"subject": "time", "type": "service", "token_req": True}])
    ends = int(time.time()) + 3
    token = activation_jwt(a.keys, b.public_key, "time", "service", expires=ends)
    imp = {"subject": "time", "account": a.public_key, "type": "service", "token": token}
    op.set_claims("B", imports=[imp])
    server = both(config=_operator_config(op))
    exporter, _ = await _user(server.port, a)
    importer, _ = await _user(server.port, b)
    assert await _flows(importer, exporter, b"SUB time 1\r\n", b"PUB time 2\r\nok\r\n") == b"ok"
    await trio.sleep(max(0.0, ends - time.time()) + 1.5)
    await importer.send(b"PUB time 2\r\nno\r\n")
    assert await importer.ping() == []
    assert await exporter.ping() == []  # nothing arrived before the PONG
    with trio.move_on_after(0.5):
        frame = await exporter.read_frame(timeout=1)
        raise AssertionError(f"after the token's exp: {frame.text()}")
    for client in (exporter, importer):
        await client.aclose()


@leafgate_only
async def test_dir_resolver_reload_and_claims_update(leafgate_factory: ServerFactory) -> None:
    """A directory resolver's files are read again at a reload; a claims update
    from the system account is written to the account's file (as 2.9.10's full
    resolver stores it). nats-server's directory resolver does not read changed
    files on reload: not compared."""
    op = Operator.create("APP")
    app = op.accounts["APP"]
    jwts = leafgate_factory.workdir / "jwt"
    jwts.mkdir()
    for account in (op.system, app):
        (jwts / f"{account.public_key}.jwt").write_text(account.jwt)
    server = leafgate_factory(
        config_text=(
            f'operator = "{op.jwt}"\nsystem_account = "{op.system.public_key}"\n'
            f'resolver = {{ type = "dir", dir = "{jwts}" }}\n'
        )
    )
    iat = int(time.time()) - 10
    first, first_key = await _user(server.port, app, iat)
    second, second_key = await _user(server.port, app, iat)
    third, _ = await _user(server.port, app, iat + 5)
    system, _ = await _user(server.port, op.system)
    op.set_claims("APP", revocations={first_key: iat})
    (jwts / f"{app.public_key}.jwt").write_text(op.accounts["APP"].jwt)
    os.kill(server.pid, signal.SIGHUP)
    await _closed_with(first, REVOKED)
    assert await second.ping() == []
    update = account_jwt(op.keys, app.keys, "APP", revocations={second_key: iat})
    answer = await _update(system, app, update)
    assert answer["data"] == {"account": app.public_key, "code": 200, "message": "jwt updated"}
    await _closed_with(second, REVOKED)
    assert await third.ping() == []
    assert (jwts / f"{app.public_key}.jwt").read_text().strip() == update
    for client in (first, second, third, system):
        await client.aclose()


async def test_a_lower_connection_limit_keeps_the_newest(both: ServerFactory) -> None:
    op = Operator.create("LIM")
    server = both(config=_operator_config(op))
    lim = op.accounts["LIM"]
    system, _ = await _user(server.port, op.system)
    users = [(await _user(server.port, lim))[0] for _ in range(3)]
    limits = {**UNLIMITED_ACCOUNT, "conn": 1}
    update = encode_jwt(
        op.keys, lim.public_key, "LIM", {"type": "account", "version": 2, "limits": limits}
    )
    answer = await _update(system, lim, update)
    assert answer["data"] == {"account": lim.public_key, "code": 200, "message": "jwt updated"}
    for old in users[:2]:
        await _closed_with(old, "-ERR 'maximum account active connections exceeded'")
    assert await users[2].ping() == []
    for client in (system, *users):
        await client.aclose()


async def test_an_exporter_revoking_an_activation_stops_the_stream(both: ServerFactory) -> None:
    """The exporter's new JWT revokes B's activation: B's live stream import stops."""
    op = Operator.create("A", "B")
    a, b = op.accounts["A"], op.accounts["B"]
    export = {"subject": "ev.>", "type": "stream", "token_req": True}
    op.set_claims("A", exports=[export])
    iat = int(time.time()) - 10
    token = activation_jwt(a.keys, b.public_key, "ev.>", "stream", issued_at=iat)
    op.set_claims(
        "B",
        imports=[{"subject": "ev.>", "account": a.public_key, "type": "stream", "token": token}],
    )
    server = both(config=_operator_config(op))
    system, _ = await _user(server.port, op.system)
    publisher, _ = await _user(server.port, a)
    listener, _ = await _user(server.port, b)
    assert await _flows(publisher, listener, b"SUB ev.> 1\r\n", b"PUB ev.one 1\r\n1\r\n") == b"1"
    revoking = account_jwt(
        op.keys, a.keys, "A", exports=[{**export, "revocations": {b.public_key: iat}}]
    )
    answer = await _update(system, a, revoking)
    assert answer["data"] == {"account": a.public_key, "code": 200, "message": "jwt updated"}
    await publisher.send(b"PUB ev.two 1\r\n2\r\n")
    assert await publisher.ping() == []
    assert await listener.ping() == []
    with trio.move_on_after(0.5):
        frame = await listener.read_frame(timeout=1)
        raise AssertionError(f"after the revocation: {frame.text()}")
    for client in (system, publisher, listener):
        await client.aclose()


async def test_a_removed_signing_key_closes_its_users(both: ServerFactory) -> None:
    """2.9.10 closes a user whose signing key the new account JWT no longer lists
    (without an -ERR); the users the account signed itself stay."""
    op = Operator.create("APP")
    app = op.accounts["APP"]
    signer = KeyPair.generate(PREFIX_ACCOUNT)
    op.set_claims("APP", signing_keys=[signer.public_key()])
    server = both(config=_operator_config(op))
    system, _ = await _user(server.port, op.system)
    direct, _ = await _user(server.port, app)
    signed_by_key = Account("APP", signer, "")
    user = KeyPair.generate(PREFIX_USER)
    nats = {"type": "user", "version": 2, **UNLIMITED_USER, "issuer_account": app.public_key}
    jwt = encode_jwt(signed_by_key.keys, user.public_key(), "s", nats)
    delegated = await RawClient.connect(server.port)
    info = await delegated.read_info()
    sig = base64.urlsafe_b64encode(user.sign(info["nonce"].encode())).decode().rstrip("=")
    line = json.dumps({"verbose": False, "jwt": jwt, "sig": sig}).encode()
    await delegated.send(b"CONNECT " + line + b"\r\n")
    assert await delegated.ping() == []
    answer = await _update(system, app, account_jwt(op.keys, app.keys, "APP"))
    assert answer["data"] == {"account": app.public_key, "code": 200, "message": "jwt updated"}
    assert await delegated.closed(timeout=5)
    assert b"-ERR" not in delegated.buf
    assert await direct.ping() == []
    for client in (system, direct, delegated):
        await client.aclose()


async def test_only_the_system_account_updates_claims(both: ServerFactory) -> None:
    """The same update published by a user of another account reaches nothing."""
    op = Operator.create("APP")
    server = both(config=_operator_config(op))
    app = op.accounts["APP"]
    iat = int(time.time()) - 10
    intruder, _ = await _user(server.port, app, iat)
    target, target_key = await _user(server.port, app, iat)
    update = account_jwt(op.keys, app.keys, "APP", revocations={target_key: iat}).encode()
    subject = f"$SYS.REQ.ACCOUNT.{app.public_key}.CLAIMS.UPDATE".encode()
    await intruder.send(
        b"SUB _INBOX.x 1\r\nPUB %s _INBOX.x %d\r\n%s\r\n" % (subject, len(update), update)
    )
    assert await intruder.ping() == []
    await trio.sleep(0.5)
    assert await intruder.ping() == []  # no answer
    assert await target.ping() == []  # not revoked
    for client in (intruder, target):
        await client.aclose()
