"""``leafgate status --http URL`` against a running leafgate with a real hub link
and a real backlog; ``leafgate store export --progress`` on the store it left."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from edge.status_view import Bodies, human_age, human_bytes, render
from tests.aio import connect, run, settle
from tests.harness import REPO_ROOT, ServerProcess, start_leafgate
from tests.hubs import start_hub
from tests.storehelp import publish_many, store_toml
from tests.test_monitor import monitor_url, wait_json


def leafgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


async def _traffic_then_status(edge: ServerProcess, n: int, url: str) -> str:
    """Subscribers on telemetry.dev0 and telemetry.>, n messages over three
    subjects, then ``leafgate status`` while the subscribers are still there."""
    sub_nc = await connect(edge.url)
    pub_nc = await connect(edge.url)
    try:
        await sub_nc.subscribe("telemetry.dev0")
        await sub_nc.subscribe("telemetry.>")
        await settle(sub_nc)
        await publish_many(pub_nc, n)
        await settle(sub_nc)
        await asyncio.to_thread(
            wait_json, url + "/storez", lambda d: d["messages"] == n, what=f"{n} held"
        )
        result = await asyncio.to_thread(leafgate, "status", "--http", url)
        assert result.returncode == 0, result.stderr
        return result.stdout
    finally:
        await pub_nc.close()
        await sub_nc.close()


@pytest.mark.slow
def test_status_and_export_progress(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub")
    store_dir = tmp_path / "store"
    toml = (
        "http_port = 0\n[[leafnodes.remotes]]\n"
        f'url = "nats-leaf://127.0.0.1:{hub.leaf_port}"\n'
        "use_advertised_urls = false\n" + store_toml(store_dir)
    )
    edge = start_leafgate("-n", "edge1", config_text=toml, tmp_path=tmp_path)
    try:
        url = monitor_url(edge)
        wait_json(url + "/leafz", lambda d: d["leafnodes"] == 1, what="the link up")
        up = leafgate("status", "--http", url)
        assert up.returncode == 0, up.stderr
        assert "leafgate edge1" in up.stdout
        assert f"[0] UP   nats-leaf://127.0.0.1:{hub.leaf_port} hub " in up.stdout

        hub.stop()
        wait_json(url + "/leafz", lambda d: d["leafnodes"] == 0, what="the link down")
        out = run(_traffic_then_status(edge, 2500, url))
        assert f"[0] DOWN nats-leaf://127.0.0.1:{hub.leaf_port}" in out
        assert "last error:" in out
        assert "2500 msgs" in out and "(reading from disk)" in out
        group = next(line.split() for line in out.splitlines() if line.startswith("  default "))
        assert group[1] == "2500" and group[-1] == "-"  # msgs, no drops
        # Top subjects, by messages delivered to their subscriptions.
        top = out.split("top subjects (messages delivered to 2 subs):")[1].splitlines()[1:]
        assert [line.split() for line in top] == [
            ["2500", "telemetry.>"],
            ["834", "telemetry.dev0"],
        ]
        assert "clients     2 connected" in out
    finally:
        edge.stop()
        hub.stop()

    # The store it left: export with progress lines on a pipe.
    exported = tmp_path / "export.jsonl"
    result = leafgate(
        "store", "export", "--store", str(store_dir), "-o", str(exported), "--progress"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "exported 1000/2500 messages"
    assert lines[-1].startswith("exported 2500 messages (")
    assert "\r" not in result.stderr  # not a terminal: whole lines, no redraws
    assert len(exported.read_text().splitlines()) == 2500
    quiet = leafgate("store", "export", "--store", str(store_dir), "-o", str(exported))
    assert quiet.stderr.splitlines() == [lines[-1]]  # without --progress: the summary only


def test_status_unreachable() -> None:
    result = leafgate("status", "--http", "http://127.0.0.1:1")
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:1/varz" in result.stderr


def test_render_bridges_and_empty_store() -> None:
    bodies = Bodies(
        varz={"server_name": "gw", "connections": 0},
        leafz={"leafgate_links": []},
        storez={"enabled": False},
        subsz={"subscriptions_list": []},
        bridgez={
            "bridges": [
                {"name": "plant", "kind": "mqtt", "state": "connected", "in_msgs": 3},
                {"name": "meter", "kind": "serial", "state": "waiting", "port": "/dev/ttyUSB0"},
            ]
        },
    )
    text = "\n".join(render(bodies))
    assert "hub links: none configured" in text and "store: off" in text
    assert "mqtt    plant            connected  in_msgs 3" in text
    assert "serial  meter            waiting  port /dev/ttyUSB0" in text
    assert "subscriptions: none" in text
    no_bridges = render(Bodies(bodies.varz, bodies.leafz, bodies.storez, bodies.subsz, None))
    assert not any("bridges" in line for line in no_bridges)
    assert (human_bytes(512), human_bytes(2048), human_age(None), human_age(3600)) == (
        "512 B",
        "2.0 KiB",
        "-",
        "60m",
    )
