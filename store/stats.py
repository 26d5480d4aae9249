"""Snapshots of the store for monitoring and logs (frozen: they cross modules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from store.paths import db_path

if TYPE_CHECKING:
    from store.writer import Store


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
        bytes_committed=store.bytes_committed,
        behind=store.behind,
        low_disk=store.low_disk or store.disk_full,
        last_error=store.last_error,
    )
