"""Create or update the edge telemetry stream on a hub (idempotent).

The defaults come from the shipped definition ``hub/conf/telemetry-stream.json`` (the
JetStream API's stream config JSON: durations in nanoseconds); the name, subjects,
duplicate window and replica count can be overridden.  Running it again with the same
settings changes nothing.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import NotFoundError

from hub.configs import conf_text

NANOS = 1_000_000_000
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
#: Fields compared to decide whether an existing stream needs an update.
MANAGED_FIELDS = (
    "subjects",
    "retention",
    "storage",
    "discard",
    "max_consumers",
    "max_msgs",
    "max_bytes",
    "max_age",
    "max_msgs_per_subject",
    "max_msg_size",
    "num_replicas",
    "duplicate_window",
    "description",
)


class ProvisionError(RuntimeError):
    """Bad arguments, or the server refused the stream config."""


def parse_duration(text: str) -> float:
    """Go-style duration (``2m``, ``90s``, ``1h30m``, ``500ms``) or plain seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ProvisionError(f"bad duration {text!r} (use e.g. 2m, 90s, 1h30m)") from None
    if seconds < 0:
        raise ProvisionError(f"negative duration {text!r}")
    return seconds


def stream_template() -> dict[str, Any]:
    """The shipped stream definition (API JSON form)."""
    data = json.loads(conf_text("stream"))
    if not isinstance(data, dict):
        raise ProvisionError("telemetry-stream.json is not a JSON object")
    return data


@dataclass
class StreamRequest:
    """What to provision; None fields keep the template's value (replicas: see
    :func:`provision_stream`)."""

    name: str | None = None
    subjects: list[str] | None = None
    duplicate_window: float | None = None  # seconds
    replicas: int | None = None

    def desired(self) -> dict[str, Any]:
        """The desired config in API JSON form (durations in ns)."""
        conf = stream_template()
        if self.name is not None:
            conf["name"] = self.name
        if self.subjects is not None:
            if not self.subjects or any(not s.strip() for s in self.subjects):
                raise ProvisionError("subjects must be non-empty")
            conf["subjects"] = [s.strip() for s in self.subjects]
        if self.duplicate_window is not None:
            conf["duplicate_window"] = round(self.duplicate_window * NANOS)
        if self.replicas is not None:
            if not 1 <= self.replicas <= 5:
                raise ProvisionError("replicas must be between 1 and 5")
            conf["num_replicas"] = self.replicas
        name = conf.get("name")
        if not isinstance(name, str) or not name or any(c in name for c in " .*>\t"):
            raise ProvisionError(f"bad stream name {name!r}")
        return conf


@dataclass
class ProvisionResult:
    action: str  # "created", "updated" or "unchanged"
    config: dict[str, Any]  # the stream's config as the server reports it (API JSON)
    changes: list[str]  # for "updated": the managed fields that differed


def _api_json(config: api.StreamConfig) -> dict[str, Any]:
    """A StreamConfig as API JSON (enums as strings, durations in ns)."""
    return dict(json.loads(json.dumps(config.as_dict())))


def _differences(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    out = []
    for key in MANAGED_FIELDS:
        if key not in desired:
            continue
        have, want = current.get(key), desired[key]
        if key == "description" and not have and not want:
            continue
        if key == "subjects":
            have, want = sorted(have or []), sorted(want or [])
        if have != want:
            out.append(f"{key}: {have!r} -> {want!r}")
    return out


def clustered(nc: Client) -> bool:
    """True when the server we are connected to is part of a cluster."""
    info = getattr(nc, "_server_info", None) or {}
    return bool(info.get("cluster"))


async def provision_stream(
    nc: Client,
    request: StreamRequest,
    *,
    domain: str | None = None,
    timeout: float = 10.0,
) -> ProvisionResult:
    """Create the stream, or update it where it differs from ``request``.

    Replicas: an explicit ``request.replicas`` is enforced; otherwise a new stream gets
    3 replicas on a clustered server and the template's value (1) on a single one, and
    an existing stream keeps its count.
    """
    desired = request.desired()
    name = str(desired["name"])
    js = nc.jetstream(domain=domain, timeout=timeout)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        info = None
    if info is None:
        if request.replicas is None and clustered(nc):
            desired["num_replicas"] = 3
        created = await js.add_stream(api.StreamConfig.from_response(copy.deepcopy(desired)))
        return ProvisionResult("created", _api_json(created.config), [])
    current = _api_json(info.config)
    if request.replicas is None:
        desired["num_replicas"] = current.get("num_replicas", desired.get("num_replicas"))
    changes = _differences(current, desired)
    if not changes:
        return ProvisionResult("unchanged", current, [])
    merged = {**current, **desired}
    updated = await js.update_stream(api.StreamConfig.from_response(merged))
    return ProvisionResult("updated", _api_json(updated.config), changes)
