"""Where and when a user JWT may connect: its ``src`` networks, its ``times`` of
day (in ``times_location``) and its account's ``revocations``, checked as
nats-server 2.9.10 checks them (server/auth.go: isRevoked, validateSrc,
validateTimes). Each check returns why it refuses (safe to log: keys, networks
and times, never a secret) or None. Pure module: the clock is a parameter.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_CLOCK = re.compile(r"^(\d{1,2}):(\d\d):(\d\d)$")


def revoked(revocations: Iterable[tuple[str, int]], user: str, issued_at: int) -> bool:
    """Whether a JWT of ``user`` issued at ``issued_at`` is revoked: the account
    revokes it (or ``*``, every user) at a time at or after its issue."""
    return any(key in (user, "*") and when >= issued_at for key, when in revocations)


def source_allowed(networks: tuple[str, ...], ip: str | None) -> bool:
    """``src``: the client's address must lie in one of the CIDR networks; an
    entry that is not a CIDR (a bare address included) matches nothing, and an
    unparsable entry met before a match refuses, as in nats-server."""
    if not networks:
        return True
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for cidr in networks:
        if "/" not in cidr:
            return False
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return False
        if address.version == network.version and address in network:
            return True
    return False


# The connection types nats-server 2.9.10 knows; a client port connection is STANDARD.
KNOWN_CONNECTION_TYPES = frozenset(
    ("STANDARD", "WEBSOCKET", "LEAFNODE", "LEAFNODE_WS", "MQTT", "MQTT_WS")
)


def connection_type_allowed(types: tuple[str, ...], kind: str = "STANDARD") -> bool:
    """``allowed_connection_types``: empty allows every kind; otherwise ``kind``
    must be listed (in any case: 2.9.10 accepts "standard"). Types the server does
    not know are left out, and a list of nothing but unknown types refuses (it
    meant some other kind of client)."""
    if not types:
        return True
    known = {t.upper() for t in types if t.upper() in KNOWN_CONNECTION_TYPES}
    return kind in known


def _clock(text: str) -> dt.time | None:
    match = _CLOCK.match(text)
    if match is None:
        return None
    h, m, s = (int(g) for g in match.groups())
    if h > 23 or m > 59 or s > 59:
        return None
    return dt.time(h, m, s)


def zone(location: str) -> dt.tzinfo | None:
    """The time zone named by ``times_location`` (None: unknown); "" is local time."""
    if not location:
        return dt.datetime.now().astimezone().tzinfo
    if location in ("UTC", "Local"):
        return dt.UTC if location == "UTC" else zone("")
    try:
        return ZoneInfo(location)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def time_allowed(times: tuple[tuple[str, str], ...], location: str, now: float) -> bool:
    """``times``: now must lie strictly inside one of the ranges of today, in
    ``location``. A range whose start is after its end ends the next day; as in
    nats-server it is anchored at today's start, so it allows the hours from its
    start to midnight and not those after midnight."""
    return not times or window_end(times, location, now) is not None


def window_end(times: tuple[tuple[str, str], ...], location: str, now: float) -> float | None:
    """When the first of ``times`` holding ``now`` ends (a Unix time), None if
    none holds it (or there are none): the connection is closed then."""
    tz = zone(location)
    if tz is None or not times:
        return None
    current = dt.datetime.fromtimestamp(now, tz)
    today = current.date()
    for start_text, end_text in times:
        start_at, end_at = _clock(start_text), _clock(end_text)
        if start_at is None or end_at is None:
            return None
        start = dt.datetime.combine(today, start_at, tz)
        end_day = today + dt.timedelta(days=1) if start_at > end_at else today
        end = dt.datetime.combine(end_day, end_at, tz)
        if start < current < end:
            return end.timestamp()
    return None


def expires_at(
    jwt_expires: float, times: tuple[tuple[str, str], ...], location: str, now: float
) -> float | None:
    """When an accepted user JWT's connection must close ("User Authentication
    Expired"): its ``exp`` or the end of its connect-time window, the sooner."""
    ends = [t for t in (jwt_expires or None, window_end(times, location, now)) if t]
    return min(ends) if ends else None


def refusal(
    user: str,
    issued_at: int,
    networks: tuple[str, ...],
    times: tuple[tuple[str, str], ...],
    location: str,
    revocations: Iterable[tuple[str, int]],
    ip: str | None,
    now: float,
    connection_types: tuple[str, ...] = (),
) -> str | None:
    """Why a verified user JWT may not connect from ``ip`` at ``now``, or None."""
    if revoked(revocations, user, issued_at):
        return "user JWT revoked by its account"
    if not connection_type_allowed(connection_types):
        return "connection type not in the JWT's allowed_connection_types"
    if not source_allowed(networks, ip):
        return "client address outside the JWT's src networks"
    if not time_allowed(times, location, now):
        return "outside the JWT's connect times"
    return None
