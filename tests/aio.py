"""asyncio helpers for tests that drive the real nats-py client.

nats-py is asyncio-based, so tests using it are plain synchronous functions that run
one asyncio scenario each (``run(...)`` bounds it with a timeout); every wait inside
a scenario is bounded as well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

T = TypeVar("T")
SCENARIO_TIMEOUT = 30.0


def run(coro: Coroutine[Any, Any, T], timeout: float = SCENARIO_TIMEOUT) -> T:
    """Run an asyncio scenario to completion, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(url: str, **kwargs: Any) -> Client:
    errors: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)

    kwargs.setdefault("error_cb", error_cb)
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("allow_reconnect", False)
    nc = await nats.connect(url, **kwargs)
    _ERRORS[id(nc)] = errors
    return nc


_ERRORS: dict[int, list[Exception]] = {}


def errors_of(nc: Client) -> list[Exception]:
    """Asynchronous errors nats-py reported for a connection made by :func:`connect`."""
    return _ERRORS.get(id(nc), [])


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


async def settle(nc: Client, timeout: int = 5) -> None:
    """Wait until the server processed everything ``nc`` sent so far.

    One ``flush()`` is not enough with nats-py 2.16: it writes its PING straight to the
    socket while SUB/PUB commands may still sit in the client's pending buffer, so the
    PONG can come back before they reached the server.  The second PING is written
    after them.
    """
    await nc.flush(timeout=timeout)
    await nc.flush(timeout=timeout)


async def take(sub: Any, n: int, timeout: float = 5.0) -> list[Msg]:
    """The next ``n`` messages of ``sub`` (each wait bounded)."""
    return [await sub.next_msg(timeout=timeout) for _ in range(n)]
