"""In-process clients of the router: the bridges and the server's own services.

A ``LocalClient`` is to the router what a ``ClientConnection`` is, without a
socket: it publishes into the same subject space (local subscribers, the
store-and-forward buffer, the uplinks) and holds subscriptions whose messages
it queues for a Trio task to take.

* Publishing is synchronous, like a connection's read loop. A producer that
  publishes in bursts calls ``wait_room()`` between bursts, which holds it
  while the store is congested or a subscriber it feeds is backlogged: the
  same back-pressure a socket publisher gets.
* Each subscription queues at most ``pending_msgs`` messages and
  ``pending_bytes`` bytes. Past that, new messages are dropped and counted (as
  a NATS client library drops for a slow consumer); the router and the
  publishers never wait for an in-process subscriber.
* Echo is off: a client never receives what it published itself, which is
  the first half of a bridge's loop prevention.
* ``request()`` shares one wildcard inbox subscription per client (as nats-py
  does), so a request costs no SUB/UNSUB and no interest change on the hub.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from edge.log import RateLimitedWarning, get_logger
from edge.proto.encoder import encode_headers, parse_headers
from edge.proto.ids import nuid
from edge.router import InProcessSubscriber, Subscription
from edge.subjects import is_valid_publish_subject, is_valid_subject

if TYPE_CHECKING:
    from edge.server import Server

log = get_logger("edge.local")

WARN_PERIOD = 10.0  # seconds between two logs of the same repeated warning
DEFAULT_PENDING_MSGS = 65536
DEFAULT_PENDING_BYTES = 64 * 1024 * 1024
# Subjects already found valid for publishing; bounded, cleared when full.
_VALID: set[bytes] = set()
_VALID_MAX = 65536


@functools.lru_cache(maxsize=1024)
def _header_block(headers: tuple[tuple[str, str], ...]) -> bytes:
    # Bridges publish the same few header sets again and again (their marker,
    # a content type): encoding each once saves ~15 us a message.
    return encode_headers(None, "", headers)


class PublishError(ValueError):
    """A message the server refuses (invalid subject, payload too large)."""


class NoResponders(Exception):
    """A request found nobody to answer it (local or on the hub)."""


@dataclass(frozen=True, slots=True)
class LocalMsg:
    subject: str
    reply: str
    headers: tuple[tuple[str, str], ...]
    status: int | None  # a header status (503 no responders, 408, ...) or None
    data: bytes  # the payload, without the header block


def _to_msg(subject: bytes, reply: bytes, hdr: int, data: bytes) -> LocalMsg:
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    if hdr:
        try:
            status, _desc, pairs = parse_headers(data[:hdr])
            headers = tuple(pairs)
        except ValueError:
            pass  # a malformed block from a peer: deliver the payload without it
        data = data[hdr:]
    return LocalMsg(subject.decode(), reply.decode(), headers, status, data)


class LocalSubscription:
    """One subscription of a local client; iterate it (``async for``) or ``await next()``."""

    def __init__(
        self,
        client: LocalClient,
        subject: bytes,
        queue: bytes | None,
        sid: bytes,
        pending_msgs: int,
        pending_bytes: int,
    ) -> None:
        self.client = client
        self.subject = subject.decode()
        self.sub = Subscription(client, subject, queue, sid)
        self.pending_msgs = pending_msgs
        self.pending_bytes = pending_bytes
        self._queue: deque[tuple[bytes, bytes, int, bytes]] = deque()
        self._bytes = 0
        self._wake: trio.Event | None = None
        self.dropped = 0
        self.closed = False

    def _push(self, subject: bytes, reply: bytes, hdr: int, data: bytes) -> None:
        if len(self._queue) >= self.pending_msgs or self._bytes + len(data) > self.pending_bytes:
            self.dropped += 1
            self.client.note_drop(self)
            return
        self._queue.append((subject, reply, hdr, data))
        self._bytes += len(data)
        if self._wake is not None:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def next_nowait(self) -> LocalMsg | None:
        if not self._queue:
            return None
        subject, reply, hdr, data = self._queue.popleft()
        self._bytes -= len(data)
        return _to_msg(subject, reply, hdr, data)

    async def next(self) -> LocalMsg:
        """The next message; waits for one. Raises ``trio.EndOfChannel`` once unsubscribed."""
        while not self._queue:
            if self.closed:
                raise trio.EndOfChannel
            self._wake = trio.Event()
            await self._wake.wait()
            self._wake = None
        msg = self.next_nowait()
        assert msg is not None
        return msg

    def __aiter__(self) -> LocalSubscription:
        return self

    async def __anext__(self) -> LocalMsg:
        try:
            return await self.next()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def unsubscribe(self) -> None:
        self.client._remove(self)

    def _close(self) -> None:
        self.closed = True
        if self._wake is not None:
            self._wake.set()


class LocalClient(InProcessSubscriber):
    """An in-process NATS client; make one with ``Server.local_client(name)``."""

    echo = False  # its own messages never come back to it

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.router = server.router
        self.name = name
        self.out = bytearray()  # never used: the router frames only for sockets
        self._subs: dict[bytes, LocalSubscription] = {}
        self._next_sid = 0
        self._inbox_prefix = b""
        self._inbox_sub: LocalSubscription | None = None
        self._waiters: dict[bytes, list[LocalMsg]] = {}
        self._waiter_events: dict[bytes, trio.Event] = {}
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0
        self.flush_seq = 0  # set by the store for durable_flush groups (unused here)
        self.errors = 0
        self._warn = RateLimitedWarning(WARN_PERIOD)

    # ---- publishing ---------------------------------------------------------------

    def publish(
        self,
        subject: str | bytes,
        data: bytes,
        *,
        reply: str | bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Publish one message; False when nobody (local, store or hub) wanted it.

        Raises ``PublishError`` for an invalid subject or reply, headers that
        cannot be encoded, or a payload over max_payload.
        """
        raw = subject.encode() if isinstance(subject, str) else subject
        if raw not in _VALID:
            if not is_valid_publish_subject(raw):
                raise PublishError(f"invalid subject {raw!r}")
            if len(_VALID) >= _VALID_MAX:
                _VALID.clear()
            _VALID.add(raw)
        raw_reply = reply.encode() if isinstance(reply, str) else reply
        if raw_reply and not is_valid_publish_subject(raw_reply):
            raise PublishError(f"invalid reply subject {raw_reply!r}")
        hdr = 0
        if headers:
            try:
                block = _header_block(tuple(headers))
            except ValueError as exc:
                raise PublishError(str(exc)) from None
            hdr = len(block)
            data = block + data
        if len(data) > self.server.config.max_payload:
            raise PublishError(
                f"payload of {len(data)} bytes is over max_payload "
                f"({self.server.config.max_payload})"
            )
        self.in_msgs += 1
        self.in_bytes += len(data)
        return self.router.publish(self, raw, raw_reply, hdr, data)

    def stored(self, subject: str | bytes) -> bool:
        """Whether messages on ``subject`` go through the store-and-forward buffer
        (a request on it is then answered with a PubAck once committed)."""
        store = self.server.store
        raw = subject.encode() if isinstance(subject, str) else subject
        return store is not None and store.classify(raw) >= 0

    async def wait_room(self) -> None:
        """Hold the caller while the store is congested or a subscriber it feeds
        is backlogged (bounded waits, as for a socket publisher)."""
        server = self.server
        if server.backlogged:
            await server.hold_producer(self)  # type: ignore[arg-type]
        store = server.store
        if store is not None and store.congested:
            await store.wait_room()

    # ---- subscribing ----------------------------------------------------------------

    def subscribe(
        self,
        subject: str | bytes,
        queue: str | bytes | None = None,
        *,
        pending_msgs: int = DEFAULT_PENDING_MSGS,
        pending_bytes: int = DEFAULT_PENDING_BYTES,
    ) -> LocalSubscription:
        raw = subject.encode() if isinstance(subject, str) else subject
        if not is_valid_subject(raw):
            raise ValueError(f"invalid subject {raw!r}")
        raw_queue = queue.encode() if isinstance(queue, str) else queue
        if raw_queue is not None and (not raw_queue or any(c in raw_queue for c in b" \t\r\n")):
            raise ValueError(f"invalid queue group {raw_queue!r}")
        self._next_sid += 1
        sid = b"%d" % self._next_sid
        sub = LocalSubscription(self, raw, raw_queue, sid, pending_msgs, pending_bytes)
        self._subs[sid] = sub
        self.router.subscribe(sub.sub)
        return sub

    def _remove(self, sub: LocalSubscription) -> None:
        if self._subs.pop(sub.sub.sid, None) is not None:
            self.router.unsubscribe(sub.sub)
        sub._close()

    def close(self) -> None:
        """Unsubscribe everything; pending ``next()`` calls end."""
        for sub in list(self._subs.values()):
            self._remove(sub)

    # ---- requests ----------------------------------------------------------------------

    def new_inbox(self) -> str:
        return "_INBOX." + nuid()

    async def request(
        self,
        subject: str | bytes,
        data: bytes,
        *,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 2.0,
    ) -> LocalMsg:
        """Publish with a reply subject and wait for the first answer.

        Raises ``NoResponders`` when nobody can answer (nothing matched, or a
        503 status came back) and ``trio.TooSlowError`` after ``timeout``.
        """
        if self._inbox_sub is None:
            self._inbox_prefix = b"_INBOX." + nuid().encode() + b"."
            self._inbox_sub = self.subscribe(self._inbox_prefix + b"*")
        self._next_sid += 1
        token = b"%d" % self._next_sid
        event = trio.Event()
        self._waiter_events[token] = event
        self._waiters[token] = []
        try:
            if not self.publish(subject, data, reply=self._inbox_prefix + token, headers=headers):
                raise NoResponders(subject)
            with trio.fail_after(timeout):
                await event.wait()
            msg = self._waiters[token][0]
        finally:
            self._waiter_events.pop(token, None)
            self._waiters.pop(token, None)
        if msg.status == 503:
            raise NoResponders(subject)
        return msg

    # ---- what the router calls -----------------------------------------------------------

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        sub.delivered += 1
        self.out_msgs += 1
        self.out_bytes += len(data)
        local = self._subs.get(sub.sid)
        if local is None:
            return
        if local is self._inbox_sub:
            token = subject[len(self._inbox_prefix) :]
            event = self._waiter_events.get(token)
            if event is not None and not event.is_set():
                self._waiters[token].append(_to_msg(subject, reply, hdr, data))
                event.set()
            return
        local._push(subject, reply, hdr, data)
        if sub.max_msgs and sub.delivered >= sub.max_msgs:
            self._remove(local)

    def appended(self, sub: Subscription) -> None:  # pragma: no cover - never framed inline
        raise AssertionError("the router frames inline only for socket clients")

    def send(self, data: bytes) -> None:
        """Protocol bytes for this client: only errors reach a local client
        (a refused store-and-forward publish without a reply)."""
        self.errors += 1
        decision = self._warn.check("error", trio.current_time())
        if decision.log:
            log.warning(
                "local_client_error",
                client=self.name,
                error=data.decode(errors="replace").strip(),
                suppressed=decision.suppressed,
            )

    def note_drop(self, sub: LocalSubscription) -> None:
        decision = self._warn.check(("drop", sub.subject), trio.current_time())
        if decision.log:
            log.warning(
                "local_subscriber_dropped",
                client=self.name,
                subject=sub.subject,
                dropped=sub.dropped,
                pending_msgs=sub.pending_msgs,
            )
