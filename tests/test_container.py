"""images/Containerfile, built with podman and run: leafgate answers inside, as
its non-root user, the image's HEALTHCHECK passes against the running server,
and a real NATS client on the host does a pub/sub round trip through the
published port.

No container registry is reachable from the test machines, so the base image
cannot be pulled: the test makes a local one from a debootstrap'd bookworm root
(tests/rootfs.py, the helper tests/test_images.py uses) and passes it to the
Containerfile's BASE and BUILD_BASE arguments, which name the official slim
Python image by default. The foreign architectures run under qemu-user-static
through binfmt_misc, as buildx emulates them.

Everything cacheable is kept under /var/tmp/leafgate-tests: the debootstrap'd
roots, and a podman storage of its own (containers/) holding the base images
and the build's layers, so a warm run only starts containers. Needs root, podman,
runc (crun refuses this kind of hybrid cgroup machine) and network access to the
Debian mirror and PyPI; `rm -rf /var/tmp/leafgate-tests/containers` starts over.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import aio
from tests.harness import REPO_ROOT
from tests.rootfs import (
    CACHE,
    CONTAINER_BASE_PACKAGES,
    cached_rootfs,
    container_arches,
    native_arch,
    qemu_ready,
    rootfs_key,
)

CONTAINERFILE = REPO_ROOT / "images" / "Containerfile"
STORAGE = CACHE / "containers"
# podman's state of this boot, on tmpfs, one per storage (its database records
# the paths and refuses others).
RUNROOT = Path("/run/leafgate-tests") / hashlib.sha256(bytes(STORAGE)).hexdigest()[:12]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Bump when what goes into the base image changes (not the root itself).
BASE_RECIPE = "1"
BUILD_TIMEOUT = 1800
UID = 10001  # the Containerfile's leafgate user
# What the runtime stage adds to its base: the venv (~35 MB). A build tool or
# cache leaking out of the install stage (with a compiler: 300+ MB) exceeds it.
MAX_ADDED_MB = 60

# Debian's architecture names and the OCI architecture and variant they are.
PLATFORMS = {
    "amd64": ("amd64", ""),
    "arm64": ("arm64", "v8"),
    "armhf": ("arm", "v7"),
}
# What a container image does not need of a Debian root (as the slim images).
_DROPPED = re.compile(
    r"^\./(var/cache/apt/archives/.+\.deb|var/lib/apt/lists/.+"
    r"|usr/share/(man|info|locale)/.+|usr/share/doc/[^/]+/(?!copyright$).+"
    r"|proc/.+|sys/.+|dev/.+|run/.+|tmp/.+)$"
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing (tests/run.sh installs it)"
    return path


def podman(*args: str, timeout: float = 120, stdin: bytes | None = None, check: bool = True) -> str:
    """Run podman on the test's own storage; its stdout, or an assertion with stderr
    (``check``: a failure is the test's; cleanups pass False)."""
    result = podman_result(*args, timeout=timeout, stdin=stdin)
    out, err = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    assert result.returncode == 0 or not check, f"{args[:2]}: rc {result.returncode}\n{err[-4000:]}"
    return out


def podman_result(
    *args: str, timeout: float = 120, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        _tool("podman"),
        "--root",
        str(STORAGE / "storage"),
        "--runroot",
        str(RUNROOT),
        "--tmpdir",
        str(RUNROOT / "libpod"),
        "--runtime",
        _tool("runc"),
        *args,
    ]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)


def image_exists(ref: str) -> bool:
    return ref in podman("images", "--format", "{{.Repository}}:{{.Tag}}").split()


def _root_tar(root: Path) -> bytes:
    """The root as a tar stream, slimmed, trusting what the build host trusts (a
    host behind a TLS-inspecting proxy trusts the proxy's CA; pip in the build
    needs that too; elsewhere it is Debian's bundle anyway)."""
    ca = HOST_CA.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if _DROPPED.match(info.name) or info.name == "./etc/ssl/certs/ca-certificates.crt":
                return None
            return info

        tar.add(root, arcname=".", filter=keep)
        info = tarfile.TarInfo("./etc/ssl/certs/ca-certificates.crt")
        info.size, info.mode, info.mtime = len(ca), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(ca))
    return buf.getvalue()


def base_image(arch: str, timings: dict[str, float]) -> str:
    """The local stand-in for the slim Python base, for one architecture."""
    digest = hashlib.sha256(HOST_CA.read_bytes()).hexdigest()
    key = rootfs_key(CONTAINER_BASE_PACKAGES, arch)
    tag = hashlib.sha256(f"{key} {digest} {BASE_RECIPE}".encode()).hexdigest()[:12]
    ref = f"localhost/leafgate-base:bookworm-{arch}-{tag}"
    if image_exists(ref):
        return ref
    root, timings[f"debootstrap {arch}"] = cached_rootfs(
        CONTAINER_BASE_PACKAGES, arch, timeout=3000
    )
    started = time.monotonic()
    oci_arch, variant = PLATFORMS[arch]
    extra = ["--variant", variant] if variant else []
    podman(
        "import",
        "--os",
        "linux",
        "--arch",
        oci_arch,
        *extra,
        "--change",
        'CMD ["/bin/bash"]',
        "--message",
        f"debootstrap --variant=minbase bookworm {arch} + {','.join(CONTAINER_BASE_PACKAGES)}",
        "-",
        ref,
        stdin=_root_tar(root),
        timeout=300,
    )
    timings[f"import {arch}"] = time.monotonic() - started
    return ref


def build_image(arch: str, timings: dict[str, float]) -> str:
    """images/Containerfile built for ``arch`` (its layers cached in the storage)."""
    base = base_image(arch, timings)
    build_base = base if arch == native_arch() else base_image(native_arch(), timings)
    oci_arch, variant = PLATFORMS[arch]
    platform = f"linux/{oci_arch}" + (f"/{variant}" if variant else "")
    # Several worktrees may run this suite at once on one machine: a tag of its own.
    ref = f"localhost/leafgate:test-{arch}-{os.getpid()}"
    started = time.monotonic()
    podman(
        "build",
        "--format",
        "docker",  # the OCI image format has no HEALTHCHECK
        "--pull=never",
        "--layers",
        "--platform",
        platform,
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        f"BUILD_BASE={build_base}",
        # buildx sets it; podman 4.3 (buildah 1.28) does not.
        "--build-arg",
        f"BUILDPLATFORM=linux/{PLATFORMS[native_arch()][0]}",
        "-f",
        str(CONTAINERFILE),
        "-t",
        ref,
        str(REPO_ROOT),
        timeout=BUILD_TIMEOUT,
    )
    timings[f"build {arch}"] = time.monotonic() - started
    return ref


def wait_healthy(url: str, cid: str, timeout: float) -> None:
    """Until /healthz answers through the published port (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", cid).strip()
        if state != "running" or time.monotonic() > deadline:
            logs = podman("logs", cid)
            raise AssertionError(f"container {state}, /healthz not answering: {logs[-3000:]}")
        time.sleep(0.2)


def published(cid: str, port: int) -> tuple[str, int]:
    host, _, hport = podman("port", cid, f"{port}/tcp").split()[-1].rpartition(":")
    assert host == "127.0.0.1", host  # published on loopback only
    return host, int(hport)


async def round_trip(url: str) -> bytes:
    nc = await aio.connect(url)
    try:
        sub = await nc.subscribe("container.check")
        await nc.flush(timeout=5)
        await nc.publish("container.check", b"from the host")
        msg = await sub.next_msg(timeout=5)
        assert not aio.errors_of(nc), aio.errors_of(nc)
        return msg.data
    finally:
        await nc.close()


def run_container(ref: str, name: str, *command: str) -> str:
    """A detached container, both ports published on loopback; its id."""
    return podman(
        "run",
        "--detach",
        "--name",
        name,
        # This machine's root lacks CAP_SYS_RESOURCE: the limits podman would
        # raise (nofile, nproc) can only be lowered. Periodic health checks need
        # systemd timers; the check is run on demand instead.
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
        "--health-interval",
        "disable",
        "--publish",
        "127.0.0.1::4222",
        "--publish",
        "127.0.0.1::8222",
        ref,
        *command,
    ).strip()


def wait_nats_info(host: str, port: int, timeout: float) -> None:
    """Until the server greets a client through the published port (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                if sock.recv(5) == b"INFO ":
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "no INFO from leafgate in the container"
        time.sleep(0.2)


def check_health_fails_unserved(ref: str) -> None:
    """The HEALTHCHECK can fail: a server without monitoring on 8222 is unhealthy."""
    name = f"leafgate-test-{os.getpid()}-unserved"
    try:
        cid = run_container(ref, name, "run", "-c", "/etc/leafgate/leafgate.toml", "-m", "8223")
        wait_nats_info(*published(cid, 4222), timeout=30)
        result = podman_result("healthcheck", "run", cid, timeout=30)
        assert (result.returncode, result.stdout.strip()) == (1, b"unhealthy"), result
    finally:
        podman("rm", "--force", "--volumes", "--time", "5", name, check=False, timeout=60)


def check_running(ref: str, arch: str, slow: float) -> None:
    name = f"leafgate-test-{os.getpid()}-{arch}"
    try:
        cid = run_container(ref, name)
        _check_container(cid, arch, slow)
        podman("stop", "--time", str(int(10 * slow)), cid, timeout=60 * slow)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", cid).strip()
        # SIGTERM (the image's STOPSIGNAL) reaches leafgate as PID 1: a clean exit.
        assert code == "0", f"leafgate exited {code} on podman stop: {podman('logs', cid)}"
    finally:
        # The container and its anonymous volume (the image's VOLUME), by name.
        podman("rm", "--force", "--volumes", "--time", "5", name, check=False, timeout=60 * slow)


def _check_container(cid: str, arch: str, slow: float) -> None:
    host, mport = published(cid, 8222)
    _, cport = published(cid, 4222)
    wait_healthy(f"http://{host}:{mport}", cid, timeout=30 * slow)

    version = podman("exec", cid, "leafgate", "--version")
    assert re.fullmatch(r"leafgate v\d+\.\d+\.\d+\S*\n", version), version
    # The server itself (PID 1) runs as the image's user, not root, and can
    # write its state directory (the volume the store goes to).
    status = podman("exec", cid, "cat", "/proc/1/status")
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
    assert uids and uids.groups() == (str(UID), str(UID)), status
    podman("exec", cid, "sh", "-c", "touch /var/lib/leafgate/probe && rm /var/lib/leafgate/probe")
    machine = podman("exec", cid, "uname", "-m").strip()
    assert machine == {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}[arch]

    # The image's own HEALTHCHECK command, run by podman, against the server.
    podman("healthcheck", "run", cid, timeout=30 * slow)
    health = podman("inspect", "--format", "{{json .State.Health}}", cid)
    assert json.loads(health)["Status"] == "healthy", health

    data = aio.run(round_trip(f"nats://{host}:{cport}"), timeout=20 * slow)
    assert data == b"from the host"


def _check_image(ref: str, arch: str) -> int:
    (info,) = json.loads(podman("image", "inspect", ref))
    # (podman 4.3 does not show the variant; uname -m in the container tells armv7)
    assert (info["Os"], info["Architecture"]) == ("linux", PLATFORMS[arch][0]), info
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}", config
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"]), info.get("Healthcheck")
    assert {"4222/tcp", "8222/tcp"} <= set(config["ExposedPorts"]), config
    size: int = info["Size"]
    return size


def image_size(ref: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).strip())


@pytest.mark.slow
@pytest.mark.parametrize("arch", container_arches())
def test_container_image_builds_and_serves(arch: str) -> None:
    assert os.geteuid() == 0, "this test needs root (debootstrap, podman's own storage)"
    if arch != native_arch():
        qemu_ready(arch)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    ref = build_image(arch, timings)
    try:
        size = _check_image(ref, arch)
        added = size - image_size(base_image(arch, timings))
        started = time.monotonic()
        slow = 1.0 if arch == native_arch() else 4.0  # emulated by qemu
        check_running(ref, arch, slow)
        if arch == native_arch():
            check_health_fails_unserved(ref)
        timings["run and checks"] = time.monotonic() - started
    finally:
        # The tag only: the image stays in the storage as the next run's cache.
        podman("untag", ref, ref, check=False)
    timings["total"] = time.monotonic() - t0
    print(
        f"container image ({arch}): {size / 1e6:.1f} MB, {added / 1e6:.1f} MB over its base;"
        " timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )
    assert added < MAX_ADDED_MB * 1_000_000, f"runtime adds {added / 1e6:.0f} MB to its base"
