"""leafgate as a discoverable service (issue 7 item 8): $SRV discovery and the
admin API over NATS, in process and from a client of a real hub; headers pass
through the uplink untouched."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import trio

from edge.config import ServerConfig
from edge.local import NoResponders
from edge.server import open_server
from tests.aio import connect, run, settle
from tests.storehelp import start_edge, start_js_hub


async def _wait_service(server: object) -> None:
    # The service starts just after the listener; its subscriptions show it is up.
    with trio.fail_after(5):
        while not server.router.match(b"$SRV.PING")[0]:  # type: ignore[attr-defined]
            await trio.sleep(0.01)


async def test_discovery_and_admin_endpoints_in_process() -> None:
    async with open_server(ServerConfig(port=0, server_name="gw-a")) as server:
        await _wait_service(server)
        client = server.local_client("tool")
        for subject in (
            "$SRV.PING",
            "$SRV.PING.leafgate",
            f"$SRV.PING.leafgate.{server.server_id}",
        ):
            ping = json.loads((await client.request(subject, b"", timeout=5)).data)
            assert ping["type"] == "io.nats.micro.v1.ping_response"
            assert (ping["name"], ping["id"]) == ("leafgate", server.server_id)
            assert ping["metadata"]["server_name"] == "gw-a"
        info = json.loads((await client.request("$SRV.INFO.leafgate", b"", timeout=5)).data)
        subjects = sorted(e["subject"] for e in info["endpoints"])
        prefix = f"$LEAFGATE.{server.server_id}"
        assert subjects == [f"{prefix}.BACKLOG", f"{prefix}.BRIDGES", f"{prefix}.STATUS"]
        status = json.loads((await client.request(f"{prefix}.STATUS", b"", timeout=5)).data)
        assert status["server_name"] == "gw-a" and status["store"]["enabled"] is False
        assert status["health"]["status"] == "ok"
        backlog = json.loads((await client.request(f"{prefix}.BACKLOG", b"", timeout=5)).data)
        assert backlog["enabled"] is False
        bridges = json.loads((await client.request(f"{prefix}.BRIDGES", b"", timeout=5)).data)
        assert bridges["bridges"] == []
        stats = json.loads((await client.request("$SRV.STATS", b"", timeout=5)).data)
        by_name = {e["name"]: e for e in stats["endpoints"]}
        assert by_name["status"]["num_requests"] == 1
        assert by_name["backlog"]["num_requests"] == 1
        assert by_name["status"]["num_errors"] == 0
        # Another gateway's id is not ours: nobody answers.
        with pytest.raises(NoResponders):
            await client.request("$SRV.PING.leafgate.NOTME", b"", timeout=1)


def test_fleet_tool_on_the_hub_finds_and_queries_the_gateway(tmp_path: Path) -> None:
    hub = start_js_hub(tmp_path)
    edge = start_edge(tmp_path / "edge", hub.leaf_port, tmp_path / "store")
    try:

        async def scenario() -> None:
            h = await connect(f"nats://127.0.0.1:{hub.client_port}")
            e = await connect(f"nats://127.0.0.1:{edge.port}")
            # Discovery through the hub (retried while the link announces interest).
            ping = None
            for _ in range(50):
                try:
                    ping = await h.request("$SRV.PING.leafgate", b"", timeout=0.5)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            assert ping is not None, "the gateway never answered $SRV.PING through the hub"
            gw = json.loads(ping.data)
            assert gw["name"] == "leafgate"
            await e.request("telemetry.t", b"21.5", timeout=5)  # one stored message
            status = json.loads(
                (await h.request(f"$LEAFGATE.{gw['id']}.STATUS", b"", timeout=5)).data
            )
            assert status["server_id"] == gw["id"]
            assert status["store"]["enabled"] is True
            assert status["links"][0]["up"] is True
            # A traceparent header crosses the uplink untouched (a plain subject).
            got: asyncio.Queue = asyncio.Queue()

            async def on_msg(msg: object) -> None:
                await got.put(msg)

            await h.subscribe("plain.trace", cb=on_msg)
            await settle(h)
            await asyncio.sleep(0.3)
            trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            await e.publish("plain.trace", b"x", headers={"traceparent": trace, "X-A": "b"})
            msg = await asyncio.wait_for(got.get(), 5)
            assert msg.headers == {"traceparent": trace, "X-A": "b"}
            await e.close()
            await h.close()

        run(scenario(), timeout=40)
    finally:
        edge.stop()
        hub.stop()
