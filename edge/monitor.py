"""HTTP monitoring (nats-server's endpoints, plus /storez and /bridgez): the h11/Trio shell.

Task tree (owned by the server's services nursery)::

    Monitor.run                 listener on http_host:http_port
      connections nursery       one HTTPConnection.serve per HTTP connection

Endpoints (GET or HEAD; any other method gets 405, an unknown path 404):
``/`` (index), ``/varz``, ``/connz``, ``/subsz`` (alias ``/subscriptionsz``),
``/leafz``, ``/accountz``, ``/routez``, ``/gatewayz``, ``/healthz``,
leafgate's ``/storez`` and Prometheus' ``/metrics`` (``edge.metrics``).
Bodies are built by ``edge.monitor_json`` (nats-server's endpoints) and
``edge.monitor_edge`` (links, health, store) from snapshots taken by
``edge.monitor_snap``; see those modules for the fields.

Bounds: at most ``MAX_CONNECTIONS`` HTTP connections (more are closed at
once), a request head of at most ``MAX_HEAD`` bytes (431), a body of at most
``MAX_BODY`` bytes (413), ``read_timeout`` seconds to receive a whole request,
also between keep-alive requests (then the connection is closed), and
``write_timeout`` seconds to send a response. Large bodies are encoded in a
worker thread so the server keeps serving NATS clients meanwhile.
"""

from __future__ import annotations

import email.utils
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from edge import monitor_edge as me
from edge import monitor_json as mj
from edge import monitor_snap as snap
from edge.log import RateLimitedWarning, get_logger

if TYPE_CHECKING:
    from edge.server import Server

log = get_logger("edge.monitor")

MAX_CONNECTIONS = 64
MAX_HEAD = 8 * 1024
MAX_BODY = 16 * 1024
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
RECEIVE_SIZE = 16 * 1024
LINGER_TIME = 0.5  # at most this long, and LINGER_BYTES, read before closing
LINGER_BYTES = 256 * 1024
THREAD_ENCODE_ITEMS = 128  # lists longer than this are encoded in a worker thread
WARN_PERIOD = 10.0  # a repeated warning is logged at most this often

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
ALLOWED = "GET, HEAD"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    close: bool = False


def text_reply(status: int, text: str, *, close: bool = False) -> Reply:
    return Reply(status, text.encode(), TEXT, close)


Handler = Callable[[mj.Params], Awaitable[Reply]]


class Monitor:
    """The monitoring listener of one server. ``run`` binds it and serves."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.port = 0
        self.read_timeout = READ_TIMEOUT
        self.write_timeout = WRITE_TIMEOUT
        self.max_connections = MAX_CONNECTIONS
        self.active = 0
        self.refused = 0
        self.requests: dict[str, int] = {}
        self._sampler = snap.ProcessSampler()
        self.start_ns = snap.Clock.now().wall_of(server.started)
        self._encoder = trio.CapacityLimiter(1)
        self._warn = RateLimitedWarning(WARN_PERIOD)
        self.routes: dict[str, Handler] = {
            "/": self._index,
            "/varz": self._varz,
            "/connz": self._connz,
            "/subsz": self._subsz,
            "/subscriptionsz": self._subsz,
            "/leafz": self._leafz,
            "/accountz": self._accountz,
            "/routez": self._routez,
            "/gatewayz": self._gatewayz,
            "/healthz": self._healthz,
            "/storez": self._storez,
            "/bridgez": self._bridgez,
            "/metrics": self._metrics,
        }
        self._registry: Any = None  # edge.metrics' registry, made at the first scrape

    # ---- running ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind ``http_host:http_port`` (0 or -1: OS-chosen), report the bound port
        through ``task_status`` (and ``server.http_port``), serve until cancelled.

        Raises OSError (naming the monitoring address) if the port cannot be bound.
        """
        config = self.server.config
        wanted = config.http_port or 0
        port = 0 if wanted in (0, -1) else wanted
        try:
            listeners = await trio.open_tcp_listeners(port, host=config.http_host)
        except OSError as exc:
            log.error("monitor_listen_failed", host=config.http_host, port=port, error=str(exc))
            where = f"monitoring listener {config.http_host}:{port}"
            raise OSError(exc.errno, f"{where}: {exc.strerror or exc}") from exc
        self.port = listeners[0].socket.getsockname()[1]
        self.server.http_port = self.port
        log.info("monitor_listening", host=config.http_host, port=self.port)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(self.port)
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.active >= self.max_connections:
            self.refused += 1
            decision = self._warn.check("too_many_connections", trio.current_time())
            if decision.log:
                log.warning(
                    "monitor_too_many_connections",
                    limit=self.max_connections,
                    suppressed=decision.suppressed,
                )
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        try:
            await HTTPConnection(self, stream).serve()
        except Exception:  # the HTTP connection's boundary: a bug closes this one only
            log.exception("monitor_internal_error", peer=_peer(stream))
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    # ---- dispatch ---------------------------------------------------------------

    async def respond(self, method: str, target: str) -> Reply:
        """The reply to one request (method already checked: GET or HEAD)."""
        parts = urlsplit(target)
        handler = self.routes.get(parts.path)
        if handler is None:
            return text_reply(404, "404 page not found\n")
        self.requests[parts.path] = self.requests.get(parts.path, 0) + 1
        params: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            params.setdefault(key, value)  # the first value, as Go's Query().Get
        try:
            return await handler(params)
        except mj.QueryError as exc:
            return text_reply(400, str(exc))

    async def _json(self, build: Callable[[], mj.Body], items: int = 0) -> Reply:
        """Build and encode a body. With more than ``THREAD_ENCODE_ITEMS`` list
        items both run in a worker thread: ``build`` reads only frozen snapshots,
        and the server's thread keeps serving clients meanwhile."""
        if items > THREAD_ENCODE_ITEMS:
            data = await trio.to_thread.run_sync(_build_encode, build, limiter=self._encoder)
        else:
            data = _build_encode(build)
        return Reply(200, data)

    # ---- endpoints --------------------------------------------------------------

    async def _index(self, params: mj.Params) -> Reply:
        links = "".join(
            f'<a href="{path}">{path}</a><br/>\n' for path in self.routes if path != "/"
        )
        html = f'<html lang="en"><body>leafgate monitoring<br/><br/>\n{links}</body></html>\n'
        return Reply(200, html.encode(), "text/html; charset=utf-8")

    async def _varz(self, params: mj.Params) -> Reply:
        varz = snap.varz_snap(self.server, self.start_ns, self._sampler, self.requests)
        return await self._json(lambda: mj.varz(varz))

    async def _connz(self, params: mj.Params) -> Reply:
        query = mj.ConnzQuery.parse(params)
        clock = snap.Clock.now()
        total, page = mj.page_conns(snap.conn_snaps(self.server, clock), query)
        if query.subs:
            page = snap.with_subs(self.server, page)
        server_id = self.server.server_id
        if query.acc and query.acc not in snap.account_routers(self.server):
            server_id = ""  # nats-server's answer for an unknown account: empty, no id
        return await self._json(
            lambda: mj.connz(server_id, clock.wall_ns, total, page, query), len(page)
        )

    async def _subsz(self, params: mj.Params) -> Reply:
        query = mj.SubszQuery.parse(params)
        now = snap.Clock.now().wall_ns
        subs = snap.all_subs(self.server, query.acc) if query.subs else []
        stats = snap.sublist_snap(self.server, query.acc)
        server_id = self.server.server_id
        return await self._json(
            lambda: mj.subsz(server_id, now, stats, subs, query), min(len(subs), query.limit)
        )

    async def _leafz(self, params: mj.Params) -> Reply:
        subs = mj.parse_bool(params, "subs")
        now = snap.Clock.now().wall_ns
        links = [snap.link_snap(link, subs) for link in self.server.uplinks]
        hub_subs = sum(len(link.hub_subjects) for link in links)
        server_id = self.server.server_id
        return await self._json(lambda: me.leafz(server_id, now, links, subs), hub_subs)

    async def _accountz(self, params: mj.Params) -> Reply:
        server = self.server
        security = server.security
        body = mj.accountz(
            server.server_id,
            snap.Clock.now().wall_ns,
            self.start_ns,
            params.get("acc", ""),
            snap.account_snaps(server),
            security.settings.system_account if security is not None else None,
        )
        return await self._json(lambda: body)

    async def _routez(self, params: mj.Params) -> Reply:
        server = self.server
        now = mj.rfc3339(snap.Clock.now().wall_ns)
        body = {"server_id": server.server_id, "server_name": server.name, "now": now}
        return await self._json(lambda: {**body, "num_routes": 0, "routes": []})

    async def _gatewayz(self, params: mj.Params) -> Reply:
        now = mj.rfc3339(snap.Clock.now().wall_ns)
        body = {"server_id": self.server.server_id, "now": now}
        return await self._json(lambda: {**body, "outbound_gateways": {}, "inbound_gateways": {}})

    async def _healthz(self, params: mj.Params) -> Reply:
        ready = mj.parse_bool(params, "ready")
        status, body = me.healthz(snap.health_snap(self.server), ready)
        if status != 200:
            log.warning("healthz_unavailable", error=body.get("error"), ready=ready)
        return Reply(status, mj.encode(body, pretty=False))

    async def _bridgez(self, params: mj.Params) -> Reply:
        statuses = [bridge.status() for bridge in self.server.bridges]
        now = snap.Clock.now().wall_ns
        server_id = self.server.server_id
        return await self._json(lambda: me.bridgez(server_id, now, statuses))

    async def _storez(self, params: mj.Params) -> Reply:
        store = await snap.store_snap(self.server)
        now = snap.Clock.now().wall_ns
        server_id = self.server.server_id
        return await self._json(lambda: me.storez(server_id, now, store))

    async def _metrics(self, params: mj.Params) -> Reply:
        # Imported at the first scrape: prometheus_client is not on the start path.
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from edge.metrics import make_registry

        if self._registry is None:
            self._registry, self._collector = make_registry(self.server, trio.current_time)
        self._collector.prepare(await snap.store_snap(self.server))
        return Reply(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)


class HTTPConnection:
    """One HTTP/1.1 connection: h11 parses, this moves bytes and keeps time."""

    def __init__(self, monitor: Monitor, stream: trio.SocketStream) -> None:
        self.monitor = monitor
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def serve(self) -> None:
        """Answer requests until the peer closes, a timeout, or an error.
        Never raises for peer behaviour."""
        try:
            while await self._one_request():
                if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                    break
                self.conn.start_next_cycle()
            await self._linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _linger(self) -> None:
        """Close our side and read what the peer still sends (bounded), so that
        closing with unread input (an oversized request) does not reset the
        connection before the peer has read our answer."""
        with trio.move_on_after(LINGER_TIME):
            await self.stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                drained += len(data)

    async def _one_request(self) -> bool:
        """Read and answer one request; False when the connection must end."""
        request: h11.Request | None = None
        reply: Reply | None = None
        try:
            with trio.move_on_after(self.monitor.read_timeout) as reading:
                request, reply = await self._read_request()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await self._send_error(text_reply(status, f"{status} {exc}\n", close=True))
            return False
        if reading.cancelled_caught or request is None:
            return False  # the peer closed, was too slow, or idled too long
        method = request.method.decode("ascii", errors="replace")
        target = request.target.decode("ascii", errors="replace")
        if reply is None:
            reply = await self.monitor.respond(method, target)
        log.debug("monitor_request", method=method, target=target, status=reply.status)
        return await self._send(reply, head_only=method == "HEAD")

    async def _read_request(self) -> tuple[h11.Request | None, Reply | None]:
        """The next request and its body (drained), or (None, None) if the peer
        closed first. The reply comes too when the request is refused as is."""
        event = await self._next_event()
        if not isinstance(event, h11.Request):
            return None, None
        if event.method not in (b"GET", b"HEAD"):
            return event, Reply(405, b"405 method not allowed\n", TEXT, close=True)
        body = 0
        while True:
            more = await self._next_event()
            if isinstance(more, h11.EndOfMessage):
                return event, None
            if not isinstance(more, h11.Data):
                return None, None
            body += len(more.data)
            if body > MAX_BODY:
                return event, text_reply(413, "413 request body too large\n", close=True)

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """The next h11 event (never NEED_DATA: it receives until there is one)."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.conn.receive_data(data)  # b"" marks the peer's end

    async def _send(self, reply: Reply, *, head_only: bool = False) -> bool:
        """Send one response; False if the connection must end after it."""
        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Access-Control-Allow-Origin", "*"),
        ]
        if reply.status == 405:
            headers.append(("Allow", ALLOWED))
        if reply.close:
            headers.append(("Connection", "close"))
        head = h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
        parts = [self.conn.send(head)]
        if not head_only:
            parts.append(self.conn.send(h11.Data(data=reply.body)))
        parts.append(self.conn.send(h11.EndOfMessage()))
        with trio.move_on_after(self.monitor.write_timeout) as scope:
            await self.stream.send_all(b"".join(p for p in parts if p))
        return not scope.cancelled_caught and not reply.close

    async def _send_error(self, reply: Reply) -> None:
        """Answer a malformed request, if h11 still lets us answer at all."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                await self._send(reply)
            except h11.LocalProtocolError:
                return


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def _build_encode(build: Callable[[], mj.Body]) -> bytes:
    return mj.encode(build())


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
