"""Activation tokens (pure): which tokens make the importing account JWT invalid
(as 2.9.10's Import.Validate with the account JWT), which only leave their import
out (its checkActivation: time window, issuer_account and signing key, the
export's revocations), and a byte-level property: no altered token is accepted
unless it decodes to the very same token."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.accounts import Accounts
from edge.auth import jwt as natsjwt
from edge.auth.activation import Activation, activation_refusal
from edge.nkeys import PREFIX_ACCOUNT, PREFIX_OPERATOR, KeyPair
from edge.router import Router
from tests.jwtgen import account_jwt, activation_jwt

OPERATOR = KeyPair.generate(PREFIX_OPERATOR)
EXPORTER = KeyPair.generate(PREFIX_ACCOUNT)
SIGNER = KeyPair.generate(PREFIX_ACCOUNT)  # a signing key of the exporter
IMPORTER = KeyPair.generate(PREFIX_ACCOUNT)
OTHER = KeyPair.generate(PREFIX_ACCOUNT)
OP = natsjwt.Operator(OPERATOR.public_key(), frozenset(), None)
A = EXPORTER.public_key()
B = IMPORTER.public_key()
C = OTHER.public_key()


def _exporter(**export: object) -> natsjwt.AccountClaims:
    exports = [
        {"subject": "svc.>", "type": "service", "token_req": True, **export},
        {"subject": "ev.>", "type": "stream", "token_req": True, **export},
    ]
    keys = [SIGNER.public_key()]
    token = account_jwt(OPERATOR, EXPORTER, "A", exports=exports, signing_keys=keys)
    return natsjwt.verified_account(token, OP, time.time())


def _importer(token: str | None, kind: str = "service", subject: str = "svc.time", **more: object):
    entry: dict[str, object] = {"subject": subject, "account": A, "type": kind, **more}
    if token is not None:
        entry["token"] = token
    return natsjwt.verified_account(
        account_jwt(OPERATOR, IMPORTER, "B", imports=[entry]), OP, time.time()
    )


def _join(importer: natsjwt.AccountClaims, exporter: natsjwt.AccountClaims) -> list[str]:
    accounts = Accounts(Router(), ())
    problems = accounts.join_jwt_account(importer, {A: exporter}.get, time.time())
    assert len(accounts.bridges) == (0 if problems else 1)
    return [p.reason for p in problems]


def test_a_token_of_the_exporter_makes_the_import() -> None:
    exporter = _exporter()
    for kind, subject, granted in (
        ("service", "svc.time", "svc.time"),
        ("service", "svc.time", "svc.*"),
        ("stream", "ev.a.b", "ev.>"),
    ):
        token = activation_jwt(EXPORTER, B, granted, kind)
        importer = _importer(token, kind, subject)
        assert importer.imports[0].token == token
        assert _join(importer, exporter) == []
    # The older spelling of a service import: ``to`` is the exporter's subject.
    token = activation_jwt(EXPORTER, B, "svc.time", "service")
    assert _join(_importer(token, subject="local.time", to="svc.time"), exporter) == []


def test_a_signing_key_token_names_the_exporter() -> None:
    exporter = _exporter()
    good = activation_jwt(SIGNER, B, "svc.time", "service", issuer_account=A)
    assert _join(_importer(good), exporter) == []
    # issuer_account set, but the signer is no signing key of the exporter (2.9.10:
    # only its signing keys count then, not the account's own key).
    for signer in (OTHER, EXPORTER):
        token = activation_jwt(signer, B, "svc.time", "service", issuer_account=A)
        reasons = _join(_importer(token), exporter)
        assert len(reasons) == 1 and "not a signing key of" in reasons[0]


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: activation_jwt(OTHER, B, "svc.time", "service"), "not issued by or for"),
        (lambda: activation_jwt(EXPORTER, C, "svc.time", "service"), "for account"),
        (lambda: activation_jwt(EXPORTER, B, "svc.time", "stream"), "is for a 'stream'"),
        (lambda: activation_jwt(EXPORTER, B, "svc.other", "service"), "does not cover"),
        (lambda: activation_jwt(EXPORTER, B, "svc.time.x", "service"), "does not cover"),
        (lambda: activation_jwt(EXPORTER, B, "svc.time", "service")[:-4] + "AAAA", "invalid"),
        (lambda: "not.a.jwt", "invalid activation token"),
        (lambda: account_jwt(OPERATOR, IMPORTER, "B"), "invalid activation token"),
    ],
)
def test_a_token_that_does_not_fit_invalidates_the_importing_account(token, why: str) -> None:
    with pytest.raises(natsjwt.JwtError, match=why):
        _importer(token())


def test_time_window_and_revocations_leave_the_import_out() -> None:
    now = int(time.time())
    expired = activation_jwt(EXPORTER, B, "svc.time", "service", expires=now - 1)
    later = activation_jwt(EXPORTER, B, "svc.time", "service")
    # The importing account JWT stays valid: only the import is left out.
    assert _join(_importer(expired), _exporter()) == ["activation token expired"]
    assert _join(_importer(None), _exporter()) == [
        "export needs an activation token, the import has none"
    ]
    old = activation_jwt(EXPORTER, B, "svc.time", "service", issued_at=now - 100)
    for revocations in ({B: now - 100}, {"*": now}):
        assert _join(_importer(old), _exporter(revocations=revocations)) == [
            "activation token revoked by the export"
        ]
    # Issued after the revocation time; another account's revocation.
    assert _join(_importer(later), _exporter(revocations={B: now - 10})) == []
    assert _join(_importer(old), _exporter(revocations={OTHER.public_key(): now})) == []


def test_activation_expiry_is_recorded_for_the_importer() -> None:
    soon = int(time.time()) + 30
    token = activation_jwt(EXPORTER, B, "svc.time", "service", expires=soon)
    accounts = Accounts(Router(), ())
    assert accounts.join_jwt_account(_importer(token), {A: _exporter()}.get) == []
    assert accounts.activation_expiries == {B: soon}
    # Joined again after it ran out: the import is left out.
    problems = accounts.join_jwt_account(_importer(token), {A: _exporter()}.get, soon, True)
    assert [p.reason for p in problems] == ["activation token expired"]
    assert accounts.bridges == [] and B not in accounts.activation_expiries


def test_refusal_order_and_not_before() -> None:
    act = Activation("X", A, B, "svc.>", "service", 10, 0.0, 200.0)
    assert activation_refusal(act, A, ["X"], (), 100) == "activation token not valid yet"
    assert activation_refusal(act, A, ["X"], (), 300) is None
    assert "is not account" in (activation_refusal(act, OTHER.public_key(), ["X"], (), 300) or "")


GOOD = activation_jwt(EXPORTER, B, "svc.time", "service")


@given(st.integers(0, len(GOOD) - 1), st.sampled_from("AQgw_-.x0Z"))
def test_an_altered_token_is_refused_unless_it_is_the_same_token(at: int, char: str) -> None:
    altered = GOOD[:at] + char + GOOD[at + 1 :]
    try:
        claims = _importer(altered)
    except natsjwt.JwtError:
        return
    # Accepted: only where base64url's unused low bits changed (same bytes).
    assert "." not in (GOOD[at], char) or GOOD[at] == char
    same = [natsjwt._b64decode(p) for p in GOOD.split(".")]
    assert [natsjwt._b64decode(p) for p in altered.split(".")] == same
    assert claims.imports[0].token == altered
