"""Activation tokens: what lets an account import an export with ``token_req``.

An activation is a JWT (``nats.type`` "activation") the exporting account, or one
of its signing keys (then ``nats.issuer_account`` names the exporter), issues to
the importing account (``sub``) for a subject (``nats.subject``, which may hold
wildcards) of a kind (``nats.kind``: "stream" or "service"). The importer puts it
in its import's ``token``.

nats-server 2.9.10 (with jwt/v2 2.3.0) checks it twice, and this module keeps
the two apart:

* with the importing account's JWT (``Import.Validate``): a token that does not
  decode or verify, is issued by neither the exporter nor for it, is not for the
  importing account, is of the other kind, or whose subject does not cover the
  import's is an *error of the account JWT*: the whole account is invalid (its
  users are refused) — ``import_token_problem``;
* when the import is made (``checkActivation``): a token that is expired or not
  yet valid, whose ``issuer_account`` is not the exporter or whose issuer is not
  one of the exporter's signing keys, or that the export's ``revocations`` revoke
  (the importing account's key, or ``*``, at a time at or after the token's
  ``iat``) leaves only that import out — ``activation_refusal``.

Pure module: no I/O, the clock is a parameter; reasons are safe to log (keys and
subjects only).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge.auth.access import revoked
from edge.subjects import is_subset, is_valid_subject

KINDS = ("stream", "service")


@dataclass(frozen=True, slots=True)
class Activation:
    issuer: str  # iss: the exporter, a signing key of it, or (refused later) another key
    issuer_account: str  # nats.issuer_account ("" when the issuer is the account itself)
    account: str  # sub: the importing account
    subject: str  # nats.subject: what may be imported (wildcards allowed)
    kind: str  # nats.kind
    issued_at: int = 0
    expires: float = 0.0  # 0: never
    not_before: float = 0.0


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def activation_from_claims(claims: dict[str, Any]) -> Activation:
    """The fields of a decoded activation JWT (its signature checked by the caller)."""
    nats = claims.get("nats")
    if not isinstance(nats, dict):
        nats = {}
    issuer_account = nats.get("issuer_account")
    iat = claims.get("iat")
    return Activation(
        issuer=str(claims.get("iss", "")),
        issuer_account=issuer_account if isinstance(issuer_account, str) else "",
        account=str(claims.get("sub", "")),
        subject=str(nats.get("subject", "") or ""),
        kind=str(nats.get("kind", "") or ""),
        issued_at=iat if isinstance(iat, int) and not isinstance(iat, bool) else 0,
        expires=_number(claims.get("exp")),
        not_before=_number(claims.get("nbf")),
    )


def _is_account_key(key: str) -> bool:
    return key.startswith("A") and len(key) == 56


def import_token_problem(
    act: Activation, kind: str, exporter: str, importer: str, subject: str
) -> str | None:
    """Why the importing account's JWT is invalid because of this token (None:
    it fits): ``kind``, ``exporter`` and ``subject`` are the import's (the
    exporter's subject: a service import's ``to`` in the older spelling)."""
    if act.issuer != exporter and act.issuer_account != exporter:
        return f"activation token for {subject!r} not issued by or for account {exporter}"
    if act.account != importer:
        return f"activation token for {subject!r} is for account {act.account}, not this one"
    if act.kind != kind:
        return f"activation token for {subject!r} is for a {act.kind!r}, the import is a {kind}"
    if act.kind not in KINDS or not is_valid_subject(act.subject.encode()):
        return f"activation token for {subject!r} has no valid kind and subject"
    if act.issuer_account and not _is_account_key(act.issuer_account):
        return f"activation token for {subject!r}: issuer_account is not an account key"
    if not is_subset(subject.encode(), act.subject.encode()):
        return f"activation token subject {act.subject!r} does not cover the import {subject!r}"
    return None


def activation_refusal(
    act: Activation,
    exporter: str,
    signing_keys: Iterable[str],
    revocations: Iterable[tuple[str, int]],
    now: float,
) -> str | None:
    """Why a token that fits its import does not let it be made now (None: it does)."""
    if act.issuer_account:
        if act.issuer_account != exporter:
            return f"activation issuer_account {act.issuer_account} is not account {exporter}"
        if act.issuer not in set(signing_keys):  # the account itself is no signing key
            return f"activation signed by {act.issuer}, not a signing key of {exporter}"
    if act.expires and act.expires <= now:
        return "activation token expired"
    if act.not_before and act.not_before > now:
        return "activation token not valid yet"
    if revoked(revocations, act.account, act.issued_at):
        return "activation token revoked by the export"
    return None
