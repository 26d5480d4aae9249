"""The shipped hub configuration files and the variables they expect.

The nats-server configs in ``hub/conf/`` take every site-specific value from a config
variable (``$HUB_CLIENT_LISTEN`` ...).  nats-server resolves a variable from an
earlier definition in the file or else from the environment, so the same file serves
development (:mod:`hub.tool` exports the variables), tests (definitions prepended to
a copy, :func:`render_with_variables`) and production (environment).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

DEFAULT_NATS_SERVER = "/usr/sbin/nats-server"

#: Names accepted by :func:`conf_text` / ``leafgate hub config --print``.
CONF_FILES: dict[str, str] = {
    "single": "single.conf",
    "cluster-node": "cluster-node.conf",
    "stream": "telemetry-stream.json",
}

#: Variables both configs need.
SINGLE_VARIABLES: tuple[str, ...] = (
    "HUB_NAME",
    "HUB_CLIENT_LISTEN",
    "HUB_LEAF_LISTEN",
    "HUB_HTTP_LISTEN",
    "HUB_STORE_DIR",
    "HUB_DOMAIN",
    "HUB_LEAF_USER",
    "HUB_LEAF_PASSWORD",
    "HUB_APP_USER",
    "HUB_APP_PASSWORD",
    "HUB_SYS_USER",
    "HUB_SYS_PASSWORD",
)
#: Extra variables of ``cluster-node.conf``.
CLUSTER_VARIABLES: tuple[str, ...] = ("HUB_CLUSTER_NAME", "HUB_CLUSTER_LISTEN", "HUB_ROUTES")

#: A config value: string, number, boolean or a list of those.
Value = str | int | bool | Sequence[str]

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class HubConfigError(RuntimeError):
    """A missing binary, file or variable."""


def conf_dir() -> Path:
    """Directory of the shipped files (package data of :mod:`hub`)."""
    path = Path(str(resources.files("hub") / "conf"))
    if not path.is_dir():
        raise HubConfigError(f"hub config directory missing: {path}")
    return path


def conf_path(name: str) -> Path:
    """Path of a shipped file by short name (``single``, ``cluster-node``, ``stream``)."""
    try:
        filename = CONF_FILES[name]
    except KeyError:
        raise HubConfigError(
            f"unknown config {name!r}; choose from {', '.join(CONF_FILES)}"
        ) from None
    return conf_dir() / filename


def conf_text(name: str) -> str:
    return conf_path(name).read_text()


def variables_for(name: str) -> tuple[str, ...]:
    """The variables a shipped nats-server config needs."""
    if name == "single":
        return SINGLE_VARIABLES
    if name == "cluster-node":
        return SINGLE_VARIABLES + CLUSTER_VARIABLES
    raise HubConfigError(f"{name!r} is not a nats-server config")


def format_value(value: Value) -> str:
    """A value in nats-server config syntax (strings always quoted, so that a
    password like ``1234`` stays a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(str(item)) for item in value) + "]"


def _check_names(variables: Mapping[str, Value]) -> None:
    for name in variables:
        if not _VAR_NAME.fullmatch(name):
            raise HubConfigError(f"bad variable name {name!r}")


def render_with_variables(text: str, variables: Mapping[str, Value]) -> str:
    """``text`` with the variables defined at its top (nats-server reads a definition
    before the environment).  Define only variables the text uses: nats-server rejects
    unused top-level keys."""
    _check_names(variables)
    head = "".join(f"{name}: {format_value(value)}\n" for name, value in variables.items())
    return f"# variables\n{head}\n{text}"


def variables_env(variables: Mapping[str, Value]) -> dict[str, str]:
    """The variables as environment entries (values in config syntax)."""
    _check_names(variables)
    return {name: format_value(value) for name, value in variables.items()}


def missing_variables(name: str, variables: Mapping[str, object]) -> list[str]:
    return [var for var in variables_for(name) if var not in variables]


def nats_server_bin() -> str:
    """The nats-server binary: ``NATS_SERVER_BIN``, else ``nats-server`` on PATH, else
    ``/usr/sbin/nats-server``."""
    wanted = os.environ.get("NATS_SERVER_BIN") or "nats-server"
    found = shutil.which(wanted)
    if found is None and wanted == "nats-server" and os.access(DEFAULT_NATS_SERVER, os.X_OK):
        found = DEFAULT_NATS_SERVER
    if found is None:
        raise HubConfigError(
            f"nats-server not found ({wanted!r}); install it (`apt-get install nats-server`) "
            "or set NATS_SERVER_BIN"
        )
    return found


def hostport(host: str, port: int) -> str:
    """``host:port`` for a listen variable (IPv6 hosts bracketed; port -1 = OS-chosen)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
