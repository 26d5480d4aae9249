"""What the store tells publishers: PubAcks, duplicates, and held PONGs.

* A PubAck (``{"stream":<group>,"seq":N}``) goes to a message's reply subject
  once the commit its durability mode requires is done; a message not stored
  is answered with a JetStream-style error reply (or a non-fatal ``-ERR``).
* A repeated ``Nats-Msg-Id`` within the group's duplicate window is not
  stored; its PubAck names the first copy with ``"duplicate":true``, sent
  only once that first copy is committed (an ack never promises more than
  the commit it stands for).
* Durable flush: a connection that published to a ``durable_flush`` group has
  its PONGs held until everything it published before the PING is
  committed. PONGs stay in PING order: once one is held, later ones queue
  behind it.

The writer calls ``after_commit`` after every commit round with the highest
committed sequence. Nothing here waits or does I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from store.dedup import DuplicateWindow
from store.groups import GroupTable
from store.window import Record, Run

PONG = b"PONG\r\n"
REPLY_LIMIT_ERROR = 10077  # JetStream's err_code for a store that refuses a message

ReplySender = Callable[[bytes, bytes], None]
ErrorSender = Callable[[object, bytes], None]


def error_reply(text: str) -> bytes:
    """A JetStream-style error reply (what a stream answers when it refuses)."""
    return b'{"error":{"code":503,"err_code":%d,"description":"%b"}}' % (
        REPLY_LIMIT_ERROR,
        text.replace('"', "'").encode(),
    )


class FlushClient(Protocol):
    """A publisher whose PONGs may be held (edge.connection.ClientConnection)."""

    flush_seq: int
    pongs_due: deque[int] | None

    def send(self, data: bytes) -> None: ...


class PublisherAcks:
    def __init__(self, groups: GroupTable) -> None:
        self.groups = groups
        self.window = DuplicateWindow()
        self.send_reply: ReplySender = lambda _reply, _data: None
        self.send_error: ErrorSender = lambda _origin, _err: None
        # Duplicate acks waiting for their first copy's commit: (seq, reply, body).
        self._deferred: list[tuple[int, bytes, bytes]] = []
        self._flush_waiters: set[FlushClient] = set()

    def pub_ack(self, rec: Record) -> bytes:
        name = self.groups.states[rec.group].spec.name.encode()
        return b'{"stream":"%b","seq":%d}' % (name, rec.seq)

    def publish_acks(self, batch: Sequence[Record | Run]) -> None:
        for rec in batch:
            if rec.reply and type(rec) is Record:  # (a Run has no reply)
                self.send_reply(rec.reply, self.pub_ack(rec))
                rec.reply = b""

    def fail(self, reply: bytes, text: str) -> None:
        """Tell a publisher that asked for an ack that its message was not stored."""
        if reply:
            self.send_reply(reply, error_reply(text))

    def refuse(self, origin: object, subject: bytes, reply: bytes, text: str) -> None:
        """A refused publish: an error reply, or without a reply subject the only
        -ERR NATS clients treat as non-fatal, a permissions violation (the
        publisher learns, and stays connected)."""
        if reply:
            self.send_reply(reply, error_reply(text))
            return
        shown = subject.decode(errors="replace")
        err = f"-ERR 'Permissions Violation for Publish to \"{shown}\" ({text})'\r\n"
        self.send_error(origin, err.encode())

    def duplicate(self, group: int, first_seq: int, reply: bytes, committed_seq: int) -> None:
        """A repeated Nats-Msg-Id: count it and answer with the first copy's ack."""
        state = self.groups.states[group]
        state.duplicates += 1
        if not reply:
            return
        body = b'{"stream":"%b","seq":%d,"duplicate":true}' % (
            state.spec.name.encode(),
            first_seq,
        )
        if first_seq <= committed_seq:
            self.send_reply(reply, body)
        elif len(self._deferred) < 65536:
            self._deferred.append((first_seq, reply, body))

    def hold_pong(self, client: FlushClient, committed_seq: int) -> bool:
        """Answer a PING of *client*: False if the PONG may go now, True if held."""
        due = client.pongs_due
        if client.flush_seq <= committed_seq and not due:
            return False
        if due is None:
            due = client.pongs_due = deque()
        due.append(client.flush_seq)
        self._flush_waiters.add(client)
        return True

    def after_commit(self, committed_seq: int) -> None:
        if self._deferred:
            ready = [d for d in self._deferred if d[0] <= committed_seq]
            if ready:
                self._deferred = [d for d in self._deferred if d[0] > committed_seq]
                for _seq, reply, body in ready:
                    self.send_reply(reply, body)
        if self._flush_waiters:
            for client in list(self._flush_waiters):
                due = client.pongs_due
                while due and due[0] <= committed_seq:
                    due.popleft()
                    client.send(PONG)
                if not due:
                    self._flush_waiters.discard(client)
