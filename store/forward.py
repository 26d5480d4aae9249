"""The forwarder: sends the store's messages up one hub link and collects the
hub's confirmations. A Trio task inside the uplink's link nursery (one per
link session); the bookkeeping is ``store.window``'s.

Per link session:

1. Wait until the link is up (the hub answered our first PING, so our ack
   subscription ``_INBOX.<id>.*`` is in place before anything needs it).
2. Decide per group how the hub confirms: for ``confirm = "auto"``, ask the
   hub's JetStream API which streams hold the group's subjects; no JetStream,
   or no stream, means PING/PONG confirmation.
3. Send: first what the store holds (oldest first, read back in pages), then
   live records from the store's feed, in sequence order, each as an HMSG with
   ``Nats-Msg-Id: <gateway>:<seq>`` and the reply ``_INBOX.<id>.<seq>``; after
   each burst that holds PING-confirmed records, a PING marked with the last
   sequence. The window bounds what is in flight; the uplink's output buffer
   is kept short so live traffic is interleaved, never starved.
4. On an overdue window, send it all again (go back N). When the link ends,
   hand whatever is unconfirmed back to the store.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from typing import TYPE_CHECKING, Protocol

import trio

from edge.log import RateLimitedWarning, get_logger
from edge.proto.leafproto import encode_lmsg
from store.rows import ROW_MSGS
from store.window import Confirm, InFlight, Record, ack_seq, pub_ack_ok, with_msg_id

if TYPE_CHECKING:
    from store.writer import Store

log = get_logger("store.forward")

PAGE = 1000  # records taken from the store's feed at a time
READ_PAGE = ROW_MSGS  # records read back from the database at a time: about a row
OUT_HIGH = 512 * 1024  # keep the link's output buffer below this
WINDOW_BYTES = 16 * 1024 * 1024
LOOKUP_TIMEOUT = 3.0
TICK = 0.25
WARN_PERIOD = 30.0


class LinkPort(Protocol):
    """What the forwarder needs from the uplink (see ``edge.uplink.Uplink``)."""

    out: bytearray
    up: bool

    def send(self, data: bytes) -> None: ...
    def send_marked_ping(self, mark: int) -> None: ...
    def route(self, subject: bytes) -> tuple[bytes, ...] | None: ...
    def may_send(self, subject: bytes) -> bool: ...
    def hub_jetstream(self) -> tuple[bool, str | None]: ...
    async def wait_up(self) -> None: ...
    async def wait_drained(self) -> None: ...


class Forwarder:
    def __init__(self, store: Store, inbox: bytes) -> None:
        self.store = store
        self.inbox = inbox  # b"_INBOX.<id>." : acks arrive on <inbox><seq>
        self.window = InFlight(store.config.max_inflight, WINDOW_BYTES)
        self.resend: deque[Record] = deque()
        # Records the link may not send (the hub's permissions): kept until the
        # link ends and handed back with the window (a memory-mode one is then
        # written), to be tried again on the next link.
        self.denied: list[Record] = []
        self.cursor = 0
        self.modes: dict[int, Confirm] = {}
        self._lookups: dict[bytes, trio.MemorySendChannel[bytes]] = {}
        self._lookup_count = 0  # each lookup its own reply subject, on every link
        self._wake = trio.Event()
        self._emptied = trio.Event()  # set when the window runs empty
        self._warn = RateLimitedWarning(WARN_PERIOD)
        self.sent = 0
        self.resent = 0
        self.acked = 0
        self.nacked = 0

    # ---- called by the uplink's reader, synchronously ---------------------------

    def on_reply(self, subject: bytes, payload: bytes) -> None:
        """A message on our inbox: a PubAck for a stored message, or a lookup reply."""
        self.on_replies([(subject, payload)])

    def on_replies(self, replies: list[tuple[bytes, bytes]]) -> None:
        """Messages on our inbox, as one read from the link brought them: the
        PubAcks among them are confirmed to the store in one call."""
        done: list[Record] = []
        inbox = self.inbox
        cut = len(inbox)
        ack = self.window.ack
        for subject, payload in replies:
            tail = subject[cut:]
            if (
                subject.startswith(inbox)
                and tail.isdigit()
                and len(tail) <= 19
                and b'"error"' not in payload
                and b'"seq"' in payload
                and b'"stream"' in payload
            ):
                # A PubAck (pub_ack_ok's fast case, inline: once per message).
                record = ack(int(tail))
                if record is not None:
                    done.append(record)
            else:
                self._other_reply(subject, payload, done)
        if done:
            self.acked += len(done)
            self.store.confirmed(done)
            self._woken()

    def _other_reply(self, subject: bytes, payload: bytes, done: list[Record]) -> None:
        """A lookup's answer, or a JetStream reply that is not a plain PubAck."""
        seq = ack_seq(subject, self.inbox)
        if seq is None:
            channel = self._lookups.get(subject)
            if channel is not None:
                # A second answer to one lookup is ignored.
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    channel.send_nowait(payload)
            return
        ok, error = pub_ack_ok(payload)
        if not ok:
            self.nacked += 1
            self._warn_once("hub_refused_message", seq=seq, error=error)
            return  # stays in flight: resent after the ack timeout
        record = self.window.ack(seq)
        if record is not None:
            done.append(record)

    def on_pong(self, mark: int) -> None:
        done = self.window.confirm_through(mark)
        if done:
            self.acked += len(done)
            self.store.confirmed(done)
            self._woken()

    def _woken(self) -> None:
        self._wake.set()
        if not len(self.window):
            self._emptied.set()

    async def settle(self) -> None:
        """Return once nothing is in flight (the caller bounds the wait)."""
        while len(self.window):
            self._emptied = trio.Event()
            await self._emptied.wait()

    # ---- one link session ----------------------------------------------------------

    async def run(self, link: LinkPort) -> None:
        """Forward until cancelled (the link ended). Never returns on its own."""
        try:
            await link.wait_up()
            await self._decide_modes(link)
            self.cursor = 0
            self.store.link_changed(True, [])
            log.info(
                "forward_started",
                backlog=sum(s.count for s in self.store.groups.states),
                modes={
                    self.store.groups.states[i].spec.name: m.value for i, m in self.modes.items()
                },
            )
            while True:
                await self._step(link)
        finally:
            unconfirmed = self.window.take_all() + list(self.resend) + self.denied
            self.resend.clear()
            self.denied = []
            self.store.link_changed(False, unconfirmed)

    async def _step(self, link: LinkPort) -> None:
        now = trio.current_time()
        if self.window.overdue_acks(now, self.store.config.ack_timeout):
            again = self.window.take_unacked()
            self.resent += len(again)
            self._warn_once("hub_ack_timeout", resending=len(again), first=again[0].seq)
            self.resend.extendleft(reversed(again))
        records = await self._next_records()
        if records:
            # Stamped when sent: reading them back may have taken a while.
            self._send(link, records, trio.current_time())
            if len(link.out) > OUT_HIGH:
                await link.wait_drained()
            else:
                await trio.sleep(0)  # let the reader and live traffic run
            return
        # Nothing to send now: wait for new data, an ack (room), or the timer.
        with trio.move_on_after(TICK):
            if self.window.has_room():
                await _either(self.store.data_ready, self._wake)
            else:
                await self._wake.wait()
        self._wake = trio.Event()

    async def _next_records(self) -> list[Record]:
        room = self.window.max_msgs - len(self.window)
        if room <= 0 or self.window.bytes >= self.window.max_bytes:
            return []
        limit = min(room, PAGE)
        if self.resend:
            out: list[Record] = []
            while self.resend and len(out) < limit:
                out.append(self.resend.popleft())
            return out
        store = self.store
        if store.behind:
            return await store.read_after(self.cursor, min(room, READ_PAGE))
        return store.take_feed(self.cursor, limit)

    def _send(self, link: LinkPort, records: list[Record], now: float) -> None:
        gateway = self.store.gateway_id.encode()
        inbox = self.inbox
        out = bytearray()
        mark = -1
        add = self.window.add
        modes = self.modes
        subject = None
        allowed = False
        route: tuple[bytes, ...] = ()
        for rec in records:
            if rec.subject != subject:  # records come in runs of one subject
                subject = rec.subject
                allowed = link.may_send(subject)
                route = link.route(subject) or ()
            if not allowed:
                self._warn_once("forward_denied", subject=subject.decode(errors="replace"))
                self.denied.append(rec)
                continue
            out += encode_stored(rec, gateway, inbox, route)
            how = modes.get(rec.group, Confirm.JETSTREAM)
            add(rec, how, now)
            if how is Confirm.LINK:
                mark = rec.seq
        if records and records[-1].seq > self.cursor:
            self.cursor = records[-1].seq  # records come in sequence order
        self.sent += len(records)
        link.send(bytes(out))
        if mark >= 0:
            link.send_marked_ping(mark)

    # ---- how the hub confirms ---------------------------------------------------------

    async def _decide_modes(self, link: LinkPort) -> None:
        jetstream, domain = link.hub_jetstream()
        for state in self.store.groups.states:
            wanted = state.spec.confirm
            if wanted == "jetstream":
                mode = Confirm.JETSTREAM
            elif wanted == "link" or not jetstream:
                mode = Confirm.LINK
            else:
                streams = await self._lookup_streams(link, state.spec.subjects, domain)
                mode = Confirm.JETSTREAM if streams else Confirm.LINK
                if not streams:
                    log.warning(
                        "forward_no_hub_stream",
                        group=state.spec.name,
                        subjects=list(state.spec.subjects),
                        detail="no JetStream stream at the hub holds these subjects; messages "
                        "are confirmed once the hub has processed them (PING/PONG)",
                    )
            self.modes[state.index] = mode

    async def _lookup_streams(
        self, link: LinkPort, subjects: tuple[str, ...], domain: str | None
    ) -> list[str]:
        api = f"$JS.{domain}.API" if domain else "$JS.API"
        if self.store.config.jetstream_domain:
            api = f"$JS.{self.store.config.jetstream_domain}.API"
        found: list[str] = []
        for subject in subjects:
            # A late answer (after its lookup timed out, or from a previous
            # link) must not be taken for another group's.
            self._lookup_count += 1
            reply = self.inbox + b"lookup%d" % self._lookup_count
            send, receive = trio.open_memory_channel[bytes](1)
            self._lookups[reply] = send
            body = json.dumps({"subject": subject}).encode()
            link.send(encode_lmsg(f"{api}.STREAM.NAMES".encode(), reply, (), 0, body))
            try:
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    answer = await receive.receive()
                    found.extend(_stream_names(answer))
            finally:
                del self._lookups[reply]
        return found

    def _warn_once(self, event: str, **fields: object) -> None:
        decision = self._warn.check(event, trio.current_time())
        if decision.log:
            log.warning(event, suppressed=decision.suppressed, **fields)


def encode_stored(
    rec: Record, gateway: bytes, inbox: bytes, route: tuple[bytes, ...] | list[bytes]
) -> bytes:
    """The HMSG that carries a stored record up: ``Nats-Msg-Id: <gateway>:<seq>``
    in its headers, our inbox and its sequence as the reply. Once per message:
    a record without headers (the common case) is framed in one step."""
    seq = b"%d" % rec.seq
    if rec.hdr is None and not route:
        data = rec.data
        hdr_len = 28 + len(gateway) + len(seq)  # NATS/1.0, the Msg-Id line, the blank line
        return b"HMSG %b %b%b %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b:%b\r\n\r\n%b\r\n" % (
            rec.subject,
            inbox,
            seq,
            hdr_len,
            hdr_len + len(data),
            gateway,
            seq,
            data,
        )
    hdr = with_msg_id(rec.hdr, gateway + b":" + seq)
    return encode_lmsg(rec.subject, inbox + seq, route, len(hdr), hdr + rec.data)


def _stream_names(answer: bytes) -> list[str]:
    try:
        body = json.loads(answer)
    except ValueError:
        return []
    streams = body.get("streams") if isinstance(body, dict) else None
    return [s for s in streams if isinstance(s, str)] if isinstance(streams, list) else []


async def _either(first: trio.Event, second: trio.Event) -> None:
    """Return when either event is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, first)
        nursery.start_soon(wait, second)
