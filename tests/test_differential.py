"""Differential tests: the same raw protocol sessions against nats-server and leafgate.

Each entry of ``SESSIONS`` is played against a real nats-server (the reference) and
against leafgate; the normalised replies must be equal, connection by connection (see
``tests.sessions.normalise``).  ``expect`` lists lines the reference must produce, in
this order: it checks that the session really exercises what its name says (the
behaviour recorded in ``/work/shared/spec/transcripts/client_*_2910.txt``).

Behaviours that are random by design (queue group member choice) are checked as
properties on each implementation instead (``test_queue_*``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import (
    Config,
    ServerProcess,
    leafgate_command,
    start_leafgate,
    start_nats_server,
)
from tests.sessions import (
    CLIENT_CLOSED,
    CLOSED,
    Close,
    Open,
    Pause,
    Step,
    Sync,
    WaitClosed,
    is_subsequence,
    run_session,
)
from tests.sessions import Send as S


def connect(**opts: object) -> bytes:
    return b"CONNECT " + json.dumps(opts, separators=(",", ":")).encode() + b"\r\n"


# CONNECT lines used below (the first as sent in client_core_2910.txt "basic").
VERBOSE = connect(
    verbose=True,
    pedantic=True,
    tls_required=False,
    name="rawA",
    lang="python",
    version="0.0",
    protocol=1,
    echo=True,
    headers=True,
    no_responders=True,
)
QUIET = connect(verbose=False)
QUIET_HDR = connect(verbose=False, headers=True)
VERBOSE_NONPEDANTIC = connect(verbose=True, pedantic=False)
NO_RESPONDERS = connect(verbose=False, headers=True, no_responders=True)
NO_RESPONSE_503 = ["HMSG _INBOX.r 3 <hdr> <total>", "status NATS/1.0 503"]

ERR_UNKNOWN = "-ERR 'Unknown Protocol Operation'"
ERR_SUBJECT = "-ERR 'Invalid Subject'"
ERR_PUB_SUBJECT = "-ERR 'Invalid Publish Subject'"
ERR_AUTH = "-ERR 'Authorization Violation'"
ERR_PAYLOAD = "-ERR 'Maximum Payload Violation'"
ERR_CONTROL = "-ERR 'maximum control line exceeded'"

USERPASS = ("--user", "u", "--pass", "p")
USERPASS_CONNECT = connect(verbose=False, user="u", protocol=1, **{"pass": "p"})
TOKEN = ("--auth", "tok")
MAX_CONNECTIONS_1 = Config(nats="max_connections: 1\n", toml="max_connections = 1\n")
MAX_SUBSCRIPTIONS_1 = Config(nats="max_subscriptions: 1\n", toml="max_subscriptions = 1\n")
AUTH_TIMEOUT_1 = Config(
    nats="authorization { user: u, password: p, timeout: 1 }\n",
    toml='[authorization]\nuser = "u"\npassword = "p"\ntimeout = 1\n',
)


@dataclass(frozen=True)
class Session:
    name: str
    steps: Sequence[Step]
    # Lines the reference must produce (per connection; "c" is the default one).
    expect: dict[str, Sequence[str]] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    config: Config | None = None


def session(
    name: str,
    steps: Sequence[Step],
    expect: Sequence[str] | dict[str, Sequence[str]] = (),
    *,
    args: tuple[str, ...] = (),
    config: Config | None = None,
) -> Session:
    exp: dict[str, Sequence[str]] = (
        dict(expect) if isinstance(expect, dict) else {"c": list(expect)}
    )
    return Session(name, steps, exp, args, config)


def msg(line: str, payload: bytes) -> list[str]:
    return [line, repr(payload)]


def seq(*items: str | list[str]) -> list[str]:
    """Flatten expected lines: strings and ``msg(...)`` pairs."""
    out: list[str] = []
    for item in items:
        out.extend([item] if isinstance(item, str) else item)
    return out


BAD_SUBJECTS = [
    b"foo.",
    b".foo",
    b"a..b",
    b"foo..bar",
    b"foo.>.bar",
    b"foo.>.*",
    b".",
    b">.>",
    b"foo.>.",
]
GOOD_SUBJECTS = [
    b"foo*bar",
    b"*",
    b">",
    b"foo.*.>",
    b">x",
    b"*.*",
    b"$SYS.x",
    b"\xc3\xbcn\xc3\xaf.c\xc3\xb4d\xc3\xa9",
    b"a.b.c.d.e.f.g.h.i.j",
]

SESSIONS: list[Session] = [
    # ---- client_core_2910.txt "basic" -------------------------------------------------
    session(
        "basic_verbose",
        [
            VERBOSE,
            b"PING\r\n",
            b"SUB foo 1\r\n",
            b"SUB foo.* q1 2\r\n",
            b"SUB foo.> 3\r\n",
            b"PUB foo 5\r\nhello\r\n",
            b"PUB foo.bar reply.to 3\r\nabc\r\n",
            b"PUB foo.bar.baz 0\r\n\r\n",
            b"HPUB foo 18 23\r\nNATS/1.0\r\nA: B\r\n\r\nhello\r\n",
            b"HPUB foo.x rep 12 12\r\nNATS/1.0\r\n\r\n\r\n",
            b"UNSUB 1 1\r\n",
            b"PUB foo 1\r\nx\r\n",
            b"PUB foo 1\r\ny\r\n",
            b"UNSUB 2\r\n",
            b"UNSUB 99\r\n",
            b"PUB foo.bar 2\r\nzz\r\n",
        ],
        [
            "+OK",
            "PONG",
            "+OK",
            "+OK",
            "+OK",
            "+OK",
            *msg("MSG foo 1 5", b"hello"),
            "+OK",
            *msg("MSG foo.bar 2 reply.to 3", b"abc"),
            *msg("MSG foo.bar 3 reply.to 3", b"abc"),
            "+OK",
            *msg("MSG foo.bar.baz 3 0", b""),
            "+OK",
            *msg("HMSG foo 1 18 23", b"NATS/1.0\r\nA: B\r\n\r\nhello"),
            "+OK",
            *msg("HMSG foo.x 2 rep 12 12", b"NATS/1.0\r\n\r\n"),
            *msg("HMSG foo.x 3 rep 12 12", b"NATS/1.0\r\n\r\n"),
            "+OK",  # UNSUB 1 1: sid 1 had 2 deliveries, removed at once
            "+OK",
            "+OK",
            "+OK",
            "+OK",
            "+OK",
            *msg("MSG foo.bar 3 2", b"zz"),
            "PONG",
        ],
    ),
    session(
        "unsub_max_not_yet_reached",
        [
            VERBOSE,
            b"SUB bar 5\r\nUNSUB 5 2\r\n",
            b"PUB bar 1\r\n1\r\nPUB bar 1\r\n2\r\nPUB bar 1\r\n3\r\n",
            b"SUB bar 5\r\nPUB bar 1\r\n4\r\n",
        ],
        seq(msg("MSG bar 5 1", b"1"), msg("MSG bar 5 1", b"2"), "+OK", "+OK", "+OK")
        + seq(msg("MSG bar 5 1", b"4"), "PONG"),
    ),
    session(
        "unsub_non_numeric_sid",
        [VERBOSE_NONPEDANTIC, b"SUB a abc\r\nUNSUB abc\r\nPUB a 1\r\nx\r\nUNSUB abc\r\n"],
        ["+OK", "+OK", "+OK", "+OK", "+OK", "PONG"],
    ),
    # ---- pedantic / wildcard publish --------------------------------------------------
    session(
        "pedantic_wildcard_publish",
        [VERBOSE, b"SUB foo.> 3\r\n", b"PUB foo.* 1\r\nz\r\n", b"PUB foo.> 1\r\nv\r\n"],
        seq(ERR_PUB_SUBJECT, "+OK", msg("MSG foo.* 3 1", b"z"))
        + seq(ERR_PUB_SUBJECT, "+OK", msg("MSG foo.> 3 1", b"v")),
    ),
    session(
        "nonpedantic_wildcard_publish_and_echo_false",
        [
            S(connect(verbose=False, pedantic=False, echo=False, headers=True, protocol=1), "a"),
            S(b"SUB foo 1\r\nPUB foo 2\r\nhi\r\n", "a"),
            Sync("a"),
            S(b"SUB foo.> 2\r\nPUB foo.* 1\r\nz\r\n", "a"),
            Sync("a"),
            S(b"CONNECT {}\r\nPUB foo.* 1\r\nw\r\nPUB foo.> 1\r\nv\r\n", "b"),
        ],
        {
            "a": ["PONG", "PONG", *msg("MSG foo.* 2 1", b"w"), *msg("MSG foo.> 2 1", b"v")],
            "b": ["+OK", ERR_PUB_SUBJECT, "+OK", ERR_PUB_SUBJECT, "+OK", "PONG"],
        },
    ),
    # ---- subjects -----------------------------------------------------------------------
    session(
        "subjects_table",
        [
            VERBOSE_NONPEDANTIC,
            *[S(b"SUB " + subj + b" %d\r\n" % (100 + i)) for i, subj in enumerate(BAD_SUBJECTS)],
            *[S(b"SUB " + subj + b" %d\r\n" % (200 + i)) for i, subj in enumerate(GOOD_SUBJECTS)],
            b"SUB foo.bar q.x 300\r\nSUB foo.bar q* 301\r\nSUB foo.bar q> 302\r\n",
            b"PUB foo*bar 1\r\nA\r\n",
            b"PUB \xc3\xbcn\xc3\xaf.c\xc3\xb4d\xc3\xa9 1\r\nB\r\n",
            b"PUB foo.x.y 1\r\nC\r\n",
            b"PUB foo.bar 1\r\nD\r\n",
            b"PUB a.b.c.d.e.f.g.h.i.j 1\r\nE\r\n",
        ],
        ["+OK"]
        + [ERR_SUBJECT] * len(BAD_SUBJECTS)
        + ["+OK"] * (len(GOOD_SUBJECTS) + 3)
        + ["+OK", *msg("MSG foo*bar 200 1", b"A"), "PONG"],
    ),
    *[
        session(
            f"bad_subject_pedantic[{subj.decode()}]",
            [VERBOSE, b"SUB " + subj + b" 1\r\n", b"PUB " + subj + b" 1\r\nx\r\n"],
            ["+OK", ERR_SUBJECT, ERR_PUB_SUBJECT, "+OK", "PONG"],
        )
        for subj in BAD_SUBJECTS
    ],
    session(
        "lowercase_ops_and_tabs",
        [
            b'connect {"verbose":true,"pedantic":false}\r\n',
            b"sub foo 4\r\n",
            b"pub foo 0\r\n\r\n",
            b"ping\r\n",
            b"PUB\tfoo  \t 0\r\n\r\n",
            b"Sub\tbar\t\tq  5\r\n",
            b"pUb bar\t2\r\nhi\r\n",
            b"unsub 4\r\n",
            b"pub foo 1\r\nx\r\n",
            b"PiNg\r\n",
        ],
        seq("+OK", "+OK", "+OK", msg("MSG foo 4 0", b""), "PONG", "+OK", msg("MSG foo 4 0", b""))
        + seq("+OK", "+OK", msg("MSG bar 5 2", b"hi"), "+OK", "+OK", "PONG"),
    ),
    session(
        "lowercase_headers_ops",
        [
            connect(verbose=True, pedantic=False, headers=True),
            b"sub h 1\r\n",
            b"hpub h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            b"Hpub\th\t r\t12 \t12\r\nNATS/1.0\r\n\r\n\r\n",
        ],
        seq("+OK", "+OK", "+OK", msg("HMSG h 1 12 14", b"NATS/1.0\r\n\r\nhi"), "+OK")
        + seq(msg("HMSG h 1 r 12 12", b"NATS/1.0\r\n\r\n"), "PONG"),
    ),
    session(
        "trailing_separators",
        [
            VERBOSE_NONPEDANTIC,
            b"SUB $SRV.PING  1\r\n",
            b"PUB $SRV.PING  5\r\nhello\r\n",
            b"SUB foo 10 \r\n",
            b"PUB foo 2 \r\nhi\r\n",
            b"UNSUB 10 \r\n",
            b"PUB foo\t2\t\r\nhi\r\n",
            b"PING \r\n",
        ],
        seq("+OK", "+OK", "+OK", msg("MSG $SRV.PING 1 5", b"hello"), "+OK", "+OK")
        + seq(msg("MSG foo 10 2", b"hi"), "+OK", "+OK", "PONG"),
    ),
    session(
        "pong_from_client_and_second_connect",
        [VERBOSE_NONPEDANTIC, b"PONG\r\n", QUIET, b"SUB x 1\r\nPUB x 1\r\nq\r\n"],
        ["+OK", *msg("MSG x 1 1", b"q"), "PONG"],
    ),
    # ---- client_errors_2910.txt ---------------------------------------------------------
    session(
        "payload_size_mismatch",
        [QUIET, b"PUB foo 3\r\nhello\r\n", WaitClosed()],
        [ERR_UNKNOWN, CLOSED],
    ),
    session(
        "payload_shorter_than_size",
        [QUIET, b"SUB foo 1\r\nPUB foo 5\r\nhi\r\n", Pause(0.1), b"PING\r\n", WaitClosed()],
        [ERR_UNKNOWN, CLOSED],
    ),
    session(
        "unknown_op",
        [QUIET, b"FOO bar\r\n", WaitClosed()],
        [ERR_UNKNOWN, CLOSED],
    ),
    session(
        "unknown_op_before_connect",
        [b"HELLO world\r\n", WaitClosed()],
        [ERR_UNKNOWN, CLOSED],
    ),
    session(
        "max_payload_pub",
        [QUIET, b"PUB foo 1048577\r\n", WaitClosed()],
        [ERR_PAYLOAD, CLOSED],
    ),
    session(
        "max_payload_hpub",
        [QUIET_HDR, b"HPUB foo 12 1048589\r\n", WaitClosed()],
        [ERR_PAYLOAD, CLOSED],
    ),
    session(
        "max_payload_exact_is_accepted",
        [QUIET, b"SUB big 1\r\nPUB big 1048576\r\n" + b"x" * 1048576 + b"\r\n"],
        ["MSG big 1 1048576"],
    ),
    session(
        "max_control_line_sub",
        [QUIET, b"SUB " + b"a" * 5000 + b" 1\r\n", WaitClosed()],
        [ERR_CONTROL, CLOSED],
    ),
    session(
        "max_control_line_connect",
        [b'CONNECT {"verbose":false,"name":"' + b"n" * 5000 + b'"}\r\n', WaitClosed()],
        [ERR_CONTROL, CLOSED],
    ),
    session(
        "long_control_line_below_limit",
        [QUIET, b"SUB " + b"a" * 3000 + b" 1\r\n", b"PUB " + b"a" * 3000 + b" 1\r\nk\r\n"],
        [*msg("MSG " + "a" * 3000 + " 1 1", b"k"), "PONG"],
    ),
    session(
        "bad_connect_json",
        [b"CONNECT {bad json\r\n", WaitClosed()],
        [CLOSED],
    ),
    session(
        "hpub_without_headers",
        [QUIET, b"HPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n", WaitClosed()],
        [CLOSED],
    ),
    session(
        "sub_too_many_args",
        [b"CONNECT {}\r\nSUB x y z w\r\n", WaitClosed()],
        ["+OK", CLOSED],
    ),
    session("sub_too_few_args", [b"CONNECT {}\r\nSUB x\r\n", WaitClosed()], ["+OK", CLOSED]),
    session("pub_without_args", [QUIET, b"PUB\r\n", WaitClosed()], [ERR_UNKNOWN, CLOSED]),
    session("pub_bad_size", [QUIET, b"PUB foo abc\r\n", WaitClosed()], [CLOSED]),
    session(
        "hpub_header_size_above_total",
        [QUIET_HDR, b"HPUB foo 20 10\r\n", WaitClosed()],
        [CLOSED],
    ),
    # ---- client_core_2910.txt "preconnect", "double_sub_sid", header stripping ----------
    session(
        "ops_before_connect",
        [
            b"PING\r\n",
            b"SUB foo 1\r\nPUB foo 1\r\na\r\n",
            Sync(),
            QUIET,
            b"PUB foo 1\r\nb\r\n",
            Sync(),
            b"HPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n",
            WaitClosed(),
        ],
        seq("PONG", "+OK", "+OK", msg("MSG foo 1 1", b"a"), "PONG")
        + seq(msg("MSG foo 1 1", b"b"), "PONG", CLOSED),
    ),
    session(
        "duplicate_sid",
        [connect(verbose=True), b"SUB a 1\r\nSUB b 1\r\nPUB a 1\r\n1\r\nPUB b 1\r\n2\r\n"],
        ["+OK", "+OK", "+OK", "+OK", *msg("MSG a 1 1", b"1"), "+OK", "PONG"],
    ),
    session(
        "header_stripping",
        [
            S(QUIET + b"SUB foo 1\r\n", "a"),
            Sync("a"),
            S(QUIET_HDR + b"SUB foo 2\r\nHPUB foo 18 20\r\nNATS/1.0\r\nK: v\r\n\r\nhi\r\n", "b"),
        ],
        {
            "a": ["PONG", *msg("MSG foo 1 2", b"hi")],
            "b": [*msg("HMSG foo 2 18 20", b"NATS/1.0\r\nK: v\r\n\r\nhi"), "PONG"],
        },
    ),
    session(
        "headers_between_connections",
        [
            S(QUIET_HDR + b"SUB foo.* 1\r\n", "a"),
            Sync("a"),
            S(QUIET_HDR + b"HPUB foo.x reply 22 27\r\nNATS/1.0\r\nX-A: 1 2\r\n\r\nhello\r\n", "b"),
            S(b"PUB foo.y 2\r\nhi\r\n", "b"),
        ],
        {
            "a": [
                "PONG",
                *msg("HMSG foo.x 1 reply 22 27", b"NATS/1.0\r\nX-A: 1 2\r\n\r\nhello"),
                *msg("MSG foo.y 1 2", b"hi"),
            ]
        },
    ),
    # ---- no responders ------------------------------------------------------------------
    session(
        "no_responders",
        [
            VERBOSE,
            b"SUB _INBOX.abc 10\r\n",
            b"PUB nobody.home _INBOX.abc 0\r\n\r\n",
            b"PUB nobody.home _INBOX.abc 2\r\nhi\r\n",
            b"HPUB nobody.home _INBOX.abc 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            b"PUB nobody.home 2\r\nhi\r\n",
            b"SUB svc 11\r\nPUB svc _INBOX.abc 2\r\nrq\r\n",
        ],
        [
            "+OK",
            "+OK",
            "+OK",
            "HMSG _INBOX.abc 10 <hdr> <total>",
            "status NATS/1.0 503",
            "+OK",
            "HMSG _INBOX.abc 10 <hdr> <total>",
            "status NATS/1.0 503",
            "+OK",
            "HMSG _INBOX.abc 10 <hdr> <total>",
            "status NATS/1.0 503",
            "+OK",
            "+OK",
            "+OK",
            *msg("MSG svc 11 _INBOX.abc 2", b"rq"),
            "PONG",
        ],
    ),
    session(
        "no_responders_after_unsub",
        [
            S(QUIET + b"SUB x 1\r\n", "a"),
            Sync("a"),
            S(b"UNSUB 1\r\n", "a"),
            Sync("a"),
            S(NO_RESPONDERS + b"SUB _INBOX.r 2\r\nPUB x _INBOX.r 0\r\n\r\n", "b"),
        ],
        {"b": ["HMSG _INBOX.r 2 <hdr> <total>", "status NATS/1.0 503", "PONG"]},
    ),
    session(
        "no_responders_after_auto_unsub",
        [
            S(QUIET + b"SUB x 1\r\nUNSUB 1 1\r\n", "a"),
            Sync("a"),
            S(NO_RESPONDERS + b"SUB _INBOX.r 2\r\nPUB x 1\r\nA\r\n", "b"),
            Sync("b"),
            S(b"PUB x _INBOX.r 1\r\nB\r\n", "b"),
        ],
        {
            "a": ["PONG", *msg("MSG x 1 1", b"A"), "PONG"],
            "b": ["PONG", "HMSG _INBOX.r 2 <hdr> <total>", "status NATS/1.0 503", "PONG"],
        },
    ),
    session(
        "no_responders_after_subscriber_left",
        [
            S(QUIET + b"SUB x 1\r\nSUB y q 2\r\n", "a"),
            Sync("a"),
            Close("a"),
            Pause(0.3),  # the server notices the EOF asynchronously
            S(NO_RESPONDERS + b"SUB _INBOX.r 3\r\nPUB x _INBOX.r 0\r\n\r\n", "b"),
            S(b"PUB y _INBOX.r 0\r\n\r\n", "b"),
        ],
        {
            "a": ["PONG", CLIENT_CLOSED],
            "b": [*NO_RESPONSE_503, *NO_RESPONSE_503, "PONG"],
        },
    ),
    session(
        "no_responders_not_requested",
        [QUIET_HDR, b"SUB _INBOX.x 1\r\nPUB nobody _INBOX.x 1\r\na\r\n"],
        ["PONG"],
    ),
    session(
        "no_responders_without_headers",
        [connect(verbose=False, no_responders=True), b"PING\r\n", WaitClosed()],
        ["-ERR 'no responders requires headers support'", CLOSED],
    ),
    # ---- limits and auth (servers started with config/flags) -----------------------------
    session(
        "max_connections",
        [S(QUIET, "a"), Sync("a"), Open("b"), WaitClosed("b")],
        {"a": ["PONG", "PONG"], "b": ["-ERR 'maximum connections exceeded'", CLOSED]},
        config=MAX_CONNECTIONS_1,
    ),
    session(
        "max_subscriptions",
        [QUIET, b"SUB x 1\r\nSUB y 2\r\n", Sync(), b"PUB x 1\r\n1\r\nPUB y 1\r\n2\r\n"],
        ["-ERR 'maximum subscriptions exceeded'", "PONG", *msg("MSG x 1 1", b"1"), "PONG"],
        config=MAX_SUBSCRIPTIONS_1,
    ),
    session(
        "max_subscriptions_verbose",
        [connect(verbose=True), b"SUB x 1\r\nSUB y 2\r\nUNSUB 1\r\nSUB y 3\r\n"],
        ["+OK", "+OK", "-ERR 'maximum subscriptions exceeded'", "+OK", "+OK", "PONG"],
        config=MAX_SUBSCRIPTIONS_1,
    ),
    session(
        "userpass_ok",
        [USERPASS_CONNECT, b"SUB a 1\r\nPUB a 1\r\nx\r\n"],
        [*msg("MSG a 1 1", b"x"), "PONG"],
        args=USERPASS,
    ),
    session(
        "userpass_wrong_password",
        [connect(verbose=False, user="u", **{"pass": "wrong"}), WaitClosed()],
        [ERR_AUTH, CLOSED],
        args=USERPASS,
    ),
    session(
        "userpass_no_credentials",
        [b"CONNECT {}\r\n", WaitClosed()],
        [ERR_AUTH, CLOSED],
        args=USERPASS,
    ),
    session(
        "userpass_op_before_connect",
        [b"PING\r\n", WaitClosed()],
        [ERR_AUTH, CLOSED],
        args=USERPASS,
    ),
    session(
        "userpass_sub_before_connect",
        [b"SUB foo 1\r\n", WaitClosed()],
        [ERR_AUTH, CLOSED],
        args=USERPASS,
    ),
    session(
        "token_ok",
        [connect(verbose=True, auth_token="tok"), b"PING\r\n"],
        ["+OK", "PONG", "PONG"],
        args=TOKEN,
    ),
    session(
        "token_wrong",
        [connect(verbose=False, auth_token="nope"), WaitClosed()],
        [ERR_AUTH, CLOSED],
        args=TOKEN,
    ),
    session(
        "token_given_as_user",
        [connect(verbose=False, user="tok", **{"pass": "tok"}), WaitClosed()],
        [ERR_AUTH, CLOSED],
        args=TOKEN,
    ),
    session(
        "auth_timeout",
        [Open(), WaitClosed(timeout=4)],
        ["-ERR 'Authentication Timeout'", CLOSED],
        config=AUTH_TIMEOUT_1,
    ),
    session(
        "auth_timeout_cancelled_by_connect",
        [USERPASS_CONNECT, Sync(), Pause(1.3), b"PING\r\n"],
        ["PONG", "PONG", "PONG"],
        config=AUTH_TIMEOUT_1,
    ),
    # ---- fan-out on one connection ------------------------------------------------------
    session(
        "many_subscriptions_one_connection",
        [
            QUIET,
            b"".join(b"SUB fan %d\r\n" % sid for sid in range(1, 8)),
            b"SUB fan.* 8\r\nSUB * 9\r\nSUB > 10\r\nSUB fan q 11\r\n",
            b"".join(b"PUB fan 1\r\n%d\r\n" % (i % 10) for i in range(5)),
        ],
        [*msg("MSG fan 1 1", b"0"), *msg("MSG fan 10 1", b"0"), *msg("MSG fan 11 1", b"0")],
    ),
    # ---- runs: many PUBs on one subject in one read (framed in bulk by leafgate) ------
    session(
        "run_to_wildcards_and_unsub_max",
        [
            S(QUIET + b"SUB run.x 1\r\nSUB run.* 2\r\nSUB > 3\r\nUNSUB 1 5\r\n", "a"),
            S(QUIET + b"SUB run.> 1\r\nSUB run.x 2\r\n", "b"),
            Sync("a"),
            Sync("b"),
            S(QUIET + b"SUB run.x 7\r\n", "p"),
            Sync("p"),
            S(b"".join(b"PUB run.x %d\r\n%d\r\n" % (len(str(i)), i) for i in range(40)), "p"),
            # A PONG first: run.y is then a read of its own on both servers. Once,
            # under load (a fresh-clone CI run), connection a's copies of run.y
            # came in another order than nats-server's; not reproduced in 46 runs.
            Sync("p"),
            S(b"".join(b"PUB run.y 3\r\nabc\r\n" for _ in range(6)), "p"),
        ],
        {
            "a": [
                *msg("MSG run.x 1 1", b"0"),
                *msg("MSG run.x 1 1", b"4"),
                *msg("MSG run.y 3 3", b"abc"),
            ],
            "b": [*msg("MSG run.x 1 2", b"39"), *msg("MSG run.y 1 3", b"abc")],
            "p": [*msg("MSG run.x 7 1", b"0"), *msg("MSG run.x 7 2", b"39")],
        },
    ),
    session(
        "run_one_subscription_per_client",
        [
            S(QUIET + b"SUB run2.x 1\r\n", "a"),
            S(QUIET + b"SUB run2.* 5\r\n", "b"),
            S(QUIET + b"SUB > 1\r\n", "c"),
            Sync("a"),
            Sync("b"),
            Sync("c"),
            S(
                QUIET + b"".join(b"PUB run2.x %d\r\n%d\r\n" % (len(str(i)), i) for i in range(120)),
                "p",
            ),
            S(b"".join(b"PUB run2.y 2\r\nab\r\n" for _ in range(9)) + b"PING\r\n", "p"),
        ],
        {
            "a": [*msg("MSG run2.x 1 1", b"0"), *msg("MSG run2.x 1 3", b"119")],
            "b": [*msg("MSG run2.x 5 3", b"119"), *msg("MSG run2.y 5 2", b"ab")],
            "c": [*msg("MSG run2.x 1 2", b"10"), *msg("MSG run2.y 1 2", b"ab")],
        },
    ),
    session(
        "run_echo_off_skips_the_publisher",
        [
            S(connect(verbose=False, echo=False) + b"SUB loop 1\r\nSUB loop.* 2\r\n", "p"),
            S(QUIET + b"SUB loop 9\r\n", "o"),
            Sync("o"),
            S(b"".join(b"PUB loop 4\r\n%04d\r\n" % i for i in range(12)), "p"),
        ],
        {"o": [*msg("MSG loop 9 4", b"0000"), *msg("MSG loop 9 4", b"0011")]},
    ),
]


def test_session_names_unique() -> None:
    names = Counter(s.name for s in SESSIONS)
    assert [n for n, c in names.items() if c > 1] == []


# ---------------------------------------------------------------------------
# Server pool: one nats-server/leafgate pair per (args, config), per module
# ---------------------------------------------------------------------------


@dataclass
class Pair:
    nats: ServerProcess
    leafgate: ServerProcess


class PairPool:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pairs: dict[tuple[tuple[str, ...], Config | None], Pair] = {}

    def get(self, args: tuple[str, ...], config: Config | None) -> Pair:
        key = (args, config)
        pair = self.pairs.get(key)
        if pair is None:
            nats = start_nats_server(
                *args, config_text=config.nats if config else None, tmp_path=self.workdir
            )
            try:
                lg = self._start_leafgate(args, config)
            except BaseException:
                nats.stop()
                raise
            pair = self.pairs[key] = Pair(nats, lg)
        else:
            # A server that died during an earlier test is replaced (that test failed).
            if not pair.nats.running:
                pair.nats.start()
            if not pair.leafgate.running:
                pair.leafgate.start()
        return pair

    def _start_leafgate(self, args: tuple[str, ...], config: Config | None) -> ServerProcess:
        text = config.for_command(leafgate_command()) if config is not None else None
        return start_leafgate(*args, config_text=text, tmp_path=self.workdir)

    def stop_all(self) -> None:
        for pair in self.pairs.values():
            pair.nats.stop()
            pair.leafgate.stop()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, nats_server_bin_path: str) -> Iterator[PairPool]:
    pool = PairPool(tmp_path_factory.mktemp("differential"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.mark.parametrize("sess", SESSIONS, ids=[s.name for s in SESSIONS])
async def test_session(pool: PairPool, sess: Session) -> None:
    pair = pool.get(sess.args, sess.config)
    ref = await run_session(pair.nats.port, sess.steps)
    got = await run_session(pair.leafgate.port, sess.steps)

    # The session does what it says on the reference server.
    ref_relaxed = ref.lines(strict_status=False)
    for conn, needles in sess.expect.items():
        assert is_subsequence(needles, ref_relaxed[conn]), (
            f"reference nats-server, connection {conn!r}: expected {list(needles)} "
            f"in order, got {ref_relaxed[conn]}"
        )
    assert not any(c.timed_out for c in ref.conns.values()), ref_relaxed

    # leafgate says the same, connection by connection.  Status messages (503) differ
    # in size between nats-server versions: compare them exactly only when leafgate
    # claims the same version as the reference.
    strict = ref.version == got.version
    want = ref.lines(strict_status=strict)
    have = got.lines(strict_status=strict)
    assert sorted(have) == sorted(want), "connections differ"
    for conn in want:
        assert have[conn] == want[conn], (
            f"connection {conn!r} differs from nats-server {ref.version} "
            f"(leafgate log: {pair.leafgate.log_path})\n{pair.leafgate.log_tail(1500)}"
        )
    assert pair.leafgate.running, f"leafgate exited:\n{pair.leafgate.log_tail()}"
