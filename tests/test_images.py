"""images/: the container image definition (linted here; tests/test_container.py
builds and runs it) and the pi-gen stage, whose own scripts are run against a
Debian bookworm root file system built with debootstrap: the built wheel is
installed in it with its dependencies from PyPI, and leafgate runs inside it.

The root file system is cached under /var/tmp/leafgate-tests (keyed by suite
and package list), so only the first run pays for debootstrap; each run works
on a copy. Needs root (chroot, mounts) and network access to the Debian mirror
and PyPI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT
from tests.rootfs import PI_GEN_PACKAGES, cached_rootfs

IMAGES = REPO_ROOT / "images"
CONTAINERFILE = IMAGES / "Containerfile"
STAGE = IMAGES / "pi-gen" / "stage-leafgate"
SUBSTAGE = STAGE / "00-leafgate"
PIP_TIMEOUT = 600
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


# ---- the container image --------------------------------------------------------------


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continuation line runs off the end"
    return out


def test_containerfile_structure() -> None:
    steps = containerfile_instructions()
    stages = [args for word, args in steps if word == "FROM"]
    assert len(stages) >= 3, stages  # build, install, runtime
    names = [re.search(r"\bAS (\w+)$", s, re.I) for s in stages]
    assert all(names), stages
    # Every stage starts from the BASE argument (BUILD_BASE defaults to it),
    # whose default is the official slim Python image.
    argdefs = dict(a.partition("=")[::2] for w, a in steps if w == "ARG" and "=" in a)
    assert re.fullmatch(r"\S+/python:3\.\d+-slim-bookworm", argdefs["BASE"]), argdefs
    assert argdefs["BUILD_BASE"] == "${BASE}", argdefs
    assert all(re.match(r"(--platform=\S+ )?\$\{(BUILD_)?BASE\} AS", s) for s in stages), stages
    assert stages[0].startswith("--platform=$BUILDPLATFORM"), "the wheel builds natively"
    runtime = [w for w in steps[[w for w, _ in steps].index("FROM") :]]
    last_from = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
    final = steps[last_from:]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    health = [args for word, args in final if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "CMD" in health[0]
    assert "8222" in health[0]
    exposed = " ".join(args for word, args in final if word == "EXPOSE").split()
    assert {"4222", "8222"} <= set(exposed)
    entry = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    assert entry == [["leafgate"]]
    copies = [args for word, args in steps if word == "COPY" and "--from" not in args]
    for args in copies:
        for source in args.split()[:-1]:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
    # The platforms the gateway runs on are the ones the build command names.
    text = CONTAINERFILE.read_text()
    assert "--platform linux/amd64,linux/arm64,linux/arm/v7" in text
    assert runtime  # the file has instructions after the first FROM
    # The config the image ships is valid.
    check = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", "-c", str(IMAGES / "leafgate.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert check.returncode == 0, check.stderr
    assert "monitoring:        http://0.0.0.0:8222" in check.stdout


def test_pi_gen_stage_structure() -> None:
    for script in (STAGE / "prerun.sh", SUBSTAGE / "00-run.sh", SUBSTAGE / "00-run-chroot.sh"):
        assert os.access(script, os.X_OK), script
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    files = SUBSTAGE / "files"
    for name in ("leafgate.service", "serial.conf", "leafgate.toml"):
        assert (files / name).resolve().is_file(), f"files/{name} does not resolve"
    assert (files / "leafgate.service").resolve() == REPO_ROOT / "systemd" / "leafgate.service"
    packages = (SUBSTAGE / "00-packages").read_text().split()
    assert {"python3", "python3-venv", "procps"} <= set(packages)  # procps: /bin/kill (ExecReload)


# ---- the Debian root file system --------------------------------------------------------


def _cached_rootfs() -> tuple[Path, float]:
    """The cached bookworm root (built if missing) and the seconds debootstrap took (0: cached)."""
    return cached_rootfs(PI_GEN_PACKAGES)


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc and /dev inside the root, for pip and Python; unmounted afterwards."""
    done: list[Path] = []
    try:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            target = root / what
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, str(target)], check=True, timeout=30)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-l", str(target)], timeout=30, check=False)


def in_root(
    root: Path, *argv: str, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        [CHROOT, str(root), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def build_wheel(out: Path) -> Path:
    """The wheel, as a release builds it (python -m build, in an isolated env)."""
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("leafgate-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_debootstrap_root_runs_the_pi_gen_stage(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this test needs root (debootstrap, chroot, mount)"
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    cached, timings["debootstrap"] = _cached_rootfs()
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(root)], check=True, timeout=300)
    # The build host's network settings, as pi-gen's chroot has them: its
    # resolver and the CAs it trusts (a host behind a TLS-inspecting proxy
    # trusts the proxy's CA; elsewhere this is Debian's bundle anyway).
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
    timings["copy"] = time.monotonic() - t0 - timings["debootstrap"]

    # The stage as pi-gen would run it: 00-run.sh on the host, then the chroot part.
    stage = tmp_path / "00-leafgate"
    shutil.copytree(SUBSTAGE, stage, symlinks=False)
    t = time.monotonic()
    build_wheel(stage / "files")
    timings["wheel"] = time.monotonic() - t
    env = dict(os.environ, ROOTFS_DIR=str(root))
    result = subprocess.run(
        ["bash", "-e", "00-run.sh"], cwd=stage, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    with mounted(root):
        t = time.monotonic()
        script = (stage / "00-run-chroot.sh").read_text()
        result = in_root(root, "/bin/bash", "-e", timeout=PIP_TIMEOUT, stdin=script)
        timings["pip install in the root"] = time.monotonic() - t
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        _check_installed(root)
    timings["total"] = time.monotonic() - t0
    print("image test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def _check_installed(root: Path) -> None:
    leafgate = "/opt/leafgate/bin/leafgate"
    version = in_root(root, leafgate, "--version")
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"leafgate v\d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    # The wheel's dependencies came from PyPI into the venv, not from the host.
    freeze = in_root(root, "/opt/leafgate/bin/pip", "freeze").stdout
    for dist in ("trio", "structlog", "h11", "prometheus_client", "nats-py", "cryptography"):
        assert re.search(rf"^{dist}==", freeze, re.M | re.I), f"{dist} not installed: {freeze}"

    # First boot without a config on the boot partition: the default is installed.
    assert not (root / "etc/leafgate/leafgate.toml").exists()
    first = in_root(root, "/usr/local/sbin/leafgate-firstboot")
    assert first.returncode == 0, first.stderr
    assert "installed the default configuration" in first.stdout
    ok = in_root(root, leafgate, "check-config", "-c", "/etc/leafgate/leafgate.toml")
    assert ok.returncode == 0 and "is valid" in ok.stdout, ok.stderr
    (root / "etc/leafgate/bad.toml").write_text('max_payload = "lots"\n')
    bad = in_root(root, leafgate, "check-config", "-c", "/etc/leafgate/bad.toml")
    assert bad.returncode == 1 and "max_payload" in bad.stderr, bad.stderr

    # The units are in place, enabled, and pass systemd's check inside the image
    # (where ExecStart's binary exists).
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "leafgate.service").is_symlink()
    assert (wants / "leafgate-firstboot.service").is_symlink()
    verify = in_root(root, "systemd-analyze", "verify", "/etc/systemd/system/leafgate.service")
    assert (verify.returncode, verify.stderr.strip()) == (0, ""), verify.stderr

    # And it serves: run it inside the root on a port the OS picks.
    _serve_inside(root, leafgate)


def _serve_inside(root: Path, leafgate: str) -> None:
    ports = root / "tmp" / "ports"
    ports.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            CHROOT,
            str(root),
            leafgate,
            "run",
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-m",
            "-1",
            "--ports_file_dir",
            "/tmp/ports",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": "/tmp"},
    )
    try:
        deadline = time.monotonic() + 20
        while not list(ports.glob("*.ports")):
            assert proc.poll() is None, "leafgate exited inside the root"
            assert time.monotonic() < deadline, "no ports file from leafgate inside the root"
            time.sleep(0.1)
        time.sleep(0.05)
        found = json.loads(next(ports.glob("*.ports")).read_text())
        url = found["monitoring"][0]
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            assert (resp.status, json.loads(resp.read())) == (200, {"status": "ok"})
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            assert b"leafgate_connections " in resp.read()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
