"""The embedding API: a leafgate server inside another Trio program."""

from __future__ import annotations

import trio

from edge.config import ServerConfig
from edge.server import Server, open_server
from tests.harness import RawClient

CONNECT = b'CONNECT {"verbose":false,"pedantic":false}\r\n'


async def _client(port: int) -> RawClient:
    return await RawClient.connected(port, CONNECT)


async def test_open_server_serves_and_stops() -> None:
    async with open_server(ServerConfig(port=0)) as server:
        assert server.port > 0
        sub = await _client(server.port)
        await sub.send(b"SUB demo.> 7\r\n")
        await sub.ping()
        pub = await _client(server.port)
        await pub.send(b"PUB demo.x 2\r\nhi\r\n")
        frame = await sub.read_frame()
        assert frame.op == "MSG"
        assert frame.args == [b"demo.x", b"7", b"2"]
        assert frame.payload == b"hi"
    # Leaving the block shut the server down and closed its clients.
    assert await sub.closed(timeout=5)
    assert await pub.closed(timeout=5)


async def test_nursery_start_and_shutdown() -> None:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(ServerConfig(port=0)).run)
        client = await _client(server.port)
        assert len(server.clients) == 1
        server.shutdown()
    # run() returned: the nursery exited only after the server stopped.
    assert await client.closed(timeout=5)
    assert server.clients == {}
