"""Subject groups of the store: which group a subject belongs to, what each group
holds, and what its limits say about a new message. Pure: no I/O.

A subject belongs to the first group (in config order) one of whose filters
matches it. Each group counts what it holds, wherever it is (on disk, or in
memory for ``durability = "memory"``), from the moment a message is accepted
until the hub confirmed it or a policy dropped it; limits are checked against
those counts, so they are exact and cost no query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from edge.config import ForwardGroup
from edge.subjects import matches

# Drop reasons, as counted and reported (/storez, metrics, logs).
REASON_MAX_MSGS = "max_msgs"
REASON_MAX_BYTES = "max_bytes"
REASON_MAX_AGE = "max_age"
REASON_DISK_FLOOR = "min_free_disk"
REASON_DISK_FULL = "disk_full"
REASON_STORE_ERROR = "store_error"
REASONS = (
    REASON_MAX_MSGS,
    REASON_MAX_BYTES,
    REASON_MAX_AGE,
    REASON_DISK_FLOOR,
    REASON_DISK_FULL,
    REASON_STORE_ERROR,
)


class Verdict(Enum):
    ACCEPT = "accept"  # within limits
    DROP_OLDEST = "drop_oldest"  # accept, after making room
    DROP_NEWEST = "drop_newest"  # discard this message
    REJECT = "reject"  # discard it and tell the publisher


@dataclass
class GroupState:
    """One group's live figures. Mutable; owned by the store's Trio task."""

    spec: ForwardGroup
    index: int
    count: int = 0
    bytes: int = 0
    accepted: int = 0  # messages accepted since start
    confirmed: int = 0  # messages the hub confirmed since start
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> messages
    rejected: int = 0  # refused publishes (policy "reject")
    duplicates: int = 0  # repeated Nats-Msg-Ids not stored again

    @property
    def unlimited(self) -> bool:
        spec = self.spec
        return not (spec.max_msgs or spec.max_bytes)

    def add(self, size: int, count: int = 1) -> None:
        self.count += count
        self.bytes += size
        self.accepted += count

    def remove(self, size: int, count: int = 1) -> None:
        self.count = max(0, self.count - count)
        self.bytes = max(0, self.bytes - size)

    def note_drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def over_limit(self, size: int, low_disk: bool) -> str | None:
        """The reason a new message of *size* bytes does not fit, or None."""
        spec = self.spec
        if spec.max_msgs and self.count + 1 > spec.max_msgs:
            return REASON_MAX_MSGS
        if spec.max_bytes and self.bytes + size > spec.max_bytes:
            return REASON_MAX_BYTES
        if low_disk:
            return REASON_DISK_FLOOR
        return None

    def verdict(self, size: int, low_disk: bool) -> tuple[Verdict, str | None]:
        reason = self.over_limit(size, low_disk)
        if reason is None:
            return Verdict.ACCEPT, None
        policy = self.spec.policy
        if policy == "reject":
            return Verdict.REJECT, reason
        if policy == "drop_newest":
            return Verdict.DROP_NEWEST, reason
        if spec_too_small(self.spec, size):
            # No amount of dropping makes room for a message larger than the group.
            return Verdict.DROP_NEWEST, reason
        return Verdict.DROP_OLDEST, reason


def spec_too_small(spec: ForwardGroup, size: int) -> bool:
    return bool(spec.max_bytes and size > spec.max_bytes)


class GroupTable:
    """The configured groups, with a bounded memo of subject -> group index."""

    MEMO_MAX = 8192

    def __init__(self, groups: tuple[ForwardGroup, ...]) -> None:
        self.states = [GroupState(spec, i) for i, spec in enumerate(groups)]
        self._filters = [
            (i, tuple(s.encode() for s in spec.subjects)) for i, spec in enumerate(groups)
        ]
        self._memo: dict[bytes, int] = {}

    def classify(self, subject: bytes) -> int:
        """The index of the group *subject* belongs to, or -1."""
        index = self._memo.get(subject)
        if index is None:
            index = -1
            for i, filters in self._filters:
                if any(matches(f, subject) for f in filters):
                    index = i
                    break
            if len(self._memo) >= self.MEMO_MAX:
                self._memo.clear()
            self._memo[subject] = index
        return index

    def add_orphan(self, name: str) -> GroupState:
        """A group found in the store but no longer configured: its messages are
        still forwarded (they were accepted for the hub), and it takes no new ones.
        Its subjects are unknown, so no stream lookup can tell whether the hub
        will PubAck them: it is confirmed by PING/PONG, which always comes."""
        spec = ForwardGroup(subjects=(">",), name=name, confirm="link")
        state = GroupState(spec, len(self.states))
        self.states.append(state)
        return state

    def by_name(self, name: str) -> GroupState | None:
        for state in self.states:
            if state.spec.name == name:
                return state
        return None

    def __len__(self) -> int:
        return len(self.states)


def plain_groups(states: list[GroupState]) -> list[bool]:
    """Per group: whether a message without headers needs nothing but storing
    (no limit, written to disk, no PONG waiting for it): the writer's short path."""
    return [
        s.unlimited and not s.spec.durable_flush and s.spec.durability != "memory" for s in states
    ]


def overflow_verdict(state: GroupState) -> Verdict:
    """What a group's policy does with a message the writer has no room for."""
    return Verdict.REJECT if state.spec.policy == "reject" else Verdict.DROP_NEWEST


def trims_due(
    states: list[GroupState], free: dict[int, int], disk_reason: str
) -> list[tuple[int, int, int, str]]:
    """The drop_oldest groups to trim at the next commit: (group index, at least
    this many messages, at least this many bytes, why), for those over a limit
    or asked to free *free*[index] bytes for the disk (*disk_reason*)."""
    out = []
    for state in states:
        spec = state.spec
        if spec.policy != "drop_oldest":
            continue
        msgs = state.count - spec.max_msgs if spec.max_msgs else 0
        size = state.bytes - spec.max_bytes if spec.max_bytes else 0
        extra = free.get(state.index, 0)
        reason = "max_msgs" if msgs > 0 else "max_bytes" if size > 0 else disk_reason
        size = max(size, 0) + extra
        if msgs > 0 or size > 0:
            out.append((state.index, max(msgs, 0), size, reason))
    return out
