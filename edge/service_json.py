"""Replies of the NATS micro-service discovery protocol (``$SRV.PING``,
``$SRV.INFO``, ``$SRV.STATS``) for leafgate's own admin service. Pure.

The shapes are those of the NATS service API (``io.nats.micro.v1.*``), so
``nats micro ls``/``info``/``stats`` and the client libraries' service
discovery list every gateway reachable through the hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.monitor_json import rfc3339

SERVICE_NAME = "leafgate"
VERBS = ("PING", "INFO", "STATS")
ENDPOINTS = ("status", "backlog", "bridges")
# Subscriptions the service holds: three discovery subjects per verb, one per endpoint.
SUBSCRIPTIONS = 3 * len(VERBS) + len(ENDPOINTS)


@dataclass(frozen=True)
class Endpoint:
    name: str
    subject: str
    requests: int = 0
    errors: int = 0
    last_error: str = ""
    processing_ns: int = 0


@dataclass(frozen=True)
class Identity:
    id: str
    version: str
    description: str
    metadata: tuple[tuple[str, str], ...]


def discovery_subjects(service_id: str) -> list[str]:
    """``$SRV.<VERB>``, ``$SRV.<VERB>.leafgate`` and ``$SRV.<VERB>.leafgate.<id>``."""
    out = []
    for verb in VERBS:
        out += [
            f"$SRV.{verb}",
            f"$SRV.{verb}.{SERVICE_NAME}",
            f"$SRV.{verb}.{SERVICE_NAME}.{service_id}",
        ]
    return out


def verb_of(subject: str) -> str:
    return subject.split(".")[1]


def _base(kind: str, ident: Identity) -> dict[str, object]:
    return {
        "type": f"io.nats.micro.v1.{kind}_response",
        "name": SERVICE_NAME,
        "id": ident.id,
        "version": ident.version,
        "metadata": dict(ident.metadata),
    }


def ping(ident: Identity) -> dict[str, object]:
    return _base("ping", ident)


def info(ident: Identity, endpoints: Sequence[Endpoint]) -> dict[str, object]:
    body = _base("info", ident)
    body["description"] = ident.description
    body["endpoints"] = [
        {"name": e.name, "subject": e.subject, "queue_group": "", "metadata": None}
        for e in endpoints
    ]
    return body


def stats(ident: Identity, started_ns: int, endpoints: Sequence[Endpoint]) -> dict[str, object]:
    body = _base("stats", ident)
    body["started"] = rfc3339(started_ns)
    body["endpoints"] = [
        {
            "name": e.name,
            "subject": e.subject,
            "queue_group": "",
            "num_requests": e.requests,
            "num_errors": e.errors,
            "last_error": e.last_error,
            "processing_time": e.processing_ns,
            "average_processing_time": e.processing_ns // e.requests if e.requests else 0,
            "data": None,
        }
        for e in endpoints
    ]
    return body
