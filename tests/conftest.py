"""Shared fixtures: real nats-server and leafgate processes on 127.0.0.1.

* ``nats_server`` / ``leafgate``: one default server per test.
* ``nats_server_factory`` / ``leafgate_factory``: start servers with arguments and/or a
  config (``factory(*args, config_text=..., config=Config(nats=..., toml=...))``).
* ``both``: a factory parametrised over the two implementations, for tests that must
  hold for nats-server and leafgate alike.
* ``workdir``: a fresh directory per test (config files, ports files, server logs).

Every process a fixture started is stopped by PID at teardown, also when the test
failed; the server log tail is attached to the report of a failed test.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from store import db
from tests.harness import (
    Config,
    HarnessError,
    ServerProcess,
    is_nats_server_command,
    leafgate_command,
    nats_server_bin,
    start_leafgate,
    start_nats_server,
)

_FACTORIES = pytest.StashKey[list["ServerFactory"]]()


@pytest.fixture(scope="session")
def nats_server_bin_path() -> str:
    """The reference nats-server binary; a missing binary fails loudly (no skip)."""
    try:
        return nats_server_bin()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


class ServerFactory:
    """Starts servers of one implementation and stops all of them at teardown."""

    def __init__(self, impl: str, workdir: Path) -> None:
        if impl not in ("nats-server", "leafgate"):
            raise ValueError(impl)
        self.impl = impl
        self.workdir = workdir
        self.started: list[ServerProcess] = []

    @property
    def name(self) -> str:
        return self.impl

    @property
    def config_dialect(self) -> str:
        """ "nats" or "toml": which config syntax this implementation reads."""
        if self.impl == "nats-server" or is_nats_server_command(leafgate_command()):
            return "nats"
        return "toml"

    def __call__(
        self,
        *args: str,
        config_text: str | None = None,
        config: Config | None = None,
    ) -> ServerProcess:
        if config is not None:
            if config_text is not None:
                raise ValueError("pass config_text or config, not both")
            config_text = config.nats if self.config_dialect == "nats" else config.toml
        start = start_nats_server if self.impl == "nats-server" else start_leafgate
        proc = start(*args, config_text=config_text, tmp_path=self.workdir)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()

    def log_report(self) -> str:
        return "\n".join(
            f"--- {p.name} pid={p.proc and p.proc.pid} port={p.port} log {p.log_path}:\n"
            f"{p.log_tail(2000)}"
            for p in self.started
        )


def _factory(request: pytest.FixtureRequest, impl: str, workdir: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(impl, workdir)
    factories = request.node.stash.setdefault(_FACTORIES, [])
    factories.append(factory)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def nats_server_factory(
    request: pytest.FixtureRequest, nats_server_bin_path: str, workdir: Path
) -> Iterator[ServerFactory]:
    yield from _factory(request, "nats-server", workdir)


@pytest.fixture
def leafgate_factory(
    request: pytest.FixtureRequest, nats_server_bin_path: str, workdir: Path
) -> Iterator[ServerFactory]:
    yield from _factory(request, "leafgate", workdir)


@pytest.fixture
def nats_server(nats_server_factory: ServerFactory) -> ServerProcess:
    return nats_server_factory()


@pytest.fixture
def leafgate(leafgate_factory: ServerFactory) -> ServerProcess:
    return leafgate_factory()


@pytest.fixture(params=["nats-server", "leafgate"])
def both(
    request: pytest.FixtureRequest, nats_server_bin_path: str, workdir: Path
) -> Iterator[ServerFactory]:
    """A server factory for each implementation in turn (same test body)."""
    yield from _factory(request, request.param, workdir)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the server log tails to the report of a failed test."""
    rep = yield
    if rep.failed and rep.when in ("setup", "call"):
        for factory in item.stash.get(_FACTORIES, []):
            if factory.started:
                rep.sections.append((f"{factory.impl} logs", factory.log_report()))
    return rep


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, db.OpenReport]]:
    """A fresh SQLite store (connection and open report) for the store.db and
    store.buffer tests; modules with a ``store`` fixture of their own keep theirs."""
    conn, report = db.open_store(tmp_path / "state", hostname="edge")
    with closing(conn):
        yield conn, report
