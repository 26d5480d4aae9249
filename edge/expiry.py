"""Closing connections whose user JWT runs out: at its ``exp`` or at the end of
its connect-time window, nats-server 2.9.10 sends ``-ERR 'User Authentication
Expired'`` and closes (captured: both cases, to the second). One task, owned by
the server's services nursery, sleeps until the earliest deadline.

The same task runs the account-wide deadlines of edge.security (``call_at``):
an account JWT's ``exp`` ("Account Authentication Expired" to its users) and
an import's activation token running out (the imports are made again).

Deadlines of connections that closed before theirs stay in the heap until they
come up, or until the heap holds more than twice the open connections (then it
is rebuilt from the open ones): memory stays bounded by the connections.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from edge.log import get_logger
from edge.proto.errors import CloseReason, ProtocolError

if TYPE_CHECKING:
    from edge.connection import ClientConnection

log = get_logger("edge.expiry")

# nats-server's text; leafgate's close reasons have no "Authentication Expired"
# of their own (edge/proto/errors.py), the closest is the authorization one.
AUTH_EXPIRED = ProtocolError("User Authentication Expired", True, CloseReason.AUTH_VIOLATION)
# At an account JWT's exp 2.9.10 sends its users this (Account.expiredTimeout).
ACCOUNT_EXPIRED = ProtocolError("Account Authentication Expired", True, CloseReason.AUTH_VIOLATION)


class Expiries:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ClientConnection]] = []
        self._order = itertools.count()  # ties: never compare connections
        self._changed = trio.Event()
        self._open: dict[int, ClientConnection] = {}
        self._calls: list[tuple[float, int, Callable[[], None]]] = []

    def add(self, client: ClientConnection, wall_deadline: float) -> None:
        """Close ``client`` at ``wall_deadline`` (a Unix time) if still open then."""
        at = trio.current_time() + max(0.0, wall_deadline - time.time())
        self._open[client.cid] = client
        if len(self._heap) > 2 * len(self._open) + 64:
            self._prune()
        heapq.heappush(self._heap, (at, next(self._order), client))
        self._changed.set()

    def call_at(self, wall_deadline: float, call: Callable[[], None]) -> None:
        """Run ``call`` at ``wall_deadline`` (a Unix time); it checks whether it
        still applies (the callers keep one pending call per account and key)."""
        at = trio.current_time() + max(0.0, wall_deadline - time.time())
        heapq.heappush(self._calls, (at, next(self._order), call))
        self._changed.set()

    def forget(self, client: ClientConnection) -> None:
        self._open.pop(client.cid, None)

    def _prune(self) -> None:
        self._heap = [e for e in self._heap if self._open.get(e[2].cid) is e[2]]
        heapq.heapify(self._heap)

    async def run(self) -> None:
        while True:
            deadline = min(
                self._heap[0][0] if self._heap else math.inf,
                self._calls[0][0] if self._calls else math.inf,
            )
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, client = heapq.heappop(self._heap)
                if self._open.get(client.cid) is client and client.close_reason is None:
                    del self._open[client.cid]
                    log.info("client_authentication_expired", cid=client.cid, ip=client.ip)
                    client.close(AUTH_EXPIRED.reason, AUTH_EXPIRED.wire())
            while self._calls and self._calls[0][0] <= now:
                heapq.heappop(self._calls)[2]()
