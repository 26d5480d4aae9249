"""leafgate as a discoverable NATS service: ``$SRV.*`` discovery and an admin API.

Every gateway answers the NATS micro-service discovery subjects (``$SRV.PING``,
``$SRV.INFO``, ``$SRV.STATS``, also with the name ``leafgate`` and with its id)
and three admin endpoints of its own, named by its server id (which lives in
the store, so it survives restarts)::

    $LEAFGATE.<id>.STATUS    server, health, links, backlog summary, bridges
    $LEAFGATE.<id>.BACKLOG   the /storez body
    $LEAFGATE.<id>.BRIDGES   the /bridgez body: every bridge's status

The subscriptions are local interest like any other, so the uplink announces
them to the hub: a fleet tool on the hub finds every gateway with one
``$SRV.PING.leafgate`` request and queries each through its id. A handler
that fails answers with the micro protocol's ``Nats-Service-Error`` headers
and is counted; it never stops the service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from edge import service_json as sj
from edge.log import get_logger

if TYPE_CHECKING:
    from edge.local import LocalClient, LocalMsg, LocalSubscription
    from edge.server import Server

log = get_logger("edge.service")

Handler = Callable[[], Awaitable[dict[str, object]]]


def _encode(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()


class AdminService:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.started_ns = time.time_ns()
        self.endpoints: dict[str, sj.Endpoint] = {}

    def identity(self) -> sj.Identity:
        server = self.server
        store = server.store
        metadata = [("server_name", server.name)]
        if store is not None:
            metadata.append(("gateway_id", store.gateway_id))
        return sj.Identity(
            id=server.server_id,
            version=server.version,
            description="leafgate edge gateway: status, store-and-forward backlog, bridges",
            metadata=tuple(metadata),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = self.server.local_client("service")
        ident = self.identity()
        prefix = f"$LEAFGATE.{ident.id}"
        handlers: dict[str, Handler] = {
            "status": self._status,
            "backlog": self._backlog,
            "bridges": self._bridges,
        }
        async with trio.open_nursery() as nursery:
            for name, handler in handlers.items():
                subject = f"{prefix}.{name.upper()}"
                self.endpoints[name] = sj.Endpoint(name, subject)
                sub = client.subscribe(subject, pending_msgs=256)
                nursery.start_soon(self._serve_endpoint, client, sub, name, handler)
            for subject in sj.discovery_subjects(ident.id):
                sub = client.subscribe(subject, pending_msgs=256)
                nursery.start_soon(self._serve_discovery, client, sub)
            log.info("admin_service_ready", id=ident.id, prefix=prefix)
            task_status.started()

    async def _serve_discovery(self, client: LocalClient, sub: LocalSubscription) -> None:
        async for msg in sub:
            if not msg.reply:
                continue
            verb = sj.verb_of(msg.subject)
            ident = self.identity()
            endpoints = list(self.endpoints.values())
            if verb == "PING":
                body = sj.ping(ident)
            elif verb == "INFO":
                body = sj.info(ident, endpoints)
            else:
                body = sj.stats(ident, self.started_ns, endpoints)
            client.publish(msg.reply, _encode(body))

    async def _serve_endpoint(
        self, client: LocalClient, sub: LocalSubscription, name: str, handler: Handler
    ) -> None:
        async for msg in sub:
            await self._answer(client, msg, name, handler)

    async def _answer(
        self, client: LocalClient, msg: LocalMsg, name: str, handler: Handler
    ) -> None:
        started = time.perf_counter_ns()
        endpoint = self.endpoints[name]
        try:
            body = await handler()
        except Exception as exc:  # the endpoint's boundary: answer, count, go on
            log.exception("admin_endpoint_failed", endpoint=name)
            self.endpoints[name] = replace(
                endpoint,
                requests=endpoint.requests + 1,
                errors=endpoint.errors + 1,
                last_error=str(exc),
                processing_ns=endpoint.processing_ns + time.perf_counter_ns() - started,
            )
            if msg.reply:
                client.publish(
                    msg.reply,
                    b"",
                    headers=[
                        ("Nats-Service-Error", str(exc)[:200]),
                        ("Nats-Service-Error-Code", "500"),
                    ],
                )
            return
        self.endpoints[name] = replace(
            endpoint,
            requests=endpoint.requests + 1,
            processing_ns=endpoint.processing_ns + time.perf_counter_ns() - started,
        )
        if msg.reply:
            client.publish(msg.reply, _encode(body))

    # ---- endpoints ----------------------------------------------------------------

    # The monitoring modules (edge.monitor_*, ~20 ms to import) are imported at
    # the first request, not when the service starts: it starts with the server,
    # and the first clients should not wait for them.

    async def _backlog(self) -> dict[str, object]:
        from edge import monitor_edge as me
        from edge import monitor_snap as snap

        store = await snap.store_snap(self.server)
        return me.storez(self.server.server_id, time.time_ns(), store)

    async def _bridges(self) -> dict[str, object]:
        from edge import monitor_edge as me

        statuses = [bridge.status() for bridge in self.server.bridges]
        return me.bridgez(self.server.server_id, time.time_ns(), statuses)

    async def _status(self) -> dict[str, object]:
        from edge import monitor_edge as me
        from edge import monitor_snap as snap
        from edge.monitor_json import rfc3339

        server = self.server
        now = time.time_ns()
        _code, health = me.healthz(snap.health_snap(server), True)
        links = [snap.link_snap(link) for link in server.uplinks]
        backlog = me.storez(server.server_id, now, await snap.store_snap(server))
        return {
            "server_id": server.server_id,
            "server_name": server.name,
            "version": server.version,
            "now": rfc3339(now),
            "uptime_seconds": round(trio.current_time() - server.started, 3),
            "connections": len(server.clients),
            "health": health,
            "links": me.leafz(server.server_id, now, links, False)["leafgate_links"],
            "store": {
                key: backlog.get(key)
                for key in ("enabled", "gateway_id", "messages", "bytes", "behind", "last_error")
            }
            | {
                "groups": [
                    {k: g.get(k) for k in ("name", "messages", "bytes", "oldest_age_seconds")}
                    for g in backlog.get("groups", [])
                ]
            },
            "bridges": [
                {k: b.status().get(k) for k in ("name", "kind", "state")} for b in server.bridges
            ],
        }
