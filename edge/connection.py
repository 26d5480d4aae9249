"""One client connection: the Trio shell around the parser, the session and the router.

Two tasks per connection, in one nursery:

* the reader receives whatever the socket has, parses the whole read into events
  and handles them in order (routing a PUB is synchronous: it appends encoded
  copies to the subscribers' output buffers and never waits);
* the writer sleeps until output is pending and sends everything pending in one
  ``send_all``, so a burst of deliveries costs one system call.

Closing: ``close()`` records the reason, queues the ``-ERR`` if there is one and
lets the writer flush what is pending (bounded by the write deadline) before the
socket is closed. A slow consumer (output buffer over ``max_pending``, or a send
that misses the write deadline) is closed at once, its pending output dropped:
the publisher never waits for it.
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import TYPE_CHECKING

import trio

from edge.log import get_logger
from edge.proto import errors
from edge.proto.errors import CloseReason, ProtocolError
from edge.proto.events import Connect, Info, ParseFailed, Ping, Pong, Pub, Run, Sub, Unsub
from edge.proto.parser import ClientParser, run_payload
from edge.proto.session import ClientSession, ConnectOptions, publish_deliverable
from edge.router import _SIZE_LINES, Subscription, _size_line
from edge.subjects import is_valid_publish_subject

if TYPE_CHECKING:
    from edge.auth.permissions import PublishCache, SubjectPermission
    from edge.server import Server

log = get_logger("edge.connection")

RECEIVE_SIZE = 256 * 1024
OK = b"+OK\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
# Subjects already found valid and literal; bounded, cleared when full.
_VALID_SUBJECTS: set[bytes] = set()
_VALID_SUBJECTS_MAX = 65536


class ClientConnection:
    local = False  # a socket client: the router frames its messages inline

    __slots__ = (
        "_auth_scope",
        "_scope",
        "_wake",
        "activity",
        "backlogged",
        "cid",
        "close_reason",
        "deny",
        "echo",
        "flush_seq",
        "headers",
        "identity",
        "in_bytes",
        "in_msgs",
        "inline",
        "ip",
        "max_pending",
        "no_responders",
        "nonce",
        "out",
        "out_bytes",
        "out_msgs_done",
        "parser",
        "pedantic",
        "perms",
        "pings_out",
        "pongs_due",
        "port",
        "pub_valid",
        "ready",
        "router",
        "server",
        "session",
        "stall_mark",
        "started",
        "stream",
        "sub_perm",
        "subs",
        "verbose",
        "wake_pending",
        "write_deadline",
    )

    def __init__(
        self, server: Server, stream: trio.abc.Stream, cid: int, ip: str, port: int
    ) -> None:
        config = server.config
        self.server = server
        self.router = server.router
        self.stream = stream
        self.cid = cid
        self.ip = ip
        self.port = port
        self.parser = ClientParser(config.max_control_line, config.max_payload)
        self.session = ClientSession(server.credentials, config.max_subscriptions)
        self.subs: dict[bytes, Subscription] = {}
        self.out = bytearray()
        self._wake = trio.Event()
        self.wake_pending = False
        self._scope: trio.CancelScope | None = None
        self._auth_scope = trio.CancelScope()
        self.max_pending = config.max_pending
        # Past this much pending output, publishers feeding us are briefly held
        # back (as nats-server stalls producers) so we can catch up before we
        # reach max_pending and have to be dropped as a slow consumer.
        self.stall_mark = config.max_pending // 2
        self.backlogged = False
        self.write_deadline = config.write_deadline
        # Options before CONNECT are nats-server's defaults.
        opts = self.session.options
        self.verbose, self.pedantic, self.echo = opts.verbose, opts.pedantic, opts.echo
        self.headers, self.no_responders = opts.headers, opts.no_responders
        # Operations are accepted before CONNECT only when no auth is required.
        self.ready = not server.credentials.required
        self.close_reason: CloseReason | None = None
        self.inline = True  # see edge.router.Subscriber
        # Set at CONNECT by edge.security when the server checks permissions: who
        # the client is, its publish cache (also the fast path's set of subjects
        # known good, replacing the server-wide one), its subscribe permission and
        # the deny filter its deliveries pass.
        self.identity: object = None
        self.nonce = b""  # the INFO nonce this client must sign (nkeys, JWT)
        self.perms: PublishCache | None = None
        self.pub_valid: set[bytes] = _VALID_SUBJECTS
        self.sub_perm: SubjectPermission | None = None
        self.deny: tuple[bytes, ...] = ()
        self.pings_out = 0
        # Durable flush (store.acks): the last sequence the store gave a message
        # of ours in a durable_flush group, and the PONGs held for commits.
        self.flush_seq = 0
        self.pongs_due: deque[int] | None = None
        self.activity = False
        self.in_msgs = self.in_bytes = self.out_msgs_done = self.out_bytes = 0
        self.started = trio.current_time()
        self.parser.runs = True  # runs of PUBs are framed in bulk (Router.publish_run)

    # ---- output -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue protocol bytes for this client."""
        if self.close_reason is not None:
            return
        self.out += data
        if len(self.out) > self.max_pending:
            self._slow_consumer(CloseReason.SLOW_CONSUMER_PENDING)
        elif not self.wake_pending:
            self.wake_pending = True
            self._wake.set()

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        """Queue one MSG/HMSG for ``sub`` (called by the router, synchronously)."""
        if self.close_reason is not None:
            return
        out = self.out
        if hdr:
            self._frame_with_headers(out, sub.sid, subject, reply, hdr, data)
        elif reply:
            out += b"MSG %b %b %b %d\r\n%b\r\n" % (subject, sub.sid, reply, len(data), data)
        else:
            # Appending prepared pieces beats one bytes format (0.36 µs against 0.47).
            out += sub.head if subject == sub.subject else b"MSG %b %b " % (subject, sub.sid)
            out += _SIZE_LINES.get(len(data)) or _size_line(len(data))
            out += data
            out += b"\r\n"
        sub.delivered += 1
        if sub.max_msgs or not self.wake_pending or len(out) > self.stall_mark:
            self.appended(sub)

    def appended(self, sub: Subscription) -> None:
        """Finish a delivery the router appended to ``out`` itself (its fast path):
        enforce max_pending, note a backlog, wake the writer, honour UNSUB max."""
        pending = len(self.out)
        if pending > self.stall_mark:
            if pending > self.max_pending:
                self._slow_consumer(CloseReason.SLOW_CONSUMER_PENDING)
                return
            if not self.backlogged:
                self.backlogged = True
                self.server.note_backlog(self)
        if not self.wake_pending:
            self.wake_pending = True
            self._wake.set()
        if sub.max_msgs and sub.delivered >= sub.max_msgs:
            self._remove_sub(sub)

    def _frame_with_headers(
        self, out: bytearray, sid: bytes, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        if not self.headers:
            # The client did not negotiate headers: it gets the payload alone.
            self._frame_plain(out, sid, subject, reply, data[hdr:])
        elif reply:
            out += b"HMSG %b %b %b %d %d\r\n%b\r\n" % (subject, sid, reply, hdr, len(data), data)
        else:
            out += b"HMSG %b %b %d %d\r\n%b\r\n" % (subject, sid, hdr, len(data), data)

    @staticmethod
    def _frame_plain(out: bytearray, sid: bytes, subject: bytes, reply: bytes, data: bytes) -> None:
        if reply:
            out += b"MSG %b %b %b %d\r\n%b\r\n" % (subject, sid, reply, len(data), data)
        else:
            out += b"MSG %b %b %d\r\n%b\r\n" % (subject, sid, len(data), data)

    def _slow_consumer(self, reason: CloseReason) -> None:
        self.out = bytearray()
        self.close_reason = reason
        self.inline = False
        self.server.stats.slow_consumers += 1
        log.warning(
            "slow_consumer",
            cid=self.cid,
            ip=self.ip,
            reason=reason.value,
            max_pending=self.max_pending,
        )
        self._unsubscribe_all()
        if self._scope is not None:
            self._scope.cancel()

    def close(self, reason: CloseReason, err: bytes = b"") -> None:
        """Close after flushing pending output (and ``err``, if given)."""
        if self.close_reason is not None:
            return
        if err:
            self.out += err
        self.close_reason = reason
        self.inline = False
        self._unsubscribe_all()
        self._wake.set()

    def fail(self, error: ProtocolError) -> None:
        """Answer a protocol error: ``-ERR`` if nats-server sends one; close if it closes."""
        if error.close:
            log.debug("client_protocol_error", cid=self.cid, error=str(error))
            self.close(error.reason, error.wire())
        else:
            self.send(error.wire())

    # ---- tasks ----------------------------------------------------------------

    async def run(self, info: bytes, auth_timeout: float | None) -> None:
        """Serve the connection until it closes. Never raises for peer behaviour.

        The writer owns the end: it returns once the connection is closing and
        everything pending has been flushed, and that cancels the reader.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if info:
                    self.send(info)
                nursery.start_soon(self._reader, auth_timeout)
                await self._writer()
                nursery.cancel_scope.cancel()
        except Exception:  # the connection's boundary: a bug closes this client only
            log.exception("client_internal_error", cid=self.cid, ip=self.ip)
            self.close_reason = self.close_reason or CloseReason.INTERNAL_ERROR
            self.inline = False
        finally:
            self._unsubscribe_all()
            if self.backlogged:
                self.backlogged = False
                self.server.drained(self)
            self.server.forget(self)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()
        log.debug(
            "client_closed",
            cid=self.cid,
            ip=self.ip,
            reason=self.close_reason.value if self.close_reason else None,
        )

    async def _writer(self) -> None:
        stream = self.stream
        while True:
            if not self.out:
                if self.close_reason is not None:
                    return
                self.wake_pending = False
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            data = self.out
            self.out = bytearray()
            self.out_bytes += len(data)
            try:
                with trio.move_on_after(self.write_deadline) as deadline:
                    await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close_reason = self.close_reason or CloseReason.WRITE_ERROR
                self.inline = False
                self.out = bytearray()
                return
            if deadline.cancelled_caught:
                self._slow_consumer(CloseReason.SLOW_CONSUMER_DEADLINE)
                return
            if self.backlogged and len(self.out) <= self.stall_mark:
                self.backlogged = False
                self.server.drained(self)

    async def _reader(self, auth_timeout: float | None) -> None:
        deadline = trio.current_time() + auth_timeout if auth_timeout else math.inf
        with trio.CancelScope(deadline=deadline) as self._auth_scope:
            await self._read_loop()
        if self.close_reason is None:
            if not self.session.connected:
                self.fail(errors.AUTH_TIMEOUT)
            else:
                self.close(CloseReason.INTERNAL_ERROR)
        # Let the writer flush the final -ERR, bounded by the write deadline.

    async def _read_loop(self) -> None:
        receive = self.stream.receive_some
        feed = self.parser.feed
        publish = self.router.publish
        on_pub = self._on_pub
        on_control = self._on_control
        valid = self.pub_valid
        store = self.server.store
        while self.close_reason is None:
            try:
                data = await receive(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close(CloseReason.READ_ERROR)
                return
            if not data:
                self.close(CloseReason.CLIENT_CLOSED)
                return
            self.activity = True
            self.in_bytes += len(data)
            # The common publish (connected, quiet, known-good subject) is handled
            # inline: one call less per message on the hottest loop of the server.
            fast = self.ready and not self.verbose
            pubs = 0
            for event in feed(data):  # type: ignore[arg-type]  # bytes from both stream kinds
                if type(event) is Pub:
                    subject, reply, hdr, payload = event
                    if fast and subject in valid and (not hdr or self.headers):
                        pubs += 1
                        if not publish(self, subject, reply, hdr, payload) and reply:
                            self._no_responders(subject, reply)
                        continue
                    on_pub(event)
                elif type(event) is Run:
                    pubs += self._on_run(event.subject, event.tails, valid, fast)
                else:
                    if type(event) is Connect:
                        limit = self.parser.max_payload
                        await self._connect(event)
                        publish, valid = self.router.publish, self.pub_valid
                        if self.parser.max_payload < limit:
                            # The rest of this read was parsed under the old payload
                            # limit: its PUBs take the slow path, which checks it.
                            valid = set()
                    else:
                        on_control(event)
                    fast = self.ready and not self.verbose
                if self.close_reason is not None:
                    break
            self.in_msgs += pubs
            valid = self.pub_valid
            if self.server.backlogged:
                await self.server.hold_producer(self)
            if store is not None and store.congested:
                await store.wait_room()

    # ---- events -----------------------------------------------------------------

    def _on_pub(self, event: Pub) -> None:
        subject, reply, hdr, data = event
        self.in_msgs += 1
        if not self.ready:
            self.fail(errors.AUTH_VIOLATION)
            return
        if hdr and not self.headers:
            self.fail(errors.HEADERS_NOT_SUPPORTED)
            return
        if len(data) > self.parser.max_payload:
            self.fail(errors.MAX_PAYLOAD)  # a limit lowered by this read's CONNECT
            return
        if subject not in self.pub_valid and not self._check_publish_subject(subject):
            if self.verbose and not self._denied(subject):
                self.send(OK)
            return
        if self.verbose:
            self.send(OK)
        if not self.router.publish(self, subject, reply, hdr, data) and reply:
            self._no_responders(subject, reply)

    def _on_run(self, subject: bytes, tails: list[bytes], valid: set[bytes], fast: bool) -> int:
        """A run of plain PUBs on one subject; the number routed in bulk.

        Outside the fast path (before CONNECT, verbose, a subject not seen yet)
        the first message takes the checked path; the rest follow it in bulk if
        that found the subject good, else take the checked path too.
        """
        if not (fast and subject in valid):
            on_pub = self._on_pub
            on_pub(Pub(subject, b"", 0, run_payload(tails[0])))
            if not (fast and subject in valid):
                for tail in tails[1:]:
                    if self.close_reason is not None:
                        break
                    on_pub(Pub(subject, b"", 0, run_payload(tail)))
                return 0
            if self.close_reason is not None:
                return 0
            del tails[0]
        self.router.publish_run(self, subject, tails)
        return len(tails)

    def _denied(self, subject: bytes) -> bool:
        """Whether a publish was refused by permissions (no +OK then, as nats-server)."""
        return self.perms is not None and subject not in self.perms.allowed

    def _no_responders(self, subject: bytes, reply: bytes) -> None:
        if self.no_responders:
            self.router.no_responders(self, subject, reply)

    def _check_publish_subject(self, subject: bytes) -> bool:
        """Validate a subject not seen before; False if it must not be delivered."""
        error = self.session.publish_subject_error(subject)
        if error is not None:
            self.send(error.wire())
        if self.perms is not None:
            return self.server.security.check_publish(self, subject)  # type: ignore[union-attr]
        if is_valid_publish_subject(subject):
            if len(_VALID_SUBJECTS) >= _VALID_SUBJECTS_MAX:
                _VALID_SUBJECTS.clear()
            _VALID_SUBJECTS.add(subject)
            return True
        return publish_deliverable(subject)

    def _on_control(self, event: object) -> None:
        try:
            if type(event) is Ping:
                self.session.require_connected()
                store = self.server.store
                if not (
                    self.flush_seq
                    and store is not None
                    and store.acks.hold_pong(self, store.committed_seq)
                ):
                    self.send(PONG)
            elif type(event) is Pong:
                self.pings_out = 0
            elif type(event) is Sub:
                self.session.require_connected()
                self._on_sub(event)
            elif type(event) is Unsub:
                self.session.require_connected()
                self._on_unsub(event)
            elif type(event) is ParseFailed:
                self.fail(event.error)
            elif type(event) is Info:
                self._on_client_info(event)
        except ProtocolError as exc:
            self.fail(exc)

    def _on_client_info(self, event: Info) -> None:
        """nats-server ignores a client's INFO, but closes silently on bad JSON."""
        try:
            json.loads(event.raw)
        except ValueError:
            raise errors.BAD_CONNECT from None

    async def _connect(self, event: Connect) -> None:
        security = self.server.security
        try:
            if security is None or self.session.connected:
                self._on_connect(self.session.connect(event.raw))
            else:
                self._on_connect(await security.connect(self, event.raw))
        except ProtocolError as exc:
            self.fail(exc)

    def _on_connect(self, opts: ConnectOptions) -> None:
        self.verbose, self.pedantic, self.echo = opts.verbose, opts.pedantic, opts.echo
        self.headers, self.no_responders = opts.headers, opts.no_responders
        self.ready = True
        self._auth_scope.deadline = math.inf
        if self.verbose:
            self.send(OK)

    def _on_sub(self, event: Sub) -> None:
        self.session.check_subscribe(event.subject)
        security = self.server.security
        if (
            self.sub_perm is not None
            and security is not None
            and not security.check_subscribe(self, event.subject, event.queue)
        ):
            return
        if event.sid not in self.subs:  # a reused sid is ignored, as nats-server does
            sub = Subscription(self, event.subject, event.queue, event.sid)
            self.subs[event.sid] = sub
            self.session.subscriptions += 1
            self.router.subscribe(sub)
        if self.verbose:
            self.send(OK)

    def _on_unsub(self, event: Unsub) -> None:
        sub = self.subs.get(event.sid)
        if sub is not None:
            if event.max_msgs is not None and sub.delivered < event.max_msgs:
                sub.max_msgs = event.max_msgs
            else:
                self._remove_sub(sub)
        if self.verbose:
            self.send(OK)

    @property
    def out_msgs(self) -> int:
        """Messages delivered to this client (counted per subscription on the hot path)."""
        return self.out_msgs_done + sum(s.delivered for s in self.subs.values())

    def _remove_sub(self, sub: Subscription) -> None:
        if self.subs.pop(sub.sid, None) is not None:
            self.out_msgs_done += sub.delivered
            self.session.subscriptions -= 1
            self.router.unsubscribe(sub)

    def _unsubscribe_all(self) -> None:
        for sub in self.subs.values():
            self.out_msgs_done += sub.delivered
            self.router.unsubscribe(sub)
        self.subs.clear()
        self.session.subscriptions = 0
