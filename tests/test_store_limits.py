"""Store limits and policies with the link down: what is kept, what is dropped,
what the publisher hears, and that every drop is counted and logged by reason.
A full store (a size cap on the store file) is survived and recovered from."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.aio import connect, errors_of, run, settle, wait_until
from tests.hubs import ThreadedProxy
from tests.storehelp import (
    log_events,
    publish_many,
    read_stream,
    start_edge,
    start_js_hub,
    store_toml,
    stored_rows,
    wait_store_empty,
)


def _with_cut_link(tmp_path: Path, scenario: Any, **group: Any) -> None:
    """Run *scenario(edge, store, proxy, hub)* with the link cut, the group configured."""
    hub = start_js_hub(tmp_path)
    store = tmp_path / "store"
    extra = group.pop("store_extra", "")
    toml = store_toml(store, **group)
    if extra:
        toml = toml.replace("[[store.forward]]", extra + "\n[[store.forward]]")
    with ThreadedProxy(hub.leaf_port) as proxy:
        proxy.cut()
        edge = start_edge(tmp_path / "edge", proxy.port, store, toml=toml)
        try:
            run(scenario(edge, store, proxy, hub), timeout=60)
        finally:
            edge.stop()
            hub.stop()


def _dropped(edge: Any, reason: str) -> list[dict[str, Any]]:
    out = []
    for line in log_events(edge, "store_dropped"):
        event = json.loads(line[line.index("{") :])
        if event["reason"] == reason:
            out.append(event)
    return out


def test_drop_oldest_keeps_the_newest(tmp_path: Path) -> None:
    async def scenario(edge: Any, store: Path, proxy: Any, hub: Any) -> None:
        e = await connect(f"nats://127.0.0.1:{edge.port}")
        sent = await publish_many(e, 150)
        await wait_until(
            lambda: [r[2] for r in stored_rows(store)] == [d for _, d in sent[50:]],
            10,
            "the newest 100 kept",
        )
        assert _dropped(edge, "max_msgs"), "the drop was not logged with its reason"
        proxy.restore()
        msgs = await read_stream(hub, 100)
        assert [m.data for m in msgs] == [d for _, d in sent[50:]]
        await e.close()

    _with_cut_link(tmp_path, scenario, max_msgs=100, policy="drop_oldest")


def test_drop_newest_keeps_the_oldest(tmp_path: Path) -> None:
    async def scenario(edge: Any, store: Path, proxy: Any, hub: Any) -> None:
        e = await connect(f"nats://127.0.0.1:{edge.port}")
        sent = await publish_many(e, 150)
        await wait_until(lambda: len(stored_rows(store)) == 100, 10, "100 kept")
        await asyncio.sleep(0.3)
        assert [r[2] for r in stored_rows(store)] == [d for _, d in sent[:100]]
        events = _dropped(edge, "max_msgs")
        assert events and events[0]["group"] == "default"
        await e.close()

    _with_cut_link(tmp_path, scenario, max_msgs=100, policy="drop_newest")


def test_reject_tells_the_publisher_and_keeps_it_connected(tmp_path: Path) -> None:
    async def scenario(edge: Any, store: Path, proxy: Any, hub: Any) -> None:
        e = await connect(f"nats://127.0.0.1:{edge.port}")
        await publish_many(e, 20)
        await wait_until(lambda: len(stored_rows(store)) == 20, 10, "20 stored")
        await e.publish("telemetry.over", b"plain")
        await settle(e)
        await wait_until(lambda: bool(errors_of(e)), 5, "the -ERR")
        # nats-py lowercases the text it reports.
        text = str(errors_of(e)[0]).lower()
        assert 'permissions violation for publish to "telemetry.over"' in text
        assert e.is_connected
        reply = await e.request("telemetry.over", b"asked", timeout=5)
        error = json.loads(reply.data)["error"]
        assert error["code"] == 503 and "max_msgs" in error["description"]
        await e.publish("other.subject", b"unaffected")  # the connection still works
        await settle(e)
        assert len(stored_rows(store)) == 20
        assert log_events(edge, "store_rejected")
        await e.close()

    _with_cut_link(tmp_path, scenario, max_msgs=20, policy="reject")


def test_max_bytes_drops_the_oldest_until_it_fits(tmp_path: Path) -> None:
    async def scenario(edge: Any, store: Path, proxy: Any, hub: Any) -> None:
        e = await connect(f"nats://127.0.0.1:{edge.port}")
        for i in range(100):
            await e.publish("telemetry.big", b"%04d" % i + b"x" * 996)  # ~1 KB stored each
        await settle(e)
        await asyncio.sleep(0.3)
        rows = stored_rows(store)
        held = sum(len(r[1]) + len(r[2]) for r in rows)
        assert held <= 20_000 and len(rows) >= 15
        assert rows[-1][2].startswith(b"0099")  # the newest is kept
        assert _dropped(edge, "max_bytes")
        await e.close()

    _with_cut_link(tmp_path, scenario, max_bytes=20_000, policy="drop_oldest")


def test_max_age_expires_old_messages(tmp_path: Path) -> None:
    async def scenario(edge: Any, store: Path, proxy: Any, hub: Any) -> None:
        e = await connect(f"nats://127.0.0.1:{edge.port}")
        await publish_many(e, 50)
        await wait_until(lambda: len(stored_rows(store)) == 50, 5, "50 stored")
        await wait_store_empty(store, timeout=6)
        assert _dropped(edge, "max_age")
        await e.close()

    _with_cut_link(tmp_path, scenario, max_age="1s")


def test_free_disk_floor_applies_the_policy(tmp_path: Path) -> None:
    async def scenario(edge: Any, store: Path, proxy: Any, hub: Any) -> None:
        e = await connect(f"nats://127.0.0.1:{edge.port}")
        await publish_many(e, 30)
        await asyncio.sleep(0.3)
        assert stored_rows(store) == []
        assert _dropped(edge, "min_free_disk")
        assert log_events(edge, "store_low_disk")
        await e.close()

    _with_cut_link(
        tmp_path, scenario, policy="drop_newest", store_extra='min_free_disk = "1000000TB"'
    )


def test_a_full_store_is_survived_and_recovered_from(tmp_path: Path) -> None:
    async def scenario(edge: Any, store: Path, proxy: Any, hub: Any) -> None:
        e = await connect(f"nats://127.0.0.1:{edge.port}")
        for i in range(3000):
            await e.publish(f"telemetry.dev{i % 3}", b"%05d" % i + b"p" * 195)
        await settle(e)
        await wait_until(lambda: bool(log_events(edge, "store_disk_full")), 10, "disk full")
        # The batch that does not fit is tried again in halves: what fits is kept
        # (even when the whole burst came as one batch), the newest are dropped.
        await wait_until(lambda: bool(_dropped(edge, "disk_full")), 10, "disk_full drops")
        held = len(stored_rows(store))
        assert 0 < held < 3000
        # The server keeps serving; once the backlog drains there is room again.
        proxy.restore()
        await wait_store_empty(store, timeout=20)
        await read_stream(hub, held)
        sent = await publish_many(e, 50, start=10_000)
        msgs = await read_stream(hub, held + 50)
        assert [m.data for m in msgs[-50:]] == [d for _, d in sent]
        await e.close()

    _with_cut_link(tmp_path, scenario, policy="drop_newest", store_extra='max_file_size = "256KB"')
