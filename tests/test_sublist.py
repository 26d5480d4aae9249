"""Sublist: table tests plus a stateful comparison against a brute-force model."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edge.subjects import matches
from edge.sublist import EMPTY_RESULT, Sublist, SublistResult


def plain_of(result: SublistResult[str]) -> Counter[str]:
    return Counter(result.plain)


def queues_of(result: SublistResult[str]) -> dict[bytes, Counter[str]]:
    names = [name for name, _ in result.queues]
    assert len(names) == len(set(names)), "a queue group must appear once"
    return {name: Counter(members) for name, members in result.queues}


def assert_pruned(sl: Sublist[str]) -> None:
    root = sl._root
    assert len(sl) == 0
    assert root.literal == {}
    assert root.star is None
    assert root.fwc is None
    assert not root.plain
    assert not root.queues


# -- table tests --------------------------------------------------------------


def test_empty() -> None:
    sl: Sublist[str] = Sublist()
    assert sl.match(b"foo") is EMPTY_RESULT
    assert not sl.has_interest(b"foo")
    assert len(sl) == 0


def test_plain_literal() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo.bar", None, "s1")
    sl.insert(b"foo.baz", None, "s2")
    assert sl.match(b"foo.bar") == SublistResult(("s1",), ())
    assert sl.match(b"foo") == EMPTY_RESULT
    assert sl.match(b"foo.bar.baz") == EMPTY_RESULT
    assert sl.has_interest(b"foo.baz")
    assert not sl.has_interest(b"foo")


def test_star_and_fwc() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo.*", None, "star")
    sl.insert(b"foo.>", None, "fwc")
    sl.insert(b"*.bar", None, "lead")
    sl.insert(b">", None, "all")
    assert plain_of(sl.match(b"foo.bar")) == Counter(["star", "fwc", "lead", "all"])
    assert plain_of(sl.match(b"foo.bar.baz")) == Counter(["fwc", "all"])
    # ">" needs at least one token after "foo".
    assert plain_of(sl.match(b"foo")) == Counter(["all"])
    assert plain_of(sl.match(b"x.bar")) == Counter(["lead", "all"])


def test_wildcards_only_as_whole_tokens() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo*bar", None, "lit")
    sl.insert(b"*", None, "star")
    sl.insert(b">", None, "fwc")
    sl.insert(b">x", None, "gtx")
    assert plain_of(sl.match(b"foo*bar")) == Counter(["lit", "star", "fwc"])
    assert plain_of(sl.match(b"fooxbar")) == Counter(["star", "fwc"])
    assert plain_of(sl.match(b">x")) == Counter(["gtx", "star", "fwc"])


def test_queues_grouped_by_name() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo.bar", b"q1", "a")
    sl.insert(b"foo.*", b"q1", "b")
    sl.insert(b"foo.>", b"q2", "c")
    sl.insert(b"foo.bar", b"q1", "d")
    sl.insert(b"foo.bar", None, "p")
    result = sl.match(b"foo.bar")
    assert result.plain == ("p",)
    assert queues_of(result) == {b"q1": Counter("abd"), b"q2": Counter("c")}
    # Members at one node keep insertion order.
    assert dict(result.queues)[b"q1"][:2] == ("a", "d")
    assert queues_of(sl.match(b"foo.x.y")) == {b"q2": Counter("c")}


def test_same_item_under_two_subjects() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo.*", None, "s")
    sl.insert(b"foo.>", None, "s")
    sl.insert(b"bar", None, "s")
    assert len(sl) == 3
    # One element per matching entry: the same item appears twice.
    assert plain_of(sl.match(b"foo.x")) == Counter({"s": 2})
    assert sl.remove(b"foo.*", None, "s")
    assert plain_of(sl.match(b"foo.x")) == Counter({"s": 1})
    assert sl.match(b"bar").plain == ("s",)


def test_same_item_plain_and_queue_are_distinct_entries() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo", None, "s")
    sl.insert(b"foo", b"q", "s")
    assert len(sl) == 2
    assert sl.match(b"foo") == SublistResult(("s",), ((b"q", ("s",)),))


def test_idempotent_insert() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo", None, "s")
    sl.insert(b"foo", None, "s")
    sl.insert(b"foo", b"q", "s")
    sl.insert(b"foo", b"q", "s")
    assert len(sl) == 2
    assert sl.match(b"foo") == SublistResult(("s",), ((b"q", ("s",)),))
    assert sl.stats().inserts == 2
    assert sl.remove(b"foo", None, "s")
    assert sl.remove(b"foo", b"q", "s")
    assert sl.match(b"foo") == EMPTY_RESULT
    assert_pruned(sl)


def test_remove() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo.bar", None, "a")
    sl.insert(b"foo.bar", b"q", "b")
    sl.insert(b"foo.*", None, "c")
    assert sl.match(b"foo.bar") == SublistResult(("a", "c"), ((b"q", ("b",)),))
    assert sl.remove(b"foo.bar", None, "a")
    assert sl.match(b"foo.bar") == SublistResult(("c",), ((b"q", ("b",)),))
    assert sl.remove(b"foo.bar", b"q", "b")
    assert sl.match(b"foo.bar") == SublistResult(("c",), ())
    assert sl.remove(b"foo.*", None, "c")
    assert sl.match(b"foo.bar") is EMPTY_RESULT
    assert_pruned(sl)


@pytest.mark.parametrize(
    ("subject", "queue", "item"),
    [
        (b"foo.bar", None, "x"),  # wrong item
        (b"foo.bar", b"q", "a"),  # wrong queue
        (b"foo", None, "a"),  # intermediate node without entries
        (b"foo.bar.baz", None, "a"),  # deeper than the trie
        (b"foo.*", None, "a"),  # wildcard slot absent
        (b"foo.>", None, "a"),
        (b"", None, "a"),
    ],
)
def test_remove_absent(subject: bytes, queue: bytes | None, item: str) -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo.bar", None, "a")
    assert not sl.remove(subject, queue, item)
    assert len(sl) == 1
    assert sl.match(b"foo.bar").plain == ("a",)


@pytest.mark.parametrize("subject", [b"", b"foo.", b"a..b", b"foo.>.bar", b"foo bar"])
def test_insert_invalid_subject(subject: bytes) -> None:
    sl: Sublist[str] = Sublist()
    with pytest.raises(ValueError):
        sl.insert(subject, None, "s")
    assert len(sl) == 0


def test_publish_subject_with_wildcard_tokens() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo.>", None, "fwc")
    sl.insert(b"foo.*", None, "star")
    sl.insert(b"foo.bar", None, "lit")
    # Published tokens are literal: "foo.*" is not matched by "foo.bar".
    assert plain_of(sl.match(b"foo.*")) == Counter(["fwc", "star"])
    assert plain_of(sl.match(b"foo.>")) == Counter(["fwc", "star"])
    assert plain_of(sl.match(b"foo.>.x")) == Counter(["fwc"])
    # A cached wildcard-token subject is invalidated like any other.
    sl.insert(b"*.*", None, "new")
    assert plain_of(sl.match(b"foo.*")) == Counter(["fwc", "star", "new"])
    sl.remove(b"foo.*", None, "star")
    assert plain_of(sl.match(b"foo.*")) == Counter(["fwc", "new"])


@pytest.mark.parametrize("cache_size", [0, 8, 4096])
def test_cache_invalidation(cache_size: int) -> None:
    sl: Sublist[str] = Sublist(cache_size=cache_size)
    for i in range(300):  # more than the scan limit, to exercise the clear path
        sl.match(b"other.%d" % i)
    assert sl.match(b"foo.bar") is EMPTY_RESULT
    sl.insert(b"foo.bar", None, "lit")
    assert sl.match(b"foo.bar").plain == ("lit",)
    sl.insert(b"foo.*", None, "star")
    assert plain_of(sl.match(b"foo.bar")) == Counter(["lit", "star"])
    sl.insert(b">", None, "all")
    assert plain_of(sl.match(b"other.7")) == Counter(["all"])
    sl.remove(b">", None, "all")
    assert sl.match(b"other.7") is EMPTY_RESULT
    sl.remove(b"foo.bar", None, "lit")
    assert sl.match(b"foo.bar").plain == ("star",)


def test_cache_small_scan_path() -> None:
    sl: Sublist[str] = Sublist()
    for subject in (b"a.b", b"a.c", b"b.c", b"a.b.c"):
        assert sl.match(subject) is EMPTY_RESULT
    sl.insert(b"a.*", None, "s")
    stats = sl.stats()
    # Only the two affected keys were dropped.
    assert stats.cache_size == 2
    assert sl.match(b"a.b").plain == ("s",)
    assert sl.match(b"b.c") is EMPTY_RESULT


def test_cache_is_bounded_and_counted() -> None:
    sl: Sublist[str] = Sublist(cache_size=8)
    sl.insert(b"x.*", None, "s")
    for i in range(100):
        assert sl.match(b"x.%d" % (i % 20)).plain == ("s",)
        assert sl.stats().cache_size <= 8
    sl.match(b"x.99")
    sl.match(b"x.99")
    stats = sl.stats()
    assert stats.matches == 102
    assert 1 <= stats.cache_hits < stats.matches
    assert (stats.count, stats.inserts, stats.removes) == (1, 1, 0)


def test_cache_disabled() -> None:
    sl: Sublist[str] = Sublist(cache_size=0)
    sl.insert(b"foo", None, "s")
    for _ in range(3):
        assert sl.match(b"foo").plain == ("s",)
    stats = sl.stats()
    assert stats.cache_size == 0
    assert stats.cache_hits == 0


def test_cached_result_is_shared() -> None:
    sl: Sublist[str] = Sublist()
    sl.insert(b"foo", None, "s")
    assert sl.match(b"foo") is sl.match(b"foo")


def test_subjects_round_trip() -> None:
    entries: list[tuple[bytes, bytes | None, str]] = [
        (b"foo", None, "a"),
        (b"foo.bar", b"q", "b"),
        (b"foo.*", None, "c"),
        (b"foo.>", b"q", "d"),
        (b">", None, "a"),
        (b"*.x.*", b"r", "e"),
    ]
    sl: Sublist[str] = Sublist()
    for entry in entries:
        sl.insert(*entry)
    assert sorted(sl.subjects(), key=repr) == sorted(entries, key=repr)
    clone: Sublist[str] = Sublist()
    for entry in sl.subjects():
        clone.insert(*entry)
    assert len(clone) == len(entries)


def test_prune_after_many_cycles() -> None:
    sl: Sublist[str] = Sublist(cache_size=16)
    subjects = [b"_INBOX.%d.%d" % (i, i % 7) for i in range(200)]
    subjects += [b"a.*.%d" % i for i in range(50)] + [b"a.%d.>" % i for i in range(50)]
    for _ in range(3):
        for i, subject in enumerate(subjects):
            sl.insert(subject, b"q" if i % 3 == 0 else None, f"s{i}")
            sl.match(subject.replace(b"*", b"x").replace(b">", b"y"))
        assert len(sl) == len(subjects)
        for i, subject in enumerate(subjects):
            assert sl.remove(subject, b"q" if i % 3 == 0 else None, f"s{i}")
        assert_pruned(sl)
    assert sl.match(b"_INBOX.1.1") is EMPTY_RESULT


# -- stateful comparison with a brute-force model -----------------------------

TOKENS = [b"a", b"b", b"c", b"*", b">"]
ITEMS = ["i0", "i1", "i2"]
QUEUES = [None, b"q1", b"q2"]


def _truncate_fwc(toks: list[bytes]) -> bytes:
    if b">" in toks:
        toks = toks[: toks.index(b">") + 1]
    return b".".join(toks)


token_lists = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4)
sub_subjects = token_lists.map(_truncate_fwc)
# Published subjects may contain "*" and ">" anywhere: they are literal tokens.
pub_subjects = token_lists.map(b".".join)
entries = st.tuples(sub_subjects, st.sampled_from(QUEUES), st.sampled_from(ITEMS))


class SublistModel(RuleBasedStateMachine):
    cache_size = 4096

    def __init__(self) -> None:
        super().__init__()
        self.sl: Sublist[str] = Sublist(cache_size=self.cache_size)
        self.model: set[tuple[bytes, bytes | None, str]] = set()
        self.seen: set[bytes] = set()  # matched subjects: likely in the cache

    @rule(entry=entries)
    def insert(self, entry: tuple[bytes, bytes | None, str]) -> None:
        self.sl.insert(*entry)
        self.model.add(entry)

    @rule(entry=entries)
    def remove_any(self, entry: tuple[bytes, bytes | None, str]) -> None:
        assert self.sl.remove(*entry) == (entry in self.model)
        self.model.discard(entry)

    @rule(data=st.data())
    def remove_existing(self, data: st.DataObject) -> None:
        if self.model:
            entry = data.draw(st.sampled_from(sorted(self.model, key=repr)))
            assert self.sl.remove(*entry)
            self.model.discard(entry)

    @rule(data=st.data())
    def rematch(self, data: st.DataObject) -> None:
        # Re-matching a subject seen before hits the cache, which is where a
        # missed invalidation would show up.
        if self.seen:
            self.match(data.draw(st.sampled_from(sorted(self.seen))))

    @rule(subject=pub_subjects)
    def match(self, subject: bytes) -> None:
        self.seen.add(subject)
        hits = [(q, item) for s, q, item in self.model if matches(s, subject)]
        expected_plain = Counter(item for q, item in hits if q is None)
        expected_queues: dict[bytes, Counter[str]] = {}
        for q, item in hits:
            if q is not None:
                expected_queues.setdefault(q, Counter())[item] += 1
        for _ in range(2):  # the second call is normally a cache hit
            result = self.sl.match(subject)
            assert plain_of(result) == expected_plain
            assert queues_of(result) == expected_queues
            assert self.sl.has_interest(subject) == bool(hits)

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.sl) == len(self.model)
        assert set(self.sl.subjects()) == self.model
        assert len(self.sl.subjects()) == len(self.model)
        assert self.sl.stats().cache_size <= self.cache_size

    def teardown(self) -> None:
        for entry in list(self.model):
            assert self.sl.remove(*entry)
        assert_pruned(self.sl)


class SublistNoCache(SublistModel):
    cache_size = 0


class SublistSmallCache(SublistModel):
    cache_size = 8


_settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestSublistNoCache = SublistNoCache.TestCase
TestSublistNoCache.settings = _settings
TestSublistSmallCache = SublistSmallCache.TestCase
TestSublistSmallCache.settings = _settings
TestSublistLargeCache = SublistModel.TestCase
TestSublistLargeCache.settings = _settings
