"""systemd's notify protocol (sd_notify(3)), written out: no dependency.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET``, a unix datagram
socket (a path, or an abstract name written with a leading ``@``); each
datagram is newline-separated ``KEY=VALUE`` lines. leafgate sends
``READY=1`` once its listener and store are up, ``STATUS=...`` (a line
``systemctl status`` shows), ``STOPPING=1`` when it begins to stop, and, under
``WatchdogSec=``, ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` from a task of
the event loop: a loop that hangs stops pinging and systemd restarts the
service. Without ``NOTIFY_SOCKET`` every call is a no-op, so the same binary
runs anywhere.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import trio

from edge.log import get_logger

log = get_logger("edge.sdnotify")


def socket_address(value: str) -> str | bytes | None:
    """``NOTIFY_SOCKET``'s value as an AF_UNIX address: ``@name`` is the abstract
    ``\\0name``; a path stays a path; anything else (empty, relative) is None."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_period(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when
    the watchdog is off or meant for another process (``WATCHDOG_PID``)."""
    owner = env.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """Sends notify datagrams to ``NOTIFY_SOCKET`` (when set). Never raises:
    a missing or refusing socket is logged once and then ignored."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog = watchdog_period(env, os.getpid()) if self.address else None
        self._sock: socket.socket | None = None
        self._failed = False
        self.status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """``send(READY=1, STATUS="...")``: one datagram; True if it went out."""
        if self.address is None or self._failed:
            return False
        data = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            # A datagram socket does not block on send; a gone socket will not
            # come back: warn once, stop trying.
            self._failed = True
            log.warning("sd_notify_failed", socket=os.environ.get("NOTIFY_SOCKET"), error=str(exc))
            return False
        return True

    def set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.send(STATUS=status)

    async def run_watchdog(self, status: Callable[[], str] | None = None) -> None:
        """Ping the watchdog every period (forever; returns at once when off).
        ``status`` is called on each ping and sent when it changed."""
        if self.watchdog is None:
            return
        while True:
            if status is not None:
                self.set_status(status())
            self.send(WATCHDOG=1)
            await trio.sleep(self.watchdog)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
