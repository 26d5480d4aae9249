"""Config files holding client passwords or tokens: refused when every user may
read them, warned about (a log event naming the file and its mode) when their
group may, quiet when only their owner may. nats-server 2.9.10 checks none of
this (leafgate's own hardening)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config
from edge.config_load import group_readable_secrets
from tests.harness import ServerProcess, leafgate_command
from tests.marks import leafgate_only

SECRET = '[authorization]\nuser = "u"\npassword = "pw-SECRET-9"\n'
NO_SECRET = "port = 4222\n"


def _file(tmp_path: Path, text: str, mode: int) -> str:
    path = tmp_path / f"leafgate-{mode:o}.toml"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_world_readable_secrets_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, SECRET, 0o644)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "readable by every user (mode 0644)" in str(err.value)
    assert path in str(err.value)


@pytest.mark.parametrize(
    ("text", "mode", "warned"),
    [
        (SECRET, 0o640, 0o640),
        (SECRET, 0o600, None),
        (SECRET, 0o660, 0o660),
        (NO_SECRET, 0o644, None),
    ],
)
def test_group_readable_secrets_detected(
    tmp_path: Path, text: str, mode: int, warned: int | None
) -> None:
    assert group_readable_secrets(load_config(_file(tmp_path, text, mode))) == warned


@leafgate_only
def test_group_readable_secrets_logged_at_start(tmp_path: Path) -> None:
    server = ServerProcess("leafgate", leafgate_command(), [], tmp_path, SECRET, ".toml")
    assert server.config_path is not None
    server.config_path.chmod(0o640)
    server.start()
    try:
        log = server.log_tail(20_000)
    finally:
        server.stop()
    line = next(x for x in log.splitlines() if "config_file_readable_by_group" in x)
    assert str(server.config_path) in line and "0640" in line
    assert "SECRET" not in log


@leafgate_only
def test_check_config_warns_about_group_readable_secrets(tmp_path: Path) -> None:
    path = _file(tmp_path, SECRET, 0o640)
    done = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", "-c", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"warning: {path} holds passwords or tokens" in done.stderr
    assert "mode 0640" in done.stderr


@leafgate_only
def test_group_readable_secrets_logged_on_reload(tmp_path: Path) -> None:
    server = ServerProcess("leafgate", leafgate_command(), [], tmp_path, SECRET, ".toml")
    assert server.config_path is not None
    server.start()
    try:
        assert "config_file_readable_by_group" not in server.log_tail(20_000)  # 0600
        server.config_path.chmod(0o640)
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config_file_readable_by_group" not in server.log_tail(20_000):
            assert time.monotonic() < deadline, server.log_tail(2000)
            time.sleep(0.05)
        assert server.running
    finally:
        server.stop()
