"""Helpers shared by the config tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config


def write(tmp_path: Path, text: str, name: str = "leafgate.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it may hold passwords: leafgate refuses those world-readable
    return str(path)


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == path
    return info.value
