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
from itertools import chain, repeat
from operator import add, attrgetter, itemgetter
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
        done = self._pub_acks(replies)
        if done is None:  # not PubAcks only: each reply on its own
            done = []
            for subject, payload in replies:
                self._reply(subject, payload, done)
        if done:
            self.acked += len(done)
            self.store.confirmed(done)
            self._woken()

    def _pub_acks(self, replies: list[tuple[bytes, bytes]]) -> list[Record] | None:
        """The records a read of nothing but PubAcks confirms (the common case,
        checked and looked up in C, ``map`` over the read); None if any reply is
        something else (each then goes through _reply)."""
        inbox = self.inbox
        subjects = list(map(_first, replies))
        payloads = list(map(_second, replies))
        if not all(map(bytes.startswith, subjects, repeat(inbox))):
            return None
        tails = list(map(itemgetter(slice(len(inbox), None)), subjects))
        if not (all(map(bytes.isdigit, tails)) and max(map(len, tails), default=0) <= 19):
            return None
        # The PubAcks of one stream differ only in the number after "seq": one
        # that pub_ack_ok would take gives the start all must share, and what
        # follows it must be digits and the end of a PubAck.
        first = payloads[0] if payloads else b""
        at = first.rfind(b'"seq":')
        if at < 0 or not pub_ack_ok(first)[0]:
            return None
        start = first[: at + 6]
        if not (
            all(map(bytes.startswith, payloads, repeat(start)))
            and set(
                map(bytes.lstrip, map(itemgetter(slice(at + 6, None)), payloads), repeat(_DIGITS))
            )
            <= _PUB_ACK_ENDS
        ):
            return None
        return list(filter(None, map(self.window.ack, map(int, tails))))

    def _reply(self, subject: bytes, payload: bytes, done: list[Record]) -> None:
        """One message on our inbox: a lookup's answer, or a JetStream reply
        (a PubAck confirms its record into *done*)."""
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
            if self.window.worth_filling():
                await _either(self.store.data_ready, self._wake)
            else:
                await self._wake.wait()
        self._wake = trio.Event()

    async def _next_records(self) -> list[Record]:
        room = self.window.max_msgs - len(self.window)
        if not self.window.worth_filling():
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
        subjects = list(map(_subject_of, records))
        # Permissions and routes once per subject (a read holds a few).
        checked = {s: (link.may_send(s), link.route(s) or ()) for s in set(subjects)}
        groups = set(map(_group_of, records))
        how = self.modes.get(groups.pop(), Confirm.JETSTREAM) if len(groups) == 1 else None
        mark = -1
        if (
            how is not None
            and all(ok and not route for ok, route in checked.values())
            and list(map(_hdr_of, records)).count(None) == len(records)
        ):
            # The common case in bulk: no headers, no queue route, one group.
            out = encode_plain(records, subjects, gateway, self.inbox)
            self.window.add_many(records, how, now)
            if how is Confirm.LINK:
                mark = records[-1].seq
        else:
            frames = bytearray()
            for rec in records:
                allowed, route = checked[rec.subject]
                if not allowed:
                    self._warn_once("forward_denied", subject=rec.subject.decode(errors="replace"))
                    self.denied.append(rec)
                    continue
                frames += encode_stored(rec, gateway, self.inbox, route)
                how = self.modes.get(rec.group, Confirm.JETSTREAM)
                self.window.add(rec, how, now)
                if how is Confirm.LINK:
                    mark = rec.seq
            out = bytes(frames)
        if records and records[-1].seq > self.cursor:
            self.cursor = records[-1].seq  # records come in sequence order
        self.sent += len(records)
        link.send(out)
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


_DIGITS = b"0123456789"
_PUB_ACK_ENDS = {b"}", b',"duplicate":true}'}
_first = itemgetter(0)
_second = itemgetter(1)
_PLAIN_HMSG = b"HMSG %b %b%b %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b:%b\r\n\r\n%b\r\n"
_seq_of = attrgetter("seq")
_group_of = attrgetter("group")
_hdr_of = attrgetter("hdr")
_data_of = attrgetter("data")
_subject_of = attrgetter("subject")


def _one_length(items: list[bytes]) -> bool:
    return len(set(map(len, items))) == 1


def encode_plain(
    records: list[Record], subjects: list[bytes], gateway: bytes, inbox: bytes
) -> bytes:
    """``encode_stored`` of header-less records with no queue route, all at
    once (*subjects*: theirs): the frames are made by ``map`` in C."""
    seqs = list(map(b"%d".__mod__, map(_seq_of, records)))
    payloads = list(map(_data_of, records))
    if _one_length(seqs) and _one_length(payloads):
        # Usually: one header length and one total for all, so the frames are
        # pieces joined, not formatted one by one.
        hdr_len = 28 + len(gateway) + len(seqs[0])
        sizes = b" %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %b:" % (
            hdr_len,
            hdr_len + len(payloads[0]),
            gateway,
        )
        pieces = zip(
            repeat(b"HMSG "),
            subjects,
            repeat(b" " + inbox),
            seqs,
            repeat(sizes),
            seqs,
            repeat(b"\r\n\r\n"),
            payloads,
            repeat(b"\r\n"),
            strict=False,  # the repeats are endless
        )
        return b"".join(chain.from_iterable(pieces))
    hdr_lens = list(map((28 + len(gateway)).__add__, map(len, seqs)))
    totals = map(add, hdr_lens, map(len, payloads))
    fields = zip(
        subjects,
        repeat(inbox),
        seqs,
        hdr_lens,
        totals,
        repeat(gateway),
        seqs,
        payloads,
        strict=False,  # the repeats are endless
    )
    return b"".join(map(_PLAIN_HMSG.__mod__, fields))


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
