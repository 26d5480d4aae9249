"""Publisher deduplication by ``Nats-Msg-Id``, as a JetStream stream does it.

A publisher that did not get its PubAck (a timeout, a reconnect) publishes
again with the same ``Nats-Msg-Id``. Within the group's duplicate window the
second copy is not stored: the publisher gets the first copy's sequence with
``"duplicate": true``. The window is kept in memory, insertion ordered, so
expiry pops from the front; it is bounded (the oldest ids are forgotten
first when it is full, which only shortens the window under a flood of ids).
"""

from __future__ import annotations

from collections import OrderedDict

HEADER = b"nats-msg-id:"
MAX_IDS = 200_000  # ids remembered across all groups


def msg_id_of(hdr: bytes | None) -> bytes | None:
    """The ``Nats-Msg-Id`` value of a header block (name matched without case),
    or None when there is none or it is empty."""
    if not hdr:
        return None
    lower = hdr.lower()
    at = lower.find(b"\r\n" + HEADER)
    if at < 0:
        return None
    start = at + 2 + len(HEADER)
    end = hdr.find(b"\r\n", start)
    value = hdr[start : end if end >= 0 else len(hdr)].strip(b" \t")
    return value or None


class DuplicateWindow:
    """``(group, msg_id) -> (seq, ms)`` for ids seen within each group's window."""

    def __init__(self, max_ids: int = MAX_IDS) -> None:
        self.max_ids = max_ids
        self._seen: OrderedDict[tuple[int, bytes], tuple[int, int]] = OrderedDict()
        self.forgotten = 0  # ids dropped early because the window was full

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, group: int, msg_id: bytes, now_ms: int, window_ms: int) -> int:
        """The sequence of an earlier copy still inside the window, else 0."""
        hit = self._seen.get((group, msg_id))
        if hit is None:
            return 0
        seq, ts = hit
        if now_ms - ts >= window_ms:
            del self._seen[(group, msg_id)]
            return 0
        return seq

    def add(self, group: int, msg_id: bytes, seq: int, now_ms: int) -> None:
        key = (group, msg_id)
        self._seen.pop(key, None)
        self._seen[key] = (seq, now_ms)
        while len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)
            self.forgotten += 1

    def forget(self, group: int, msg_id: bytes, seq: int) -> None:
        """Forget an id whose message was not stored after all (refused, lost)."""
        key = (group, msg_id)
        hit = self._seen.get(key)
        if hit is not None and hit[0] == seq:
            del self._seen[key]

    def expire(self, now_ms: int, window_ms: int) -> int:
        """Drop ids older than the longest window; returns how many."""
        n = 0
        seen = self._seen
        while seen:
            key = next(iter(seen))
            if now_ms - seen[key][1] < window_ms:
                break
            del seen[key]
            n += 1
        return n
