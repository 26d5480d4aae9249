"""The uplink's remaining ways in: a token, and TLS before the hub's INFO.

nats-server 2.9.10 (Debian's) has no ``handshake_first``; the TLS-first hub is a
TLS terminator in front of a real 2.9.10 leafnode port: leafgate must complete
the TLS handshake before it reads anything, then speak to the real hub inside it.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
from pathlib import Path

import trio

from tests.aio import connect, run, wait_until
from tests.certs import make_tls_files
from tests.harness import ServerProcess, start_leafgate
from tests.hubs import start_hub, start_hub_cluster
from tests.test_uplink import _edge_log_after, assert_link_up, leaf_url, link_ready


def test_token_goes_to_the_hub_in_connect(tmp_path: Path) -> None:
    """2.9.10 applies no token to leafnode links (leafnodes.authorization has no
    token field, and the server-wide token is not checked for them), so a real
    hub cannot refuse a wrong one: the test checks what leafgate sends, through a
    relay that records it, and that the link works."""
    hub = start_hub(tmp_path / "hub", jetstream=False)
    with Relay(hub.leaf_port) as relay:
        remote = f'[[leafnodes.remotes]]\nurl = "{leaf_url(relay.port)}"\ntoken = "t0ken-s3cret"\n'
        edge = start_leafgate("-n", "edge-tok", config_text=remote, tmp_path=tmp_path / "edge")
        try:
            assert_link_up(edge, hub)
            first = bytes(relay.upstream).split(b"\r\n", 1)[0]
            assert first.startswith(b"CONNECT {")
            connect_body = json.loads(first[len(b"CONNECT ") :])
            assert connect_body["auth_token"] == "t0ken-s3cret"
            assert "user" not in connect_body and "pass" not in connect_body
            assert "t0ken-s3cret" not in edge.log_tail(100000)  # the secret is never logged
        finally:
            edge.stop()
            hub.stop()


class Relay:
    """Relays TCP to a port and records what the client sent. With a certificate,
    it is a TLS terminator that accepts TLS right away (before any INFO)."""

    def __init__(self, target: int, cert: Path | None = None, key: Path | None = None) -> None:
        self.target = target
        self.context: ssl.SSLContext | None = None
        if cert is not None and key is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(cert, key)
        self.upstream = bytearray()
        self.port = 0
        self.handshakes = 0
        self._ready = threading.Event()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as self._scope:
            self._ready.set()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, raw: trio.SocketStream) -> None:
        client: trio.abc.Stream = raw
        try:
            if self.context is not None:
                client = trio.SSLStream(raw, self.context, server_side=True)
                with trio.fail_after(5):
                    await client.do_handshake()
                self.handshakes += 1
            hub = await trio.open_tcp_stream("127.0.0.1", self.target)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, hub, nursery.cancel_scope, self.upstream)
                nursery.start_soon(_pump, hub, client, nursery.cancel_scope, None)
        except (trio.BrokenResourceError, trio.TooSlowError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(client)

    def __enter__(self) -> Relay:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scope is not None and self._token is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)


async def _pump(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    both: trio.CancelScope,
    record: bytearray | None,
) -> None:
    try:
        while data := await src.receive_some(65536):
            if record is not None and len(record) < 1 << 20:
                record += data
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    both.cancel()


def test_tls_handshake_first(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    hub = start_hub(tmp_path / "hub", jetstream=False)
    with Relay(hub.leaf_port, files.server_cert, files.server_key) as tls_hub:
        toml = (
            "[[leafnodes.remotes]]\n"
            f'url = "tls://127.0.0.1:{tls_hub.port}"\n'
            "[leafnodes.remotes.tls]\n"
            f'ca_file = "{files.ca}"\nhandshake_first = true\n'
        )
        edge = start_leafgate("-n", "edge-tls1", config_text=toml, tmp_path=tmp_path / "edge")
        # Without handshake_first leafgate waits for an INFO that never comes in clear.
        late = (
            "[[leafnodes.remotes]]\n"
            f'url = "tls://127.0.0.1:{tls_hub.port}"\nconnect_timeout = 1\n'
            f'[leafnodes.remotes.tls]\nca_file = "{files.ca}"\n'
        )
        waiting = start_leafgate("-n", "edge-late", config_text=late, tmp_path=tmp_path / "late")
        try:
            assert_link_up(edge, hub)
            assert tls_hub.handshakes >= 1
            log = _edge_log_after(waiting, "uplink_down")
            assert waiting.running and "timed out" in log
        finally:
            edge.stop()
            waiting.stop()
            hub.stop()


def test_a_hub_node_in_lame_duck_mode_hands_the_link_to_another(tmp_path: Path) -> None:
    """nats-server sends a leaf link nothing when it enters lame duck mode (2.9
    and 2.14 alike, see the spec); it closes the link within its lame duck
    duration, and leafgate moves to the next URL without losing the way back."""
    extra = 'lame_duck_duration: "30s"\nlame_duck_grace_period: "1s"\n'
    nodes = start_hub_cluster(tmp_path / "cluster", n=2, jetstream=False, extra=extra)
    edge = start_leafgate(
        "-n",
        "edge-ldm",
        "--hub",
        leaf_url(nodes[0].leaf_port),
        "--hub",
        leaf_url(nodes[1].leaf_port),
        tmp_path=tmp_path / "edge",
    )
    try:

        async def scenario() -> None:
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            h = await connect(f"nats://127.0.0.1:{nodes[1].client_port}")
            await link_ready(e, h, timeout=20)
            assert f"127.0.0.1:{nodes[0].leaf_port}" in _last_up_url(edge)
            os.kill(nodes[0].pid, signal.SIGUSR2)
            # The link leaves node 1 for node 2 and traffic flows again.
            await wait_until(
                lambda: f"127.0.0.1:{nodes[1].leaf_port}" in _last_up_url(edge),
                timeout=20,
                what="the link on the second node",
            )
            await link_ready(e, h, timeout=20)
            await e.close()
            await h.close()

        run(scenario(), timeout=60)
    finally:
        edge.stop()
        for node in nodes:
            node.stop()


def _last_up_url(edge: ServerProcess) -> str:
    ups = [
        json.loads(line)
        for line in edge.log_tail(100000).splitlines()
        if line.startswith("{") and '"uplink_up"' in line
    ]
    return str(ups[-1]["url"]) if ups else ""
