"""The leafnode uplink against real nats-server hubs (2.9.10, or NATS_SERVER_BIN).

Every scenario runs a real hub (nats-server with a leafnode listener), a real
leafgate subprocess dialing it, and real nats-py clients on both sides.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.aio import connect, run, settle, wait_until
from tests.certs import make_tls_files
from tests.harness import ServerProcess, start_leafgate
from tests.hubs import HubProcess, ThreadedProxy, start_hub, start_hub_cluster

APP = ("app", "app-secret")


def leaf_url(port: int, user: str | None = None, password: str | None = None) -> str:
    auth = f"{user}:{password}@" if user else ""
    return f"nats-leaf://{auth}127.0.0.1:{port}"


def start_edge(
    tmp_path: Path, *hub_urls: str, name: str = "edge1", toml: str = ""
) -> ServerProcess:
    args: list[str] = ["-n", name]
    for url in hub_urls:
        args += ["--hub", url]
    return start_leafgate(*args, config_text=toml or None, tmp_path=tmp_path)


async def link_ready(
    edge: Client, hub: Client, subject: str = "probe.link", timeout: float = 10
) -> None:
    """Wait until a message published at the edge reaches the hub (the link is up and
    the hub's interest has arrived)."""
    got: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg)

    sub = await hub.subscribe(subject, cb=on_msg)
    await settle(hub)
    deadline = asyncio.get_running_loop().time() + timeout
    while not got:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the uplink did not come up")
        await edge.publish(subject, b"ping")
        await settle(edge)
        await asyncio.sleep(0.05)
    await sub.unsubscribe()


async def both_ends(
    edge_port: int, hub_port: int, hub_auth: tuple[str, str] | None = None
) -> tuple[Client, Client]:
    edge = await connect(f"nats://127.0.0.1:{edge_port}")
    auth = f"{hub_auth[0]}:{hub_auth[1]}@" if hub_auth else ""
    hub = await connect(f"nats://{auth}127.0.0.1:{hub_port}")
    await link_ready(edge, hub)
    return edge, hub


def assert_link_up(
    edge: ServerProcess, hub: HubProcess, hub_auth: tuple[str, str] | None = None
) -> None:
    """Messages published at the edge reach a client of the hub."""

    async def scenario() -> None:
        e, h = await both_ends(edge.port, hub.client_port, hub_auth)
        await e.close()
        await h.close()

    run(scenario())


async def collect(nc: Client, subject: str, queue: str = "") -> list[Msg]:
    got: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, queue=queue, cb=on_msg)
    return got


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    process = start_hub(tmp_path / "hub", jetstream=False)
    yield process
    process.stop()


@pytest.fixture
def edge(tmp_path: Path, hub: HubProcess) -> Any:
    process = start_edge(tmp_path / "edge", leaf_url(hub.leaf_port))
    yield process
    process.stop()


def test_traffic_both_ways_with_wildcards_and_headers(hub: HubProcess, edge: ServerProcess) -> None:
    async def scenario() -> None:
        e, h = await both_ends(edge.port, hub.client_port)
        up = await collect(h, "up.*.temp")
        up_all = await collect(h, "up.>")
        down = await collect(e, "down.>")
        await settle(h)
        await settle(e)
        await asyncio.sleep(0.2)  # interest crosses the link
        for i in range(20):
            await e.publish(f"up.dev{i}.temp", b"t%d" % i, headers={"Trace": f"e{i}"})
            await h.publish(f"down.dev{i}", b"d%d" % i)
        await settle(e)
        await settle(h)
        await wait_until(
            lambda: len(up) == 20 and len(up_all) == 20 and len(down) == 20,
            what="messages across the link",
        )
        assert [m.data for m in up] == [b"t%d" % i for i in range(20)]  # order kept
        assert up[3].headers == {"Trace": "e3"}
        assert [m.subject for m in down] == [f"down.dev{i}" for i in range(20)]
        await e.close()
        await h.close()

    run(scenario())


def test_request_reply_both_ways_and_no_responders(hub: HubProcess, edge: ServerProcess) -> None:
    async def scenario() -> None:
        e, h = await both_ends(edge.port, hub.client_port)

        async def hub_service(msg: Msg) -> None:
            await msg.respond(b"hub:" + msg.data)

        async def edge_service(msg: Msg) -> None:
            await msg.respond(b"edge:" + msg.data)

        await h.subscribe("svc.hub", cb=hub_service)
        await e.subscribe("svc.edge", cb=edge_service)
        await settle(h)
        await settle(e)
        await asyncio.sleep(0.2)
        for i in range(5):
            reply = await e.request("svc.hub", b"q%d" % i, timeout=3)
            assert reply.data == b"hub:q%d" % i
            reply = await h.request("svc.edge", b"r%d" % i, timeout=3)
            assert reply.data == b"edge:r%d" % i
        with pytest.raises(nats.errors.NoRespondersError):
            await e.request("nobody.anywhere", b"?", timeout=3)
        await e.close()
        await h.close()

    run(scenario())


def test_queue_groups_span_edge_and_hub(hub: HubProcess, edge: ServerProcess) -> None:
    async def scenario() -> None:
        e, h = await both_ends(edge.port, hub.client_port)
        edge_members = [await collect(e, "work", queue="workers") for _ in range(2)]
        hub_members = [await collect(h, "work", queue="workers") for _ in range(2)]
        await settle(e)
        await settle(h)
        await asyncio.sleep(0.3)
        # Published at the edge: local members are preferred, exactly one gets each.
        for i in range(40):
            await e.publish("work", b"%d" % i)
        await settle(e)
        await wait_until(
            lambda: sum(len(m) for m in edge_members + hub_members) == 40,
            what="queue deliveries from the edge",
        )
        await asyncio.sleep(0.2)
        assert sum(len(m) for m in edge_members) == 40
        assert sum(len(m) for m in hub_members) == 0
        # Published at the hub: the hub's own members are preferred.
        for i in range(40):
            await h.publish("work", b"h%d" % i)
        await settle(h)
        await wait_until(lambda: sum(len(m) for m in hub_members) == 40, what="hub deliveries")
        await asyncio.sleep(0.2)
        assert sum(len(m) for m in edge_members) == 40  # nothing extra crossed
        # A group with members only at the hub gets edge messages through the link.
        hub_only = [await collect(h, "jobs", queue="remote") for _ in range(2)]
        await settle(h)
        await asyncio.sleep(0.3)
        for i in range(30):
            await e.publish("jobs", b"%d" % i)
        await settle(e)
        await wait_until(lambda: sum(len(m) for m in hub_only) == 30, what="hub-only group")
        await asyncio.sleep(0.2)
        assert sum(len(m) for m in hub_only) == 30
        # And a group only at the edge gets hub messages exactly once each.
        edge_only = [await collect(e, "tasks", queue="local") for _ in range(3)]
        await settle(e)
        await asyncio.sleep(0.3)
        for i in range(30):
            await h.publish("tasks", b"%d" % i)
        await settle(h)
        await wait_until(lambda: sum(len(m) for m in edge_only) == 30, what="edge-only group")
        await asyncio.sleep(0.2)
        counts = Counter(m.data for g in edge_only for m in g)
        assert len(counts) == 30 and set(counts.values()) == {1}
        await e.close()
        await h.close()

    run(scenario(), timeout=60)


def test_interest_is_withdrawn_on_unsubscribe(hub: HubProcess, edge: ServerProcess) -> None:
    async def scenario() -> None:
        e, h = await both_ends(edge.port, hub.client_port)
        got: list[Msg] = []

        async def on_msg(msg: Msg) -> None:
            got.append(msg)

        sub1 = await e.subscribe("gone.soon", cb=on_msg)
        sub2 = await e.subscribe("gone.soon")
        await settle(e)
        await asyncio.sleep(0.2)
        await h.publish("gone.soon", b"1")
        await settle(h)
        await wait_until(lambda: len(got) == 1)
        # Two local subscribers: removing one keeps the hub's interest.
        await sub2.unsubscribe()
        await settle(e)
        await asyncio.sleep(0.2)
        await h.publish("gone.soon", b"2")
        await settle(h)
        await wait_until(lambda: len(got) == 2)
        # A hub request to a subject nobody at the edge wants any more: no responders.
        await sub1.unsubscribe()
        await settle(e)
        await asyncio.sleep(0.3)
        with pytest.raises(nats.errors.NoRespondersError):
            await h.request("gone.soon", b"?", timeout=2)
        await e.close()
        await h.close()

    run(scenario())


def test_link_cut_and_restored_without_restarting(tmp_path: Path, hub: HubProcess) -> None:
    """A proxy between leafgate and the hub drops the link three times; each time the
    link returns by itself, interest is restored and traffic flows both ways."""
    with ThreadedProxy(hub.leaf_port) as proxy:
        # The hub advertises its real leafnode URL; a leaf that used it would
        # reconnect around the proxy (leafnode.md §1.1), so this edge must not.
        toml = (
            f'[[leafnodes.remotes]]\nurl = "{leaf_url(proxy.port)}"\nuse_advertised_urls = false\n'
        )
        edge = start_leafgate("-n", "edge-cut", config_text=toml, tmp_path=tmp_path / "edge")
        try:
            run(cut_scenario(edge, hub, proxy), timeout=90)
        finally:
            edge.stop()


async def cut_scenario(edge: ServerProcess, hub: HubProcess, proxy: ThreadedProxy) -> None:
    e, h = await both_ends(edge.port, hub.client_port)
    down = await collect(e, "down.x")
    up = await collect(h, "up.x")
    await settle(e)
    await settle(h)
    await asyncio.sleep(0.2)
    for round_ in range(3):
        await asyncio.to_thread(proxy.cut)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(proxy.restore)
        await link_ready(e, h)
        await asyncio.sleep(0.3)  # the edge's interest (down.x) is re-announced too
        await h.publish("down.x", b"%d" % round_)
        await e.publish("up.x", b"%d" % round_)
        await settle(h)
        await settle(e)
        await wait_until(
            lambda r=round_: len(down) > r and len(up) > r, what=f"traffic after cut {round_}"
        )
    assert proxy.accepted >= 4  # the first link and one per restore
    await e.close()
    await h.close()


def test_hub_restart_is_survived(tmp_path: Path, hub: HubProcess, edge: ServerProcess) -> None:
    async def scenario() -> None:
        e, h = await both_ends(edge.port, hub.client_port)
        await h.close()
        hub.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(hub.restart)
        h2 = await connect(f"nats://127.0.0.1:{hub.client_port}")
        await link_ready(e, h2, timeout=15)
        down = await collect(e, "after.restart")
        await settle(e)
        await asyncio.sleep(0.3)
        await h2.publish("after.restart", b"x")
        await settle(h2)
        await wait_until(lambda: len(down) == 1, what="hub-to-edge after restart")
        await e.close()
        await h2.close()

    run(scenario(), timeout=60)


def test_cluster_node_failure_moves_the_link(tmp_path: Path) -> None:
    nodes = start_hub_cluster(tmp_path / "cluster", n=3, jetstream=False)
    edge = None
    try:
        edge = start_edge(tmp_path / "edge", *(leaf_url(n.leaf_port) for n in nodes))

        async def scenario() -> None:
            # The edge dials the first URL; a client on the third node sees its traffic.
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            h = await connect(f"nats://127.0.0.1:{nodes[2].client_port}")
            await link_ready(e, h, timeout=20)
            nodes[0].kill()
            await asyncio.sleep(0.5)
            await link_ready(e, h, timeout=20)
            down = await collect(e, "from.cluster")
            await settle(e)
            await asyncio.sleep(0.5)
            await h.publish("from.cluster", b"ok")
            await settle(h)
            await wait_until(lambda: len(down) == 1, timeout=10, what="cluster to edge")
            await e.close()
            await h.close()

        run(scenario(), timeout=90)
    finally:
        if edge is not None:
            edge.stop()
        for node in nodes:
            node.stop()


def _edge_log_after(edge: ServerProcess, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = edge.log_tail(20000)
        if needle in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in the edge log:\n{edge.log_tail()}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_wrong_credentials_logged_and_retried_with_backoff(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub", jetstream=False, leaf_auth=("leaf", "right"))
    edge = start_edge(tmp_path / "edge", leaf_url(hub.leaf_port, "leaf", "wrong"))
    try:
        log = _edge_log_after(edge, "Authorization Violation")
        assert "uplink_down" in log
        before = _cpu_seconds(edge.pid)
        time.sleep(3)
        assert edge.running, "leafgate exited on refused credentials"
        # Backing off, not busy-looping: well under a tenth of a core.
        assert _cpu_seconds(edge.pid) - before < 0.3
        attempts = edge.log_tail(100000).count("Authorization Violation")
        assert attempts <= 4, f"{attempts} attempts in ~4 s: no backoff"
    finally:
        edge.stop()
        hub.stop()


def test_right_credentials_bind_the_link(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub", jetstream=False, leaf_auth=("leaf", "right"))
    edge = start_edge(tmp_path / "edge", leaf_url(hub.leaf_port, "leaf", "right"))
    try:
        assert_link_up(edge, hub)
    finally:
        edge.stop()
        hub.stop()


def test_client_port_given_as_hub_url(tmp_path: Path, hub: HubProcess) -> None:
    edge = start_edge(tmp_path / "edge", leaf_url(hub.client_port))
    try:
        log = _edge_log_after(edge, "client port")
        assert "uplink_down" in log
        before = _cpu_seconds(edge.pid)
        time.sleep(2)
        assert edge.running
        assert _cpu_seconds(edge.pid) - before < 0.3
    finally:
        edge.stop()


def test_hub_that_denies_a_subject(tmp_path: Path) -> None:
    """The hub lets the link import nothing under private.>: leafgate never announces
    that interest (the hub would close the link) and the rest keeps working."""
    # No leafnode authorization block: the hub authenticates the link as one of its
    # users and carries that user's permissions into the INFO (import/export).
    users = (
        "authorization { users = [\n"
        "  { user: leaf, password: pw, permissions: {\n"
        '      subscribe: { deny: ["private.>"] }, publish: { deny: ["secret.>"] } } },\n'
        f"  {{ user: {APP[0]}, password: {APP[1]} }}\n"
        "] }\n"
    )
    hub = start_hub(tmp_path / "hub", jetstream=False, extra=users)
    edge = start_edge(tmp_path / "edge", leaf_url(hub.leaf_port, "leaf", "pw"))
    try:

        async def scenario() -> None:
            e, h = await both_ends(edge.port, hub.client_port, APP)
            private = await collect(e, "private.data")
            public = await collect(e, "public.data")
            secret = await collect(h, "secret.x")
            await settle(e)
            await settle(h)
            await asyncio.sleep(0.5)
            await h.publish("private.data", b"no")
            await h.publish("public.data", b"yes")
            await e.publish("secret.x", b"no")
            await settle(h)
            await settle(e)
            await wait_until(lambda: len(public) == 1, what="allowed subject")
            await asyncio.sleep(0.3)
            assert private == [] and secret == []
            # The link survived: still one connect, no reconnects.
            await link_ready(e, h)
            await e.close()
            await h.close()

        run(scenario())
        assert "Permissions Violation" not in edge.log_tail(100000)
    finally:
        edge.stop()
        hub.stop()


def test_tls_hub(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    tls = (
        'leafnodes { listen: "127.0.0.1:-1", tls { '
        f'cert_file: "{files.server_cert}", key_file: "{files.server_key}", '
        f'ca_file: "{files.ca}", verify: true }} }}\n'
    )
    hub = start_hub(tmp_path / "hub", jetstream=False, extra=tls)
    toml = (
        "[[leafnodes.remotes]]\n"
        f'url = "tls://127.0.0.1:{hub.leaf_port}"\n'
        "[leafnodes.remotes.tls]\n"
        f'ca_file = "{files.ca}"\ncert_file = "{files.client_cert}"\n'
        f'key_file = "{files.client_key}"\n'
    )
    edge = start_leafgate("-n", "edge-tls", config_text=toml, tmp_path=tmp_path / "edge")
    plain = start_edge(tmp_path / "plain", leaf_url(hub.leaf_port), name="edge-plain")
    try:
        assert_link_up(edge, hub)
        # Without TLS configured, the hub's tls_required INFO still makes leafgate
        # upgrade; with no client certificate the hub refuses it: a clear error.
        log = _edge_log_after(plain, "uplink_down")
        assert plain.running
        assert "TLS" in log or "tls" in log
    finally:
        edge.stop()
        plain.stop()
        hub.stop()


def test_nkey_seed_authenticates_the_link(tmp_path: Path) -> None:
    from edge.nkeys import KeyPair

    pair = KeyPair.generate()
    seed_file = tmp_path / "hub.nk"
    seed_file.write_text(pair.seed() + "\n")
    users = (
        "authorization { users = [\n"
        f"  {{ nkey: {pair.public_key()} }},\n"
        f"  {{ user: {APP[0]}, password: {APP[1]} }}\n"
        "] }\n"
    )
    hub = start_hub(tmp_path / "hub", jetstream=False, extra=users)
    toml = f'[[leafnodes.remotes]]\nurl = "{leaf_url(hub.leaf_port)}"\nnkey = "{seed_file}"\n'
    edge = start_leafgate("-n", "edge-nkey", config_text=toml, tmp_path=tmp_path / "edge")
    try:
        assert_link_up(edge, hub, APP)
    finally:
        edge.stop()
        hub.stop()
