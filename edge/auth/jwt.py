"""NATS JWTs (decentralized auth): decode, verify signatures, read the claims.

A NATS JWT is ``b64url(header).b64url(claims).b64url(signature)``; the header says
``"alg": "ed25519-nkey"`` (``"ed25519"`` in v1 tokens) and the signature is the
issuer's Ed25519 signature over ``header.claims``; ``iss`` is the issuer's public
nkey. The chain of trust: the operator (configured) signs account JWTs, an
account signs its users' JWTs, and either may delegate to *signing keys* listed
in its own JWT (a user signed by a signing key names its account in
``issuer_account``).

``decode`` checks the form, the signature, the kinds of keys and the time window
(``exp``/``nbf``) and returns the claims; ``user_claims``/``account_claims`` read
what the server needs from them. Pure module: the clock is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edge.auth.activation import (
    Activation,
    activation_from_claims,
    import_token_problem,
)
from edge.auth.permissions import (
    Permissions,
    ResponsePermission,
    SubjectPermission,
    SubjectRule,
)
from edge.auth.settings import ExportConfig, ImportConfig
from edge.nkeys import (
    PREFIX_ACCOUNT,
    PREFIX_OPERATOR,
    PREFIX_USER,
    NkeyError,
    public_key_bytes,
    verify,
)
from edge.subjects import is_valid_subject

MAX_JWT = 16 * 1024  # a JWT larger than this is refused unread


class JwtError(ValueError):
    """A JWT that is malformed, badly signed, expired or of the wrong kind."""


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("not base64url") from None


def _json(part: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(part))
    except (ValueError, UnicodeDecodeError):
        raise JwtError("not JSON") from None
    if not isinstance(value, dict):
        raise JwtError("not a JSON object")
    return value


_KIND = {
    "operator": PREFIX_OPERATOR,
    "account": PREFIX_ACCOUNT,
    "user": PREFIX_USER,
    "activation": PREFIX_ACCOUNT,  # its sub is the importing account
}


def decode(token: str, kind: str, now: float | None) -> dict[str, Any]:
    """The verified claims of ``token``, a JWT of ``kind`` (operator/account/user/activation).

    The signature is checked against ``iss``; who may issue (the operator, an
    account or their signing keys) is the caller's question. ``now`` None: the
    time window (exp, nbf) is not checked.
    """
    if len(token) > MAX_JWT:
        raise JwtError("too large")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT (three parts expected)")
    header = _json(parts[0])
    if str(header.get("typ", "")).upper() != "JWT" or header.get("alg") not in (
        "ed25519-nkey",
        "ed25519",
    ):
        raise JwtError("unsupported JWT header")
    claims = _json(parts[1])
    issuer = claims.get("iss")
    subject = claims.get("sub")
    if not isinstance(issuer, str) or not isinstance(subject, str):
        raise JwtError("iss and sub must be strings")
    signature = _b64decode(parts[2])
    if not verify(issuer, f"{parts[0]}.{parts[1]}".encode(), signature):
        raise JwtError("bad signature")
    nats = claims.get("nats")
    if not isinstance(nats, dict):
        nats = {}
        claims["nats"] = nats
    claimed = nats.get("type", claims.get("type"))
    if claimed != kind:
        raise JwtError(f"expected a {kind} JWT, got {claimed!r}")
    try:
        public_key_bytes(subject, _KIND[kind])
    except NkeyError:
        raise JwtError(f"sub is not a {kind} public key") from None
    if now is not None:
        _check_window(claims, now)
    return claims


def _check_window(claims: dict[str, Any], now: float) -> None:
    exp = claims.get("exp")
    if exp is not None and (not isinstance(exp, int | float) or (exp > 0 and now >= exp)):
        raise JwtError("expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or now < nbf):
        raise JwtError("not valid yet")


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _subject_permission(value: object) -> SubjectPermission | None:
    if not isinstance(value, dict) or ("allow" not in value and "deny" not in value):
        return None
    allow = value.get("allow")
    return SubjectPermission(
        tuple(SubjectRule.parse(s) for s in _strings(allow)) if allow is not None else None,
        tuple(SubjectRule.parse(s) for s in _strings(value.get("deny"))),
    )


def _limit(nats: dict[str, Any], name: str) -> int:
    """A JWT limit: -1 (or absent) means unlimited, returned as 0."""
    value = nats.get(name, -1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


@dataclass(frozen=True, slots=True)
class UserClaims:
    public_key: str
    name: str
    issuer: str
    issuer_account: str | None
    bearer: bool
    permissions: Permissions
    max_subscriptions: int  # 0: unlimited
    max_payload: int  # 0: unlimited
    issued_at: int = 0
    src: tuple[str, ...] = ()  # CIDR networks the client must connect from
    times: tuple[tuple[str, str], ...] = ()  # (start, end) "HH:MM:SS" of the day
    times_location: str = ""  # their time zone ("": the server's)
    expires: float = 0.0  # exp (0: never)
    connection_types: tuple[str, ...] = ()  # allowed_connection_types (empty: any)


def _cidrs(value: object) -> tuple[str, ...]:
    """``src``: a list, or (older JWTs) one comma-separated string."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return _strings(value)


def _times(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        (str(v.get("start", "")), str(v.get("end", "")))
        if isinstance(v, dict)
        else ("", "")  # an entry that is not a range: refuses, as a bad range does
        for v in value
    )


def user_claims(claims: dict[str, Any]) -> UserClaims:
    nats: dict[str, Any] = claims["nats"]
    resp = nats.get("resp")
    responses = None
    if isinstance(resp, dict):
        max_msgs = resp.get("max", 1)
        ttl = resp.get("ttl", 0)  # nanoseconds in JWTs
        responses = ResponsePermission(
            max_msgs if isinstance(max_msgs, int) else 1,
            ttl / 1e9 if isinstance(ttl, int | float) and ttl > 0 else 0.0,
        )
    issuer_account = nats.get("issuer_account")
    return UserClaims(
        public_key=claims["sub"],
        name=str(claims.get("name", "")),
        issuer=claims["iss"],
        issuer_account=issuer_account if isinstance(issuer_account, str) else None,
        bearer=nats.get("bearer_token") is True,
        permissions=Permissions(
            _subject_permission(nats.get("pub")), _subject_permission(nats.get("sub")), responses
        ),
        max_subscriptions=_limit(nats, "subs"),
        max_payload=_limit(nats, "payload"),
        issued_at=iat if isinstance(iat := claims.get("iat"), int) else 0,
        src=_cidrs(nats.get("src")),
        times=_times(nats.get("times")),
        times_location=str(nats.get("times_location") or ""),
        expires=float(exp) if isinstance(exp := claims.get("exp"), int | float) else 0.0,
        connection_types=_strings(nats.get("allowed_connection_types")),
    )


def read_user(token: str) -> UserClaims:
    """The claims of a user JWT whose signature was checked already (by the
    authenticator, on the same text): read again without verifying."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT (three parts expected)")
    claims = _json(parts[1])
    if not isinstance(claims.get("nats"), dict):
        claims["nats"] = {}
    return user_claims(claims)


@dataclass(frozen=True, slots=True)
class AccountClaims:
    public_key: str
    name: str
    issuer: str
    signing_keys: frozenset[str]
    max_connections: int  # 0: unlimited
    max_subscriptions: int
    max_payload: int
    expires: float = 0.0  # 0: never
    exports: tuple[ExportConfig, ...] = ()
    imports: tuple[ImportConfig, ...] = ()
    # Entries of exports/imports that cannot be used, each with why (to be logged).
    dropped: tuple[str, ...] = ()
    # User public key (or "*": every user) -> revoked if issued at or before (s).
    revocations: tuple[tuple[str, int], ...] = ()


def _signing_keys(nats: dict[str, Any]) -> frozenset[str]:
    keys: set[str] = set()
    for entry in nats.get("signing_keys") or ():
        if isinstance(entry, str):
            keys.add(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("key"), str):
            keys.add(entry["key"])  # a scoped signing key
    return frozenset(keys)


def account_claims(claims: dict[str, Any]) -> AccountClaims:
    nats: dict[str, Any] = claims["nats"]
    limits = nats.get("limits")
    if not isinstance(limits, dict):
        limits = {}
    exports, imports, dropped = _exports_imports(nats, claims["sub"])
    return AccountClaims(
        public_key=claims["sub"],
        name=str(claims.get("name", "")),
        issuer=claims["iss"],
        signing_keys=_signing_keys(nats),
        max_connections=_limit(limits, "conn"),
        max_subscriptions=_limit(limits, "subs"),
        max_payload=_limit(limits, "payload"),
        expires=float(claims.get("exp") or 0),
        exports=exports,
        imports=imports,
        dropped=tuple(dropped),
        revocations=_revocations(nats.get("revocations")),
    )


def _revocations(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        return ()
    # JSON may hold Infinity (Python's json reads it): not a time, left out.
    return tuple(
        (k, int(v))
        for k, v in value.items()
        if isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    )


_REF = re.compile(r"^\$(\d+)$|^\{\{\s*wildcard\s*\(\s*(\d+)\s*\)\s*\}\}$")


def _plain(subject: str) -> str:
    """A subject with its ``$N`` wildcard references as the ``*`` they stand for."""
    return ".".join("*" if _REF.match(t) else t for t in subject.split("."))


def _valid(subject: object) -> bool:
    return isinstance(subject, str) and is_valid_subject(_plain(subject).encode())


_RESPONSE_TYPES = {
    "": "singleton",
    "Singleton": "singleton",
    "Stream": "stream",
    "Chunked": "chunked",
}


def _jwt_export(entry: object) -> ExportConfig:
    """An export; one nats-server 2.9.10 would find invalid makes the whole
    account JWT invalid (JwtError: its users are refused), as there."""
    if not isinstance(entry, dict):
        raise JwtError("an export entry is not an object")
    kind, subject = entry.get("type"), entry.get("subject")
    name = entry.get("name", "")
    if kind not in ("stream", "service") or not isinstance(subject, str) or not _valid(subject):
        raise JwtError(f"export {name!r}: needs type stream/service and a valid subject")
    response = _RESPONSE_TYPES.get(str(entry.get("response_type") or ""))
    if response is None:
        raise JwtError(f"export {name!r}: response_type must be Singleton, Stream or Chunked")
    return ExportConfig(
        kind,
        subject.encode(),
        None,
        response,
        entry.get("token_req") is True,
        _revocations(entry.get("revocations")),
    )


def _references_fit(subject: str, local: str) -> bool:
    """Each ``$N`` of ``local`` names one of ``subject``'s ``*`` wildcards."""
    stars = subject.split(".").count("*")
    for token in local.split("."):
        match = _REF.match(token)
        if match is not None and not 0 < int(match.group(1) or match.group(2)) <= stars:
            return False
    return True


def _jwt_import(entry: object, importer: str = "") -> ImportConfig | str:
    """An import as nats-server 2.9 reads it. ``local_subject`` (with ``$N``
    references) is the importer's subject; without it, a service import's
    ``subject`` is the importer's and ``to`` the exporter's, while a stream
    import's ``to`` is a prefix put before the exporter's subject.

    What 2.9.10 finds invalid (no or a bad subject, no account, an unknown type,
    a ``$N`` naming no wildcard, an activation ``token`` that is no valid token
    for this import: see ``_check_token``) raises JwtError: the account is
    unusable. What
    it lets pass but leafgate cannot use (an account that is no key, a local
    subject that is no subject) is returned as the reason it is left out."""
    if not isinstance(entry, dict):
        raise JwtError("an import entry is not an object")
    kind, account, subject = entry.get("type"), entry.get("account"), entry.get("subject")
    name = entry.get("name", "")
    if kind not in ("stream", "service") or not isinstance(account, str) or not _valid(subject):
        raise JwtError(f"import {name!r}: needs type stream/service, an account and a subject")
    assert isinstance(subject, str)
    local, to = entry.get("local_subject"), entry.get("to")
    if local and not (isinstance(local, str) and _references_fit(subject, local)):
        raise JwtError(f"import {name!r}: local_subject {local!r} names missing wildcards")
    token = entry.get("token")
    token = token if isinstance(token, str) and token else None
    if token is not None:
        # The exporter's subject: a service import's ``to`` in the older spelling.
        exported = str(to) if kind == "service" and to and not local else subject
        _check_token(token, kind, account, importer, exported)
    if not account.startswith("A") or len(account) != 56:
        return f"import {name!r}: account {account!r} is not an account public key"
    for value in (local, to):
        if value and not _valid(value):
            return f"import {name!r}: not a valid subject: {value!r}"
    if local:
        remote, mine = subject, str(local)
    elif kind == "service":
        remote, mine = str(to or subject), subject
    else:
        remote, mine = subject, (str(to).rstrip(".") + "." + subject) if to else subject
    if remote != _plain(remote):
        return f"import {name!r}: the exporter's subject has wildcard references"
    return ImportConfig(kind, account, remote.encode(), mine.encode(), token)


def _check_token(token: str, kind: str, exporter: str, importer: str, subject: str) -> None:
    """An import's activation token, as 2.9.10 checks it with the account JWT
    (signature, issuer, importing account, kind, subject; not its times): a
    token that fails makes the importing account JWT invalid."""
    try:
        claims = decode(token, "activation", None)
    except JwtError as exc:
        raise JwtError(f"import of {subject!r}: invalid activation token ({exc})") from None
    if not claims["iss"].startswith(("A", "O")):
        raise JwtError(f"import of {subject!r}: activation token not signed by an account")
    problem = import_token_problem(
        activation_from_claims(claims), kind, exporter, importer, subject
    )
    if problem is not None:
        raise JwtError(f"import of {subject!r}: {problem}")


def read_activation(token: str) -> Activation:
    """The fields of an import's activation token, verified with its account
    JWT already (by ``verified_account``): read again without verifying."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT (three parts expected)")
    return activation_from_claims(_json(parts[1]))


def _entries(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _exports_imports(
    nats: dict[str, Any], importer: str
) -> tuple[tuple[ExportConfig, ...], tuple[ImportConfig, ...], list[str]]:
    exports: list[ExportConfig] = []
    imports: list[ImportConfig] = []
    dropped: list[str] = []
    for entry in _entries(nats.get("exports")):
        exports.append(_jwt_export(entry))
    for entry in _entries(nats.get("imports")):
        imp = _jwt_import(entry, importer)
        if isinstance(imp, str):
            dropped.append(imp)
        else:
            imports.append(imp)
    return tuple(exports), tuple(imports), dropped


@dataclass(frozen=True, slots=True)
class Operator:
    public_key: str
    signing_keys: frozenset[str]
    system_account: str | None

    def may_issue(self, key: str) -> bool:
        return key == self.public_key or key in self.signing_keys


def operator_from_jwt(token: str, now: float) -> Operator:
    claims = decode(token, "operator", now)
    nats: dict[str, Any] = claims["nats"]
    system = nats.get("system_account")
    return Operator(claims["sub"], _signing_keys(nats), system if isinstance(system, str) else None)


def verified_account(token: str, operator: Operator, now: float) -> AccountClaims:
    claims = decode(token, "account", now)
    if not operator.may_issue(claims["iss"]):
        raise JwtError("account JWT not issued by the operator")
    return account_claims(claims)


def verified_user(token: str, now: float) -> UserClaims:
    """A user JWT's claims (its signature checked; its issuer not yet: see
    ``check_user_issuer`` once the account is known)."""
    return user_claims(decode(token, "user", now))


def user_account_key(user: UserClaims) -> str:
    """The account the user belongs to: ``issuer_account`` or the issuer itself."""
    return user.issuer_account or user.issuer


def check_user_issuer(user: UserClaims, account: AccountClaims) -> None:
    if user.issuer != account.public_key and user.issuer not in account.signing_keys:
        raise JwtError("user JWT not issued by its account or one of its signing keys")
