"""Prometheus ``/metrics``: a custom collector that reads the live server at
scrape time.

Nothing on the message path is a Prometheus object: the server, the uplinks,
the store and the forwarder keep plain integer counters (which /varz, /leafz
and /storez read too), and ``ServerCollector.collect()`` turns them into
metric families when Prometheus asks. The collector runs in the server's Trio
thread (the families are small: a few per uplink, group and bridge), so what
it reads is consistent; the one awaited part, the age of each group's oldest
message on disk, is fetched by the monitor before ``collect()`` (``prepare``).

Metric names (``leafgate_`` prefix; counters end in ``_total``):

* server: ``info``, ``start_time_seconds``, ``connections``,
  ``connections_total``, ``subscriptions``, ``in_msgs_total``,
  ``out_msgs_total``, ``in_bytes_total``, ``out_bytes_total``,
  ``slow_consumers_total``, ``stale_connections_total``,
  ``refused_connections_total``, ``lame_duck``, ``health{probe=live|ready}``;
* per uplink (label ``remote``, the index in the config): ``uplink_up``,
  ``uplink_info{url,hub_name}``, ``uplink_state_since_seconds``,
  ``uplink_connects_total``, ``uplink_reconnects_total``,
  ``uplink_dropped_msgs_total``, ``uplink_in_msgs_total``,
  ``uplink_out_msgs_total``, ``uplink_hub_interest``;
* per store group (label ``group``): ``store_backlog_messages``,
  ``store_backlog_bytes``, ``store_backlog_oldest_age_seconds`` (0 when the
  group holds nothing on disk), ``store_accepted_total``,
  ``store_confirmed_total``, ``store_rejected_total``,
  ``store_dropped_total{reason}``, ``store_drain_rate`` (confirmed messages per
  second over the last minute of scrapes; ``rate(store_confirmed_total)`` is
  the same figure computed by Prometheus);
* store-wide: ``store_commits_total``, ``store_commit_latency_seconds``
  (histogram, per transaction), ``store_committed_bytes_total``,
  ``store_db_bytes``, ``store_wal_bytes``, ``store_behind``,
  ``store_low_disk``, ``store_healthy``;
* the forwarder: ``forwarder_sent_total``, ``forwarder_resent_total``,
  ``forwarder_acked_total``, ``forwarder_nacked_total``,
  ``forwarder_inflight_messages``, ``forwarder_inflight_bytes``;
* bridges (``server.bridges``, when the server has them): ``bridge_state``
  (a state set: one series per state, 1 for the current one) and, where the
  bridge's ``status()`` reports them, ``bridge_in_msgs_total``,
  ``bridge_out_msgs_total``, ``bridge_errors_total``,
  ``bridge_reconnects_total``.

Process figures (``process_resident_memory_bytes``, ``process_cpu_seconds_total``
...) come from prometheus_client's own ProcessCollector.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from edge import monitor_edge as me
from edge import monitor_snap as snap
from edge.monitor_edge import LinkSnap, StoreSnap
from edge.server import PROTOCOL_VERSION, leafgate_version
from store.stats import Latency

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edge.server import Server

PREFIX = "leafgate_"
RATE_WINDOW = 60.0  # seconds of scrapes the drain rate is averaged over
RATE_SAMPLES = 128  # at most this many samples kept per rate
# Bridge states shown in the state set even when no bridge is in them, so a
# dashboard sees a stable set of series; a bridge's own state is always added.
BRIDGE_STATES = ("starting", "connected", "disconnected", "error", "stopped")
# status() fields exported as counters when a bridge reports them (ints).
BRIDGE_COUNTERS = ("in_msgs", "out_msgs", "errors", "reconnects")


class RateMeter:
    """The rate of a growing total, from samples taken at scrape times.

    Samples closer than ``min_gap`` seconds are not kept (several scrapers
    in a row would otherwise shrink the window to nothing); the rate spans
    the newest sample back to the oldest one within ``window`` seconds.
    Pure: the caller passes the clock.
    """

    def __init__(
        self, window: float = RATE_WINDOW, min_gap: float = 1.0, max_samples: int = RATE_SAMPLES
    ) -> None:
        self.window = window
        self.min_gap = min_gap
        self._samples: deque[tuple[float, int]] = deque(maxlen=max_samples)

    def sample(self, now: float, total: int) -> float:
        """Record ``total`` at ``now``; the rate per second (0.0 until two samples)."""
        samples = self._samples
        if samples and total < samples[-1][1]:
            samples.clear()  # the total went back (a store reopened): start again
        if not samples or now - samples[-1][0] >= self.min_gap:
            samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        first_t, first_v = samples[0]
        if now - first_t <= 0:
            return 0.0
        return (total - first_v) / (now - first_t)


class ServerCollector(Collector):
    """Reads one server's live counters whenever the registry is collected."""

    def __init__(self, server: Server, clock: Any) -> None:
        self.server = server
        self.clock = clock  # () -> seconds (the server's Trio clock)
        self.store: StoreSnap | None = None  # set by prepare() before each scrape
        self._drain: dict[str, RateMeter] = {}

    def prepare(self, store: StoreSnap | None) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        server = self.server
        yield from _server_families(server)
        links = [snap.link_snap(link) for link in server.uplinks]
        yield from _health_families(server)
        yield from _link_families(links)
        if self.store is not None and server.store is not None:
            latency = server.store.commit_latency.snapshot()
            yield from _store_families(self.store, latency)
            yield self._drain_family(self.store)
            yield from _forwarder_families(self.store)
        yield from _bridge_families(getattr(server, "bridges", None) or ())

    def _drain_family(self, store: StoreSnap) -> GaugeMetricFamily:
        now = self.clock()
        family = gauge(
            "store_drain_rate",
            "Messages confirmed by the hub per second (average over the last minute of scrapes)",
            ["group"],
        )
        for group in store.groups:
            meter = self._drain.setdefault(group.name, RateMeter())
            family.add_metric([group.name], meter.sample(now, group.confirmed))
        return family


def make_registry(server: Server, clock: Any) -> tuple[CollectorRegistry, ServerCollector]:
    """A registry of its own (not prometheus_client's global one, which an
    embedding program may use): the server's collector and the process's."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    collector = ServerCollector(server, clock)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry, collector


# ---- families ----------------------------------------------------------------------


def gauge(name: str, doc: str, labels: Sequence[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def counter(name: str, doc: str, labels: Sequence[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)


def _value(family: GaugeMetricFamily | CounterMetricFamily, value: float) -> Metric:
    family.add_metric([], value)
    return family


def _server_families(server: Server) -> Iterator[Metric]:
    stats = server.stats
    in_msgs, in_bytes, out_msgs, out_bytes = snap.client_totals(server)
    links = server.uplinks
    link_in = sum(link.msgs_in for link in links)
    link_out = sum(snap.link_out(link) for link in links)
    info = InfoMetricFamily(PREFIX + "server", "The server's identity")
    info.add_metric(
        [],
        {
            "version": leafgate_version(),
            "protocol": PROTOCOL_VERSION,
            "server_id": server.server_id,
            "server_name": server.name,
        },
    )
    yield info
    wall = snap.Clock.now()
    yield _value(
        gauge("start_time_seconds", "When the server started (Unix time)"),
        wall.wall_of(server.started) / 1e9,
    )
    yield _value(gauge("connections", "Client connections open now"), len(server.clients))
    yield _value(
        counter("connections", "Client connections accepted since start"),
        stats.connections_total,
    )
    yield _value(gauge("subscriptions", "Subscriptions in the sublist"), len(server.router.sublist))
    yield _value(counter("in_msgs", "Messages received (clients and hub links)"), in_msgs + link_in)
    yield _value(counter("out_msgs", "Messages sent (clients and hub links)"), out_msgs + link_out)
    yield _value(counter("in_bytes", "Payload bytes received from clients"), in_bytes)
    yield _value(counter("out_bytes", "Payload bytes sent to clients"), out_bytes)
    yield _value(
        counter("slow_consumers", "Clients closed as slow consumers"), stats.slow_consumers
    )
    yield _value(counter("stale_connections", "Clients closed as stale"), stats.stale_connections)
    yield _value(
        counter("refused_connections", "Connections refused at max_connections"),
        stats.refused_max_connections,
    )
    yield _value(gauge("lame_duck", "1 in lame duck mode"), int(server.lame_duck))


def _health_families(server: Server) -> Iterator[Metric]:
    health = snap.health_snap(server)
    family = gauge(
        "health", "1 when /healthz (live) or /healthz?ready=1 (ready) answers 200", ["probe"]
    )
    for probe, ready in (("live", False), ("ready", True)):
        status, _body = me.healthz(health, ready)
        family.add_metric([probe], int(status == 200))
    yield family


def _link_families(links: Sequence[LinkSnap]) -> Iterator[Metric]:
    label = ["remote"]
    up = gauge("uplink_up", "1 while the hub link is up", label)
    info = InfoMetricFamily(PREFIX + "uplink", "The hub link's current URL and hub", labels=label)
    since = gauge(
        "uplink_state_since_seconds", "When the link last went up or down (Unix time)", label
    )
    connects = counter("uplink_connects", "Links established", label)
    reconnects = counter("uplink_reconnects", "Links established after the first", label)
    dropped = counter("uplink_dropped_msgs", "Live messages dropped (link output full)", label)
    msgs_in = counter("uplink_in_msgs", "Messages received from the hub", label)
    msgs_out = counter("uplink_out_msgs", "Messages sent to the hub (stored ones included)", label)
    interest = gauge("uplink_hub_interest", "Subjects the hub has interest in", label)
    for link in links:
        key = [str(link.index)]
        up.add_metric(key, int(link.up))
        info.add_metric(key, {"url": link.url or "", "hub_name": link.hub_name or ""})
        since.add_metric(key, link.since_ns / 1e9)
        connects.add_metric(key, link.connects)
        reconnects.add_metric(key, link.reconnects)
        dropped.add_metric(key, link.dropped)
        msgs_in.add_metric(key, link.in_msgs)
        msgs_out.add_metric(key, link.out_msgs)
        interest.add_metric(key, link.hub_interest)
    yield from (up, info, since, connects, reconnects, dropped, msgs_in, msgs_out, interest)


def _store_families(s: StoreSnap, latency: Latency) -> Iterator[Metric]:
    label = ["group"]
    messages = gauge("store_backlog_messages", "Messages held until the hub confirms them", label)
    size = gauge("store_backlog_bytes", "Bytes held until the hub confirms them", label)
    age = gauge(
        "store_backlog_oldest_age_seconds",
        "Age of the oldest message held on disk (0: none)",
        label,
    )
    accepted = counter("store_accepted", "Messages accepted into the store", label)
    confirmed = counter("store_confirmed", "Messages the hub confirmed", label)
    rejected = counter("store_rejected", "Messages refused (store full, policy reject)", label)
    dropped = counter("store_dropped", "Messages dropped, by reason", ["group", "reason"])
    now_ms = snap.Clock.now().wall_ns // 1_000_000
    for g in s.groups:
        key = [g.name]
        messages.add_metric(key, g.messages)
        size.add_metric(key, g.bytes)
        age.add_metric(key, 0.0 if g.oldest_ts is None else max(0.0, (now_ms - g.oldest_ts) / 1000))
        accepted.add_metric(key, g.accepted)
        confirmed.add_metric(key, g.confirmed)
        rejected.add_metric(key, g.rejected)
        for reason, n in g.dropped:
            dropped.add_metric([g.name, reason], n)
    yield from (messages, size, age, accepted, confirmed, rejected, dropped)
    yield _value(counter("store_commits", "Store transactions committed"), s.commits)
    histogram = HistogramMetricFamily(
        PREFIX + "store_commit_latency_seconds", "Time per store commit (one transaction)"
    )
    buckets = [(_bound(b), n) for b, n in latency.buckets] + [("+Inf", latency.count)]
    histogram.add_metric([], buckets, latency.sum)
    yield histogram
    yield _value(
        counter("store_committed_bytes", "Message bytes written to the store"), s.bytes_committed
    )
    yield _value(gauge("store_db_bytes", "Size of the store's database file"), s.db_bytes or 0)
    yield _value(gauge("store_wal_bytes", "Size of the store's write-ahead log"), s.wal_bytes or 0)
    yield _value(gauge("store_behind", "1 while the forwarder reads from disk"), int(s.behind))
    yield _value(gauge("store_low_disk", "1 while free disk space is low"), int(s.low_disk))
    yield _value(
        gauge("store_healthy", "1 while the store is open and its last commit succeeded"),
        int(s.last_error is None),
    )


def _bound(bound: float) -> str:
    return repr(float(bound))


def _forwarder_families(s: StoreSnap) -> Iterator[Metric]:
    f = s.forwarder
    if f is None:
        return
    yield _value(counter("forwarder_sent", "Stored messages sent to the hub"), f.sent)
    yield _value(counter("forwarder_resent", "Stored messages sent again"), f.resent)
    yield _value(counter("forwarder_acked", "Stored messages the hub confirmed"), f.acked)
    yield _value(counter("forwarder_nacked", "Error PubAcks from the hub"), f.nacked)
    yield _value(gauge("forwarder_inflight_messages", "Messages sent, not confirmed"), f.inflight)
    yield _value(gauge("forwarder_inflight_bytes", "Bytes sent, not confirmed"), f.inflight_bytes)


def _bridge_families(bridges: Iterable[Any]) -> Iterator[Metric]:
    statuses = [b.status() for b in bridges]
    if not statuses:
        return
    label = ["name", "kind"]
    states = StateSetMetricFamily(PREFIX + "bridge_state", "Each bridge's state", labels=label)
    counters = {
        field: counter(f"bridge_{field}", f"The bridge's {field.replace('_', ' ')}", label)
        for field in BRIDGE_COUNTERS
    }
    # Every bridge gets the same states: the usual ones and any a bridge is in.
    names = dict.fromkeys((*BRIDGE_STATES, *(_state(s) for s in statuses)))
    for status in statuses:
        key = [str(status.get("name", "")), str(status.get("kind", ""))]
        current = _state(status)
        states.add_metric(key, {state: state == current for state in names})
        for field, family in counters.items():
            value = status.get(field)
            if isinstance(value, int) and not isinstance(value, bool):
                family.add_metric(key, value)
    yield states
    yield from (family for family in counters.values() if family.samples)


def _state(status: dict[str, Any]) -> str:
    return str(status.get("state", "unknown"))
