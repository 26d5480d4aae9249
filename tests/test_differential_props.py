"""Differential properties checked on each implementation, nats-server and
leafgate (random choices, timing, ordering): what an exact transcript cannot
compare. The byte-for-byte sessions are in tests/test_differential.py."""

from __future__ import annotations

from collections import Counter

import trio

from tests.conftest import ServerFactory
from tests.harness import RawClient
from tests.test_differential import AUTH_TIMEOUT_1, QUIET

# ---------------------------------------------------------------------------
# Properties checked on each implementation (random choices, timing)
# ---------------------------------------------------------------------------


async def _client(port: int, *ops: bytes) -> RawClient:
    client = await RawClient.connect(port)
    await client.read_info()
    await client.send(QUIET + b"".join(ops))
    frames = await client.ping()
    assert frames == [], frames
    return client


async def _collect(client: RawClient, timeout: float = 5.0) -> list[tuple[bytes, bytes]]:
    """(sid, payload) of every message up to the PONG of a fresh PING."""
    frames = await client.ping(timeout)
    assert all(f.op == "MSG" for f in frames), frames
    return [(f.args[1], f.payload or b"") for f in frames]


QUEUE_N = 300


async def test_queue_group_distribution(both: ServerFactory) -> None:
    server = both()
    members = [await _client(server.port, b"SUB work grp %d\r\n" % i) for i in range(3)]
    other_group = [await _client(server.port, b"SUB work other %d\r\n" % i) for i in range(2)]
    plain = await _client(server.port, b"SUB work 9\r\n")
    pub = await _client(server.port)
    await pub.send(b"".join(b"PUB work %d\r\n%d\r\n" % (len(str(i)), i) for i in range(QUEUE_N)))
    assert await pub.ping() == []

    counts = [len(await _collect(m)) for m in members]
    other_counts = [len(await _collect(m)) for m in other_group]
    plain_msgs = await _collect(plain)
    assert sum(counts) == QUEUE_N, counts
    assert all(c > 0 for c in counts), f"{both.name}: a queue member got nothing: {counts}"
    assert sum(other_counts) == QUEUE_N, other_counts
    assert all(c > 0 for c in other_counts), other_counts
    assert [p for _, p in plain_msgs] == [str(i).encode() for i in range(QUEUE_N)]
    for c in [*members, *other_group, plain, pub]:
        await c.aclose()


async def test_queue_group_members_on_one_connection(both: ServerFactory) -> None:
    server = both()
    client = await _client(server.port, b"SUB job q 1\r\nSUB job q 2\r\nSUB job q 3\r\n")
    await client.send(b"".join(b"PUB job 1\r\nx\r\n" for _ in range(QUEUE_N)))
    got = await _collect(client)
    per_sid = Counter(sid for sid, _ in got)
    assert sum(per_sid.values()) == QUEUE_N, per_sid
    assert set(per_sid) == {b"1", b"2", b"3"}, f"{both.name}: {per_sid}"
    await client.aclose()


async def test_many_subscriptions_get_one_copy_each(both: ServerFactory) -> None:
    server = both()
    sids = [str(i).encode() for i in range(1, 21)]
    subs = b"".join(b"SUB many.subj " + sid + b"\r\n" for sid in sids[:10])
    subs += b"".join(b"SUB many.* " + sid + b"\r\n" for sid in sids[10:15])
    subs += b"".join(b"SUB many.> " + sid + b"\r\n" for sid in sids[15:])
    client = await _client(server.port, subs)
    n = 25
    await client.send(b"".join(b"PUB many.subj 2\r\n%02d\r\n" % i for i in range(n)))
    got = await _collect(client)
    per_sid = Counter(sid for sid, _ in got)
    assert per_sid == dict.fromkeys(sids, n)
    # Every subscription saw the messages in publish order.
    for sid in sids:
        assert [p for s, p in got if s == sid] == [b"%02d" % i for i in range(n)]
    await client.aclose()


async def test_publish_order_preserved_across_connections(both: ServerFactory) -> None:
    server = both()
    sub = await _client(server.port, b"SUB ord 1\r\n")
    pub = await _client(server.port)
    n = 2000
    await pub.send(b"".join(b"PUB ord %d\r\n%d\r\n" % (len(str(i)), i) for i in range(n)))
    assert await pub.ping() == []
    got = await _collect(sub)
    assert [p for _, p in got] == [str(i).encode() for i in range(n)]
    await sub.aclose()
    await pub.aclose()


async def test_auth_timeout_timing(both: ServerFactory) -> None:
    server = both(config=AUTH_TIMEOUT_1)
    client = await RawClient.connect(server.port)
    start = trio.current_time()
    info = await client.read_info()
    assert info.get("auth_required") is True
    line = await client.read_line(timeout=4)
    elapsed = trio.current_time() - start
    assert line == b"-ERR 'Authentication Timeout'"
    assert 0.7 <= elapsed <= 2.0, f"{both.name}: auth timeout after {elapsed:.2f}s, want ~1s"
    assert await client.closed(timeout=2)
    await client.aclose()


async def test_ping_before_connect_without_auth(both: ServerFactory) -> None:
    server = both()
    client = await RawClient.connect(server.port)
    info = await client.read_info()
    assert "auth_required" not in info
    assert info["max_payload"] == 1048576
    assert info["headers"] is True
    assert await client.ping() == []
    await client.aclose()
