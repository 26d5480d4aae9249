"""The client session: CONNECT options, authentication and the per-connection rules.

Theory of operation
-------------------
A client connection is in one of two states: before CONNECT and after it. Before
CONNECT the defaults apply (verbose and pedantic on, as nats-server has them) and,
when authentication is required, every operation other than CONNECT is an
``Authorization Violation``. A CONNECT is decoded strictly (a field of the wrong
JSON type closes the connection without ``-ERR``, as nats-server does), checked
against the configured credentials, and may be repeated: a later CONNECT replaces
the options. Everything here is synchronous and side-effect free; the connection
shell turns the results into bytes on the socket.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from edge.proto import errors
from edge.subjects import is_valid_publish_subject, is_valid_subject

_BOOL_FIELDS = ("verbose", "pedantic", "echo", "headers", "no_responders", "tls_required")
_STR_FIELDS = ("name", "lang", "version", "user", "pass", "auth_token", "nkey", "sig", "jwt")


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    verbose: bool = True
    pedantic: bool = True
    echo: bool = True
    headers: bool = False
    no_responders: bool = False
    tls_required: bool = False
    protocol: int = 0
    name: str = ""
    lang: str = ""
    version: str = ""
    user: str | None = None
    password: str | None = None
    auth_token: str | None = None
    nkey: str | None = None
    sig: str | None = None
    jwt: str | None = None
    account: str | None = None
    new_account: bool = False


DEFAULT_OPTIONS = ConnectOptions()


def _decode_connect(raw: bytes) -> dict[str, Any]:
    """The CONNECT JSON as nats-server reads it into its options struct.

    Go's decoder matches keys case-insensitively (a later key wins) and treats
    ``null`` as "no options", so both are honoured here.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise errors.BAD_CONNECT from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise errors.BAD_CONNECT
    return {str(k).lower(): v for k, v in obj.items()}


def parse_connect(raw: bytes) -> ConnectOptions:
    """Decode a CONNECT argument; a field of the wrong JSON type closes silently.

    Only the types are checked here; what the values mean (protocol range,
    no_responders without headers, account fields) is judged by
    ``ClientSession.connect`` after authentication, in nats-server's order.
    """
    obj = _decode_connect(raw)
    values: dict[str, Any] = {}
    for key in _BOOL_FIELDS:
        if obj.get(key) is not None:
            if not isinstance(obj[key], bool):
                raise errors.BAD_CONNECT
            values[key] = obj[key]
    for key in _STR_FIELDS:
        if obj.get(key) is not None:
            if not isinstance(obj[key], str):
                raise errors.BAD_CONNECT
            values["password" if key == "pass" else key] = obj[key]
    protocol = obj.get("protocol", 0)
    if protocol is None:
        protocol = 0
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise errors.BAD_CONNECT
    values["protocol"] = protocol
    account = obj.get("account")
    if account is not None and not isinstance(account, str):
        raise errors.BAD_CONNECT
    new_account = obj.get("new_account")
    if new_account is not None and not isinstance(new_account, bool):
        raise errors.BAD_CONNECT
    values["account"] = account or None
    values["new_account"] = bool(new_account)
    return ConnectOptions(**values)


def check_connect_values(options: ConnectOptions) -> None:
    """The checks nats-server makes once the client is authenticated."""
    if options.account is not None or options.new_account:
        # Clients may not pick their account; the server binds it from the credentials.
        raise errors.AUTH_VIOLATION
    if options.protocol < 0 or options.protocol > 1:
        raise errors.INVALID_PROTOCOL
    if options.no_responders and not options.headers:
        raise errors.NO_RESPONDERS_NEEDS_HEADERS


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the server accepts: a single user/password and/or a token."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    # Checked by the server's edge.auth Authenticator instead (users, nkeys, JWT,
    # certificates): authentication is required, ``authenticate`` never accepts.
    delegated: bool = False

    @property
    def required(self) -> bool:
        return self.user is not None or self.token is not None or self.delegated


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def authenticate(options: ConnectOptions, creds: Credentials) -> bool:
    """True if ``options`` carries acceptable credentials (constant-time compares)."""
    if not creds.required:
        return True
    if creds.delegated:
        return False
    if creds.token is not None and _same(options.auth_token, creds.token):
        return True
    if creds.user is not None and creds.password is not None:
        return _same(options.user, creds.user) and _same(options.password, creds.password)
    return False


class ClientSession:
    """State of one client connection, independent of any socket."""

    __slots__ = ("connected", "creds", "max_subscriptions", "options", "subscriptions")

    def __init__(self, creds: Credentials, max_subscriptions: int = 0) -> None:
        self.creds = creds
        self.max_subscriptions = max_subscriptions
        self.options = DEFAULT_OPTIONS
        self.connected = False
        self.subscriptions = 0

    def connect(self, raw: bytes) -> ConnectOptions:
        """Apply a CONNECT; raises ``ProtocolError`` to refuse it."""
        options = parse_connect(raw)
        return self.accept(options, self.connected or authenticate(options, self.creds))

    def accept(self, options: ConnectOptions, authenticated: bool) -> ConnectOptions:
        """Apply parsed CONNECT options once authentication has been judged."""
        if not self.connected and not authenticated:
            raise errors.AUTH_VIOLATION
        check_connect_values(options)
        self.options = options
        self.connected = True
        return options

    def require_connected(self) -> None:
        """Any operation before CONNECT is refused when authentication is required."""
        if not self.connected and self.creds.required:
            raise errors.AUTH_VIOLATION

    def check_subscribe(self, subject: bytes) -> None:
        # nats-server checks the limit first.
        if self.max_subscriptions and self.subscriptions >= self.max_subscriptions:
            raise errors.MAX_SUBSCRIPTIONS
        if not is_valid_subject(subject):
            raise errors.INVALID_SUBJECT

    def publish_subject_error(self, subject: bytes) -> errors.ProtocolError | None:
        """The non-fatal error for a publish subject, if any.

        Only a pedantic client is told: nats-server answers anything that is not
        a valid literal subject with ``Invalid Publish Subject`` in pedantic mode
        and says nothing otherwise. Whether the message is still delivered is
        ``publish_deliverable``'s question.
        """
        if self.options.pedantic and not is_valid_publish_subject(subject):
            return errors.INVALID_PUBLISH_SUBJECT
        return None


def publish_deliverable(subject: bytes) -> bool:
    """Whether a publish subject can be routed: every token non-empty.

    A published subject is literal: wildcard characters in it, even a ``>``
    that is not last, are delivered to the subscriptions that match them.
    """
    return bool(subject) and b".." not in subject and subject[:1] != b"." and subject[-1:] != b"."
