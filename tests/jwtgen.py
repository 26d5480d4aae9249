"""Build NATS JWTs (operator, account, user) and ``.creds`` files for tests.

A NATS JWT is ``b64url(header).b64url(claims).b64url(sig)`` without padding, where
``sig`` is the Ed25519 signature of ``header.claims`` by the issuer's nkey and the
header is ``{"typ":"JWT","alg":"ed25519-nkey"}``.  The claims carry ``jti`` (base32,
no padding, of a hash of the claims serialised without ``jti``), ``iat``, ``iss``
(issuer public key), ``sub`` (subject public key), ``name`` and ``nats`` (the kind of
claim, ``version: 2`` and the kind's own fields).

Signing chain in operator mode: the operator signs account JWTs, an account signs
its users' JWTs.  Only :mod:`edge.nkeys` is used for the keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from edge.nkeys import PREFIX_ACCOUNT, PREFIX_OPERATOR, PREFIX_USER, KeyPair

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}

#: No limits at all (what ``nsc`` writes for an unrestricted account).
UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
#: An unrestricted user: no permissions block entries, no limits.
UNLIMITED_USER: dict[str, Any] = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_jwt(
    signer: KeyPair,
    subject: str,
    name: str,
    nats: dict[str, Any],
    expires: int | None = None,
    issued_at: int | None = None,
) -> str:
    """A signed JWT: ``signer`` issues claims about ``subject`` (a public key)."""
    claims: dict[str, Any] = {
        "iat": int(time.time()) if issued_at is None else issued_at,
        "iss": signer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    }
    if expires is not None:
        claims["exp"] = expires
    digest = hashlib.sha256(_dumps(claims)).digest()
    claims = {"jti": base64.b32encode(digest).decode().rstrip("="), **claims}
    signing_input = f"{_b64(_dumps(HEADER))}.{_b64(_dumps(claims))}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def decode_claims(jwt: str) -> dict[str, Any]:
    """The claims of a JWT (not verified), for assertions."""
    body = jwt.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


def operator_jwt(operator: KeyPair, name: str = "OP", system_account: str = "") -> str:
    nats: dict[str, Any] = {"type": "operator", "version": 2}
    if system_account:
        nats["system_account"] = system_account
    return encode_jwt(operator, operator.public_key(), name, nats)


def account_jwt(operator: KeyPair, account: KeyPair, name: str, **fields: Any) -> str:
    """An account JWT; ``fields`` (exports, imports, revocations...) join its claims."""
    nats = {"type": "account", "version": 2, "limits": dict(UNLIMITED_ACCOUNT), **fields}
    return encode_jwt(operator, account.public_key(), name, nats)


def user_jwt(account: KeyPair, user: KeyPair, name: str) -> str:
    nats = {"type": "user", "version": 2, **UNLIMITED_USER}
    return encode_jwt(account, user.public_key(), name, nats)


def activation_jwt(
    signer: KeyPair,
    importer: str,
    subject: str,
    kind: str,
    issuer_account: str | None = None,
    expires: int | None = None,
    issued_at: int | None = None,
) -> str:
    """An activation token: ``signer`` (the exporting account, or one of its
    signing keys with ``issuer_account`` naming it) lets account ``importer``
    import ``subject`` of ``kind`` ("stream" or "service")."""
    nats: dict[str, Any] = {"type": "activation", "version": 2, "subject": subject, "kind": kind}
    if issuer_account is not None:
        nats["issuer_account"] = issuer_account
    return encode_jwt(signer, importer, subject, nats, expires, issued_at)


def creds_file_text(jwt: str, seed: str) -> str:
    """A ``.creds`` file in the layout ``nsc`` writes."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


@dataclass
class Account:
    """An account's key pair and its JWT (signed by the operator)."""

    name: str
    keys: KeyPair
    jwt: str

    @property
    def public_key(self) -> str:
        return self.keys.public_key()

    def user_creds(self, name: str, **fields: Any) -> str:
        """Text of a ``.creds`` file for a new user of this account; ``fields``
        (src, times, ...) join its claims."""
        user = KeyPair.generate(PREFIX_USER)
        nats = {"type": "user", "version": 2, **UNLIMITED_USER, **fields}
        jwt = encode_jwt(self.keys, user.public_key(), name, nats)
        return creds_file_text(jwt, user.seed())


@dataclass
class Operator:
    """An operator with a system account and any number of accounts."""

    keys: KeyPair
    system: Account
    accounts: dict[str, Account]

    @classmethod
    def create(cls, *account_names: str, name: str = "OP") -> Operator:
        keys = KeyPair.generate(PREFIX_OPERATOR)
        op = cls(keys, _new_account(keys, "SYS"), {})
        for account in account_names:
            op.accounts[account] = _new_account(keys, account)
        return op

    def set_claims(self, account: str, **fields: Any) -> None:
        """Re-issue ``account``'s JWT with ``fields`` (exports, imports, ...)."""
        acc = self.accounts[account]
        acc.jwt = account_jwt(self.keys, acc.keys, acc.name, **fields)

    @property
    def jwt(self) -> str:
        """The operator JWT, issued once (a config written again, e.g. for a
        reload, names the same operator JWT)."""
        cached: str | None = self.__dict__.get("_jwt")
        if cached is None:
            cached = self.__dict__["_jwt"] = operator_jwt(
                self.keys, system_account=self.system.public_key
            )
        return cached

    def hub_config(self) -> str:
        """nats-server config lines for operator mode with a memory resolver."""
        preload = [self.system, *self.accounts.values()]
        entries = "\n".join(f"  {a.public_key}: {a.jwt}" for a in preload)
        return (
            f"operator: {self.jwt}\n"
            f"system_account: {self.system.public_key}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{\n{entries}\n}}\n"
        )


def _new_account(operator: KeyPair, name: str) -> Account:
    keys = KeyPair.generate(PREFIX_ACCOUNT)
    return Account(name, keys, account_jwt(operator, keys, name))
