"""The pure parts of operator mode's account and user claims: JWT exports and
imports as nats-server 2.9.10 reads them, wildcard references, which imports are
made (and why the others are not)."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from edge.accounts import Accounts, inverse, plain, remap
from edge.auth import jwt as natsjwt
from edge.auth.settings import ExportConfig, ImportConfig
from edge.nkeys import PREFIX_ACCOUNT, PREFIX_OPERATOR, KeyPair
from edge.router import Router
from tests.jwtgen import account_jwt

OPERATOR = KeyPair.generate(PREFIX_OPERATOR)
EXPORTER = KeyPair.generate(PREFIX_ACCOUNT)
IMPORTER = KeyPair.generate(PREFIX_ACCOUNT)


def _claims(keys: KeyPair, **fields: object) -> natsjwt.AccountClaims:
    token = account_jwt(OPERATOR, keys, "X", **fields)
    op = natsjwt.Operator(OPERATOR.public_key(), frozenset(), None)
    return natsjwt.verified_account(token, op, time.time())


def test_jwt_imports_both_spellings() -> None:
    a = EXPORTER.public_key()
    claims = _claims(
        IMPORTER,
        imports=[
            {"subject": "time", "account": a, "local_subject": "a.time", "type": "service"},
            {"subject": "a.time", "account": a, "to": "time", "type": "service"},
            {"subject": "time", "account": a, "type": "service"},
            {"subject": "ev.>", "account": a, "local_subject": "in.>", "type": "stream"},
            {"subject": "ev.>", "account": a, "to": "pre", "type": "stream"},
            {"subject": "w.*", "account": a, "local_subject": "x.$1", "type": "service"},
            {"subject": "bad subject", "account": a, "type": "stream"},
            {"subject": "x", "type": "stream"},
            {"subject": "x", "account": a, "type": "other"},
            "junk",
        ],
    )
    assert claims.imports == (
        ImportConfig("service", a, b"time", b"a.time"),
        ImportConfig("service", a, b"time", b"a.time"),  # 'to' names the exporter's
        ImportConfig("service", a, b"time", b"time"),
        ImportConfig("stream", a, b"ev.>", b"in.>"),
        ImportConfig("stream", a, b"ev.>", b"pre.ev.>"),  # 'to' is a prefix
        ImportConfig("service", a, b"w.*", b"x.$1"),
    )
    assert len(claims.dropped) == 4


def test_jwt_exports() -> None:
    claims = _claims(
        EXPORTER,
        exports=[
            {"subject": "time", "type": "service"},
            {"subject": "many", "type": "service", "response_type": "Stream"},
            {"subject": "tok.>", "type": "stream", "token_req": True},
            {"subject": "", "type": "stream"},
        ],
    )
    assert claims.exports == (
        ExportConfig("service", b"time"),
        ExportConfig("service", b"many", None, "stream"),
        ExportConfig("stream", b"tok.>", None, "singleton", True),
    )
    assert claims.dropped == ("export '': needs type stream/service and a subject",)


def test_wildcard_references() -> None:
    assert plain(b"x.$2.$1") == b"x.*.*"
    assert plain(b"x.{{wildcard(1)}}") == b"x.*"
    assert remap(b"a.*.*", b"x.$2.$1", b"a.p.q") == b"x.q.p"
    assert remap(b"a.*.>", b"x.{{ wildcard(2) }}.$1", b"a.p.q.r") == b"x.q.r.p"
    # Back from the importer's subject to the exporter's.
    back = inverse(b"wc.*.*", b"x.$2.$1")
    assert back == b"wc.$2.$1"
    assert remap(plain(b"x.$2.$1"), back, b"x.p.q") == b"wc.q.p"
    assert inverse(b"wc.*", b"x.*") == b"wc.*"


@given(st.lists(st.sampled_from([b"p", b"q", b"rr"]), min_size=2, max_size=2))
def test_swapped_references_round_trip(tokens: list[bytes]) -> None:
    subject = b"wc." + b".".join(tokens)
    local = remap(b"wc.*.*", b"x.$2.$1", subject)
    assert remap(plain(b"x.$2.$1"), inverse(b"wc.*.*", b"x.$2.$1"), local) == subject


def test_join_jwt_account_problems() -> None:
    a = EXPORTER.public_key()
    exporter = _claims(
        EXPORTER,
        exports=[
            {"subject": "time", "type": "service"},
            {"subject": "tok", "type": "service", "token_req": True},
        ],
    )
    importer = _claims(
        IMPORTER,
        imports=[
            {"subject": "time", "account": a, "type": "service"},
            {"subject": "tok", "account": a, "type": "service"},
            {"subject": "other", "account": a, "type": "service"},
            {"subject": "x", "account": "AUNKNOWN", "type": "stream"},
        ],
    )
    accounts = Accounts(Router(), ())
    problems = accounts.join_jwt_account(importer, {a: exporter}.get)
    assert [(p.subject, p.reason) for p in problems] == [
        ("tok", "export needs an activation token (not supported)"),
        ("other", f"account {a} exports no service for it"),
        ("x", "no usable account AUNKNOWN"),
    ]
    assert len(accounts.bridges) == 1
    assert accounts.join_jwt_account(importer, {a: exporter}.get) == []  # once only
