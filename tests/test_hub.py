"""The hub side: shipped nats-server configs, ``python -m hub``, hub fixtures, TcpProxy.

Everything runs real nats-server processes (2.9.10, or NATS_SERVER_BIN) on 127.0.0.1
with OS-chosen ports; nats-py is the client.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hub.configs import (
    CONF_FILES,
    conf_path,
    conf_text,
    format_value,
    render_with_variables,
    variables_env,
    variables_for,
)
from hub.provision import ProvisionError, StreamRequest, parse_duration, provision_stream
from hub.tool import main as hub_main
from tests.aio import connect, run
from tests.harness import REPO_ROOT, RawClient, nats_server_bin
from tests.hubs import (
    ACCOUNT,
    APP_AUTH,
    HubProcess,
    TcpProxy,
    free_ports,
    start_hub,
    start_hub_cluster,
    stop_all,
    wait_cluster_ready,
)

PROC_TIMEOUT = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _sample_variables(name: str, tmp_path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {
        "HUB_NAME": "hub-x",
        "HUB_CLIENT_LISTEN": "127.0.0.1:-1",
        "HUB_LEAF_LISTEN": "127.0.0.1:-1",
        "HUB_HTTP_LISTEN": "127.0.0.1:-1",
        "HUB_STORE_DIR": str(tmp_path / "store"),
        "HUB_DOMAIN": "hub",
        "HUB_LEAF_USER": "leaf",
        "HUB_LEAF_PASSWORD": "1234",  # numeric-looking: must stay a string
        "HUB_APP_USER": "app",
        "HUB_APP_PASSWORD": 'a "quoted" # pass',
        "HUB_SYS_USER": "sys",
        "HUB_SYS_PASSWORD": "sys",
        "HUB_CLUSTER_NAME": "c",
        "HUB_CLUSTER_LISTEN": "127.0.0.1:-1",
        "HUB_ROUTES": ["nats-route://127.0.0.1:1", "nats-route://127.0.0.1:2"],
    }
    return {k: values[k] for k in variables_for(name)}


def _nats_server_test(conf: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``nats-server -t -c conf`` with exactly ``variables`` as HUB_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    return subprocess.run(
        [nats_server_bin(), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        env={**env, **variables},
        check=False,
    )


# ---------------------------------------------------------------------------
# Shipped files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["single", "cluster-node"])
def test_shipped_config_parses_with_variables_from_environment(name: str, tmp_path: Path) -> None:
    conf = conf_path(name)
    done = _nats_server_test(conf, variables_env(_sample_variables(name, tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr


@pytest.mark.parametrize("name", ["single", "cluster-node"])
def test_shipped_config_parses_with_variables_defined_on_top(name: str, tmp_path: Path) -> None:
    copy = tmp_path / f"{name}.conf"
    copy.write_text(render_with_variables(conf_text(name), _sample_variables(name, tmp_path)))
    done = _nats_server_test(copy, {})  # variables come from the file only
    assert done.returncode == 0, done.stdout + done.stderr


def test_shipped_config_names_a_missing_variable(tmp_path: Path) -> None:
    env = variables_env(_sample_variables("single", tmp_path))
    del env["HUB_LEAF_LISTEN"]
    done = _nats_server_test(conf_path("single"), env)
    assert done.returncode != 0
    assert "HUB_LEAF_LISTEN" in done.stdout + done.stderr


def test_stream_definition_is_the_telemetry_default() -> None:
    data = json.loads(conf_text("stream"))
    assert data["name"] == "TELEMETRY"
    assert data["subjects"] == ["telemetry.>"]
    assert data["storage"] == "file"
    assert data["discard"] == "old"
    assert data["num_replicas"] == 1
    assert data["duplicate_window"] == 120 * 10**9


def test_config_command_prints_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    for name in CONF_FILES:
        assert hub_main(["config", "--print", name]) == 0
        assert capsys.readouterr().out == conf_text(name)
    assert hub_main(["config"]) == 0
    listing = capsys.readouterr().out
    assert "HUB_LEAF_LISTEN" in listing and "cluster-node" in listing
    assert hub_main(["config", "--print", "nope"]) == 2


def test_format_value_quotes_strings() -> None:
    assert format_value("1234") == '"1234"'
    assert format_value(5) == "5"
    assert format_value(True) == "true"
    assert format_value(["a", "b"]) == '["a", "b"]'


def test_parse_duration() -> None:
    assert parse_duration("2m") == 120
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert parse_duration("90") == 90
    for bad in ("", "2x", "m", "-1s", "2m junk"):
        with pytest.raises(ProvisionError):
            parse_duration(bad)


# ---------------------------------------------------------------------------
# Hub fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    yield started
    stop_all(started)


async def test_shipped_single_conf_binds_leafs_to_the_account(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    hub = start_hub(tmp_path, accounts=True, leaf_auth=("gw", "gw-pass"))
    hubs.append(hub)
    varz = hub.monitor("varz")
    assert varz["leaf"]["port"] == hub.leaf_port
    assert varz["server_name"] == "hub"
    assert hub.monitor("jsz")["config"]["domain"] == "hub"

    async with await RawClient.connect(hub.leaf_port) as leaf:
        info = await leaf.read_info()
        assert info["client_id"] and info["domain"] == "hub"
        await leaf.send(b'CONNECT {"user":"gw","pass":"gw-pass","headers":true}\r\nPING\r\n')
        after = await leaf.read_info()
        assert after["connect_info"] is True
        assert after["remote_account"] == ACCOUNT
    async with await RawClient.connect(hub.leaf_port) as bad:
        await bad.read_info()
        await bad.send(b'CONNECT {"user":"gw","pass":"wrong","headers":true}\r\nPING\r\n')
        line = await bad.read_line()
        assert b"Authorization Violation" in line


@pytest.mark.parametrize("accounts", [False, True])
@pytest.mark.parametrize("jetstream", [False, True])
def test_hub_jetstream_and_domain_as_asked(
    tmp_path: Path, hubs: list[HubProcess], accounts: bool, jetstream: bool
) -> None:
    hub = start_hub(tmp_path, jetstream=jetstream, accounts=accounts, domain="core")
    hubs.append(hub)
    config = (hub.monitor("varz").get("jetstream") or {}).get("config")
    if jetstream:
        assert config is not None
        assert config["domain"] == "core"
        assert Path(config["store_dir"]).is_relative_to(hub.store_dir)
    else:
        assert not config
    info = _info(hub.leaf_port)
    assert info.get("domain") == ("core" if jetstream else None)
    assert info["auth_required"] is True


async def test_hub_restart_keeps_its_ports(tmp_path: Path, hubs: list[HubProcess]) -> None:
    hub = start_hub(tmp_path, jetstream=False, leaf_auth=("u", "p"))
    hubs.append(hub)
    ports = (hub.client_port, hub.leaf_port, hub.http_port)
    old_pid = hub.pid
    hub.kill()
    hub.restart()
    assert hub.pid != old_pid
    assert (hub.client_port, hub.leaf_port, hub.http_port) == ports
    async with await RawClient.connect(hub.leaf_port) as leaf:
        info = await leaf.read_info()
        await leaf.send(b'CONNECT {"user":"u","pass":"p","headers":true}\r\n')
        assert (await leaf.read_info())["remote_account"] == "$G"
        assert info["leafnode_urls"]
    assert "Listening for leafnode connections" in hub.log_tail()


def test_cluster_forms_and_takes_a_three_replica_stream(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    nodes = start_hub_cluster(tmp_path, 3, accounts=True)
    hubs.extend(nodes)
    for node in nodes:
        assert node.monitor("routez")["num_routes"] == 2
        assert node.monitor("varz")["cluster"]["name"] == "hubs"

    async def scenario() -> dict[str, Any]:
        nc = await connect(nodes[0].client_url)
        try:
            result = await provision_stream(nc, StreamRequest(), timeout=10)
            js = nc.jetstream(timeout=10)
            ack = await js.publish("telemetry.dev1", b"x", headers={"Nats-Msg-Id": "m-1"})
            info = await js.stream_info("TELEMETRY")
            return {
                "action": result.action,
                "replicas": info.config.num_replicas,
                "peers": len(info.cluster.replicas or []) if info.cluster else 0,
                "domain": ack.domain,
            }
        finally:
            await nc.close()

    got = run(scenario())
    assert got == {"action": "created", "replicas": 3, "peers": 2, "domain": "hub"}

    # A gateway dialing one node learns every node's leafnode URL.
    want = {f"127.0.0.1:{n.leaf_port}" for n in nodes}

    deadline = time.monotonic() + 10
    while True:
        urls = set(_info(nodes[0].leaf_port)["leafnode_urls"])
        if urls >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert urls >= want

    # A node restarted after a crash comes back on its ports and rejoins.
    ports = (nodes[2].client_port, nodes[2].leaf_port, nodes[2].cluster_port)
    nodes[2].kill()
    nodes[2].restart()
    assert (nodes[2].client_port, nodes[2].leaf_port, nodes[2].cluster_port) == ports
    wait_cluster_ready(nodes, timeout=20)


# ---------------------------------------------------------------------------
# python -m hub
# ---------------------------------------------------------------------------


class _Lines:
    """Lines of a subprocess's stdout, read by a thread, awaited with a bound."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def reader() -> None:
            for line in stdout:
                self.q.put(line.rstrip("\n"))
            self.q.put(None)

        threading.Thread(target=reader, daemon=True).start()

    def until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {timeout} s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}: {self.seen}")
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    return proc.returncode


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _info(port: int) -> dict[str, Any]:
    """The INFO a server sends on connect (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"closed before INFO: {buf!r}"
            buf += chunk
    line = buf.split(b"\r\n", 1)[0]
    assert line.startswith(b"INFO "), line
    info: dict[str, Any] = json.loads(line[5:])
    return info


def _monitor(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=2) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _start_dev_hub(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    with open(tmp_path / "hub-start.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", "start", "--store-dir", str(tmp_path / "store"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=str(tmp_path),
            env=_env(),
        )


_READY = (
    r"^(\S+) ready: client nats://127\.0\.0\.1:(\d+) "
    r"leafnode nats-leaf://127\.0\.0\.1:(\d+) monitoring http://127\.0\.0\.1:(\d+)"
)


def test_dev_hub_starts_in_the_foreground_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = _start_dev_hub(tmp_path, "--port", "0", "--leaf-port", "0", "--http-port", "0")
    try:
        lines = _Lines(proc)
        ready = lines.until(_READY, PROC_TIMEOUT)
        client, leaf, http = (int(ready.group(i)) for i in (2, 3, 4))
        lines.until(r"^Ctrl-C", 5)
        assert "leafnode_urls" not in _info(client)
        assert _info(leaf)["leafnode_urls"]
        assert _monitor(http, "varz")["leaf"]["port"] == leaf
        assert (tmp_path / "store" / "jetstream").is_dir()
    finally:
        rc = _stop(proc)
    assert rc == 0, (tmp_path / "hub-start.log").read_text()[-3000:]
    assert not _listening(client) and not _listening(leaf)


def _consecutive_free(n: int) -> int:
    for _ in range(50):
        base = free_ports(1)[0]
        if all(_bindable(base + i) for i in range(n)):
            return base
    raise AssertionError("no consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_dev_hub_cluster_starts_three_routed_nodes(tmp_path: Path) -> None:
    for _attempt in range(3):
        base = _consecutive_free(3)
        proc = _start_dev_hub(
            tmp_path, "--cluster", "--cluster-port", str(base),
            "--port", "0", "--leaf-port", "0", "--http-port", "0", "-q",
        )  # fmt: skip
        try:
            lines = _Lines(proc)
            try:
                nodes = [lines.until(_READY, PROC_TIMEOUT) for _ in range(3)]
            except AssertionError:
                if "address already in use" in (tmp_path / "hub-start.log").read_text():
                    continue
                raise
            assert [m.group(1) for m in nodes] == ["hub-1", "hub-2", "hub-3"]
            gateway = lines.until(r"^gateway: ", 5).string
            assert gateway.count("--hub nats-leaf://leaf:leaf@") == 3
            http_ports = [int(m.group(4)) for m in nodes]
            deadline = time.monotonic() + 10
            for port in http_ports:
                while True:
                    if _monitor(port, "routez")["num_routes"] == 2:
                        break
                    assert time.monotonic() < deadline, "routes not up"
                    time.sleep(0.1)
        finally:
            assert _stop(proc) == 0
        return
    raise AssertionError("cluster ports kept being taken")


def _provision(hub: HubProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "hub", "provision",
            "--server", f"nats://127.0.0.1:{hub.client_port}",
            "--user", APP_AUTH[0], "--password", APP_AUTH[1], *args,
        ],
        capture_output=True, text=True, timeout=PROC_TIMEOUT, env=_env(), check=False,
    )  # fmt: skip


def test_provision_creates_the_stream_and_is_idempotent(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    hub = start_hub(tmp_path, accounts=True)
    hubs.append(hub)
    first = _provision(hub, "--duplicate-window", "2m")
    assert first.returncode == 0, first.stderr
    assert "stream TELEMETRY created" in first.stderr
    config = json.loads(first.stdout)
    assert config["name"] == "TELEMETRY"
    assert config["subjects"] == ["telemetry.>"]
    assert config["duplicate_window"] == 120 * 10**9
    assert config["storage"] == "file" and config["discard"] == "old"
    assert config["num_replicas"] == 1

    second = _provision(hub, "--duplicate-window", "2m")
    assert second.returncode == 0, second.stderr
    assert "stream TELEMETRY unchanged" in second.stderr
    assert json.loads(second.stdout) == config

    third = _provision(hub, "--duplicate-window", "5m", "--subjects", "telemetry.>,events.>")
    assert third.returncode == 0, third.stderr
    assert "stream TELEMETRY updated" in third.stderr
    updated = json.loads(third.stdout)
    assert updated["duplicate_window"] == 300 * 10**9
    assert sorted(updated["subjects"]) == ["events.>", "telemetry.>"]

    async def dedup() -> list[tuple[int, bool]]:
        nc = await connect(hub.client_url)
        try:
            js = nc.jetstream(timeout=5)
            out = []
            for msg_id in ("m-1", "m-1", "m-2"):
                ack = await js.publish("telemetry.dev1", b"v", headers={"Nats-Msg-Id": msg_id})
                out.append((ack.seq, bool(ack.duplicate)))
            info = await js.stream_info("TELEMETRY")
            assert info.config.duplicate_window == 300
            return out
        finally:
            await nc.close()

    assert run(dedup()) == [(1, False), (1, True), (2, False)]


def test_provision_reports_errors(tmp_path: Path, hubs: list[HubProcess]) -> None:
    hub = start_hub(tmp_path, accounts=True)
    hubs.append(hub)
    bad_auth = subprocess.run(
        [sys.executable, "-m", "hub", "provision", "--server", hub.client_url.replace(
            "app-secret", "wrong"), "--timeout", "3"],
        capture_output=True, text=True, timeout=PROC_TIMEOUT, env=_env(), check=False,
    )  # fmt: skip
    assert bad_auth.returncode == 1
    assert "error:" in bad_auth.stderr
    usage = _provision(hub, "--duplicate-window", "soon")
    assert usage.returncode == 2 and "bad duration" in usage.stderr


# ---------------------------------------------------------------------------
# TcpProxy
# ---------------------------------------------------------------------------


async def _echo_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(echo, listeners)


async def _roundtrip(port: int, data: bytes) -> bytes:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            got = b""
            while len(got) < len(data):
                chunk = await stream.receive_some(65536)
                assert chunk, "closed early"
                got += chunk
            return got


async def _closed_by_peer(stream: trio.SocketStream, timeout: float = 5) -> bool:
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_tcp_proxy_relays_cuts_and_restores() -> None:
    async with trio.open_nursery() as nursery:
        target = await nursery.start(_echo_server)
        async with TcpProxy(target) as proxy:
            assert proxy.port and proxy.port != target
            payload = bytes(range(256)) * 1000
            assert await _roundtrip(proxy.port, payload) == payload
            assert proxy.accepted == 1 and proxy.bytes_up == len(payload)
            assert proxy.bytes_down == len(payload)

            held = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await held.send_all(b"hi")
            assert await held.receive_some(10) == b"hi"
            await proxy.wait_for(lambda p: p.active == 1, what="one live link")
            proxy.cut()
            assert await _closed_by_peer(held)
            await held.aclose()
            await proxy.wait_for(lambda p: p.active == 0, what="links closed")

            refused = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            assert await _closed_by_peer(refused)
            await refused.aclose()
            assert proxy.refused == 1 and proxy.cuts == 1

            proxy.restore()
            assert await _roundtrip(proxy.port, b"again") == b"again"
            assert proxy.accepted == 3
        nursery.cancel_scope.cancel()


async def test_tcp_proxy_controlled_from_another_thread() -> None:
    async with trio.open_nursery() as nursery:
        target = await nursery.start(_echo_server)
        proxy: TcpProxy = await nursery.start(TcpProxy(target).run)
        held = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await held.send_all(b"x")
        assert await held.receive_some(10) == b"x"
        await trio.to_thread.run_sync(proxy.cut)
        assert await _closed_by_peer(held)
        await held.aclose()
        assert proxy.is_cut
        await trio.to_thread.run_sync(proxy.restore)
        assert await _roundtrip(proxy.port, b"ok") == b"ok"
        nursery.cancel_scope.cancel()


async def test_tcp_proxy_counts_an_unreachable_target() -> None:
    dead = free_ports(1)[0]
    async with TcpProxy(dead, connect_timeout=2) as proxy:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await _closed_by_peer(stream)
        await stream.aclose()
        await proxy.wait_for(lambda p: p.failed == 1 and p.active == 0, what="failed")


def test_leafgate_hub_command_is_wired() -> None:
    # `leafgate hub ...` reaches the hub tool through the main CLI.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "edge", "hub", "config", "--print", "single"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert b"leafnodes" in result.stdout
