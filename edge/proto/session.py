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


DEFAULT_OPTIONS = ConnectOptions()


def parse_connect(raw: bytes) -> ConnectOptions:
    """Decode a CONNECT argument, raising the error nats-server would give."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise errors.BAD_CONNECT from None
    if not isinstance(obj, dict):
        raise errors.BAD_CONNECT
    values: dict[str, Any] = {}
    for key in _BOOL_FIELDS:
        if key in obj and obj[key] is not None:
            if not isinstance(obj[key], bool):
                raise errors.BAD_CONNECT
            values[key] = obj[key]
    for key in _STR_FIELDS:
        if key in obj and obj[key] is not None:
            if not isinstance(obj[key], str):
                raise errors.BAD_CONNECT
            values["password" if key == "pass" else key] = obj[key]
    protocol = obj.get("protocol", 0)
    if protocol is None:
        protocol = 0
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise errors.BAD_CONNECT
    if protocol < 0 or protocol > 1:
        raise errors.INVALID_PROTOCOL
    values["protocol"] = protocol
    options = ConnectOptions(**values)
    if options.no_responders and not options.headers:
        raise errors.NO_RESPONDERS_NEEDS_HEADERS
    return options


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the server accepts: a single user/password and/or a token."""

    user: str | None = None
    password: str | None = None
    token: str | None = None

    @property
    def required(self) -> bool:
        return self.user is not None or self.token is not None


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def authenticate(options: ConnectOptions, creds: Credentials) -> bool:
    """True if ``options`` carries acceptable credentials (constant-time compares)."""
    if not creds.required:
        return True
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
        if not self.connected and not authenticate(options, self.creds):
            raise errors.AUTH_VIOLATION
        self.options = options
        self.connected = True
        return options

    def require_connected(self) -> None:
        """Any operation before CONNECT is refused when authentication is required."""
        if not self.connected and self.creds.required:
            raise errors.AUTH_VIOLATION

    def check_subscribe(self, subject: bytes) -> None:
        if not is_valid_subject(subject):
            raise errors.INVALID_SUBJECT
        if self.max_subscriptions and self.subscriptions >= self.max_subscriptions:
            raise errors.MAX_SUBSCRIPTIONS

    def publish_subject_error(self, subject: bytes) -> errors.ProtocolError | None:
        """The non-fatal error for a publish subject, if any.

        A subject with an empty token is refused in every mode; a subject with
        wildcard tokens only draws an error from a pedantic client, and nats-server
        still delivers it. The caller decides delivery with ``deliverable``.
        """
        if is_valid_publish_subject(subject):
            return None
        if not is_valid_subject(subject):
            return errors.INVALID_PUBLISH_SUBJECT
        return errors.INVALID_PUBLISH_SUBJECT if self.options.pedantic else None


def publish_deliverable(subject: bytes) -> bool:
    """Whether a publish subject can be routed at all (no empty tokens, no spaces)."""
    return is_valid_subject(subject)
