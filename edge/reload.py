"""Configuration reload (SIGHUP): what may change in a running server. Pure.

As nats-server does, a reload is all or nothing: the new file is loaded and
validated like at start, then compared with the running configuration. If
any setting that cannot change without a restart differs (the listen
address, the store directory, a group's subjects ...), the reload is refused
with the first such key named, and the server keeps running on the old
configuration. Otherwise every change is applied, and connections stay up.

Reloadable: logging (debug, trace), authorization: the token or single user
(for new connections), users with their passwords and permissions and
``no_auth_user`` (a connection whose user was removed or whose rules changed
is closed, as nats-server does; the others stay), the memory resolver's
account JWTs (``resolver_preload``; with a directory resolver its files are
read again at every reload): their users are checked again (revocations,
expiry, limits) and their imports made again,
keep-alive and lame-duck timings, the shutdown grace, store-and-forward
group limits and behaviour (max_msgs, max_bytes, max_age, policy,
duplicate_window, durable_flush), and the bridges (a changed, added or
removed bridge is restarted, added or stopped; the others keep running).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edge.config import ForwardGroup, ServerConfig, StoreConfig

# Top-level ServerConfig fields a reload may change.
_SERVER_RELOADABLE = frozenset(
    {
        "ping_interval",
        "max_pings_out",
        "lame_duck_duration",
        "lame_duck_grace_period",
        "shutdown_grace",
        "write_deadline",
        "auth",
        "log",
        "bridges",
        "store",
        "config_file",
        "security",
    }
)
# SecurityConfig fields a reload may change (users with their passwords and
# permissions); accounts, TLS and operator settings are built at start.
# The memory resolver's preload too: the account JWTs in use are applied again
# (edge.security.Security.account_changed).
_SECURITY_RELOADABLE = frozenset(
    {"users", "no_auth_user", "default_permissions", "resolver_preload"}
)
# ForwardGroup fields a reload may change (the others define what is stored where).
_GROUP_RELOADABLE = frozenset(
    {"max_bytes", "max_msgs", "max_age", "policy", "duplicate_window", "durable_flush"}
)
# The config file's name for a ServerConfig field, where they differ.
_KEY_NAMES = {
    "max_pings_out": "ping_max",
    "auth": "authorization",
    "http_port": "http",
    # users with permissions, accounts, TLS, operator: built only at start
    "security": "authorization.users",
}


class ReloadRefused(Exception):
    """A setting changed that needs a restart; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class ReloadPlan:
    changed: tuple[str, ...]  # config keys that change (dotted), in a stable order
    log: bool
    auth: bool
    store_groups: bool
    bridges: bool
    security: bool = False

    @property
    def empty(self) -> bool:
        return not self.changed


def plan_reload(old: ServerConfig, new: ServerConfig) -> ReloadPlan:
    """What applying *new* over *old* changes; ReloadRefused if it cannot be done live."""
    changed: list[str] = []
    for f in dataclasses.fields(ServerConfig):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after or f.name == "config_file":
            continue
        key = _KEY_NAMES.get(f.name, f.name)
        if f.name == "security":
            _check_security(old, new)
        if f.name not in _SERVER_RELOADABLE:
            raise ReloadRefused(key, "cannot change while running; restart leafgate to apply it")
        if f.name == "store":
            changed.extend(_store_changes(before, after))
        else:
            changed.append(key)
    return ReloadPlan(
        changed=tuple(changed),
        log=old.log != new.log,
        auth=old.auth != new.auth,
        store_groups=old.store != new.store,
        bridges=old.bridges != new.bridges,
        security=old.security != new.security,
    )


def _check_security(old: ServerConfig, new: ServerConfig) -> None:
    if old.security.configured != new.security.configured:
        raise ReloadRefused(
            "authorization.users",
            "switching between single-user/token authentication and users, accounts or TLS "
            "needs a restart",
        )
    for f in dataclasses.fields(type(old.security)):
        if f.name in _SECURITY_RELOADABLE:
            continue
        if getattr(old.security, f.name) != getattr(new.security, f.name):
            raise ReloadRefused(f.name, "cannot change while running; restart leafgate to apply it")


def _store_changes(old: StoreConfig, new: StoreConfig) -> list[str]:
    for f in dataclasses.fields(StoreConfig):
        if f.name != "groups" and getattr(old, f.name) != getattr(new, f.name):
            raise ReloadRefused(
                f"store.{f.name}", "cannot change while running; restart leafgate to apply it"
            )
    if len(old.groups) != len(new.groups):
        raise ReloadRefused(
            "store.forward", "groups cannot be added or removed while running; restart leafgate"
        )
    changed: list[str] = []
    for i, (before, after) in enumerate(zip(old.groups, new.groups, strict=True)):
        changed.extend(_group_changes(before, after, f"store.forward[{i}]"))
    return changed


def _group_changes(old: ForwardGroup, new: ForwardGroup, prefix: str) -> list[str]:
    changed = []
    for f in dataclasses.fields(ForwardGroup):
        if getattr(old, f.name) == getattr(new, f.name):
            continue
        if f.name not in _GROUP_RELOADABLE:
            raise ReloadRefused(
                f"{prefix}.{f.name}", "cannot change while running; restart leafgate to apply it"
            )
        changed.append(f"{prefix}.{f.name}")
    return changed
