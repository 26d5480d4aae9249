#!/usr/bin/env bash
# The single test command, for a fresh Debian machine (run as root or with sudo):
#   bash tests/run.sh [pytest args...]
# Installs the system packages the tests use when they are missing (nats-server is the
# reference server the differential tests compare against), installs the project with
# its test extras, prepares the Debian roots the image tests build on (cached), then
# runs pytest under a time limit and exits with pytest's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TEST_TIMEOUT="${TEST_TIMEOUT:-900}"  # seconds for the whole pytest run

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=()
if [ -n "${NATS_SERVER_BIN:-}" ]; then
    have "$NATS_SERVER_BIN" || { echo "NATS_SERVER_BIN=$NATS_SERVER_BIN not found" >&2; exit 1; }
else
    have nats-server || missing+=(nats-server)
fi
have mosquitto || missing+=(mosquitto)
have socat || missing+=(socat)
# The power-cut fixture (tests/powerfs): fusermount3, and what building pyfuse3 needs.
have fusermount3 || missing+=(fuse3)
have pkg-config || missing+=(pkg-config)
pkg-config --exists fuse3 2>/dev/null || missing+=(libfuse3-dev)
have gcc || missing+=(gcc)
"$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || missing+=(python3-dev)
have systemd-analyze || missing+=(systemd)  # tests/test_systemd.py checks the unit
have debootstrap || missing+=(debootstrap)  # tests/test_images.py builds a Debian root
# tests/test_container.py builds images/Containerfile and runs it: podman (with
# runc: crun refuses hybrid cgroup machines), and qemu-user-static registered
# with binfmt_misc for the arm64 image.
have podman || missing+=(podman)
have runc || missing+=(runc)
have qemu-aarch64-static || missing+=(qemu-user-static)
have update-binfmts || missing+=(binfmt-support)
"$PYTHON" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)

if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "missing packages (${missing[*]}); run as root or install sudo" >&2
            exit 1
        }
        SUDO=(sudo)
    fi
    echo "run.sh: installing ${missing[*]}" >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# The kernel runs foreign binaries through qemu only with binfmt_misc mounted
# (binfmt-support registers qemu's interpreters there when it is).
if [ ! -e /proc/sys/fs/binfmt_misc/status ] && [ "$(id -u)" -eq 0 ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    update-binfmts --enable >/dev/null 2>&1 || true
fi

# Debian marks its Python "externally managed"; a throwaway test machine may install
# into it (inside a virtualenv this variable changes nothing).
PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install -q -e '.[test]'

# The Debian roots the image tests build on (debootstrap, arm64 emulated),
# prepared side by side, as packages are installed, before the time limit
# starts: once cached (/var/tmp/leafgate-tests) this takes no time. A failure
# here is left to the tests to report.
# LEAFGATE_ROOTFS_WARM=0 leaves them to the tests (for a run of other tests).
if [ "$(id -u)" -eq 0 ] && [ "${LEAFGATE_ROOTFS_WARM:-1}" != 0 ]; then
    "$PYTHON" -m tests.rootfs || echo "run.sh: preparing the Debian roots failed" >&2
fi

rc=0
timeout --signal=TERM --kill-after=30 "$TEST_TIMEOUT" \
    "$PYTHON" -m pytest -q -p no:cacheprovider "$@" || rc=$?
case "$rc" in
    0) ;;
    5) echo "run.sh: pytest collected no tests; treating that as a failure" >&2; rc=1 ;;
    124|137) echo "run.sh: tests exceeded ${TEST_TIMEOUT}s and were stopped" >&2 ;;
esac
exit "$rc"
