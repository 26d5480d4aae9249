"""The server's security shell: TLS on the client port, CONNECT authentication,
permission checks with their errors and logs, accounts and their limits.

The decisions are made by the pure modules in ``edge.auth`` (who a CONNECT is,
what a user may publish or subscribe) and ``edge.accounts`` (account routers and
imports); this module feeds them the nonce, the certificate, the clock and the
files, runs bcrypt in a worker thread, and turns refusals into ``-ERR`` lines and
log events (names and subjects, never passwords, tokens or signatures).

In operator mode an account JWT may change while its users are connected (a
reload, a claims update from the system account: edge.claims_updates); what
changed is applied to them (``account_changed``), as nats-server 2.9.10 does.

Only servers configured with users, accounts, TLS or an operator have a
``Security``; the others keep the original, cheaper CONNECT path.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import ssl
import time
from typing import TYPE_CHECKING

import trio

from edge.accounts import Accounts
from edge.auth.access import expires_at, refusal, revoked
from edge.auth.authn import Authenticator, Identity, Resolver, cert_identities
from edge.auth.jwt import (
    AccountClaims,
    JwtError,
    UserClaims,
    account_claims,
    check_user_issuer,
    decode,
    read_user,
    user_account_key,
    verified_account,
    verified_user,
)
from edge.auth.permissions import (
    PublishCache,
    delivery_denied,
    deny_subjects,
    needs_deny_filter,
    publish_violation,
    subscribe_allowed,
    subscribe_violation,
)
from edge.auth.settings import GLOBAL_ACCOUNT, SecurityConfig, TLSServerConfig
from edge.config import ConfigError, ServerConfig
from edge.connection import ClientConnection
from edge.expiry import ACCOUNT_EXPIRED, Expiries
from edge.log import get_logger
from edge.proto import errors
from edge.proto.errors import CloseReason, ProtocolError
from edge.proto.session import ConnectOptions, parse_connect
from edge.router import Router, Subscription
from edge.subjects import is_valid_publish_subject

if TYPE_CHECKING:
    from edge.server import Server

log = get_logger("edge.security")

MAX_ACCOUNT_CONNECTIONS = ProtocolError(
    "maximum account active connections exceeded", True, CloseReason.MAX_CONNECTIONS
)
# 2.9.10's text for a connected user its account's new JWT revokes.
AUTH_REVOKED = ProtocolError("User Authentication Revoked", True, CloseReason.AUTH_VIOLATION)


def tls_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """The client port's TLS context; a bad file is a ConfigError naming its key and path."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "tls.cert_file",
            f"cannot load certificate {tls.cert_file!r} with key {tls.key_file!r}: {exc}",
        ) from None
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("tls.ca_file", f"cannot load CA {tls.ca_file!r}: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify or tls.verify_and_map else ssl.CERT_NONE
    return ctx


def _dir_resolver(directory: str) -> Resolver:
    def resolve(account: str) -> str | None:
        # Account public keys are base32: no path separators can sneak in.
        if not account.isalnum():
            return None
        try:
            with open(os.path.join(directory, account + ".jwt"), encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return None

    return resolve


class GuardedConnection(ClientConnection):
    """A client connection of a server with permissions: deliveries that need a
    check (deny filters, reply subjects to remember for allow_responses) go
    through ``deliver``; the others stay on the router's inline path."""

    __slots__ = ()

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        if self.deny and delivery_denied(self.deny, subject):
            return
        if reply and self.perms is not None and self.perms.rule is not None:
            self.perms.note_request(reply, trio.current_time())
        super().deliver(sub, subject, reply, hdr, data)


class Security:
    def __init__(self, server: Server, config: ServerConfig) -> None:
        sec = config.security
        self.server = server
        resolver: Resolver | None = None
        self._preload = dict(sec.resolver_preload)
        self._pushed: dict[str, str] = {}  # MEMORY: JWTs of claims updates
        if sec.resolver == "MEMORY":
            resolver = self._memory
        elif sec.resolver_dir is not None:
            resolver = _dir_resolver(sec.resolver_dir)
        self.settings = sec
        self._resolver = resolver
        self.authenticator = _authenticator(config, resolver)
        self.tls = sec.tls
        self.ssl = tls_context(sec.tls) if sec.tls is not None else None
        self.accounts = Accounts(server.router, sec.accounts)
        self.connections: dict[str, int] = {}
        self.expiries = Expiries()  # run by the server (Server.run's services)
        self.jwt_users: dict[int, str] = {}  # cid -> the user JWT's public key
        self._users: dict[int, UserClaims] = {}  # cid -> its user JWT's claims
        self._deadlines: dict[tuple[str, str], float] = {}  # (kind, account) -> pending call
        self.claims_updates = None
        system = sec.system_account or (
            self.authenticator.operator.system_account if self.authenticator.operator else None
        )
        if self.authenticator.operator is not None and system:
            from edge.claims_updates import ClaimsUpdates

            self.claims_updates = ClaimsUpdates(
                self.accounts.router(system), self.claims_update, self._server_info
            )
        # Whether any connection may carry permissions (then GuardedConnection).
        self.guarded = sec.operator is not None or any(not u.permissions.empty for u in sec.users)

    # ---- reload ------------------------------------------------------------------------

    def reload_users(self, config: ServerConfig) -> int:
        """New users, passwords, permissions and no_auth_user (a SIGHUP; edge.reload
        checked that accounts, TLS and operator settings are unchanged).

        New connections authenticate against the new settings. An existing
        connection whose user was removed or whose rules changed is closed with
        'Authorization Violation' (clients reconnect and get the new rules), as
        nats-server does on reload; the others stay. Returns how many were closed.
        """
        old, new = self.settings, config.security
        if new.resolver == "MEMORY":
            # The file's preload replaces the updates pushed since (as 2.9.10
            # makes a new memory resolver from it).
            self._preload = dict(new.resolver_preload)
            self._pushed.clear()
        self.authenticator = _authenticator(config, self._resolver)
        self.settings = new
        self.guarded = new.operator is not None or any(not u.permissions.empty for u in new.users)
        closed = 0
        for client in list(self.server.clients.values()):
            identity = client.identity
            if not isinstance(identity, Identity) or identity.method in ("jwt", "token"):
                continue
            if _rules_of(old, identity.name) != _rules_of(new, identity.name):
                log.info("client_closed_by_reload", cid=client.cid, user=identity.name)
                client.close(errors.AUTH_VIOLATION.reason, errors.AUTH_VIOLATION.wire())
                closed += 1
        return closed + self.refresh_accounts()

    # ---- the connection's start ---------------------------------------------------

    def connection_class(self) -> type[ClientConnection]:
        return GuardedConnection if self.guarded else ClientConnection

    def info_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {}
        if self.authenticator.required:
            fields["auth_required"] = True
        if self.tls is not None:
            fields["tls_required"] = True
            if self.tls.verify or self.tls.verify_and_map:
                fields["tls_verify"] = True
        return fields

    def nonce(self) -> str | None:
        return secrets.token_urlsafe(11) if self.authenticator.needs_nonce else None

    async def start_tls(
        self, stream: trio.SocketStream, client: ClientConnection, info: bytes
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """INFO then the handshake (or the handshake first); None if it failed."""
        assert self.ssl is not None and self.tls is not None
        tls = trio.SSLStream(stream, self.ssl, server_side=True)
        try:
            with trio.fail_after(self.tls.timeout):
                if not self.tls.handshake_first:
                    await stream.send_all(info)
                await tls.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            log.info("tls_handshake_failed", cid=client.cid, ip=client.ip, error=str(cause)[:200])
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await trio.aclose_forcefully(stream)
            return None
        return tls

    # ---- CONNECT ------------------------------------------------------------------

    async def connect(self, client: ClientConnection, raw: bytes) -> ConnectOptions:
        options = parse_connect(raw)
        nonce = client.nonce
        names = _cert_names(client.stream)
        auth = self.authenticator
        if auth.expensive(options):
            identity = await trio.to_thread.run_sync(
                auth.authenticate, options, nonce, time.time(), names
            )
        else:
            identity = auth.authenticate(options, nonce, time.time(), names)
        if identity is None:
            extra = {}
            if auth.operator is not None:
                extra["reason"] = self._jwt_refusal(options.jwt)
            log.warning(
                "authorization_violation",
                cid=client.cid,
                ip=client.ip,
                user=options.user or options.nkey or "",
                **extra,
            )
            raise errors.AUTH_VIOLATION
        user = None
        if identity.account_limits is not None and options.jwt:
            user = self._check_access(client, identity.account_limits, options.jwt)
        accepted = client.session.accept(options, True)
        self._bind(client, identity)
        if user is not None:
            self.jwt_users[client.cid] = user.public_key  # /connz's authorized_user
            self._users[client.cid] = user
            expires = expires_at(user.expires, user.times, user.times_location, time.time())
            if expires is not None:
                self.expiries.add(client, expires)
        return accepted

    def _jwt_refusal(self, token: str | None) -> str:
        """Why the authenticator refused a CONNECT in operator mode, for the log
        (worked out again on the refusal path only; keys and reasons, no secret)."""
        if not token:
            return "no user JWT"
        try:
            user = verified_user(token, time.time())
        except JwtError as exc:
            return f"user JWT: {exc}"
        key = user_account_key(user)
        account = self._account_claims(key)
        if account is None:
            return f"account {key} unknown or its JWT invalid"
        try:
            check_user_issuer(user, account)
        except JwtError as exc:
            return str(exc)
        return "the nonce's signature does not match the user's key"

    def _check_access(
        self, client: ClientConnection, account: AccountClaims, token: str
    ) -> UserClaims:
        """The user JWT's src, times and its account's revocations (its signature
        and issuer were verified by the authenticator)."""
        user = read_user(token)
        now = time.time()
        reason = refusal(
            user.public_key,
            user.issued_at,
            user.src,
            user.times,
            user.times_location,
            account.revocations,
            client.ip,
            now,
            user.connection_types,
        )
        if reason is not None:
            log.warning(
                "authorization_violation",
                cid=client.cid,
                ip=client.ip,
                user=user.public_key,
                account=account.public_key,
                reason=reason,
            )
            raise errors.AUTH_VIOLATION
        return user

    def _bind(self, client: ClientConnection, identity: Identity) -> None:
        account = identity.account
        limits = self.accounts.limits.get(account)
        claims = identity.account_limits
        max_conns = (limits.max_connections if limits else 0) or (
            claims.max_connections if claims else 0
        )
        if max_conns and self.connections.get(account, 0) >= max_conns:
            log.warning("account_max_connections", cid=client.cid, account=account)
            raise MAX_ACCOUNT_CONNECTIONS
        self.connections[account] = self.connections.get(account, 0) + 1
        client.identity = identity
        if claims is not None:
            self._join(claims)
        client.router = self.accounts.router(account)
        subs = _lowest(
            client.session.max_subscriptions,
            identity.max_subscriptions,
            limits.max_subscriptions if limits else 0,
            claims.max_subscriptions if claims else 0,
        )
        client.session.max_subscriptions = subs
        payload = _lowest(
            client.parser.max_payload,
            identity.max_payload,
            limits.max_payload if limits else 0,
            claims.max_payload if claims else 0,
        )
        client.parser.max_payload = payload
        perms = identity.permissions
        if not perms.empty:
            if perms.publish is not None or perms.responses is not None:
                client.perms = PublishCache(perms)
                client.pub_valid = client.perms.allowed
            client.sub_perm = perms.subscribe
            if perms.responses is not None:
                client.inline = False  # deliveries note reply subjects
        log.debug("client_authenticated", cid=client.cid, user=identity.name, account=account)

    def _account_claims(self, key: str) -> AccountClaims | None:
        """The verified JWT claims of operator-mode account ``key`` (None if unusable)."""
        operator = self.authenticator.operator
        token = self._resolver(key) if self._resolver is not None else None
        if operator is None or token is None:
            return None
        try:
            claims = verified_account(token, operator, time.time())
        except JwtError as exc:
            log.warning("account_jwt_refused", account=key, reason=str(exc))
            return None
        return claims if claims.public_key == key else None

    def forget(self, client: ClientConnection) -> None:
        self.expiries.forget(client)
        self.jwt_users.pop(client.cid, None)
        self._users.pop(client.cid, None)
        identity = client.identity
        if isinstance(identity, Identity):
            left = self.connections.get(identity.account, 1) - 1
            self.connections[identity.account] = max(left, 0)

    # ---- permissions --------------------------------------------------------------

    def check_publish(self, client: ClientConnection, subject: bytes) -> bool:
        perms = client.perms
        assert perms is not None
        if perms.check(subject, trio.current_time()):
            if not is_valid_publish_subject(subject):
                perms.allowed.discard(subject)  # the fast path takes valid subjects only
            return True
        client.send(publish_violation(subject))
        log.warning(
            "publish_violation",
            cid=client.cid,
            user=_name(client),
            subject=subject.decode("utf-8", "replace"),
        )
        return False

    def check_subscribe(
        self, client: ClientConnection, subject: bytes, queue: bytes | None
    ) -> bool:
        perm = client.sub_perm
        if subscribe_allowed(perm, subject, queue):
            if not client.deny and needs_deny_filter(perm, subject):
                client.deny = deny_subjects(perm)
                client.inline = False
            return True
        client.send(subscribe_violation(subject, queue))
        log.warning(
            "subscribe_violation",
            cid=client.cid,
            user=_name(client),
            subject=subject.decode("utf-8", "replace"),
            queue=queue.decode("utf-8", "replace") if queue else None,
        )
        return False

    def router_for(self, account: str | None) -> Router:
        """The router of a local account (a leafnode remote's local_account); in
        operator mode an account public key, whose JWT imports are made now."""
        name = account or GLOBAL_ACCOUNT
        joined = name in self.accounts.jwt_claims
        if self.authenticator.operator is not None and name != GLOBAL_ACCOUNT and not joined:
            claims = self._account_claims(name)
            if claims is not None:
                self._join(claims)
            else:
                log.warning("local_account_unknown", account=name)
        return self.accounts.router(name)

    def _join(self, claims: AccountClaims, force: bool = False) -> None:
        problems = self.accounts.join_jwt_account(claims, self._account_claims, time.time(), force)
        for problem in problems:
            log.warning(
                "account_import_refused",
                account=problem.account,
                subject=problem.subject,
                reason=problem.reason,
            )
        key = claims.public_key
        if claims.expires:
            self._call_at("account_expired", key, claims.expires)
        activation = self.accounts.activation_expiries.get(key)
        if activation:
            self._call_at("activation_expired", key, activation)

    # ---- account JWTs that change while their users are connected ----------------

    def _memory(self, key: str) -> str | None:
        return self._pushed.get(key) or self._preload.get(key)

    def _call_at(self, kind: str, key: str, when: float) -> None:
        """One pending deadline per kind and account (a new JWT may move it)."""
        if self._deadlines.get((kind, key)) == when:
            return
        self._deadlines[(kind, key)] = when

        def call() -> None:
            if self._deadlines.get((kind, key)) != when:
                return  # moved or dropped since
            del self._deadlines[(kind, key)]
            claims = self.accounts.jwt_claims.get(key)
            if claims is None:
                return
            if kind == "account_expired" and claims.expires == when:
                self._close_users(key, ACCOUNT_EXPIRED, "account JWT expired")
            elif kind == "activation_expired":
                self._join(claims, force=True)  # without the expired import

        self.expiries.call_at(when, call)

    def _clients_of(self, key: str) -> list[ClientConnection]:
        return [
            c
            for c in self.server.clients.values()
            if isinstance(c.identity, Identity)
            and c.identity.account == key
            and c.close_reason is None
        ]

    def _close_users(self, key: str, error: ProtocolError, reason: str) -> int:
        clients = self._clients_of(key)
        for client in clients:
            log.warning(
                "client_closed_by_account_update",
                cid=client.cid,
                user=self.jwt_users.get(client.cid, _name(client)),
                account=key,
                reason=reason,
            )
            client.close(error.reason, error.wire())
        return len(clients)

    def refresh_accounts(self) -> int:
        """Look up again every account JWT in use (a reload: new preload, or new
        files in the directory) and apply what changed; returns how many
        connections were closed."""
        if self.authenticator.operator is None:
            return 0
        keys = {*self.accounts.jwt_claims, *self.accounts.exporters}
        return sum(self.account_changed(key) for key in sorted(keys))

    def account_changed(self, key: str) -> int:
        """Apply account ``key``'s current JWT to what uses it, as 2.9.10's
        claims update does: its imports are made again (and those of the
        accounts importing from it); a connected user the JWT now revokes gets
        'User Authentication Revoked', one whose signing key it no longer
        lists is closed, the newest connections beyond its connection limit
        are kept; a JWT gone or invalid (expired included) closes its users
        with 'Authorization Violation' (as 2.9.10's reload re-authorizes them).
        Returns how many connections were closed."""
        claims = self._account_claims(key)
        known = self.accounts.jwt_claims.get(key) or self.accounts.exporters.get(key)
        if claims is None:
            if known is None:
                return 0
            importers = self.accounts.importers_of(key)
            self.accounts.drop_jwt_account(key)
            self._deadlines = {k: v for k, v in self._deadlines.items() if k[1] != key}
            for importer in importers:
                self._join(importer, force=True)
            log.warning("account_jwt_unusable", account=key)
            return self._close_users(key, errors.AUTH_VIOLATION, "account JWT gone or invalid")
        if known == claims:
            return 0
        log.info("account_jwt_updated", account=key, name=claims.name)
        if key in self.accounts.jwt_claims:
            self._join(claims)
        if key in self.accounts.exporters:
            self.accounts.exporters[key] = claims
        for importer in self.accounts.importers_of(key):
            self._join(importer, force=True)
        if not claims.expires:
            self._deadlines.pop(("account_expired", key), None)
        return self._recheck_users(key, claims)

    def _recheck_users(self, key: str, claims: AccountClaims) -> int:
        closed = 0
        clients = sorted(self._clients_of(key), key=lambda c: c.cid, reverse=True)
        for i, client in enumerate(clients):
            identity = client.identity
            assert isinstance(identity, Identity)
            user = self._users.get(client.cid)
            name = self.jwt_users.get(client.cid, identity.name)
            if claims.max_connections and i >= claims.max_connections:
                error, reason = MAX_ACCOUNT_CONNECTIONS, "beyond the account's connection limit"
            elif user is not None and revoked(claims.revocations, user.public_key, user.issued_at):
                error, reason = AUTH_REVOKED, "user JWT revoked by its account"
            elif user is not None and user.issuer not in (key, *claims.signing_keys):
                error, reason = errors.AUTH_VIOLATION, "user JWT's signing key removed"
            else:
                client.identity = dataclasses.replace(identity, account_limits=claims)
                continue
            log.warning(
                "client_closed_by_account_update",
                cid=client.cid,
                user=name,
                account=key,
                reason=reason,
            )
            if error is errors.AUTH_VIOLATION:
                client.close(error.reason)  # 2.9.10 closes these without -ERR
            else:
                client.close(error.reason, error.wire())
            closed += 1
        return closed

    def claims_update(self, key: str, body: bytes) -> tuple[str, str | None]:
        """A claims update from the system account (edge.claims_updates): the
        JWT replaces account ``key``'s if the account is in use and the JWT is
        valid (nats-server 2.9.10's accountClaimUpdate; the memory resolver
        keeps it until the next reload, the directory resolver writes the file)."""
        if not body:
            return "jwt update error", "request body is empty"
        token = body.decode("utf-8", "replace").strip()
        operator = self.authenticator.operator
        assert operator is not None
        try:
            claims = account_claims(decode(token, "account", None))
        except JwtError as exc:
            return "jwt update resulted in error", str(exc)
        if claims.public_key != key:
            return "jwt update resulted in error", "subject does not match jwt content"
        if key not in self.accounts.jwt_claims and key not in self.accounts.exporters:
            return "jwt update skipped", None
        try:
            verified_account(token, operator, time.time())
        except JwtError as exc:
            log.warning("account_jwt_update_refused", account=key, reason=str(exc))
            return "jwt update resulted in error", str(exc)
        if self.settings.resolver_dir is not None:
            _store_jwt(self.settings.resolver_dir, key, token)
        else:
            self._pushed[key] = token
        self.account_changed(key)
        return "jwt updated", None

    def _server_info(self) -> dict[str, object]:
        server = self.server
        return {"name": server.name, "host": "", "id": server.server_id, "ver": server.version}


def _store_jwt(directory: str, key: str, token: str) -> None:
    """Write an account's JWT file atomically (a claims update, directory resolver)."""
    if not key.isalnum():
        return
    path = os.path.join(directory, key + ".jwt")
    temporary = path + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("account_jwt_store_failed", account=key, error=str(exc))


def _authenticator(config: ServerConfig, resolver: Resolver | None) -> Authenticator:
    try:
        return Authenticator(
            config.security,
            config.auth.user,
            config.auth.password,
            config.auth.token,
            resolver,
        )
    except ValueError as exc:
        raise ConfigError("operator", f"not a valid operator JWT: {exc}") from None


def _rules_of(sec: SecurityConfig, name: str) -> tuple[object, ...]:
    """What decides a connected user's rights: its entry (None if gone), and the
    default permissions and no_auth_user that may apply to it."""
    entry = next((u for u in sec.users if u.name == name), None)
    defaults = sec.default_permissions if entry is None or entry.permissions.empty else None
    return (entry, defaults, sec.no_auth_user == name)


def _name(client: ClientConnection) -> str:
    identity = client.identity
    return identity.name if isinstance(identity, Identity) else ""


def _lowest(*limits: int) -> int:
    """The tightest of the non-zero limits (0: none)."""
    set_limits = [n for n in limits if n > 0]
    return min(set_limits) if set_limits else 0


def _cert_names(stream: object) -> tuple[str, ...] | None:
    if not isinstance(stream, trio.SSLStream):
        return None
    der = stream.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    emails: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = tuple(san.get_values_for_type(x509.RFC822Name))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return cert_identities(emails, dns, cert.subject.rfc4514_string())
