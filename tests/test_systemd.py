"""systemd/leafgate.service: systemd's own checks, on the unit as shipped.

``systemd-analyze verify`` needs ExecStart's binary to exist: the test verifies
a copy whose ExecStart names the installed ``leafgate`` script (everything else
unchanged), and checks that the shipped path is the only difference. verify
reports most problems as warnings with exit status 0, so any output fails.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO_ROOT

UNIT = REPO_ROOT / "systemd" / "leafgate.service"
SERIAL_DROPIN = REPO_ROOT / "systemd" / "leafgate.service.d" / "serial.conf"
SHIPPED_EXEC = "/opt/leafgate/bin/leafgate"
MAX_EXPOSURE = 2.0


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing (tests/run.sh installs systemd)"
    return found


def installed_leafgate() -> str:
    script = shutil.which("leafgate") or str(Path(sys.executable).parent / "leafgate")
    assert os.access(script, os.X_OK), "the leafgate script is not installed (pip install -e .)"
    return os.path.realpath(script)


def unit_copy(directory: Path, *, dropin: bool = False) -> Path:
    text = UNIT.read_text()
    assert text.count(SHIPPED_EXEC) == 1
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "leafgate.service"
    path.write_text(text.replace(SHIPPED_EXEC, installed_leafgate()))
    if dropin:
        (directory / "leafgate.service.d").mkdir()
        shutil.copy(SERIAL_DROPIN, directory / "leafgate.service.d" / "serial.conf")
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze(), *args], capture_output=True, text=True, timeout=60, env=env, cwd="/"
    )


def service_section(path: Path) -> dict[str, list[str]]:
    """Every key of [Service] with all its values (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_verify_passes(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path / "units")
    result = run("verify", str(unit))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # With the serial drop-in applied (found through the unit path).
    unit_copy(tmp_path / "with-dropin", dropin=True)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path / 'with-dropin'}:")
    result = run("verify", "leafgate.service", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_is_meaningful(tmp_path: Path) -> None:
    """What verify would say about a broken unit, so a clean verify means something."""
    assert "is not executable" in run("verify", str(UNIT)).stderr  # /opt/leafgate absent here
    bad = tmp_path / "leafgate.service"
    bad.write_text(unit_copy(tmp_path / "ok").read_text().replace("Type=notify", "Type=notfy"))
    assert "Failed to parse service type" in run("verify", str(bad)).stderr


def _exposure(unit: Path) -> float:
    result = run("security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for leafgate\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout[-2000:]
    return float(match.group(1))


def test_security_exposure(tmp_path: Path) -> None:
    score = _exposure(unit_copy(tmp_path / "units"))
    print(f"exposure {score}")
    assert score <= MAX_EXPOSURE
    with_serial = _exposure(unit_copy(tmp_path / "serial", dropin=True))
    print(f"exposure with the serial drop-in {with_serial}")
    assert score < with_serial <= MAX_EXPOSURE  # the drop-in is read, and costs little


def test_unit_settings() -> None:
    s = service_section(UNIT)
    expected = {
        "Type": ["notify"],
        "DynamicUser": ["yes"],
        "StateDirectory": ["leafgate"],
        "ConfigurationDirectory": ["leafgate"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "NoNewPrivileges": ["yes"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "CapabilityBoundingSet": [""],
        "MemoryDenyWriteExecute": ["yes"],
        "LockPersonality": ["yes"],
        "Restart": ["on-failure"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, key
    assert "@system-service" in s["SystemCallFilter"]
    assert s["ExecStart"][0].startswith(SHIPPED_EXEC + " run -c ")
    watchdog = int(s["WatchdogSec"][0].removesuffix("s"))
    assert 10 <= watchdog <= 120
    # The stop timeout covers the shutdown: settling with the hub (<= 2 s),
    # shutdown_grace (its default) and the store's last commit.
    from edge.config import ServerConfig
    from edge.server import SETTLE_MAX

    stop = int(s["TimeoutStopSec"][0].removesuffix("s"))
    assert stop >= SETTLE_MAX + ServerConfig().shutdown_grace + 5
    dropin = configparser.ConfigParser(strict=False, interpolation=None)
    dropin.optionxform = str  # type: ignore[assignment,method-assign]
    dropin.read_string(
        "\n".join(
            line for line in SERIAL_DROPIN.read_text().splitlines() if "DeviceAllow" not in line
        )
    )
    assert dropin["Service"]["PrivateDevices"] == "no"
    assert dropin["Service"]["SupplementaryGroups"] == "dialout"
    assert "DeviceAllow=char-ttyUSB rw" in SERIAL_DROPIN.read_text()
