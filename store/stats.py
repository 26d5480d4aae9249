"""Snapshots of the store for monitoring and logs (frozen: they cross modules)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING

from store.paths import db_path

if TYPE_CHECKING:
    from store.writer import Store


# Upper bounds (seconds) of the commit latency buckets: fsync is ~0.2 ms on a
# server SSD and 1-10 ms on SD cards and eMMC; a commit beyond a second means
# the disk is in trouble.
COMMIT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class LatencyHistogram:
    """Counts of observations per bucket (not cumulative), their sum and count.

    One ``observe`` per commit (a group of messages), never per message, so
    the store pays a bisect per transaction for its latency distribution.
    """

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = COMMIT_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def snapshot(self) -> Latency:
        running = 0
        cumulative = []
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            cumulative.append((bound, running))
        return Latency(tuple(cumulative), self.total, self.count)


@dataclass(frozen=True)
class Latency:
    """A histogram as Prometheus shows one: cumulative counts per upper bound
    (the +Inf bucket is ``count``), the sum of the observations in seconds."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


@dataclass(frozen=True)
class GroupStats:
    name: str
    subjects: tuple[str, ...]
    durability: str
    policy: str
    messages: int
    bytes: int
    oldest_ts: int | None  # ms since the epoch, of the oldest message held (see Store.oldest)
    accepted: int
    confirmed: int
    rejected: int
    duplicates: int
    dropped: tuple[tuple[str, int], ...]  # (reason, messages), by reason


@dataclass(frozen=True)
class StoreStats:
    path: str
    gateway_id: str
    next_seq: int
    groups: tuple[GroupStats, ...]
    commits: int
    commit_seconds: float  # total time spent committing
    commit_latency: Latency  # per commit (a transaction), of the commits that succeeded
    bytes_committed: int  # payload bytes inserted
    behind: bool
    low_disk: bool
    last_error: str | None


def snapshot(store: Store) -> StoreStats:
    return StoreStats(
        path=str(db_path(store.directory)),
        gateway_id=store.gateway_id,
        next_seq=store.next_seq,
        groups=tuple(
            GroupStats(
                name=s.spec.name,
                subjects=s.spec.subjects,
                durability=s.spec.durability,
                policy=s.spec.policy,
                messages=s.count,
                bytes=s.bytes,
                oldest_ts=None,
                accepted=s.accepted,
                confirmed=s.confirmed,
                rejected=s.rejected,
                duplicates=s.duplicates,
                dropped=tuple(sorted(s.dropped.items())),
            )
            for s in store.groups.states
        ),
        commits=store.commits,
        commit_seconds=store.commit_seconds,
        commit_latency=store.commit_latency.snapshot(),
        bytes_committed=store.bytes_committed,
        behind=store.behind,
        low_disk=store.low_disk or store.disk_full,
        last_error=store.last_error,
    )
