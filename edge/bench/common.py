"""Constants, the case table and the small types shared by the bench modules."""

from __future__ import annotations

import math
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HOST = "127.0.0.1"
SIDES = ("nats", "leafgate")
SIDE_LABEL = {"nats": "nats-server", "leafgate": "leafgate"}

CONNECT_LINE = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
PING = b"PING\r\n"
PONG = b"PONG\r\n"

SUBJECT = b"bench.s"
REQ_SUBJECT = b"bench.req"
REQ_SIZE = 16
REPLY_BODY = b"ok"
PUB_BUFFER_BYTES = 64 * 1024  # publishers sendall a buffer of about this size
RECV_BUFFER_BYTES = 1 << 20

SOCKET_TIMEOUT = 5.0  # every blocking socket operation of the generator
START_TIMEOUT = 10.0  # waiting for the ports file
STOP_TIMEOUT = 3.0  # SIGTERM -> SIGKILL
READY_TIMEOUT = 15.0  # workers connecting and subscribing
RSS_SETTLE = 0.5  # seconds between "ready" and reading VmRSS
IDLE_CONNECTIONS = 1000
IDLE_BATCH = 100
COLD_STARTS_PER_RUN = 5
REQREP_MIN_SAMPLES = 2000
REQREP_WINDOW = 32
PAYLOAD_BYTE = b"x"
OTHER_CPU_WARN = 0.2  # warn when unrelated processes used more CPU than this in a window

# Leaf cases.
HUB_NAME = "bench_hub"
LEAF_NAME = "bench_leaf"
UP_SUBJECT = b"up.x"  # leaf -> hub
DOWN_SUBJECT = b"down.x"  # hub -> leaf
PROBE_SUBJECT = b"bench.probe"  # link-up checks and interest barriers
RECONNECT_SUBJECT = b"bench.reconnect"
PROBE_INTERVAL = 0.02  # seconds between probe publishes
LINK_TIMEOUT = 10.0  # the link coming up / interest crossing it
RECONNECT_CYCLES = 3  # hub kill + restart cycles per run of leaf_reconnect
RECONNECT_TIMEOUT = 15.0  # restarted hub accepting -> first probe through the new link
NATS_LEAF_RECONNECT_DEFAULT = 1.0  # nats-server leafnodes.reconnect, left unset on purpose


class BenchError(Exception):
    """A case could not be measured; the message is the reason shown in the report."""


@dataclass(frozen=True)
class Case:
    name: str
    unit: str
    higher_is_better: bool
    description: str

    @property
    def leaf(self) -> bool:
        """The case runs a hub and a leaf (and needs nats-server for the hub)."""
        return self.name.startswith(("leaf_", "store_"))


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("pub_only_16", "msgs/s", True, "16 B publishes, no subscriber"),
        Case("pub_sub_16", "msgs/s", True, "1 publisher -> 1 subscriber, 16 B"),
        Case("pub_sub_128", "msgs/s", True, "1 publisher -> 1 subscriber, 128 B"),
        Case("pub_sub_1024", "msgs/s", True, "1 publisher -> 1 subscriber, 1024 B"),
        Case("fanout4_128", "msgs/s", True, "1 publisher -> 4 subscribers, published/s"),
        Case("queue4_128", "msgs/s", True, "1 publisher -> queue group of 4, received/s"),
        Case("pub_sub_mixed_128", "msgs/s", True, "pub_sub_128, 8 subjects in turn"),
        Case("queue4_mixed_128", "msgs/s", True, "queue4_128, 8 subjects in turn"),
        Case("reqrep_seq", "p50/p99 us", False, "sequential request/reply latency"),
        Case("reqrep_32", "replies/s", True, "request/reply, 32 in flight"),
        Case("rss_idle", "MiB", False, "VmRSS after start"),
        Case("rss_1000", "MiB", False, "VmRSS with 1000 idle connections"),
        Case("cold_start", "ms", False, "spawn to first INFO received"),
        Case("connect_none", "conns/s", True, "connect + CONNECT + PING/PONG + close, no auth"),
        Case("connect_token", "conns/s", True, "connection setup with token auth"),
        Case("connect_user", "conns/s", True, "connection setup with a user/password"),
        Case("connect_nkey", "conns/s", True, "connection setup with an nkey (signed nonce)"),
        Case("pub_sub_128_auth", "msgs/s", True, "pub_sub_128 as a user without permissions"),
        Case("pub_sub_128_perms", "msgs/s", True, "pub_sub_128 as a user with allow/deny lists"),
        Case(
            "leaf_up_128",
            "msgs/s",
            True,
            "publisher on the leaf -> subscriber on the hub, 128 B, received/s",
        ),
        Case(
            "leaf_down_128",
            "msgs/s",
            True,
            "publisher on the hub -> subscriber on the leaf, 128 B, received/s",
        ),
        Case(
            "leaf_reqrep_seq",
            "p50/p99 us",
            False,
            "requester on the leaf, responder on the hub, sequential",
        ),
        Case(
            "leaf_reconnect",
            "ms",
            False,
            "hub killed + restarted: its leaf port accepting -> leaf msg at the hub",
        ),
        Case(
            "store_pub_128",
            "msgs/s",
            True,
            "publish on a store-and-forward subject, hub link up (JetStream stream), 128 B",
        ),
        Case(
            "store_pub_mixed_128",
            "msgs/s",
            True,
            "store_pub_128, 8 subjects in turn (nothing taken as a run)",
        ),
        Case(
            "store_ack32_128",
            "msgs/s",
            True,
            "acked publish (PubAck after commit) to a stored subject, 32 in flight, 128 B",
        ),
        Case(
            "store_drain_1m",
            "msgs/s",
            True,
            "backlog stored while the hub was down, link up -> hub stream holds it all",
        ),
        Case(
            "store_bytes_128",
            "B/msg",
            False,
            "bytes written to disk (/proc/PID/io) per stored 128 B message, link down",
        ),
    )
}


@dataclass
class Measurement:
    value: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One side of the comparison: what to start for it."""

    side: str  # "nats" or "leafgate"
    cmd: tuple[str, ...]  # the server command (in the leaf cases: the leaf)
    hub: tuple[str, ...] = ()  # nats-server command for the hub of the leaf cases


Runner = Callable[[Target, float, float], Measurement]


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        raise BenchError("no samples")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
