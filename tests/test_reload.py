"""Configuration reload on SIGHUP (issue 7 item 5): the plan (pure) and a real
process reloading valid and invalid files without dropping connections."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path

import nats.errors
import pytest

from edge.config import ForwardGroup, LogConfig, ServerConfig, StoreConfig
from edge.reload import ReloadRefused, plan_reload
from tests.aio import connect, run
from tests.harness import start_leafgate
from tests.marks import leafgate_only
from tests.storehelp import log_events

GROUP = ForwardGroup(subjects=("t.>",))
BASE = ServerConfig(store=StoreConfig(dir="/s", groups=(GROUP,)))


def test_plan_lists_what_changes() -> None:
    new = dataclasses.replace(
        BASE,
        log=LogConfig(debug=True),
        ping_interval=30.0,
        store=StoreConfig(dir="/s", groups=(dataclasses.replace(GROUP, max_msgs=10),)),
    )
    plan = plan_reload(BASE, new)
    assert plan.changed == ("ping_interval", "store.forward[0].max_msgs", "log")
    assert plan.log and plan.store_groups and not plan.auth and not plan.bridges
    assert plan_reload(BASE, BASE).empty


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"port": 4333}, "port"),
        ({"max_payload": 10}, "max_payload"),
        ({"store": StoreConfig(dir="/other", groups=(GROUP,))}, "store.dir"),
        (
            {"store": StoreConfig(dir="/s", groups=(dataclasses.replace(GROUP, subjects=("u",)),))},
            "store.forward[0].subjects",
        ),
        (
            {
                "store": StoreConfig(
                    dir="/s", groups=(dataclasses.replace(GROUP, durability="memory"),)
                )
            },
            "store.forward[0].durability",
        ),
        ({"store": StoreConfig(dir="/s", groups=(GROUP, GROUP))}, "store.forward"),
    ],
)
def test_settings_that_need_a_restart_refuse_the_whole_reload(
    change: dict[str, object], key: str
) -> None:
    with pytest.raises(ReloadRefused) as err:
        plan_reload(BASE, dataclasses.replace(BASE, **change))  # type: ignore[arg-type]
    assert err.value.key == key


def _wait_log(server: object, event: str, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_events(server, event)  # type: ignore[arg-type]
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no {count}x {event} in the log")


@leafgate_only
def test_sighup_applies_a_valid_file_and_keeps_the_old_one_on_errors(tmp_path: Path) -> None:
    server = start_leafgate(
        "--log_format", "json", config_text='[authorization]\ntoken = "one"\n', tmp_path=tmp_path
    )
    config = server.config_path
    try:

        async def scenario() -> None:
            old = await connect(server.url, token="one")
            # A valid change: the token. Existing connections stay up.
            config.write_text('[authorization]\ntoken = "two"\n')
            os.kill(server.pid, signal.SIGHUP)
            assert '"authorization"' in _wait_log(server, "reloaded", 1)[0]
            await old.flush(timeout=5)
            assert old.is_connected
            new = await connect(server.url, token="two")
            with pytest.raises(nats.errors.Error):
                await connect(server.url, token="one")
            # An invalid file: refused, naming the key; the running config is kept.
            config.write_text('[authorization]\ntoken = "three"\nbogus_key = 1\n')
            os.kill(server.pid, signal.SIGHUP)
            line = _wait_log(server, "reload_rejected", 1)[0]
            assert "authorization.bogus_key" in line
            again = await connect(server.url, token="two")
            # A change that needs a restart: refused, naming the key.
            config.write_text('max_connections = 5\n[authorization]\ntoken = "four"\n')
            os.kill(server.pid, signal.SIGHUP)
            assert '"key": "max_connections"' in _wait_log(server, "reload_rejected", 2)[1]
            await (await connect(server.url, token="two")).close()
            for nc in (old, new, again):
                await nc.flush(timeout=5)
                await nc.close()

        run(scenario(), timeout=40)
    finally:
        server.stop()


async def test_reload_changes_store_limits_live(tmp_path: Path) -> None:
    from edge.server import open_server
    from tests.harness import RawClient

    group = ForwardGroup(subjects=("t.>",))
    config = ServerConfig(port=0, store=StoreConfig(dir=str(tmp_path / "s"), groups=(group,)))
    async with open_server(config) as server:
        store = server.store
        assert store is not None
        client = await RawClient.connect(server.port)
        await client.read_info()
        await client.send(b'CONNECT {"verbose":false}\r\n' + b"PUB t.a 1\r\nx\r\n" * 20)
        await client.ping()
        await store.barrier()
        assert store.groups.states[0].count == 20
        smaller = dataclasses.replace(group, max_msgs=5)
        changed = server.reload(
            dataclasses.replace(config, store=dataclasses.replace(config.store, groups=(smaller,)))
        )
        assert changed == ("store.forward[0].max_msgs",)
        await client.send(b"PUB t.a 1\r\ny\r\n")
        await client.ping()
        await store.barrier()
        assert store.groups.states[0].count == 5
        assert store.groups.states[0].dropped == {"max_msgs": 16}


USERS_TOML = (
    "[[authorization.users]]\n"
    'user = "alice"\npassword = "a1"\n'
    "[[authorization.users]]\n"
    'user = "bob"\npassword = "{bob}"\n'
    "[authorization.users.permissions]\n"
    'publish = ["bob.>"]\n'
)


@leafgate_only
def test_sighup_reloads_users_and_closes_only_changed_ones(tmp_path: Path) -> None:
    server = start_leafgate(
        "--log_format", "json", config_text=USERS_TOML.format(bob="b1"), tmp_path=tmp_path
    )
    config = server.config_path
    try:

        async def scenario() -> None:
            closed: list[bool] = []

            async def on_closed() -> None:
                closed.append(True)

            alice = await connect(server.url, user="alice", password="a1")
            bob = await connect(server.url, user="bob", password="b1", closed_cb=on_closed)
            config.write_text(USERS_TOML.format(bob="b2"))
            os.kill(server.pid, signal.SIGHUP)
            assert "bob" in _wait_log(server, "client_closed_by_reload", 1)[0]
            assert len(log_events(server, "client_closed_by_reload")) == 1  # not alice
            for _ in range(100):
                if closed:
                    break
                await asyncio.sleep(0.05)
            assert closed, "bob's connection (changed password) was not closed"
            await alice.flush(timeout=5)  # alice's rules did not change: still connected
            assert alice.is_connected
            with pytest.raises(nats.errors.Error):
                await connect(server.url, user="bob", password="b1")
            await (await connect(server.url, user="bob", password="b2")).close()
            # Accounts are built at start: adding one is refused, naming the key.
            config.write_text(
                USERS_TOML.format(bob="b2")
                + '[accounts.A]\nusers = [{ user = "c", password = "c" }]\n'
            )
            os.kill(server.pid, signal.SIGHUP)
            assert '"key": "accounts"' in _wait_log(server, "reload_rejected", 1)[0]
            await alice.close()
            assert bob.is_closed

        run(scenario(), timeout=40)
    finally:
        server.stop()
