"""Helpers for the store-and-forward tests: a hub with the TELEMETRY stream, a
leafgate edge with a store, reading the hub stream back, looking into the store.

Every process is real (nats-server hub, leafgate subprocess), every client is
nats-py, every wait is bounded.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from store import buffer
from tests.aio import connect, run
from tests.harness import ServerProcess, start_leafgate
from tests.hubs import HubProcess, start_hub

STREAM = "TELEMETRY"
SUBJECTS = ["telemetry.>"]


def start_js_hub(tmp_path: Path, *, stream: bool = True, **kw: Any) -> HubProcess:
    """A hub with JetStream and (unless told otherwise) the TELEMETRY stream."""
    hub = start_hub(tmp_path / "hub", jetstream=True, **kw)
    if stream:
        run(add_stream(hub))
    return hub


async def add_stream(hub: HubProcess, duplicate_window: float = 120.0) -> None:
    nc = await connect(f"nats://127.0.0.1:{hub.client_port}")
    try:
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=SUBJECTS, duplicate_window=duplicate_window)
    finally:
        await nc.close()


def store_toml(store_dir: Path, **group: Any) -> str:
    """A [store] with one forward group on telemetry.> (keys as in the config file)."""
    lines = ["[store]", f'dir = "{store_dir}"', "[[store.forward]]", 'subjects = ["telemetry.>"]']
    for key, value in group.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def start_edge(
    tmp_path: Path, hub_port: int, store_dir: Path, *, name: str = "edge1", toml: str = ""
) -> ServerProcess:
    """leafgate linked to ``hub_port`` (a hub's leafnode port, or a proxy's).

    The link never uses the URLs the hub advertises: a hub advertises its own
    leafnode port, and an edge that learnt it would reconnect around the proxy
    when the test cuts the link."""
    remote = (
        "[[leafnodes.remotes]]\n"
        f'url = "nats-leaf://127.0.0.1:{hub_port}"\n'
        "use_advertised_urls = false\n"
    )
    config = remote + (toml or store_toml(store_dir))
    return start_leafgate("-n", name, config_text=config, tmp_path=tmp_path)


@dataclass(frozen=True)
class StoredMsg:
    stream_seq: int
    subject: str
    data: bytes
    msg_id: str | None


async def read_stream(hub: HubProcess, expect: int, timeout: float = 30.0) -> list[StoredMsg]:
    """Everything in the hub stream once it holds at least ``expect`` messages
    (bounded), in stream order."""
    nc = await connect(f"nats://127.0.0.1:{hub.client_port}")
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = await js.stream_info(STREAM)
            if info.state.messages >= expect:
                break
            if loop.time() > deadline:
                raise AssertionError(
                    f"hub stream holds {info.state.messages} messages, expected {expect}"
                )
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # let anything that should not be there arrive too
        info = await js.stream_info(STREAM)
        total = info.state.messages
        sub = await js.pull_subscribe(
            "telemetry.>",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0),
        )
        out: list[StoredMsg] = []
        while len(out) < total:
            batch = await sub.fetch(min(1000, total - len(out)), timeout=5)
            for msg in batch:
                meta = msg.metadata
                headers = msg.headers or {}
                out.append(
                    StoredMsg(
                        meta.sequence.stream, msg.subject, msg.data, headers.get("Nats-Msg-Id")
                    )
                )
            await asyncio.gather(*(m.ack() for m in batch))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def stream_count(hub: HubProcess) -> int:
    nc = await connect(f"nats://127.0.0.1:{hub.client_port}")
    try:
        info = await nc.jetstream().stream_info(STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


def edge_seqs(msgs: list[StoredMsg]) -> list[int]:
    """The gateway sequences (from Nats-Msg-Id) in stream order."""
    out = []
    for m in msgs:
        assert m.msg_id is not None, f"message without Nats-Msg-Id: {m}"
        out.append(int(m.msg_id.rpartition(":")[2]))
    return out


def stored_rows(store_dir: Path) -> list[tuple[int, str, bytes]]:
    """(seq, subject, data) of what the edge's store holds (read-only; the server may run)."""
    path = store_dir / "leafgate.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        conn.execute("BEGIN")  # one snapshot of a store the server may be writing
        rows = [(r.seq, r.subject.decode(), r.data) for r in buffer.iter_stored(conn)]
    finally:
        conn.close()
    return rows


async def wait_store_empty(store_dir: Path, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while stored_rows(store_dir):
        if loop.time() > deadline:
            raise AssertionError(f"the store still holds {len(stored_rows(store_dir))} messages")
        await asyncio.sleep(0.1)


async def publish_many(
    nc: Client, n: int, start: int = 0, subjects: int = 3
) -> list[tuple[str, bytes]]:
    """Publish ``n`` numbered messages over ``subjects`` subjects; returns them in order."""
    sent = []
    for i in range(start, start + n):
        subject = f"telemetry.dev{i % subjects}"
        data = b"m%d" % i
        await nc.publish(subject, data)
        sent.append((subject, data))
    await nc.flush(timeout=10)
    await nc.flush(timeout=10)
    return sent


def log_events(edge: ServerProcess, event: str) -> list[str]:
    return [line for line in Path(edge.log_path).read_text().splitlines() if f'"{event}"' in line]
