"""Debian bookworm root file systems built with debootstrap, cached across runs.

tests/test_images.py runs the pi-gen stage in one; tests/test_container.py makes
its local container base image from another (no registry is reachable from the
test machines, so the base cannot be pulled). A root is cached under
/var/tmp/leafgate-tests, keyed by suite, mirror, architecture and package list,
so only the first run pays for debootstrap. A foreign architecture (arm64,
armhf) needs qemu-user-static registered with binfmt_misc: debootstrap's
second stage runs the target's own binaries in a chroot.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("LEAFGATE_ROOTFS_CACHE", "/var/tmp/leafgate-tests"))
DEBOOTSTRAP_TIMEOUT = 900

# The roots the tests use: the pi-gen stage's (tests/test_images.py) and the
# container base image's (tests/test_container.py), one per architecture built.
PI_GEN_PACKAGES = ("python3", "python3-venv", "ca-certificates", "systemd", "procps")
CONTAINER_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")

# Debian's architecture names for the machines this one is.
_NATIVE = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}


def native_arch() -> str:
    return _NATIVE.get(platform.machine(), platform.machine())


def container_arches() -> list[str]:
    """The architectures tests/test_container.py builds and runs: the native one
    and arm64 (under qemu) by default. armv7 (armhf) passes too, but its cold
    build compiles cffi (PyPI has no armv7 wheel of it) under qemu and its
    debootstrap is emulated: ~8 minutes, most of the suite's budget;
    LEAFGATE_CONTAINER_ARCHES=amd64,arm64,armhf adds it."""
    return os.environ.get("LEAFGATE_CONTAINER_ARCHES", "amd64,arm64").split(",")


def rootfs_key(packages: tuple[str, ...], arch: str) -> str:
    # The native root keeps the key it had before architectures were added,
    # so an existing cache stays valid.
    text = f"{SUITE} {MIRROR} {' '.join(packages)}"
    if arch != native_arch():
        text += f" {arch}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_rootfs(
    packages: tuple[str, ...], arch: str | None = None, timeout: float = DEBOOTSTRAP_TIMEOUT
) -> tuple[Path, float]:
    """The cached root (built if missing) and the seconds debootstrap took (0: cached)."""
    arch = arch or native_arch()
    key = rootfs_key(packages, arch)
    suffix = "" if arch == native_arch() else f"-{arch}"
    root = CACHE / f"rootfs-{SUITE}{suffix}-{key}"
    if (root / "usr" / "bin" / "python3").exists():
        return root, 0.0
    assert shutil.which("debootstrap"), "debootstrap is missing (tests/run.sh installs it)"
    if arch != native_arch():
        qemu_ready(arch)
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f"building-{key}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    started = time.monotonic()
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--arch={arch}",
            f"--include={','.join(packages)}",
            SUITE,
            str(building),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    took = time.monotonic() - started
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)  # only a complete root becomes the cache
    return root, took


# binfmt_misc names of the qemu-user-static interpreters, by Debian architecture.
_QEMU = {"arm64": "qemu-aarch64", "armhf": "qemu-arm", "amd64": "qemu-x86_64"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def qemu_ready(arch: str) -> None:
    """Make the kernel run ``arch``'s binaries through qemu-user-static, or fail
    saying what is missing. The F flag (the interpreter opened at registration)
    is what lets it work inside chroots and containers."""
    if not (BINFMT / "status").exists():
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert (BINFMT / "status").exists(), f"binfmt_misc is not mounted on {BINFMT}"
    entry = BINFMT / _QEMU[arch]
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(
            ["update-binfmts", "--enable", _QEMU[arch]],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert entry.exists(), f"{entry} missing: qemu-user-static and binfmt-support (tests/run.sh)"
    text = entry.read_text()
    assert text.startswith("enabled"), text
    flags = re.search(r"^flags: (\S*)", text, re.M)
    assert flags and "F" in flags.group(1), f"{entry} lacks the F flag: {text}"


def warm() -> None:
    """Build the missing roots side by side (tests/run.sh calls this before the
    tests, as it installs packages: on a fresh machine, one after the other
    inside the tests, they would take most of the suite's time limit)."""
    wanted: list[tuple[tuple[str, ...], str]] = [(PI_GEN_PACKAGES, native_arch())]
    wanted += [(CONTAINER_BASE_PACKAGES, arch) for arch in container_arches()]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        done = [pool.submit(cached_rootfs, pkgs, arch, 3000) for pkgs, arch in wanted]
        took = [future.result() for future in done]
    built = [
        f"{arch} {root.name} {secs:.0f}s"
        for (_, arch), (root, secs) in zip(wanted, took, strict=True)
        if secs
    ]
    print(
        f"rootfs: {'built ' + ', '.join(built) if built else 'all cached'}"
        f" ({time.monotonic() - started:.0f}s)"
    )


if __name__ == "__main__":
    warm()
