"""Routing: from one published message to the subscribers that get a copy.

The router is synchronous and never awaits. It finds the matching subscriptions
in the (cached) subject trie and hands each chosen subscriber an encoded copy;
subscribers buffer their own output, so a publisher never waits for a slow
subscriber: a subscriber whose buffer passes its cap closes itself as a slow
consumer instead.

Queue groups: for every distinct queue name among the matches, one member gets
the message, chosen at random (as nats-server does).
"""

from __future__ import annotations

from random import random
from typing import Protocol

from edge.sublist import Sublist, SublistResult

NO_RESPONDERS_HDR = b"NATS/1.0 503\r\n\r\n"


class Subscriber(Protocol):
    """What the router needs from a connection that holds subscriptions."""

    echo: bool

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None: ...


class Subscription:
    """One SUB of one connection. Mutable: it counts its deliveries for UNSUB max."""

    __slots__ = ("client", "delivered", "max_msgs", "queue", "sid", "subject")

    def __init__(self, client: Subscriber, subject: bytes, queue: bytes | None, sid: bytes) -> None:
        self.client = client
        self.subject = subject
        self.queue = queue
        self.sid = sid
        self.max_msgs = 0  # 0: no automatic unsubscribe
        self.delivered = 0

    def __repr__(self) -> str:
        return f"Subscription({self.subject!r}, queue={self.queue!r}, sid={self.sid!r})"


class Router:
    __slots__ = ("messages_in", "sublist")

    def __init__(self, cache_size: int = 4096) -> None:
        self.sublist: Sublist[Subscription] = Sublist(cache_size)
        self.messages_in = 0

    def subscribe(self, sub: Subscription) -> None:
        self.sublist.insert(sub.subject, sub.queue, sub)

    def unsubscribe(self, sub: Subscription) -> None:
        self.sublist.remove(sub.subject, sub.queue, sub)

    def match(self, subject: bytes) -> SublistResult[Subscription]:
        return self.sublist.match(subject)

    def publish(
        self, origin: Subscriber | None, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> bool:
        """Deliver one message. Returns False when nothing at all matched."""
        plain, queues = self.sublist.match(subject)
        if not plain and not queues:
            return False
        if origin is not None and not origin.echo:
            for sub in plain:
                if sub.client is not origin:
                    sub.client.deliver(sub, subject, reply, hdr, data)
            for _queue, members in queues:
                self._deliver_queue(members, origin, subject, reply, hdr, data)
            return True
        for sub in plain:
            sub.client.deliver(sub, subject, reply, hdr, data)
        for _queue, members in queues:
            sub = members[int(random() * len(members))] if len(members) > 1 else members[0]
            sub.client.deliver(sub, subject, reply, hdr, data)
        return True

    @staticmethod
    def _deliver_queue(
        members: tuple[Subscription, ...],
        origin: Subscriber,
        subject: bytes,
        reply: bytes,
        hdr: int,
        data: bytes,
    ) -> None:
        """Pick a member for a publisher with echo off: never the publisher itself."""
        others = [m for m in members if m.client is not origin]
        if others:
            sub = others[int(random() * len(others))]
            sub.client.deliver(sub, subject, reply, hdr, data)

    def no_responders(self, origin: Subscriber, subject: bytes, reply: bytes) -> None:
        """Answer a request that found no subscriber with a 503 status message.

        It goes only to the requester's own subscriptions on the reply subject, as
        nats-server delivers it.
        """
        plain, queues = self.sublist.match(reply)
        targets = [s for s in plain if s.client is origin]
        for _queue, members in queues:
            targets.extend(s for s in members if s.client is origin)
        for sub in targets:
            sub.client.deliver(sub, reply, b"", len(NO_RESPONDERS_HDR), NO_RESPONDERS_HDR)
