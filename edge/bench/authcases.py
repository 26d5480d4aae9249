"""The security cases: connection setup with and without authentication, and
pub -> sub throughput with and without permission checks.

``connect_*``: one client connects, reads INFO, sends CONNECT (with the case's
credentials; for nkeys the signed nonce) and PING, waits for the PONG and closes,
over and over for the run's duration: connections set up per second. Compare
``connect_none`` with ``connect_token``/``connect_user``/``connect_nkey``.

``pub_sub_128_perms``: ``pub_sub_128`` with the clients bound (through
``no_auth_user``) to a user whose publish and subscribe permissions have allow and
deny lists; compare with ``pub_sub_128`` (and ``pub_sub_128_auth``: the same user
without permissions, to separate the two costs).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from .cases import throughput
from .common import PING, SOCKET_TIMEOUT, BenchError, Measurement, Runner, Target
from .loadgen import WorkerSpec
from .protocol import await_pong, connect, recv_line
from .servers import cpu_seconds, start_server, stop_server

_PERMS_NATS = """
authorization {
  users = [
    {user: bench, password: x, permissions: {
      publish: {allow: ["bench.>", "_INBOX.>"], deny: ["bench.secret", "admin.>"]},
      subscribe: {allow: ["bench.>", "_INBOX.>"], deny: ["bench.secret"]}
    }}
  ]
}
no_auth_user: bench
"""
_PERMS_TOML = """
no_auth_user = "bench"
[[authorization.users]]
user = "bench"
password = "x"
[authorization.users.permissions.publish]
allow = ["bench.>", "_INBOX.>"]
deny = ["bench.secret", "admin.>"]
[authorization.users.permissions.subscribe]
allow = ["bench.>", "_INBOX.>"]
deny = ["bench.secret"]
"""
_USER_ONLY_NATS = "authorization { users = [{user: bench, password: x}] }\nno_auth_user: bench\n"
_USER_ONLY_TOML = (
    'no_auth_user = "bench"\n[[authorization.users]]\nuser = "bench"\npassword = "x"\n'
)


def _config(t: Target, nats: str, toml: str) -> str:
    return nats if t.side == "nats" else toml


def _nkey_config(t: Target, public: str) -> str:
    if t.side == "nats":
        return f"authorization {{ users = [{{nkey: {public}}}] }}\n"
    return f'[[authorization.users]]\nnkey = "{public}"\n'


def _connect_rate(method: str) -> Runner:
    def run(t: Target, warmup: float, duration: float) -> Measurement:
        signer: Any = None
        config: str | None = None
        creds: dict[str, str] = {}
        if method == "token":
            config = _config(
                t, "authorization { token: s3cr3t }\n", '[authorization]\ntoken = "s3cr3t"\n'
            )
            creds = {"auth_token": "s3cr3t"}
        elif method == "user":
            config = _config(
                t,
                "authorization { users = [{user: bench, password: s3cr3t}] }\n",
                '[[authorization.users]]\nuser = "bench"\npassword = "s3cr3t"\n',
            )
            creds = {"user": "bench", "pass": "s3cr3t"}
        elif method == "nkey":
            from edge.nkeys import PREFIX_USER, KeyPair

            signer = KeyPair.generate(PREFIX_USER)
            config = _nkey_config(t, signer.public_key())
            creds = {"nkey": signer.public_key()}
        server = start_server(t.cmd, config=config)
        try:
            _setups(server.port, creds, signer, warmup)
            start = time.monotonic()
            cpu0 = cpu_seconds(server.pid)
            n = _setups(server.port, creds, signer, duration)
            # The server's own CPU per setup: steadier than the rate on a busy machine.
            cpu_us = (cpu_seconds(server.pid) - cpu0) / n * 1e6
            return Measurement(n / (time.monotonic() - start), {"server_us": round(cpu_us, 1)})
        finally:
            stop_server(server)

    return run


def _setups(port: int, creds: dict[str, str], signer: Any, seconds: float) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        sock = connect(port)
        try:
            buf = bytearray()
            deadline = time.monotonic() + SOCKET_TIMEOUT
            info = json.loads(recv_line(sock, buf, deadline)[5:])
            opts: dict[str, Any] = {"verbose": False, "pedantic": False, **creds}
            if signer is not None:
                opts["sig"] = signer.sign_nonce(info["nonce"])
            sock.sendall(b"CONNECT " + json.dumps(opts).encode() + b"\r\n" + PING)
            await_pong(sock, buf, deadline)
        finally:
            sock.close()
        n += 1
    if n == 0:
        raise BenchError("no connection set up")
    return n


def _pub_sub_config(nats: str, toml: str) -> Runner:
    size = 128
    specs = [
        WorkerSpec("sub", {"size": size, "queue": None}),
        WorkerSpec("pub", {"size": size, "ping_end": False, "overrun": 0.1}),
    ]

    def run(t: Target, warmup: float, duration: float) -> Measurement:
        server = start_server(t.cmd, config=_config(t, nats, toml))
        try:
            rate, extra = throughput(server, specs, warmup, duration, "sub")
        finally:
            stop_server(server)
        return Measurement(rate, extra)

    return run


AUTH_RUNNERS: dict[str, Runner] = {
    "connect_none": _connect_rate("none"),
    "connect_token": _connect_rate("token"),
    "connect_user": _connect_rate("user"),
    "connect_nkey": _connect_rate("nkey"),
    "pub_sub_128_auth": _pub_sub_config(_USER_ONLY_NATS, _USER_ONLY_TOML),
    "pub_sub_128_perms": _pub_sub_config(_PERMS_NATS, _PERMS_TOML),
}


# (case, its baseline, what is compared): the targets' form ("authentication adds
# <= 10% to connection setup time", "permission checks cost <= 15% of throughput").
OVERHEADS = (
    ("connect_token", "connect_none", "setup"),
    ("connect_user", "connect_none", "setup"),
    ("connect_nkey", "connect_none", "setup"),
    ("pub_sub_128_auth", "pub_sub_128", "throughput"),
    ("pub_sub_128_perms", "pub_sub_128", "throughput"),
)


def _paired(case: Sequence[Any], base: Sequence[Any], key: str | None, setup: bool) -> float:
    """The median over runs of a case's overhead against its baseline's same run
    (the cases alternate within a run, so run i of both saw the same machine)."""
    values = []
    for m, b in zip(case, base, strict=False):
        x, y = (m.value, b.value) if key is None else (m.extra[key], b.extra[key])
        if setup:  # setup time is 1 / rate, server CPU is per setup
            values.append((y / x - 1) if key is None else (x / y - 1))
        else:  # throughput given up
            values.append(1 - x / y)
    return float(statistics.median(values)) * 100


def overheads(
    names: Sequence[str], results: dict[str, dict[str, Any]]
) -> tuple[list[str], dict[str, Any]]:
    """Lines after the table and their JSON form: what authentication adds to
    connection setup (wall time and the server's CPU per setup) and what it and
    permission checks take from pub/sub throughput, per side, run-paired medians."""
    lines: list[str] = []
    data: dict[str, Any] = {}
    for name, base, kind in OVERHEADS:
        if name not in names or base not in names:
            continue
        entry: dict[str, Any] = {"baseline": base}
        parts = []
        for side, res in results[name].items():
            runs, base_runs = res.runs, results[base][side].runs
            if not runs or not base_runs:
                continue
            if kind == "setup":
                wall = _paired(runs, base_runs, None, True)
                cpu = _paired(runs, base_runs, "server_us", True)
                entry[side] = {"setup_time_pct": round(wall, 1), "server_cpu_pct": round(cpu, 1)}
                parts.append(f"{side}: setup time {wall:+.1f}%, server CPU per setup {cpu:+.1f}%")
            else:
                cost = _paired(runs, base_runs, None, False)
                entry[side] = {"throughput_cost_pct": round(cost, 1)}
                parts.append(f"{side}: throughput {-cost:+.1f}%")
        if parts:
            data[name] = entry
            lines.append(f"{name} vs {base}: " + "; ".join(parts))
    return (["overheads (run-paired medians):", *lines] if lines else []), data
