"""Activation tokens end to end with nats-py, against leafgate and nats-server
2.9.10 alike (``both``: the same operator and account JWTs in a memory
resolver, the same assertions; a difference fails one of the two runs).

Confirmed with 2.9.10 by this test: an import carrying a token of the exporter
(or of one of its signing keys, naming it in ``issuer_account``) for the
importing account routes, for services and streams; without a token, with an
expired one, or one the export's ``revocations`` revoke, the import alone is
left out (the account's users connect; requests get no responders, streams
nothing); a token for another subject or account makes the importing
account JWT invalid (its users are refused with 'Authorization Violation').
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats.errors
import pytest

from edge.nkeys import PREFIX_ACCOUNT, KeyPair
from tests.aio import connect, run, settle
from tests.conftest import ServerFactory
from tests.harness import is_nats_server_command
from tests.jwtgen import Operator, activation_jwt
from tests.test_security_clients import _operator_config, _refused, _write
from tests.test_security_jwt import _answer, _no_reply, _stream

SIGNER = KeyPair.generate(PREFIX_ACCOUNT)


def _operator() -> Operator:
    op = Operator.create("A", "GOOD", "SIGNED", "NONE", "EXPIRED", "REVOKED", "WRONG")
    a = op.accounts["A"]
    now = int(time.time())
    key = {name: acc.public_key for name, acc in op.accounts.items()}
    op.set_claims(
        "A",
        signing_keys=[SIGNER.public_key()],
        exports=[
            {"subject": "svc.*", "type": "service", "token_req": True},
            {
                "subject": "ev.>",
                "type": "stream",
                "token_req": True,
                "revocations": {key["REVOKED"]: now},
            },
        ],
    )

    def imports(service: str | None, stream: str | None) -> list[dict[str, object]]:
        out: list[dict[str, object]] = [
            {"subject": "svc.time", "account": a.public_key, "type": "service"},
            {"subject": "ev.>", "account": a.public_key, "type": "stream"},
        ]
        for entry, token in zip(out, (service, stream), strict=True):
            if token is not None:
                entry["token"] = token
        return out

    def token(account: str, subject: str, kind: str, **more: object) -> str:
        return activation_jwt(a.keys, key[account], subject, kind, **more)  # type: ignore[arg-type]

    op.set_claims(
        "GOOD", imports=imports(token("GOOD", "svc.*", "service"), token("GOOD", "ev.>", "stream"))
    )
    op.set_claims(
        "SIGNED",
        imports=imports(
            activation_jwt(SIGNER, key["SIGNED"], "svc.time", "service", a.public_key),
            activation_jwt(SIGNER, key["SIGNED"], "ev.>", "stream", a.public_key),
        ),
    )
    op.set_claims("NONE", imports=imports(None, None))
    op.set_claims(
        "EXPIRED",
        imports=imports(
            token("EXPIRED", "svc.time", "service", expires=now - 5),
            token("EXPIRED", "ev.>", "stream", expires=now - 5),
        ),
    )
    old = {"issued_at": now - 60}
    op.set_claims(
        "REVOKED",
        imports=imports(
            token("REVOKED", "svc.time", "service"), token("REVOKED", "ev.>", "stream", **old)
        ),
    )
    op.set_claims("WRONG", imports=imports(token("WRONG", "svc.other", "service"), None))
    return op


def test_activation_tokens(both: ServerFactory, tmp_path: Path) -> None:
    op = _operator()
    server = both(config=_operator_config(op))
    files = {
        name: _write(tmp_path, f"{name}.creds", acc.user_creds(name.lower()))
        for name, acc in op.accounts.items()
    }

    async def scenario() -> None:
        a = await connect(server.url, user_credentials=files["A"])
        await a.subscribe("svc.*", cb=_answer)
        await settle(a)
        clients = {n: await connect(server.url, user_credentials=files[n]) for n in files}
        streams = {n: await _stream(nc, "ev.>") for n, nc in clients.items()}
        for name in ("GOOD", "SIGNED"):
            reply = await clients[name].request("svc.time", name.encode(), timeout=5)
            assert reply.data == b"svc.time <- " + name.encode()
        for name in ("NONE", "EXPIRED"):
            await _no_reply(clients[name], "svc.time")
        # REVOKED's service token is newer than nothing revoked there: it works;
        # its stream token (issued before the export's revocation) does not.
        reply = await clients["REVOKED"].request("svc.time", b"r", timeout=5)
        assert reply.data == b"svc.time <- r"
        await a.publish("ev.one", b"ev")
        await settle(a)
        for name in ("GOOD", "SIGNED"):
            msg = await streams[name].next_msg(timeout=5)
            assert (msg.subject, msg.data) == ("ev.one", b"ev")
        await asyncio.sleep(0.3)
        for name in ("NONE", "EXPIRED", "REVOKED"):
            with pytest.raises(nats.errors.TimeoutError):
                extra = await streams[name].next_msg(timeout=0.2)
                raise AssertionError(f"{name} got {extra.subject}")
        for nc in (a, *clients.values()):
            await nc.close()

    # The token for another subject: WRONG's account JWT is invalid.
    files_wrong = files.pop("WRONG")
    run(scenario())

    async def wrong() -> None:
        err = await _refused(server.url, user_credentials=files_wrong)
        assert "authorization violation" in err.lower()

    run(wrong())
    if not is_nats_server_command(server.argv(0)):
        log = server.log_tail(200_000)
        for account, reason in (
            ("NONE", "the import has none"),
            ("EXPIRED", "activation token expired"),
            ("REVOKED", "activation token revoked by the export"),
        ):
            key = op.accounts[account].public_key
            lines = [
                line
                for line in log.splitlines()
                if "account_import_refused" in line and key in line and reason in line
            ]
            assert lines, (account, reason)
        assert "does not cover the import 'svc.time'" in log
