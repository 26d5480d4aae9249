"""The leafnode uplink: the Trio shell that keeps one link to the hub alive.

Task tree::

    Uplink.run                      supervisor: dial, serve, back off, rotate URLs
      link nursery (one per link)   reader (the caller), writer, pinger

The protocol decisions live in ``edge.proto.leafnode.LeafSession``; this module
dials (TCP, TLS before or after the hub's INFO), moves bytes, keeps time, and
publishes the link state for the rest of the program.

Local interest is counted all the time (``interest_added``/``interest_removed``
are called by the router, whether the link is up or not) and re-announced in
full on every new link; the hub's interest is forgotten when a link ends.

Backoff: after a lost link or a failed dial, jittered exponential from
``reconnect_delay`` to ``reconnect_max`` (kept low: a refused dial is cheap and
the link must return quickly after the hub does). Refused credentials back off
exponentially up to a minute; a loop or a permission error waits 30 s, as a
nats-server leaf does.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from edge.config import RemoteConfig, parse_leaf_url
from edge.log import get_logger
from edge.proto.events import Info, ParseFailed, Ping, Pong
from edge.proto.ids import nuid
from edge.proto.leafnode import (
    LeafAuth,
    LeafError,
    LeafErrorKind,
    LeafIdentity,
    LeafSession,
    LinkRules,
    LocalInterest,
    SubjectFilter,
    classify_hub_error,
)
from edge.proto.leafproto import LeafParser, LMsg, LsMinus, LsPlus, PeerErr, encode_lmsg
from edge.router import _SIZE_LINES, _size_line

if TYPE_CHECKING:
    from edge.config import LeafURL
    from edge.server import Server
    from store.forward import Forwarder

log = get_logger("edge.uplink")

RECEIVE_SIZE = 256 * 1024
COALESCE_BELOW = 64 * 1024
_UNKNOWN: tuple[bytes, ...] = (b"?",)  # a memo miss (no real route is this object)
FIRST_PING = 1.0
AUTH_BACKOFF_START = 2.0
AUTH_BACKOFF_MAX = 60.0
# A link that stayed up this long resets the backoff.
STABLE_LINK = 10.0
# Output the hub has not taken yet; beyond this, messages are dropped (core NATS
# semantics: the store-and-forward path is what keeps messages that must arrive).
MAX_LINK_PENDING = 64 * 1024 * 1024


@dataclass(frozen=True)
class LinkState:
    """A snapshot of the link for monitoring, health and logs."""

    up: bool
    since: float  # wall-clock time of the last change
    url: str | None
    hub_name: str | None
    account: str | None
    connects: int
    reconnects: int
    last_error: str | None
    dropped: int


class Uplink:
    def __init__(self, server: Server, remote: RemoteConfig, index: int = 0) -> None:
        self.server = server
        self.remote = remote
        self.index = index
        # The local account this link carries (the global one unless local_account).
        self.router = (
            server.router
            if remote.local_account is None
            else server.router_for(remote.local_account)
        )
        self.urls: list[LeafURL] = [parse_leaf_url(u) for u in remote.urls]
        self.identity = LeafIdentity(
            server_id=server.server_id,
            name=server.config.server_name or socket.gethostname(),
            version=server.version,
            lds_subject=b"$LDS." + nuid().encode(),
        )
        self.local = LocalInterest()
        self.session = LeafSession(self.identity, self._auth(), self._rules(), self.local)
        self.echo = True  # the router asks every origin; a link never gets its own back
        self.up = False
        self.out = bytearray()
        self._wake = trio.Event()
        self._wake_pending = False
        self._discovered: list[LeafURL] = []
        self._next_url = 0
        self._pings_out = 0
        self._current_url: str | None = None
        self._since = time.time()
        self._connects = 0
        self._last_error: str | None = None
        self.dropped = 0
        self.msgs_out = self.msgs_in = 0
        # subject -> queue names for its LMSG, or None (the hub does not want it).
        self._routes: dict[bytes, tuple[bytes, ...] | None] = {}
        # One entry per PING in flight, oldest first: -1 for a keep-alive, else
        # the last stored message sent before it (its PONG confirms them).
        self._ping_marks: deque[int] = deque()
        self._up_event = trio.Event()
        self._drained = trio.Event()
        self._taken = 0  # buffers the writer took to send
        self._sent = 0  # of those, the ones sent
        # The store's messages go up the first link only.
        self.forwarder: Forwarder | None = None
        self._inbox = b""
        if server.store is not None and index == 0:
            from store.forward import Forwarder

            self._inbox = b"_INBOX." + nuid().encode() + b"."
            self.local.add(self._inbox + b"*", None)
            self.forwarder = Forwarder(server.store, self._inbox)

    # ---- configuration ---------------------------------------------------------

    def _auth(self) -> LeafAuth:
        r = self.remote
        first = self.urls[0]
        if r.credentials or r.nkey_seed:
            # cryptography is imported only by gateways that sign (start-up time).
            from edge.nkeys import KeyPair, parse_creds
        if r.credentials:
            with open(r.credentials) as f:
                creds = parse_creds(f.read())
            return LeafAuth(jwt=creds.jwt, signer=creds.keypair)
        if r.nkey_seed:
            with open(r.nkey_seed) as f:
                return LeafAuth(signer=KeyPair.from_seed(f.read().strip()))
        user = r.user if r.user is not None else first.user
        password = r.password if r.password is not None else first.password
        return LeafAuth(user=user, password=password, token=r.token)

    def _rules(self) -> LinkRules:
        r = self.remote

        def enc(items: tuple[str, ...]) -> tuple[bytes, ...]:
            return tuple(i.encode() for i in items)

        return LinkRules(
            up=SubjectFilter(enc(r.allow_exports), enc(r.deny_exports)),
            down=SubjectFilter(enc(r.allow_imports), enc(r.deny_imports)),
            account=r.account,
        )

    # ---- state ------------------------------------------------------------------------

    def state(self) -> LinkState:
        info = self.session.info
        return LinkState(
            up=self.up,
            since=self._since,
            url=self._current_url,
            hub_name=info.server_name or None,
            account=info.remote_account,
            connects=self._connects,
            reconnects=max(0, self._connects - 1),
            last_error=self._last_error,
            dropped=self.dropped,
        )

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self._since = time.time()

    # ---- called by the router, synchronously -----------------------------------------

    def interest_added(self, subject: bytes, queue: bytes | None) -> None:
        line = self.local.add(subject, queue)
        if line is not None and self.session.connected and self.session.may_announce(subject):
            self._send(line)

    def interest_removed(self, subject: bytes, queue: bytes | None) -> None:
        line = self.local.remove(subject, queue)
        if line is not None and self.session.connected and self.session.may_announce(subject):
            self._send(line)

    def forward(
        self,
        subject: bytes,
        reply: bytes,
        hdr: int,
        data: bytes,
        local_queues: tuple[tuple[bytes, tuple[object, ...]], ...],
    ) -> bool:
        """Send a local message to the hub if the hub wants it. True if sent."""
        if not self.up:
            return False
        route = self._routes.get(subject, _UNKNOWN)
        if route is _UNKNOWN:
            route = self._route(subject, local_queues)
        if route is None:
            return False
        out = self.out
        if len(out) > MAX_LINK_PENDING:
            self.dropped += 1
            return False
        self.msgs_out += 1
        if route or reply or hdr:
            out += encode_lmsg(subject, reply, route, hdr, data)
        else:  # the common frame, appended in pieces (cheaper than formatting)
            out += b"LMSG "
            out += subject
            out += b" "
            out += _SIZE_LINES.get(len(data)) or _size_line(len(data))
            out += data
            out += b"\r\n"
        if not self._wake_pending:
            self._wake_pending = True
            self._wake.set()
        return True

    def _route(
        self, subject: bytes, local_queues: tuple[tuple[bytes, tuple[object, ...]], ...]
    ) -> tuple[bytes, ...] | None:
        """Work out (and, when it does not depend on local queue groups, remember)
        what an LMSG for ``subject`` carries. The memo is cleared whenever the hub's
        interest or permissions change."""
        hub = self.session.hub
        if not self.session.may_send(subject):
            route = None
        else:
            names = tuple(q for q, _members in local_queues) if local_queues else ()
            route = hub.route(subject, names)
        if route is None or not hub.has_queues(subject):
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[subject] = route
        return route

    def wants(self, subject: bytes) -> bool:
        """Whether the hub has interest (for no-responders decisions)."""
        return self.up and self.session.hub.wants(subject) and self.session.may_send(subject)

    def _send(self, data: bytes) -> None:
        self.out += data
        if not self._wake_pending:
            self._wake_pending = True
            self._wake.set()

    # ---- for the store's forwarder (store.forward.LinkPort) ---------------------------

    send = _send

    def send_marked_ping(self, mark: int) -> None:
        self._ping_marks.append(mark)
        self._send(b"PING\r\n")

    def route(self, subject: bytes) -> tuple[bytes, ...] | None:
        return self.session.hub.route(subject, ())

    def may_send(self, subject: bytes) -> bool:
        return self.session.may_send(subject)

    def hub_jetstream(self) -> tuple[bool, str | None]:
        info = self.session.info
        return info.jetstream, info.domain

    async def wait_up(self) -> None:
        await self._up_event.wait()

    async def wait_drained(self) -> None:
        """Until what is buffered now has been sent (not until the buffer is
        empty: live traffic that keeps adding would hold the forwarder for ever)."""
        if self.out:
            target = self._taken + 1  # the writer's next take carries it
            while self._sent < target:
                await self._drained.wait()

    # ---- supervisor -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a link up until cancelled. Never returns on its own."""
        self.router.links.append(self)
        # Interest from before the link registered: the import subscriptions made
        # at start, or when an operator-mode local account was joined for it.
        for subject, queue, _ in self.router.sublist.subjects():
            self.local.add(subject, queue)
        task_status.started()
        failures = 0
        auth_failures = 0
        try:
            while True:
                url = self._pick_url()
                started = trio.current_time()
                pause = 0.0
                try:
                    await self._link(url)
                    error = "link closed by the hub"
                except LeafError as exc:
                    error = str(exc)
                    pause = exc.pause
                    if exc.kind is LeafErrorKind.AUTH:
                        auth_failures += 1
                        pause = min(AUTH_BACKOFF_MAX, AUTH_BACKOFF_START * 2 ** (auth_failures - 1))
                except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                    error = _describe(exc)
                except Exception as exc:  # the uplink's boundary: a bug must not stop the server
                    log.exception("uplink_internal_error", remote=self.index)
                    error = f"internal error: {exc!r}"
                    pause = STABLE_LINK
                self._link_down(url, error)
                if trio.current_time() - started > STABLE_LINK:
                    failures = 0
                    auth_failures = 0
                failures += 1
                await trio.sleep(max(pause, self._backoff(failures)))
        finally:
            self.router.links.remove(self)
            self._set_up(False)

    def _backoff(self, failures: int) -> float:
        growth = self.remote.reconnect_delay * 2.0 ** (failures - 1)
        base: float = min(self.remote.reconnect_max, growth)
        return base * random.uniform(0.8, 1.2)

    def _pick_url(self) -> LeafURL:
        urls = self.urls + [u for u in self._discovered if u not in self.urls]
        url = urls[self._next_url % len(urls)]
        self._next_url += 1
        return url

    def _link_down(self, url: LeafURL, error: str) -> None:
        was_up = self.up
        self._set_up(False)
        self.session.reset()
        self._routes.clear()
        self.out = bytearray()
        self._last_error = error
        level = log.warning if was_up or self._connects == 0 else log.info
        level("uplink_down", remote=self.index, url=_show(url), error=error, was_up=was_up)

    # ---- one link ----------------------------------------------------------------------

    async def _link(self, url: LeafURL) -> None:
        self._current_url = _show(url)
        parser = LeafParser(max(self.server.config.max_payload, 64 * 1024 * 1024))
        with trio.fail_after(self.remote.connect_timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(url.host, url.port)
            try:
                stream, info = await self._handshake(stream, url, parser)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        try:
            nonce = info.get("nonce")
            self.out = bytearray(
                b"".join(self.session.opening(nonce if isinstance(nonce, str) else None))
            )
            self._pings_out = 0
            self._ping_marks = deque([-1])  # the opening burst's PING
            self._up_event = trio.Event()
            self._learn_urls(url)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, stream)
                    nursery.start_soon(self._pinger)
                    if self.forwarder is not None:
                        nursery.start_soon(self.forwarder.run, self)
                    self._wake.set()
                    await self._reader(stream, parser)
                    nursery.cancel_scope.cancel()
            except ExceptionGroup as group:
                # The link's tasks fail one at a time; report the reason, not the group.
                raise _link_failure(group) from None
        finally:
            await trio.aclose_forcefully(stream)

    async def _handshake(
        self, stream: trio.abc.Stream, url: LeafURL, parser: LeafParser
    ) -> tuple[trio.abc.Stream, dict[str, object]]:
        tls = self.remote.tls
        wants_tls = url.tls or tls is not None
        if wants_tls and tls is not None and tls.handshake_first:
            stream = await self._start_tls(stream, url)
        raw_info = await _read_first_info(stream, parser)
        info = self.session.on_first_info(raw_info)
        if (wants_tls or self.session.info.tls_required) and not isinstance(stream, trio.SSLStream):
            stream = await self._start_tls(stream, url)
        return stream, info

    async def _start_tls(
        self, stream: trio.abc.Stream, url: LeafURL
    ) -> trio.SSLStream[trio.abc.Stream]:
        tls = self.remote.tls
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls and tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls and tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        name = (tls.server_name if tls else None) or url.host
        ssl_stream: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(
            stream, context, server_hostname=name
        )
        try:
            await ssl_stream.do_handshake()
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            raise LeafError(LeafErrorKind.PROTOCOL, f"TLS handshake failed: {exc}") from None
        return ssl_stream

    def _learn_urls(self, dialed: LeafURL) -> None:
        if not self.remote.use_advertised_urls:
            return
        found = []
        for hostport in self.session.info.leafnode_urls:
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit():
                continue
            scheme = "tls" if dialed.tls else "nats-leaf"
            try:
                # An IPv6 host comes bracketed ("[::1]:7422") and stays so in the URL.
                found.append(parse_leaf_url(f"{scheme}://{host}:{port}"))
            except ValueError:
                continue
        # Advertised URLs inherit the dialed URL's credentials.
        self._discovered = [
            u.__class__(u.scheme, u.host, u.port, dialed.user, dialed.password, u.tls)
            for u in found
        ]

    async def _writer(self, stream: trio.abc.Stream) -> None:
        while True:
            if not self.out:
                self._wake_pending = False
                await self._wake.wait()
                self._wake = trio.Event()
                # One scheduler pass before sending: the tasks woken with us
                # (readers, the store's forwarder) add theirs, and one send
                # carries it all. Measured: small sends were a fifth of the
                # store-and-forward path's time.
                if len(self.out) < COALESCE_BELOW:
                    await trio.sleep(0)
                continue
            data = self.out
            self.out = bytearray()
            self._taken += 1
            await stream.send_all(data)
            self._sent = self._taken
            self._drained.set()
            self._drained = trio.Event()

    async def _pinger(self) -> None:
        await trio.sleep(FIRST_PING * random.uniform(1.0, 1.2))
        while True:
            if self._pings_out >= self.remote.ping_max:
                raise LeafError(LeafErrorKind.STALE, "the hub stopped answering PINGs")
            self._pings_out += 1
            self._ping_marks.append(-1)
            self._send(b"PING\r\n")
            await trio.sleep(self.remote.ping_interval)

    async def _reader(self, stream: trio.abc.Stream, parser: LeafParser) -> None:
        router = self.router
        session = self.session
        inbox = self._inbox or b"\x00"  # never a subject prefix when there is no store
        forwarder = self.forwarder
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            replies: list[tuple[bytes, bytes]] = []  # PubAcks come many to a read
            for event in parser.feed(data if type(data) is bytes else bytes(data)):
                if type(event) is LMsg:
                    subject, reply, queues, hdr, payload = event
                    if forwarder is not None and subject.startswith(inbox):
                        replies.append((subject, payload[hdr:]))
                    elif session.may_receive(subject):
                        self.msgs_in += 1
                        router.deliver_from_link(self, subject, reply, hdr, payload, queues)
                elif type(event) is LsPlus:
                    session.on_ls_plus(event)
                    self._routes.clear()
                elif type(event) is LsMinus:
                    session.on_ls_minus(event)
                    self._routes.clear()
                else:
                    if replies and forwarder is not None:
                        forwarder.on_replies(replies)  # before a PONG that confirms later ones
                        replies = []
                    self._on_control(event)
            if replies and forwarder is not None:
                forwarder.on_replies(replies)

    def _on_control(self, event: object) -> None:
        if type(event) is Ping:
            self._send(b"PONG\r\n")
        elif type(event) is Pong:
            self._pings_out = 0
            mark = self._ping_marks.popleft() if self._ping_marks else -1
            if mark >= 0 and self.forwarder is not None:
                self.forwarder.on_pong(mark)
            if not self.up:
                for line in self.session.announce_if_pending():
                    self._send(line)
                self._link_up()
        elif type(event) is Info:
            self._routes.clear()
            for line in self.session.on_info(event.raw):
                self._send(line)
            if self.session.info.lame_duck:
                log.info("hub_lame_duck", remote=self.index, hub=self.session.info.server_name)
        elif type(event) is PeerErr:
            error = classify_hub_error(event.text)
            if error.kind is LeafErrorKind.PERMISSION and "Publish" in event.text:
                log.warning("hub_denied_publish", remote=self.index, error=event.text)
                return
            raise error
        elif type(event) is ParseFailed:
            raise LeafError(LeafErrorKind.PROTOCOL, f"unparsable data from the hub ({event.error})")

    def _link_up(self) -> None:
        self._connects += 1
        self._set_up(True)
        self._up_event.set()
        self._last_error = None
        info = self.session.info
        log.info(
            "uplink_up",
            remote=self.index,
            url=self._current_url,
            hub=info.server_name,
            account=info.remote_account,
            hub_interest=len(self.session.hub),
            reconnects=max(0, self._connects - 1),
        )


async def _read_first_info(stream: trio.abc.Stream, parser: LeafParser) -> bytes:
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise LeafError(LeafErrorKind.PROTOCOL, "the hub closed before sending INFO")
        events = parser.feed(data if type(data) is bytes else bytes(data))
        for event in events:
            if type(event) is Info:
                return event.raw
            if type(event) is PeerErr:
                raise classify_hub_error(event.text)
            raise LeafError(
                LeafErrorKind.WRONG_PORT, "the server did not start with INFO: not a NATS port"
            )


_LINK_ERRORS = (LeafError, OSError, trio.BrokenResourceError, trio.TooSlowError)


def _link_failure(group: ExceptionGroup[Exception]) -> Exception:
    """The first link error inside a task group (the others follow from it)."""
    for exc in group.exceptions:
        if isinstance(exc, ExceptionGroup):
            return _link_failure(exc)
        if isinstance(exc, _LINK_ERRORS):
            return exc
    return group


def _show(url: LeafURL) -> str:
    scheme = "tls" if url.tls else url.scheme
    return f"{scheme}://{url.host}:{url.port}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out connecting to the hub"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
