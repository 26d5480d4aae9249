"""A bounded memory of recent MQTT publishes (loop prevention for MQTT 3.1.1).

MQTT 3.1.1 has no ``no_local``: a message the bridge publishes to the broker
comes back on any of its own subscriptions that overlap. The bridge notes
each publish here (topic, payload digest) and drops the first incoming copy
that matches within ``ttl`` seconds. Bounded by ``capacity`` entries: the
oldest notes go first (a loop then lets one copy through, counted, rather
than memory growing).

Pure: the caller passes the clock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


class RecentPublishes:
    def __init__(self, capacity: int = 8192, ttl: float = 30.0) -> None:
        self.capacity = capacity
        self.ttl = ttl
        # key -> (count, last time noted)
        self._seen: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    @staticmethod
    def _key(topic: str, payload: bytes) -> bytes:
        return hashlib.blake2b(topic.encode() + b"\x00" + payload, digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._seen)

    def note(self, topic: str, payload: bytes, now: float) -> None:
        key = self._key(topic, payload)
        count, _ = self._seen.pop(key, (0, now))
        self._seen[key] = (count + 1, now)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def take(self, topic: str, payload: bytes, now: float) -> bool:
        """True (and forget one copy) when ``topic``/``payload`` was noted recently."""
        if not self._seen:
            return False
        self._expire(now)
        key = self._key(topic, payload)
        entry = self._seen.get(key)
        if entry is None:
            return False
        count, stamp = entry
        if count <= 1:
            del self._seen[key]
        else:
            self._seen[key] = (count - 1, stamp)
        return True

    def _expire(self, now: float) -> None:
        while self._seen:
            key, (_count, stamp) = next(iter(self._seen.items()))
            if now - stamp <= self.ttl:
                break
            del self._seen[key]
