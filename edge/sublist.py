"""Subscription index: which subscriptions match a published subject.

A trie with one level per subject token.  Each node holds a dict of literal
children plus separate ``*`` and ``>`` slots, and the items subscribed exactly
at that node: plain ones and queue-group ones (grouped by queue name).

Matching walks every node reachable by the published tokens (literal child,
``*`` child; a ``>`` child matches the whole remaining tail).  Results are
cached per published subject: the server calls :meth:`Sublist.match` once per
message and most traffic reuses a small set of subjects, so a cache hit must be
a single dict lookup.  Insert and remove invalidate the affected cache entries.

Pure module: no I/O, no trio, no logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, NamedTuple, TypeVar

from edge.subjects import is_literal, is_valid_subject, matches

__all__ = ["EMPTY_RESULT", "Sublist", "SublistResult", "SublistStats"]

T = TypeVar("T")

_STAR = b"*"
_FWC = b">"

# A wildcard insert/remove must find the cached subjects it affects by running
# the brute-force matcher on every key.  Above this many keys clearing the
# cache is cheaper than scanning it (a burst of wildcard SUBs at client connect
# would otherwise cost O(cache) each); misses refill it quickly.
_SCAN_LIMIT = 256


class SublistResult(NamedTuple, Generic[T]):
    """Matches for one published subject; immutable, so it can be cached and shared.

    ``plain`` has one element per matching non-queue entry (the same item
    subscribed under two matching subjects appears twice: deduplication, if
    wanted, is the caller's business).  ``queues`` has one ``(name, members)``
    pair per queue group with at least one matching member; the server picks
    one member of each.
    """

    plain: tuple[T, ...]
    queues: tuple[tuple[bytes, tuple[T, ...]], ...]


EMPTY_RESULT: SublistResult[Any] = SublistResult((), ())


@dataclass(frozen=True)
class SublistStats:
    count: int  # (subject, queue, item) entries
    inserts: int  # effective inserts (idempotent repeats not counted)
    removes: int  # effective removes
    matches: int  # calls to match()
    cache_hits: int
    cache_size: int  # subjects currently cached


class _Node(Generic[T]):
    """One trie level.  Item "sets" are dicts (ordered, idempotent, O(1) removal)."""

    __slots__ = ("fwc", "literal", "plain", "queues", "star")

    def __init__(self) -> None:
        self.literal: dict[bytes, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.fwc: _Node[T] | None = None
        self.plain: dict[T, None] = {}
        self.queues: dict[bytes, dict[T, None]] = {}

    def child(self, token: bytes) -> _Node[T] | None:
        if token == _STAR:
            return self.star
        if token == _FWC:
            return self.fwc
        return self.literal.get(token)

    def add_child(self, token: bytes) -> _Node[T]:
        node: _Node[T] = _Node()
        if token == _STAR:
            self.star = node
        elif token == _FWC:
            self.fwc = node
        else:
            self.literal[token] = node
        return node

    def drop_child(self, token: bytes) -> None:
        if token == _STAR:
            self.star = None
        elif token == _FWC:
            self.fwc = None
        else:
            del self.literal[token]

    def is_empty(self) -> bool:
        has_children = self.literal or self.star is not None or self.fwc is not None
        return not (self.plain or self.queues or has_children)


class Sublist(Generic[T]):
    """Index of ``(subject, queue, item)`` entries; see the module docstring.

    ``item`` is any hashable object (typically a subscription); entries are
    compared by ``==``/``hash``.  Inserting the same ``(subject, queue, item)``
    twice is idempotent: it is stored once and one :meth:`remove` deletes it.
    The same item may be inserted under several subjects or queues.

    Subjects must be valid (:func:`edge.subjects.is_valid_subject`) for insert;
    ``match`` reads published tokens literally, so a published ``b"foo.*"`` is
    matched by ``foo.*``, ``foo.>`` and ``>`` subscriptions.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        """``cache_size`` bounds the match cache; 0 disables it."""
        self._root: _Node[T] = _Node()
        self._cache: dict[bytes, SublistResult[T]] = {}
        self._cache_size = cache_size
        self._count = 0
        self._inserts = 0
        self._removes = 0
        self._matches = 0
        self._misses = 0

    def __len__(self) -> int:
        return self._count

    # -- hot path ---------------------------------------------------------

    def match(self, subject: bytes) -> SublistResult[T]:
        """All entries whose subject matches the published ``subject``."""
        # Only one counter on the hot path; hits are derived from misses.
        self._matches += 1
        try:
            return self._cache[subject]
        except KeyError:
            return self._match_miss(subject)

    def match_many(self, subject: bytes, count: int) -> SublistResult[T]:
        """``match`` for ``count`` messages on ``subject`` at once (counted as many)."""
        self._matches += count
        try:
            return self._cache[subject]
        except KeyError:
            return self._match_miss(subject)

    def _match_miss(self, subject: bytes) -> SublistResult[T]:
        self._misses += 1
        result = self._collect(subject)
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                self._evict()
            self._cache[subject] = result
        return result

    def _evict(self) -> None:
        # Dicts keep insertion order: dropping the oldest half is O(n/2) once
        # per n/2 misses, i.e. amortised O(1) per cached subject.
        drop = max(1, self._cache_size // 2)
        for key in list(islice(self._cache, drop)):
            del self._cache[key]

    def has_interest(self, subject: bytes) -> bool:
        """Whether any entry matches ``subject`` (cheaper than building a result)."""
        cached = self._cache.get(subject)
        if cached is not None:
            return bool(cached.plain or cached.queues)
        return any(node.plain or node.queues for node in self._matching_nodes(subject))

    def _matching_nodes(self, subject: bytes) -> list[_Node[T]]:
        """Nodes whose own entries match ``subject``, in a stable order."""
        found: list[_Node[T]] = []
        level = [self._root]
        for token in subject.split(b"."):
            below: list[_Node[T]] = []
            for node in level:
                if node.fwc is not None:
                    found.append(node.fwc)  # ">" takes this token and the rest
                child = node.literal.get(token)
                if child is not None:
                    below.append(child)
                if node.star is not None:
                    below.append(node.star)
            if not below:
                return found
            level = below
        found.extend(level)
        return found

    def _collect(self, subject: bytes) -> SublistResult[T]:
        plain: list[T] = []
        groups: dict[bytes, list[T]] = {}
        for node in self._matching_nodes(subject):
            plain.extend(node.plain)
            for name, members in node.queues.items():
                groups.setdefault(name, []).extend(members)
        if not plain and not groups:
            return EMPTY_RESULT
        queues = tuple((name, tuple(members)) for name, members in groups.items())
        return SublistResult(tuple(plain), queues)

    # -- mutation ---------------------------------------------------------

    def insert(self, subject: bytes, queue: bytes | None, item: T) -> None:
        """Add an entry; a repeat of an existing entry is a no-op.

        Raises ValueError for an invalid subject: a non-final ``>`` would
        otherwise create entries that can never match.
        """
        if not is_valid_subject(subject):
            raise ValueError(f"invalid subject {subject!r}")
        node = self._root
        for token in subject.split(b"."):
            node = node.child(token) or node.add_child(token)
        bucket = node.plain if queue is None else node.queues.setdefault(queue, {})
        if item in bucket:
            return
        bucket[item] = None
        self._count += 1
        self._inserts += 1
        self._invalidate(subject)

    def remove(self, subject: bytes, queue: bytes | None, item: T) -> bool:
        """Delete an entry and prune emptied nodes; False if it was not there."""
        path: list[tuple[_Node[T], bytes]] = []  # (parent, token) down to the node
        node = self._root
        for token in subject.split(b"."):
            child = node.child(token)
            if child is None:
                return False
            path.append((node, token))
            node = child
        bucket = node.plain if queue is None else node.queues.get(queue)
        if bucket is None or item not in bucket:
            return False
        del bucket[item]
        if queue is not None and not bucket:
            del node.queues[queue]
        self._count -= 1
        self._removes += 1
        self._prune(path)
        self._invalidate(subject)
        return True

    @staticmethod
    def _prune(path: list[tuple[_Node[T], bytes]]) -> None:
        # Walk back up, unlinking nodes left without entries or children, so
        # churn of unique subjects (inboxes) does not leak trie nodes.
        for parent, token in reversed(path):
            child = parent.child(token)
            if child is None or not child.is_empty():
                return
            parent.drop_child(token)

    def _invalidate(self, subject: bytes) -> None:
        """Forget cached results that ``subject`` (just inserted/removed) affects."""
        if not self._cache:
            return
        if is_literal(subject):
            # A literal filter matches exactly the identical published subject.
            self._cache.pop(subject, None)
        elif len(self._cache) > _SCAN_LIMIT:
            self._cache.clear()
        else:
            for key in [k for k in self._cache if matches(subject, k)]:
                del self._cache[key]

    # -- introspection ----------------------------------------------------

    def subjects(self) -> list[tuple[bytes, bytes | None, T]]:
        """Every entry as ``(subject, queue, item)``, e.g. to re-announce interest."""
        out: list[tuple[bytes, bytes | None, T]] = []
        stack: list[tuple[_Node[T], tuple[bytes, ...]]] = [(self._root, ())]
        while stack:
            node, tokens = stack.pop()
            if tokens:
                subject = b".".join(tokens)
                out.extend((subject, None, item) for item in node.plain)
                for name, members in node.queues.items():
                    out.extend((subject, name, item) for item in members)
            for token, child in node.literal.items():
                stack.append((child, (*tokens, token)))
            if node.star is not None:
                stack.append((node.star, (*tokens, _STAR)))
            if node.fwc is not None:
                stack.append((node.fwc, (*tokens, _FWC)))
        return out

    def stats(self) -> SublistStats:
        return SublistStats(
            count=self._count,
            inserts=self._inserts,
            removes=self._removes,
            matches=self._matches,
            cache_hits=self._matches - self._misses,
            cache_size=len(self._cache),
        )
