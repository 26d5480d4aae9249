"""Prometheus /metrics: a real leafgate with a real hub link (through a proxy the
test cuts), a real backlog in its store, a real slow consumer; every scrape is
parsed with prometheus_client's own parser and checked against what happened
and against /varz and /storez."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import RateMeter, _bridge_families
from store.stats import COMMIT_BUCKETS, LatencyHistogram
from tests.aio import run
from tests.harness import RawClient, ServerProcess, start_leafgate
from tests.hubs import ThreadedProxy
from tests.storehelp import start_js_hub, store_toml
from tests.test_monitor import _publish, fetch, get_json, monitor_url

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    status, headers, body = fetch(url + "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not scraped; have {sorted(k[0] for k in samples)}"
    return samples[key]


def wait_metrics(url: str, cond: Any, timeout: float = 20.0, what: str = "") -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if cond(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_metrics_with_a_hub_link_a_backlog_and_a_slow_consumer(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    store_dir = tmp_path / "store"
    try:
        with ThreadedProxy(hub.leaf_port) as proxy:
            toml = (
                'http_port = 0\nmax_pending = "256KB"\nmax_payload = "128KB"\n'
                "[[leafnodes.remotes]]\n"
                f'url = "nats-leaf://127.0.0.1:{proxy.port}"\n'
                "use_advertised_urls = false\n" + store_toml(store_dir, max_msgs=20)
            )
            edge = start_leafgate("-n", "edge1", config_text=toml, tmp_path=tmp_path)
            try:
                _scenario(edge, monitor_url(edge), proxy)
            finally:
                edge.stop()
    finally:
        hub.stop()


def _scenario(edge: ServerProcess, url: str, proxy: ThreadedProxy) -> None:
    up = wait_metrics(url, lambda s: s.get(("leafgate_uplink_up", (("remote", "0"),))) == 1)
    assert value(up, "leafgate_uplink_connects_total", remote="0") == 1
    assert value(up, "leafgate_uplink_reconnects_total", remote="0") == 0
    assert value(up, "leafgate_health", probe="ready") == 1
    info = value(
        up,
        "leafgate_uplink_info",
        remote="0",
        url=f"nats-leaf://127.0.0.1:{proxy.port}",
        hub_name=get_json(url + "/leafz")["leafs"][0]["name"],
    )
    assert info == 1
    assert value(up, "leafgate_store_backlog_messages", group="default") == 0
    assert value(up, "process_resident_memory_bytes") > 1_000_000

    proxy.cut()
    down = wait_metrics(url, lambda s: s[("leafgate_uplink_up", (("remote", "0"),))] == 0)
    assert value(down, "leafgate_health", probe="ready") == 0
    assert value(down, "leafgate_health", probe="live") == 1
    run(_publish(edge.url, 25))
    held = wait_metrics(
        url,
        lambda s: s[("leafgate_store_accepted_total", (("group", "default"),))] == 25,
        what="25 accepted",
    )
    # max_msgs = 20 with drop_oldest: 20 held, 5 dropped for max_msgs.
    assert value(held, "leafgate_store_backlog_messages", group="default") == 20
    assert value(held, "leafgate_store_backlog_bytes", group="default") > 20 * 14
    age = value(held, "leafgate_store_backlog_oldest_age_seconds", group="default")
    assert 0 < age < 60
    dropped = value(held, "leafgate_store_dropped_total", group="default", reason="max_msgs")
    assert dropped == 5
    assert value(held, "leafgate_store_confirmed_total", group="default") == 0
    assert value(held, "leafgate_store_behind") == 1
    assert value(held, "leafgate_store_healthy") == 1
    _check_commit_histogram(held, get_json(url + "/storez"))
    assert value(held, "leafgate_store_drain_rate", group="default") == 0
    time.sleep(1.0)  # the backlog ages and the drain-rate meter keeps this sample
    older = scrape(url)
    assert value(older, "leafgate_store_backlog_oldest_age_seconds", group="default") >= age + 1
    assert value(older, "leafgate_uplink_up", remote="0") == 0

    proxy.restore()
    drained = wait_metrics(
        url,
        lambda s: s[("leafgate_store_backlog_messages", (("group", "default"),))] == 0,
        timeout=30,
        what="the backlog forwarded",
    )
    assert value(drained, "leafgate_uplink_up", remote="0") == 1
    assert value(drained, "leafgate_uplink_reconnects_total", remote="0") == 1
    assert value(drained, "leafgate_uplink_connects_total", remote="0") == 2
    assert value(drained, "leafgate_store_confirmed_total", group="default") == 20
    assert value(drained, "leafgate_forwarder_acked_total") >= 20
    assert value(drained, "leafgate_store_backlog_oldest_age_seconds", group="default") == 0
    rate = value(drained, "leafgate_store_drain_rate", group="default")
    assert 0 < rate <= 20 / 1.0  # 20 confirmed since a sample at least 1 s old

    _slow_consumer(edge)
    # Quiet: the slow consumer counted and both its connection and the
    # publisher's gone (else the gauge and /varz, read one after the other,
    # can see a connection between them being torn down).
    quiet = wait_metrics(
        url,
        lambda s: (
            s[("leafgate_slow_consumers_total", ())] == 1 and s[("leafgate_connections", ())] == 0
        ),
        what="a slow consumer, then no connection",
    )
    varz = get_json(url + "/varz")
    for name, key in (
        ("leafgate_in_msgs_total", "in_msgs"),
        ("leafgate_in_bytes_total", "in_bytes"),
        ("leafgate_slow_consumers_total", "slow_consumers"),
        ("leafgate_connections_total", "total_connections"),
    ):
        assert value(quiet, name) == varz[key], name
    assert value(quiet, "leafgate_in_msgs_total") >= 25 + 60
    assert value(quiet, "leafgate_out_bytes_total") > 0
    assert value(quiet, "leafgate_connections") == varz["connections"]


def _check_commit_histogram(samples: Samples, storez: dict[str, Any]) -> None:
    count = value(samples, "leafgate_store_commit_latency_seconds_count")
    assert count == storez["commits"] >= 1
    assert value(samples, "leafgate_store_commit_latency_seconds_bucket", le="+Inf") == count
    total = value(samples, "leafgate_store_commit_latency_seconds_sum")
    assert abs(total - storez["commit_seconds"]) < 1e-3
    buckets = [
        value(samples, "leafgate_store_commit_latency_seconds_bucket", le=repr(b))
        for b in COMMIT_BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[-1] <= count


def _slow_consumer(edge: ServerProcess) -> None:
    """A subscriber with a tiny receive buffer that never reads, fed 60 large
    messages: max_pending (256 KB) makes the server close it as slow."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    try:
        sock.connect(("127.0.0.1", edge.port))
        sock.sendall(b'CONNECT {"verbose":false}\r\nSUB flood 1\r\nPING\r\n')
        seen = b""
        while b"PONG" not in seen:
            seen += sock.recv(4096)

        async def flood() -> None:
            publisher = await RawClient.connect(edge.port)
            await publisher.read_info()
            await publisher.send(b'CONNECT {"verbose":false}\r\n')
            payload = b"x" * 60000
            for _ in range(60):
                await publisher.send(b"PUB flood %d\r\n%b\r\n" % (len(payload), payload))
            assert await publisher.ping(timeout=5) == []

        trio.run(flood)
    finally:
        sock.close()


def test_rate_meter() -> None:
    meter = RateMeter(window=10.0, min_gap=1.0)
    assert meter.sample(100.0, 0) == 0.0
    assert meter.sample(100.5, 5) == 10.0  # not kept (too close), still measured
    assert meter.sample(102.0, 20) == 10.0
    for t in range(103, 130):
        rate = meter.sample(float(t), 20 + 10 * (t - 102))
    assert rate == 10.0
    assert len(meter._samples) <= 12  # only the last window is kept
    assert meter.sample(131.0, 3) == 0.0  # the total went back: a fresh start
    assert meter.sample(132.0, 5) == 2.0


def test_commit_latency_histogram() -> None:
    h = LatencyHistogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 3.0):
        h.observe(seconds)
    latency = h.snapshot()
    assert latency.buckets == ((0.001, 2), (0.01, 3), (0.1, 4))
    assert latency.count == 5 and abs(latency.sum - 3.0535) < 1e-9


class _Bridge:
    def __init__(self, name: str, kind: str, state: str, **counts: int) -> None:
        self.name, self.kind, self._status = name, kind, {"state": state, **counts}

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self._status}


def test_bridge_states() -> None:
    assert list(_bridge_families([])) == []
    bridges = [
        _Bridge("plant", "mqtt", "connected", in_msgs=7, out_msgs=3),
        _Bridge("meter", "serial", "waiting_for_device"),
    ]
    families = {f.name: f for f in _bridge_families(bridges)}
    states = {
        (s.labels["name"], s.labels["leafgate_bridge_state"]): s.value
        for s in families["leafgate_bridge_state"].samples
    }
    assert states[("plant", "connected")] == 1 and states[("plant", "disconnected")] == 0
    assert states[("meter", "waiting_for_device")] == 1 and states[("meter", "connected")] == 0
    assert states[("plant", "waiting_for_device")] == 0  # the same states for every bridge
    ins = {s.labels["name"]: s.value for s in families["leafgate_bridge_in_msgs"].samples}
    assert ins == {"plant": 7}
