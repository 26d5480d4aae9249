"""Differential tests of authorization and accounts: the same raw protocol sessions
against nats-server and leafgate configured alike, compared connection by connection
(see tests/test_differential.py for the machinery).

Covers the permission matrix (publish/subscribe allow and deny with wildcards, queue
permissions, deliveries filtered by a deny entry, allow_responses, verbose mode),
each denial's exact ``-ERR`` text, account isolation and exports/imports, and
hostile CONNECTs (oversized, invalid JSON, wrong credentials) closing only their
own connection.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Config
from tests.sessions import CLOSED, Open, Sync, WaitClosed, is_subsequence, run_session
from tests.sessions import Send as S
from tests.test_differential import PairPool, Session, connect, msg, seq, session

PERMS = Config(
    nats="""
authorization {
  users = [
    {user: pub, password: p, permissions: {
      publish: {allow: ["foo.*", "req.>", "_INBOX.>"], deny: ["foo.secret"]},
      subscribe: {allow: ["foo.>", "_INBOX.>", "work q1", "jobs.* w*"], deny: ["foo.hidden"]}
    }}
    {user: svc, password: p, permissions: {
      subscribe: {allow: ["req.>"]}, allow_responses: true
    }}
    {user: all, password: p}
  ]
}
""",
    toml="""
[[authorization.users]]
user = "pub"
password = "p"
[authorization.users.permissions.publish]
allow = ["foo.*", "req.>", "_INBOX.>"]
deny = ["foo.secret"]
[authorization.users.permissions.subscribe]
allow = ["foo.>", "_INBOX.>", "work q1", "jobs.* w*"]
deny = ["foo.hidden"]

[[authorization.users]]
user = "svc"
password = "p"
permissions = { subscribe = { allow = ["req.>"] }, allow_responses = true }

[[authorization.users]]
user = "all"
password = "p"
""",
)


def login(user: str, **opts: object) -> bytes:
    return connect(verbose=False, user=user, **{"pass": "p"}, **opts)


def pv_pub(subject: str) -> str:
    return f"-ERR 'Permissions Violation for Publish to \"{subject}\"'"


def pv_sub(subject: str, queue: str | None = None) -> str:
    if queue:
        return (
            f'-ERR \'Permissions Violation for Subscription to "{subject}" using queue "{queue}"\''
        )
    return f"-ERR 'Permissions Violation for Subscription to \"{subject}\"'"


ACCOUNTS = Config(
    nats="""
accounts {
  A { users = [{user: a, password: p}]
      exports = [{stream: "events.>"}, {service: "time"}] }
  B { users = [{user: b, password: p}]
      imports = [{stream: {account: A, subject: "events.>"}, prefix: "from_a"},
                 {service: {account: A, subject: "time"}, to: "a.time"}] }
  C { users = [{user: c, password: p}] }
}
""",
    toml="""
[accounts.A]
users = [{ user = "a", password = "p" }]
exports = [{ stream = "events.>" }, { service = "time" }]
[accounts.B]
users = [{ user = "b", password = "p" }]
imports = [
  { stream = { account = "A", subject = "events.>" }, prefix = "from_a" },
  { service = { account = "A", subject = "time" }, to = "a.time" },
]
[accounts.C]
users = [{ user = "c", password = "p" }]
""",
)

SESSIONS: list[Session] = [
    session(
        "perm_subscribe_matrix",
        [
            login("pub"),
            b"SUB foo.a 1\r\nSUB bar 2\r\nSUB foo.hidden 3\r\nSUB foo.* 4\r\nSUB foo.> 5\r\n",
            b"SUB > 6\r\nSUB * 7\r\nSUB _INBOX.x 8\r\n",
        ],
        [pv_sub("bar"), pv_sub("foo.hidden"), pv_sub(">"), pv_sub("*")],
        config=PERMS,
    ),
    session(
        "perm_queue_subscriptions",
        [
            login("pub"),
            b"SUB work q1 1\r\nSUB work q2 2\r\nSUB work 3\r\n",
            b"SUB jobs.a w1 4\r\nSUB jobs.a x 5\r\nSUB jobs.a 6\r\nSUB foo.a qq 7\r\n",
        ],
        [pv_sub("work", "q2"), pv_sub("work"), pv_sub("jobs.a", "x"), pv_sub("jobs.a")],
        config=PERMS,
    ),
    session(
        # Runs (many PUBs on one subject in a read): each denied one is refused.
        "perm_publish_runs",
        [
            S(login("all") + b"SUB foo.> 1\r\n", "s"),
            Sync("s"),
            S(login("pub"), "p"),
            Sync("p"),
            S(
                b"".join(b"PUB foo.secret 2\r\nxy\r\n" for _ in range(5))
                + b"".join(b"PUB foo.ok %d\r\n%d\r\n" % (len(str(i)), i) for i in range(12))
                + b"".join(b"PUB bar 1\r\nz\r\n" for _ in range(4)),
                "p",
            ),
        ],
        {
            "p": [*[pv_pub("foo.secret")] * 5, *[pv_pub("bar")] * 4],
            "s": seq(msg("MSG foo.ok 1 1", b"0"), msg("MSG foo.ok 1 2", b"11")),
        },
        config=PERMS,
    ),
    session(
        "perm_publish_matrix",
        [
            login("pub"),
            b"SUB foo.> 1\r\n",
            b"PUB foo.a 1\r\na\r\nPUB foo.secret 1\r\nb\r\nPUB bar 1\r\nc\r\n",
            b"PUB foo.a.b 1\r\nd\r\nPUB req.x.y 1\r\ne\r\nPUB foo.b 1\r\nf\r\n",
            b"PUB foo.secret 1\r\ng\r\n",
        ],
        seq(
            msg("MSG foo.a 1 1", b"a"),
            pv_pub("foo.secret"),
            pv_pub("bar"),
            pv_pub("foo.a.b"),
            msg("MSG foo.b 1 1", b"f"),
            pv_pub("foo.secret"),
        ),
        config=PERMS,
    ),
    session(
        "perm_publish_verbose_no_ok_on_denial",
        [
            connect(verbose=True, user="pub", **{"pass": "p"}),
            b"PUB bar 1\r\nx\r\nPUB foo.a 1\r\ny\r\nSUB bar 9\r\n",
        ],
        ["+OK", pv_pub("bar"), "+OK", pv_sub("bar")],
        config=PERMS,
    ),
    session(
        "perm_deny_filters_wildcard_deliveries",
        [
            S(login("pub"), "s"),
            S(b"SUB foo.* 1\r\n", "s"),
            Sync("s"),
            S(login("all"), "p"),
            S(b"PUB foo.hidden 1\r\nh\r\nPUB foo.ok 1\r\nk\r\n", "p"),
            Sync("p"),
        ],
        {"s": msg("MSG foo.ok 1 1", b"k")},
        config=PERMS,
    ),
    session(
        "perm_allow_responses",
        [
            S(login("svc"), "svc"),
            S(b"SUB req.> 1\r\n", "svc"),
            Sync("svc"),
            S(login("all"), "cli"),
            S(b"SUB _INBOX.r1 1\r\nPUB req.time _INBOX.r1 1\r\nq\r\n", "cli"),
            Sync("cli"),
            Sync("svc"),
            S(b"PUB _INBOX.r1 1\r\nA\r\nPUB _INBOX.r1 1\r\nB\r\nPUB other 1\r\nC\r\n", "svc"),
            Sync("svc"),
            Sync("cli"),
        ],
        {
            "svc": seq(
                msg("MSG req.time 1 _INBOX.r1 1", b"q"), pv_pub("_INBOX.r1"), pv_pub("other")
            ),
            "cli": msg("MSG _INBOX.r1 1 1", b"A"),
        },
        config=PERMS,
    ),
    session(
        "accounts_isolated_and_imports",
        [
            S(login("a"), "a"),
            S(login("b"), "b"),
            S(login("c"), "c"),
            S(b"SUB > 1\r\nSUB time 2\r\n", "a"),
            S(b"SUB > 1\r\n", "b"),
            S(b"SUB > 1\r\n", "c"),
            Sync("a"),
            Sync("b"),
            Sync("c"),
            S(b"PUB events.x 1\r\n1\r\nPUB private 1\r\n2\r\n", "a"),
            Sync("a"),
            S(b"PUB c.only 1\r\n3\r\n", "c"),
            Sync("c"),
            S(b"PUB b.only 1\r\n4\r\n", "b"),
            Sync("b"),
            Sync("a"),
            Sync("c"),
        ],
        {
            "a": seq(msg("MSG events.x 1 1", b"1"), msg("MSG private 1 1", b"2")),
            "b": seq(msg("MSG from_a.events.x 1 1", b"1"), msg("MSG b.only 1 1", b"4")),
            "c": msg("MSG c.only 1 1", b"3"),
        },
        config=ACCOUNTS,
    ),
    session(
        "accounts_service_import_request_reply",
        [
            S(login("a"), "a"),
            S(b"SUB time 1\r\n", "a"),
            Sync("a"),
            S(login("b"), "b"),
            S(b"SUB _INBOX.b 1\r\nPUB a.time _INBOX.b 3\r\nnow\r\n", "b"),
            Sync("b"),
            Sync("a"),
        ],
        {"a": ["MSG time 1 <reply> 3", "b'now'"]},
        config=ACCOUNTS,
    ),
    session(
        "hostile_connects_close_only_their_connection",
        [
            S(login("all"), "good"),
            S(b"SUB x 1\r\n", "good"),
            Sync("good"),
            S(b"CONNECT " + b"{" * 5000 + b"\r\n", "big"),
            WaitClosed("big"),
            S(b'CONNECT {"user": "all", "pass": \r\n', "json"),
            WaitClosed("json"),
            S(connect(verbose=False, user="all", **{"pass": "wrong"}), "wrong"),
            WaitClosed("wrong"),
            S(b"PUB x 1\r\nk\r\n", "good"),
            Sync("good"),
        ],
        {
            "big": ["-ERR 'maximum control line exceeded'", CLOSED],
            "json": [CLOSED],
            "wrong": ["-ERR 'Authorization Violation'", CLOSED],
            "good": msg("MSG x 1 1", b"k"),
        },
        config=PERMS,
    ),
]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, nats_server_bin_path: str) -> Iterator[PairPool]:
    pool = PairPool(tmp_path_factory.mktemp("security-differential"))
    try:
        yield pool
    finally:
        pool.stop_all()


def _normalise_reply(lines: list[str]) -> list[str]:
    """Service-import reply subjects are random on both servers: one placeholder."""
    out = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) == 5 and parts[0] == "MSG" and parts[3].startswith("_R_."):
            parts[3] = "<reply>"
        out.append(" ".join(parts))
    return out


@pytest.mark.parametrize("sess", SESSIONS, ids=[s.name for s in SESSIONS])
async def test_session(pool: PairPool, sess: Session) -> None:
    pair = pool.get(sess.args, sess.config)
    ref = await run_session(pair.nats.port, sess.steps)
    got = await run_session(pair.leafgate.port, sess.steps)
    want = {c: _normalise_reply(v) for c, v in ref.lines(strict_status=False).items()}
    have = {c: _normalise_reply(v) for c, v in got.lines(strict_status=False).items()}
    for conn, needles in sess.expect.items():
        assert is_subsequence(needles, want[conn]), (
            f"reference nats-server, connection {conn!r}: expected {list(needles)}, "
            f"got {want[conn]}"
        )
    for conn in want:
        assert have.get(conn) == want[conn], (
            f"connection {conn!r} differs from nats-server\nnats-server: {want[conn]}\n"
            f"leafgate:    {have.get(conn)}\n{pair.leafgate.log_tail(1500)}"
        )
    assert pair.leafgate.running


async def test_silent_client_is_closed_by_auth_timeout(pool: PairPool) -> None:
    """A client that never sends CONNECT is closed at the auth timeout (default 2 s)."""
    pair = pool.get((), PERMS)
    for port in (pair.nats.port, pair.leafgate.port):
        result = await run_session(port, [Open("idle"), WaitClosed("idle", timeout=5)])
        assert result.lines(strict_status=False)["idle"][-2:] == [
            "-ERR 'Authentication Timeout'",
            CLOSED,
        ]
