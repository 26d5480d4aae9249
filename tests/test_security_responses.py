"""Service import responses (``_R_.`` reply subjects in the exporting account),
one raw-protocol transcript per server, compared after the random ``_R_.``
tokens are replaced by ``<R1>``, ``<R2>``... in order of appearance.

What nats-server 2.9.10 does (and the test holds leafgate to): a request through
the import reaches the responder with an ``_R_.`` reply; the first answer goes to
the requester; a second answer, from the responder or anyone else in the
exporting account, goes to the exporter's own subscribers only (for a singleton
export); a made-up ``_R_.`` subject is an ordinary subject of the exporter; a
responder without publish rights answers once through allow_responses and its
second answer is a Permissions Violation; a stream export passes every answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.harness import Config, Frame, RawClient
from tests.test_differential import PairPool

CONFIG = Config(
    nats="""
accounts {
  A { users = [
        {user: a, password: p}
        {user: r, password: p, permissions: {
          publish: {deny: [">"]}, subscribe: {allow: ["time", "many"]}, allow_responses: true}}
        {user: w, password: p}
      ]
      exports = [{service: "time"}, {service: "many", response_type: "stream"}] }
  B { users = [{user: b, password: p}]
      imports = [{service: {account: A, subject: "time"}, to: "a.time"},
                 {service: {account: A, subject: "many"}, to: "a.many"}] }
}
""",
    toml="""
[[accounts.A.users]]
user = "a"
password = "p"
[[accounts.A.users]]
user = "r"
password = "p"
permissions.publish.deny = [">"]
permissions.subscribe.allow = ["time", "many"]
permissions.allow_responses = true
[[accounts.A.users]]
user = "w"
password = "p"
[accounts.A]
exports = [{ service = "time" }, { service = "many", response_type = "stream" }]
[accounts.B]
users = [{ user = "b", password = "p" }]
imports = [
  { service = { account = "A", subject = "time" }, to = "a.time" },
  { service = { account = "A", subject = "many" }, to = "a.many" },
]
""",
)

_R = re.compile(rb"_R_\.[A-Za-z0-9]+\.[A-Za-z0-9.]+")


def _login(user: str) -> bytes:
    return b'CONNECT {"verbose":false,"user":"%s","pass":"p"}\r\n' % user.encode()


class Transcript:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[bytes, str] = {}

    def name(self, subject: bytes) -> str:
        return self.names.setdefault(subject, f"<R{len(self.names) + 1}>")

    def add(self, who: str, frames: list[Frame]) -> None:
        for frame in frames:
            line = frame.line + (b" " + frame.payload if frame.payload is not None else b"")
            line = _R.sub(lambda m: self.name(m.group(0)).encode(), line)
            self.lines.append(f"{who}: {line.decode()}")


def _reply_of(frames: list[Frame]) -> bytes:
    for frame in frames:
        if frame.op == "MSG" and len(frame.args) == 4:
            return frame.args[2]
    raise AssertionError(f"no request with a reply in {[f.text() for f in frames]}")


async def _transcript(port: int) -> list[str]:
    out = Transcript()
    r = await RawClient.connected(port, _login("r"))
    w = await RawClient.connected(port, _login("w"))
    a = await RawClient.connected(port, _login("a"))
    b = await RawClient.connected(port, _login("b"))
    clients = {"r": r, "w": w, "a": a, "b": b}

    async def sync(sender: str = "") -> None:
        """The sender's PING first: its messages are routed before the others' PONGs."""
        for who in sorted(clients, key=lambda c: c != sender):
            out.add(who, await clients[who].ping())

    await r.send(b"SUB time 1\r\nSUB many 2\r\n")
    await w.send(b"SUB > 1\r\n")
    await b.send(b"SUB _INBOX.b 1\r\n")
    await sync()
    await b.send(b"PUB a.time _INBOX.b 2\r\nq1\r\n")
    await b.ping()
    frames = await r.ping()
    out.add("r", frames)
    reply = _reply_of(frames)
    await sync()
    # The responder answers twice (the second is beyond allow_responses' one).
    await r.send(b"PUB %s 2\r\nA1\r\nPUB %s 2\r\nA2\r\n" % (reply, reply))
    await sync("r")
    # Another client of the exporting account answers after the first answer.
    await a.send(b"PUB %s 2\r\nA3\r\n" % reply)
    await sync("a")
    # A made-up _R_ subject and one under the same prefix with another number.
    prefix = reply.rsplit(b".", 1)[0]
    await a.send(b"PUB _R_.made.up 1\r\nx\r\nPUB %s.999999 1\r\ny\r\n" % prefix)
    await sync("a")
    # A stream export: every answer reaches the requester.
    await b.send(b"PUB a.many _INBOX.b 2\r\nq2\r\n")
    await b.ping()
    frames = await r.ping()
    out.add("r", frames)
    many = _reply_of(frames)
    await a.send(b"PUB %s 2\r\nM1\r\nPUB %s 2\r\nM2\r\n" % (many, many))
    await sync("a")
    # A request without a reply subject.
    await b.send(b"PUB a.time 2\r\nq3\r\n")
    await sync("b")
    for client in clients.values():
        await client.aclose()
    return out.lines


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, nats_server_bin_path: str) -> Iterator[PairPool]:
    pool = PairPool(tmp_path_factory.mktemp("responses"))
    try:
        yield pool
    finally:
        pool.stop_all()


async def test_service_import_responses_as_nats_server(pool: PairPool) -> None:
    pair = pool.get((), CONFIG)
    want = await _transcript(pair.nats.port)
    got = await _transcript(pair.leafgate.port)
    # What the reference did (see the module's docstring), then leafgate the same.
    assert "b: MSG _INBOX.b 1 2 A1" in want
    assert "b: MSG _INBOX.b 1 2 A3" not in want
    assert "r: -ERR 'Permissions Violation for Publish to \"<R1>\"'" in want
    assert got == want, "\n".join(
        f"{'  ' if x == y else '!!'} {x!s:60} {y}" for x, y in zip(want, got, strict=False)
    )
