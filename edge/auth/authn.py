"""Who is connecting: CONNECT credentials to an identity (user, account, permissions).

Theory of operation
-------------------
The methods are tried in nats-server's order, and the first that applies decides
(there is no falling through to a weaker method once one is chosen):

1. operator mode: the client must present a user JWT (signed by an account the
   resolver knows, itself signed by the operator) and, unless the JWT is a
   bearer token, an Ed25519 signature of the INFO nonce by the user's nkey;
2. ``nkey`` in CONNECT and nkey users configured: the signature of the nonce;
3. ``user`` in CONNECT and users configured: the password (plain, compared in
   constant time, or bcrypt);
4. TLS ``verify_and_map``: the client certificate's e-mail/DNS names or subject
   DN names a configured user;
5. no credentials at all and a ``no_auth_user``: that user;
6. the single ``token`` or ``user``/``password`` of ``[authorization]``.

The result is an ``Identity`` or None (``Authorization Violation``). Pure module:
the nonce, the certificate names, the clock and the account JWT lookup are given.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.auth import jwt as natsjwt
from edge.auth.permissions import Permissions
from edge.auth.settings import GLOBAL_ACCOUNT, SecurityConfig, UserConfig, is_bcrypt
from edge.nkeys import NkeyError, decode_sig, public_key_bytes
from edge.proto.session import ConnectOptions

ACCOUNT_CACHE_MAX = 1024


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client. ``name`` is safe to log (never a secret)."""

    name: str
    account: str = GLOBAL_ACCOUNT
    permissions: Permissions = field(default_factory=Permissions)
    method: str = "none"
    max_subscriptions: int = 0  # 0: unlimited
    max_payload: int = 0
    account_limits: natsjwt.AccountClaims | None = None  # operator mode only


ANONYMOUS = Identity("")

# Looks up an account JWT by the account's public key (None: unknown account).
Resolver = Callable[[str], "str | None"]


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_password(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    if is_bcrypt(expected):
        import bcrypt  # only servers with hashed passwords load it

        try:
            return bool(bcrypt.checkpw(given.encode(), expected.encode()))
        except ValueError:
            return False
    return _same(given, expected)


def cert_identities(emails: tuple[str, ...], dns: tuple[str, ...], subject: str) -> tuple[str, ...]:
    """The names a client certificate may be mapped by, in nats-server's order."""
    return (*emails, *dns, *((subject,) if subject else ()))


class Authenticator:
    """Checks CONNECTs against the configured credentials."""

    def __init__(
        self,
        security: SecurityConfig,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.security = security
        self.user, self.password, self.token = user, password, token
        self.by_user: dict[str, UserConfig] = {u.user: u for u in security.users if u.user}
        self.by_nkey: dict[str, UserConfig] = {u.nkey: u for u in security.users if u.nkey}
        self.operator: natsjwt.Operator | None = None
        if security.operator is not None:
            import time

            self.operator = natsjwt.operator_from_jwt(security.operator, time.time())
        self.resolver = resolver
        self.map_certs = security.tls is not None and security.tls.verify_and_map
        self._accounts: dict[str, tuple[str, natsjwt.AccountClaims]] = {}

    @property
    def required(self) -> bool:
        return (
            self.user is not None
            or self.token is not None
            or bool(self.security.users)
            or self.operator is not None
            or self.map_certs
        )

    @property
    def needs_nonce(self) -> bool:
        return bool(self.by_nkey) or self.operator is not None

    def expensive(self, options: ConnectOptions) -> bool:
        """Whether checking ``options`` may take long (bcrypt): run it in a thread."""
        entry = self.by_user.get(options.user or "")
        if entry is not None and entry.password is not None and is_bcrypt(entry.password):
            return True
        return self.password is not None and is_bcrypt(self.password)

    def authenticate(
        self,
        options: ConnectOptions,
        nonce: bytes,
        now: float,
        cert_names: tuple[str, ...] | None = None,
    ) -> Identity | None:
        if not self.required:
            return ANONYMOUS
        if self.operator is not None:
            return self._jwt(options, nonce, now)
        if options.nkey is not None and self.by_nkey:
            return self._nkey(options, nonce)
        if options.user is not None and self.by_user:
            entry = self.by_user.get(options.user)
            if entry is None or entry.password is None:
                return None
            if not check_password(options.password, entry.password):
                return None
            return _identity(entry, "user")
        if self.map_certs:
            return self._mapped(cert_names or ())
        no_auth = self.security.no_auth_user
        if no_auth is not None and _no_credentials(options):
            entry = self.by_user.get(no_auth) or self.by_nkey.get(no_auth)
            return _identity(entry, "no_auth_user") if entry is not None else None
        if self.token is not None:
            return Identity("", method="token") if _same(options.auth_token, self.token) else None
        if (
            self.user is not None
            and self.password is not None
            and _same(options.user, self.user)
            and check_password(options.password, self.password)
        ):
            return Identity(self.user, method="user")
        return None

    def _nkey(self, options: ConnectOptions, nonce: bytes) -> Identity | None:
        entry = self.by_nkey.get(options.nkey or "")
        if entry is None or not _signed(entry.name, options.sig, nonce):
            return None
        return _identity(entry, "nkey")

    def _mapped(self, names: tuple[str, ...]) -> Identity | None:
        for name in names:
            entry = self.by_user.get(name)
            if entry is not None and entry.password is None:
                return _identity(entry, "tls")
        return None

    def _jwt(self, options: ConnectOptions, nonce: bytes, now: float) -> Identity | None:
        if not options.jwt:
            return None
        try:
            user = natsjwt.verified_user(options.jwt, now)
            account = self._account(natsjwt.user_account_key(user), now)
            if account is None:
                return None
            natsjwt.check_user_issuer(user, account)
        except natsjwt.JwtError:
            return None
        if not user.bearer and not _signed(user.public_key, options.sig, nonce):
            return None
        return Identity(
            name=user.name or user.public_key,
            account=account.public_key,
            permissions=user.permissions,
            method="jwt",
            max_subscriptions=user.max_subscriptions,
            max_payload=user.max_payload,
            account_limits=account,
        )

    def _account(self, key: str, now: float) -> natsjwt.AccountClaims | None:
        """The verified claims of account ``key``; verified JWTs are cached by text."""
        assert self.operator is not None
        token = self.resolver(key) if self.resolver is not None else None
        if token is None:
            return None
        cached = self._accounts.get(key)
        if cached is not None and cached[0] == token:
            claims = cached[1]  # its signature was checked; its expiry is checked below
        else:
            claims = natsjwt.verified_account(token, self.operator, now)
            if len(self._accounts) >= ACCOUNT_CACHE_MAX:
                self._accounts.clear()
            self._accounts[key] = (token, claims)
        if claims.expires and now >= claims.expires:
            raise natsjwt.JwtError("account JWT expired")
        if claims.public_key != key:
            raise natsjwt.JwtError("the resolver returned another account's JWT")
        return claims


@lru_cache(maxsize=1024)
def _public_key(public: str) -> Ed25519PublicKey | None:
    """Decoded once per key: the base32 and checksum work costs ~50 us in Python."""
    try:
        return Ed25519PublicKey.from_public_bytes(public_key_bytes(public))
    except (NkeyError, ValueError):
        return None


def _signed(public: str, sig: str | None, nonce: bytes) -> bool:
    if not sig or not nonce:
        return False
    key = _public_key(public)
    if key is None:
        return False
    try:
        key.verify(decode_sig(sig), nonce)
    except (NkeyError, InvalidSignature, ValueError):
        return False
    return True


def _no_credentials(options: ConnectOptions) -> bool:
    return (
        options.user is None
        and options.password is None
        and options.auth_token is None
        and options.nkey is None
        and options.jwt is None
    )


def _identity(entry: UserConfig, method: str) -> Identity:
    return Identity(
        name=entry.name,
        account=entry.account,
        permissions=entry.permissions,
        method=method,
        max_subscriptions=entry.max_subscriptions,
        max_payload=entry.max_payload,
    )
