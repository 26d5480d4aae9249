"""The security part of the configuration: users, accounts, TLS, operator mode.

Key names are nats-server's, written in TOML::

    no_auth_user = "guest"

    [tls]                       # TLS on the client port
    cert_file = "server.pem"
    key_file = "server-key.pem"
    ca_file = "ca.pem"          # with verify: client certificates checked against it
    verify = true               # or verify_and_map = true (certificate -> user)
    handshake_first = false
    timeout = 2

    [[authorization.users]]
    user = "alice"
    password = "$2a$11$..."     # plain or bcrypt
    permissions = { publish = { allow = ["orders.>"] }, subscribe = ["replies.>"] }

    [[authorization.users]]
    nkey = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"

    [accounts.A]
    users = [{ user = "a", password = "pa" }]
    exports = [{ stream = "public.>" }, { service = "help", accounts = ["B"] }]
    imports = [{ service = { account = "B", subject = "time" }, to = "b.time" }]

    operator = "op.jwt"         # a JWT or a file holding one
    resolver = "MEMORY"         # or { type = "dir", dir = "/var/lib/leafgate/jwt" }
    [resolver_preload]
    ACCOUNTPUBLICKEY = "eyJ..."

Parsing raises ``ConfigError`` naming the key; this module only reads the operator
JWT file when ``operator`` names one (an explicit, start-time read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.auth.permissions import (
    DEFAULT_RESPONSE_EXPIRES,
    DEFAULT_RESPONSE_MAX_MSGS,
    Permissions,
    ResponsePermission,
    SubjectPermission,
    SubjectRule,
)
from edge.config_values import _Invalid, _show, parse_duration
from edge.subjects import is_valid_subject

GLOBAL_ACCOUNT = "$G"
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


class SettingError(ValueError):
    """An invalid security setting: ``key`` as written in the file, and why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class UserConfig:
    """One entry of ``authorization.users`` or ``accounts.X.users``."""

    user: str | None = None
    password: str | None = None  # plain text or a bcrypt hash
    nkey: str | None = None  # public user nkey ("U...")
    account: str = GLOBAL_ACCOUNT
    permissions: Permissions = field(default_factory=Permissions)
    max_subscriptions: int = 0  # 0: unlimited (leafgate extension)
    max_payload: int = 0

    @property
    def name(self) -> str:
        return self.user or self.nkey or ""


RESPONSE_TYPES = ("singleton", "stream", "chunked")


@dataclass(frozen=True)
class ExportConfig:
    kind: str  # "stream" or "service"
    subject: bytes
    accounts: tuple[str, ...] | None = None  # None: public
    response_type: str = "singleton"  # of a service: one answer, or many ("stream", "chunked")
    token_required: bool = False  # JWT exports: importers need an activation token
    # JWT exports: importing account key (or "*") -> activations issued at or
    # before this time (s) are revoked.
    revocations: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ImportConfig:
    kind: str  # "stream" or "service"
    account: str  # the exporting account
    subject: bytes  # in the exporter's subject space
    to: bytes | None = None  # the subject in the importing account (None: the same)
    token: str | None = None  # JWT imports: the activation token (verified with the JWT)


@dataclass(frozen=True)
class AccountConfig:
    name: str
    exports: tuple[ExportConfig, ...] = ()
    imports: tuple[ImportConfig, ...] = ()
    max_connections: int = 0  # 0: unlimited (leafgate extension)
    max_subscriptions: int = 0
    max_payload: int = 0


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str
    key_file: str
    ca_file: str | None = None
    verify: bool = False
    verify_and_map: bool = False
    handshake_first: bool = False
    timeout: float = 2.0


@dataclass(frozen=True)
class SecurityConfig:
    users: tuple[UserConfig, ...] = ()
    accounts: tuple[AccountConfig, ...] = ()
    no_auth_user: str | None = None
    default_permissions: Permissions = field(default_factory=Permissions)
    tls: TLSServerConfig | None = None
    operator: str | None = None  # the operator JWT itself
    system_account: str | None = None
    resolver: str | None = None  # "MEMORY" or "dir"
    resolver_dir: str | None = None
    resolver_preload: tuple[tuple[str, str], ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.users or self.operator or self.tls or self.accounts)

    def account_names(self) -> tuple[str, ...]:
        return (GLOBAL_ACCOUNT, *(a.name for a in self.accounts))


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def _table(key: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise SettingError(key, f"expected a table, got {_show(value)}")
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError(key, f"expected a non-empty string, got {_show(value)}")
    return value


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise SettingError(key, f"expected true or false, got {_show(value)}")
    return value


def _count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SettingError(key, f"expected an integer >= 0, got {_show(value)}")
    return value


def _subject(key: str, value: object, *, queue_ok: bool = False) -> SubjectRule:
    text = _text(key, value)
    rule = SubjectRule.parse(text)
    if len(text.split()) > (2 if queue_ok else 1) or not is_valid_subject(rule.subject):
        raise SettingError(key, f"not a valid subject: {_show(text)}")
    return rule


def _rules(key: str, value: object, *, queue_ok: bool) -> tuple[SubjectRule, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SettingError(key, f"expected a subject or an array of subjects, got {_show(value)}")
    return tuple(_subject(f"{key}[{i}]", v, queue_ok=queue_ok) for i, v in enumerate(value))


def _direction(key: str, value: object, *, queue_ok: bool) -> SubjectPermission:
    """``publish = "a.>"``, ``= ["a", "b"]`` (allow lists) or ``= {allow, deny}``."""
    if not isinstance(value, dict):
        return SubjectPermission(_rules(key, value, queue_ok=queue_ok))
    allow = deny = None
    for name, item in value.items():
        if name == "allow":
            allow = _rules(f"{key}.allow", item, queue_ok=queue_ok)
        elif name == "deny":
            deny = _rules(f"{key}.deny", item, queue_ok=queue_ok)
        else:
            raise SettingError(f"{key}.{name}", "unknown key (expected allow or deny)")
    return SubjectPermission(allow, deny or ())


def _responses(key: str, value: object) -> ResponsePermission | None:
    if isinstance(value, bool):
        return ResponsePermission() if value else None
    table = _table(key, value)
    max_msgs, expires = DEFAULT_RESPONSE_MAX_MSGS, DEFAULT_RESPONSE_EXPIRES
    for name, item in table.items():
        if name in ("max", "max_msgs"):
            max_msgs = _count(f"{key}.{name}", item)
        elif name in ("expires", "ttl"):
            try:
                expires = parse_duration(item)
            except _Invalid as exc:
                raise SettingError(f"{key}.{name}", str(exc)) from None
        else:
            raise SettingError(f"{key}.{name}", "unknown key (expected max or expires)")
    return ResponsePermission(max_msgs, expires)


def parse_permissions(key: str, value: object) -> Permissions:
    table = _table(key, value)
    publish = subscribe = None
    responses = None
    for name, item in table.items():
        if name in ("publish", "pub"):
            publish = _direction(f"{key}.{name}", item, queue_ok=False)
        elif name in ("subscribe", "sub"):
            subscribe = _direction(f"{key}.{name}", item, queue_ok=True)
        elif name == "allow_responses":
            responses = _responses(f"{key}.{name}", item)
        else:
            raise SettingError(
                f"{key}.{name}", "unknown key (expected publish, subscribe or allow_responses)"
            )
    return Permissions(publish, subscribe, responses)


def _user(key: str, value: object, account: str, defaults: Permissions) -> UserConfig:
    table = _table(key, value)
    values: dict[str, object] = {"account": account, "permissions": defaults}
    for name, item in table.items():
        sub = f"{key}.{name}"
        if name == "user":
            values["user"] = _text(sub, item)
        elif name in ("password", "pass"):
            if not isinstance(item, str) or not item:
                raise SettingError(sub, "expected a non-empty string")
            values["password"] = item
        elif name == "nkey":
            nkey = _text(sub, item)
            if not nkey.startswith("U") or len(nkey) != 56:
                raise SettingError(sub, "expected a public user nkey (56 characters, U...)")
            values["nkey"] = nkey
        elif name == "permissions":
            values["permissions"] = parse_permissions(sub, item)
        elif name in ("max_subscriptions", "max_payload"):
            values[name] = _count(sub, item)
        else:
            raise SettingError(sub, "unknown key")
    user = UserConfig(**values)  # type: ignore[arg-type]
    if user.nkey is not None and (user.user is not None or user.password is not None):
        raise SettingError(key, "an nkey user has no user name or password")
    if user.nkey is None and user.user is None:
        raise SettingError(key, "needs user (with password) or nkey")
    return user


def parse_users(
    key: str, value: object, account: str, defaults: Permissions
) -> tuple[UserConfig, ...]:
    if not isinstance(value, list):
        raise SettingError(key, f"expected an array of tables, got {_show(value)}")
    return tuple(_user(f"{key}[{i}]", v, account, defaults) for i, v in enumerate(value))


def _export(key: str, value: object) -> ExportConfig:
    table = _table(key, value)
    kinds = [k for k in ("stream", "service") if k in table]
    if len(kinds) != 1:
        raise SettingError(key, "needs exactly one of stream or service")
    for name in table:
        if name not in ("stream", "service", "accounts", "response_type"):
            raise SettingError(f"{key}.{name}", "unknown key")
    subject = _subject(f"{key}.{kinds[0]}", table[kinds[0]]).subject
    response_type = "singleton"
    if "response_type" in table:
        response_type = _text(f"{key}.response_type", table["response_type"]).lower()
        if response_type not in RESPONSE_TYPES or kinds[0] != "service":
            raise SettingError(
                f"{key}.response_type", "expected singleton, stream or chunked (services only)"
            )
    accounts = None
    if "accounts" in table:
        raw = table["accounts"]
        if not isinstance(raw, list):
            raise SettingError(f"{key}.accounts", "expected an array of account names")
        accounts = tuple(_text(f"{key}.accounts[{i}]", a) for i, a in enumerate(raw))
    return ExportConfig(kinds[0], subject, accounts, response_type)


def _import(key: str, value: object) -> ImportConfig:
    table = _table(key, value)
    kinds = [k for k in ("stream", "service") if k in table]
    if len(kinds) != 1:
        raise SettingError(key, "needs exactly one of stream or service")
    kind = kinds[0]
    source = _table(f"{key}.{kind}", table[kind])
    for name in source:
        if name not in ("account", "subject"):
            raise SettingError(f"{key}.{kind}.{name}", "unknown key (expected account, subject)")
    if "account" not in source or "subject" not in source:
        raise SettingError(f"{key}.{kind}", "needs account and subject")
    account = _text(f"{key}.{kind}.account", source["account"])
    subject = _subject(f"{key}.{kind}.subject", source["subject"]).subject
    to: bytes | None = None
    for name, item in table.items():
        if name == kind:
            continue
        if name == "to" or (name == "prefix" and kind == "stream"):
            local = _subject(f"{key}.{name}", item).subject
            to = local + b"." + subject if name == "prefix" else local
        else:
            raise SettingError(f"{key}.{name}", "unknown key")
    if to is not None and not _same_wildcards(subject, to):
        raise SettingError(key, "to must have the same wildcards as the imported subject")
    return ImportConfig(kind, account, subject, to)


def _wildcards(subject: bytes) -> list[bytes]:
    return [t for t in subject.split(b".") if t in (b"*", b">")]


def _same_wildcards(a: bytes, b: bytes) -> bool:
    return _wildcards(a) == _wildcards(b)


def _account(
    key: str, name: str, value: object, defaults: Permissions
) -> tuple[AccountConfig, tuple[UserConfig, ...]]:
    table = _table(key, value)
    users: tuple[UserConfig, ...] = ()
    values: dict[str, object] = {"name": name}
    for item_name, item in table.items():
        sub = f"{key}.{item_name}"
        if item_name == "users":
            users = parse_users(sub, item, name, defaults)
        elif item_name == "exports":
            if not isinstance(item, list):
                raise SettingError(sub, "expected an array of tables")
            values["exports"] = tuple(_export(f"{sub}[{i}]", e) for i, e in enumerate(item))
        elif item_name == "imports":
            if not isinstance(item, list):
                raise SettingError(sub, "expected an array of tables")
            values["imports"] = tuple(_import(f"{sub}[{i}]", e) for i, e in enumerate(item))
        elif item_name in ("max_connections", "max_subscriptions", "max_payload"):
            values[item_name] = _count(sub, item)
        else:
            raise SettingError(sub, "unknown key")
    return AccountConfig(**values), users  # type: ignore[arg-type]


def parse_tls(key: str, value: object) -> TLSServerConfig:
    table = _table(key, value)
    values: dict[str, object] = {}
    for name, item in table.items():
        sub = f"{key}.{name}"
        if name in ("cert_file", "key_file", "ca_file"):
            values[name] = _text(sub, item)
        elif name in ("verify", "verify_and_map", "handshake_first"):
            values[name] = _flag(sub, item)
        elif name == "timeout":
            try:
                values[name] = parse_duration(item)
            except _Invalid as exc:
                raise SettingError(sub, str(exc)) from None
        else:
            raise SettingError(sub, "unknown key")
    for name in ("cert_file", "key_file"):
        if name not in values:
            raise SettingError(key, f"needs {name}")
    tls = TLSServerConfig(**values)  # type: ignore[arg-type]
    if (tls.verify or tls.verify_and_map) and tls.ca_file is None:
        raise SettingError(f"{key}.ca_file", "needed to verify client certificates")
    return tls


def _resolver(key: str, value: object) -> tuple[str, str | None]:
    if isinstance(value, str):
        if value.upper() != "MEMORY":
            raise SettingError(key, 'expected "MEMORY" or { type = "dir", dir = "..." }')
        return "MEMORY", None
    table = _table(key, value)
    kind = str(table.get("type", "dir")).lower()
    if kind not in ("dir", "full", "cache"):
        raise SettingError(f"{key}.type", f'expected "dir", got {_show(table.get("type"))}')
    for name in table:
        if name not in ("type", "dir"):
            raise SettingError(f"{key}.{name}", "unknown key (expected type, dir)")
    return "dir", _text(f"{key}.dir", table.get("dir"))


def read_operator(key: str, value: object) -> str:
    """The operator JWT, given inline or as the path of a file holding it."""
    text = _text(key, value).strip()
    if text.count(".") == 2 and "/" not in text:
        return text
    try:
        with open(text, encoding="utf-8") as f:
            content = f.read()
    except OSError as exc:
        raise SettingError(key, f"cannot read {text!r}: {exc.strerror or exc}") from None
    for line in content.splitlines():
        line = line.strip()
        if line.count(".") == 2 and not line.startswith("-"):
            return line
    raise SettingError(key, f"{text!r} holds no JWT")


def parse_security(raw: Mapping[str, object]) -> SecurityConfig:
    """The SecurityConfig from the raw TOML values, keyed by their full key."""
    defaults = Permissions()
    if "authorization.default_permissions" in raw:
        defaults = parse_permissions(
            "authorization.default_permissions", raw["authorization.default_permissions"]
        )
    users: list[UserConfig] = []
    if "authorization.users" in raw:
        users.extend(
            parse_users("authorization.users", raw["authorization.users"], GLOBAL_ACCOUNT, defaults)
        )
    accounts: list[AccountConfig] = []
    if "accounts" in raw:
        for name, value in _table("accounts", raw["accounts"]).items():
            if name == GLOBAL_ACCOUNT or not name.strip() or any(c.isspace() for c in name):
                raise SettingError(f"accounts.{name}", "not a usable account name")
            account, account_users = _account(f"accounts.{name}", name, value, defaults)
            accounts.append(account)
            users.extend(account_users)
    values: dict[str, object] = {
        "users": tuple(users),
        "accounts": tuple(accounts),
        "default_permissions": defaults,
    }
    if "no_auth_user" in raw:
        values["no_auth_user"] = _text("no_auth_user", raw["no_auth_user"])
    if "tls" in raw:
        values["tls"] = parse_tls("tls", raw["tls"])
    if "operator" in raw:
        values["operator"] = read_operator("operator", raw["operator"])
    if "system_account" in raw:
        values["system_account"] = _text("system_account", raw["system_account"])
    if "resolver" in raw:
        values["resolver"], values["resolver_dir"] = _resolver("resolver", raw["resolver"])
    if "resolver_preload" in raw:
        preload = _table("resolver_preload", raw["resolver_preload"])
        values["resolver_preload"] = tuple(
            (k, _text(f"resolver_preload.{k}", v).strip()) for k, v in preload.items()
        )
    security = SecurityConfig(**values)  # type: ignore[arg-type]
    check_security(security)
    return security


def check_security(security: SecurityConfig) -> None:
    """Cross-entry rules: unique users, known accounts, imports that match exports."""
    seen: dict[str, int] = {}
    for i, user in enumerate(security.users):
        if user.name in seen:
            raise SettingError(f"users[{i}]", f"user {user.name!r} is defined twice")
        seen[user.name] = i
    if security.no_auth_user is not None and security.no_auth_user not in seen:
        raise SettingError("no_auth_user", f"{security.no_auth_user!r} is not a configured user")
    by_name = {a.name: a for a in security.accounts}
    for account in security.accounts:
        for j, imp in enumerate(account.imports):
            key = f"accounts.{account.name}.imports[{j}]"
            exporter = by_name.get(imp.account)
            if exporter is None:
                raise SettingError(key, f"account {imp.account!r} is not defined")
            if imp.account == account.name:
                raise SettingError(key, "an account cannot import from itself")
            if find_export(exporter, imp, account.name) is None:
                raise SettingError(
                    key,
                    f"account {imp.account!r} exports no {imp.kind} covering "
                    f"{imp.subject.decode()!r} to {account.name!r}",
                )
    if security.operator is not None:
        if security.users or security.accounts:
            raise SettingError(
                "operator", "operator mode takes its users and accounts from JWTs, not the file"
            )
        if security.resolver is None:
            raise SettingError("resolver", 'operator mode needs a resolver ("MEMORY" or a dir)')
    elif security.resolver is not None or security.resolver_preload:
        raise SettingError("resolver", "set without operator")
    _check_preload(security.resolver_preload)


def _check_preload(preload: tuple[tuple[str, str], ...]) -> None:
    """Preloaded account JWTs must decode (form, signature, an account JWT), or
    the server does not start, as nats-server 2.9.10 ("invalid account JWT"); an
    expired one, or one issued by a stranger, is refused when used, as there."""
    from edge.auth.jwt import JwtError, decode

    for key, token in preload:
        try:
            decode(token, "account", None)
        except JwtError as exc:
            raise SettingError(f"resolver_preload.{key}", f"invalid account JWT: {exc}") from None


def find_export(exporter: AccountConfig, imp: ImportConfig, importer: str) -> ExportConfig | None:
    return matching_export(exporter.exports, imp, importer)


def matching_export(
    exports: tuple[ExportConfig, ...], imp: ImportConfig, importer: str
) -> ExportConfig | None:
    """The first export of the same kind covering ``imp``'s subject, open to ``importer``."""
    from edge.subjects import is_subset

    for export in exports:
        if export.kind != imp.kind or not is_subset(imp.subject, export.subject):
            continue
        if export.accounts is None or importer in export.accounts:
            return export
    return None


def holds_client_secrets(security: SecurityConfig, password: str | None, token: str | None) -> bool:
    """Whether the config carries passwords or tokens of clients (plain or hashed)."""
    return password is not None or token is not None or any(u.password for u in security.users)


def is_bcrypt(password: str) -> bool:
    return password.startswith(BCRYPT_PREFIXES)
