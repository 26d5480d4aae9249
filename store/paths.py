"""Where the store lives. Pure: no I/O beyond reading the environment."""

from __future__ import annotations

import os
from pathlib import Path

from edge.config import StoreConfig

DB_NAME = "leafgate.db"


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    """The first of: systemd's ``$STATE_DIRECTORY`` (the first entry, if it holds
    several), ``$XDG_STATE_HOME/leafgate``, ``~/.local/state/leafgate``. None of
    them needs root."""
    environ = os.environ if env is None else env
    state = environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    xdg = environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "leafgate"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "leafgate"


def store_dir(config: StoreConfig, env: dict[str, str] | None = None) -> Path:
    return Path(config.dir) if config.dir else default_state_dir(env)


def db_path(directory: Path) -> Path:
    return directory / DB_NAME
