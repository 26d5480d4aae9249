"""store.groups: which group a subject belongs to, and what a group's limits say
about a new message. Pure: no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import ForwardGroup
from edge.subjects import matches
from store.groups import (
    REASON_DISK_FLOOR,
    REASON_MAX_BYTES,
    REASON_MAX_MSGS,
    REASONS,
    GroupState,
    GroupTable,
    Verdict,
    spec_too_small,
)


def group(
    *subjects: str,
    name: str = "g",
    policy: str = "drop_oldest",
    max_msgs: int = 0,
    max_bytes: int = 0,
) -> ForwardGroup:
    return ForwardGroup(
        subjects=subjects, name=name, policy=policy, max_msgs=max_msgs, max_bytes=max_bytes
    )


def brute_force(groups: tuple[ForwardGroup, ...], subject: bytes) -> int:
    for i, spec in enumerate(groups):
        if any(matches(f.encode(), subject) for f in spec.subjects):
            return i
    return -1


# ---- classify ----------------------------------------------------------------------------

GROUPS = (
    group("tele.*.temp", name="temp"),
    group("tele.>", "metrics.>", name="tele"),
    group("alerts", "tele.a.temp", name="alerts"),  # tele.a.temp: shadowed by "temp"
    group("*.x", name="x"),
)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"tele.a.temp", 0),  # first matching group in config order
        (b"tele.b.temp", 0),
        (b"tele.a.temp.more", 1),
        (b"tele.a", 1),
        (b"tele.x", 1),  # both "tele.>" and "*.x": the earlier group wins
        (b"metrics.cpu.0", 1),
        (b"alerts", 2),
        (b"foo.x", 3),
        (b"tele", -1),  # ">" needs at least one more token
        (b"metrics", -1),
        (b"alerts.x", 3),
        (b"other", -1),
        (b"", -1),
    ],
)
def test_classify_first_match_in_config_order(subject: bytes, expected: int) -> None:
    table = GroupTable(GROUPS)
    assert table.classify(subject) == expected
    assert table.classify(subject) == expected  # from the memo
    assert brute_force(GROUPS, subject) == expected


def test_classify_without_groups() -> None:
    table = GroupTable(())
    assert len(table) == 0
    assert table.classify(b"a.b") == -1


def test_classify_catch_all() -> None:
    table = GroupTable((group("a.b", name="one"), group(">", name="rest")))
    assert table.classify(b"a.b") == 0
    assert table.classify(b"a.c") == 1
    assert table.classify(b"z") == 1


def test_memo_is_bounded_at_memo_max() -> None:
    table = GroupTable(GROUPS)
    n = GroupTable.MEMO_MAX + 500
    for i in range(n):
        subject = b"tele.%d" % i
        assert table.classify(subject) == 1
        assert len(table._memo) <= GroupTable.MEMO_MAX
    # Still correct after the memo was cleared (and for subjects seen before it was).
    for i in (0, 1, n // 2, n - 1):
        assert table.classify(b"tele.%d" % i) == 1
    assert table.classify(b"tele.0.temp") == 0
    assert table.classify(b"nope.%d" % n) == -1
    assert len(table._memo) <= GroupTable.MEMO_MAX


_TOK = st.sampled_from(["a", "b", "c"])
_FILTER_TOK = st.sampled_from(["a", "b", "c", "*"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(_FILTER_TOK, min_size=0, max_size=3))
    if draw(st.booleans()) or not tokens:
        tokens.append(">")
    return ".".join(tokens)


_SUBJECT = st.lists(_TOK, min_size=1, max_size=4).map(lambda t: ".".join(t).encode())


@given(
    specs=st.lists(st.lists(filters(), min_size=1, max_size=3), max_size=5),
    subjects=st.lists(_SUBJECT, min_size=1, max_size=60),
    memo_max=st.integers(1, 6),
)
@settings(max_examples=200)
def test_classify_matches_brute_force_with_a_small_memo(
    specs: list[list[str]], subjects: list[bytes], memo_max: int
) -> None:
    groups = tuple(group(*fs, name=f"g{i}") for i, fs in enumerate(specs))
    table = GroupTable(groups)
    table.MEMO_MAX = memo_max  # clear often
    for subject in subjects + subjects[::-1] + subjects:
        assert table.classify(subject) == brute_force(groups, subject)
        assert len(table._memo) <= memo_max


# ---- limits and verdicts -----------------------------------------------------------------


def state(
    policy: str = "drop_oldest",
    *,
    count: int = 0,
    size: int = 0,
    max_msgs: int = 0,
    max_bytes: int = 0,
) -> GroupState:
    s = GroupState(group(">", policy=policy, max_msgs=max_msgs, max_bytes=max_bytes), 0)
    s.count, s.bytes = count, size
    return s


POLICY_VERDICT = {
    "drop_oldest": Verdict.DROP_OLDEST,
    "drop_newest": Verdict.DROP_NEWEST,
    "reject": Verdict.REJECT,
}


@pytest.mark.parametrize("policy", list(POLICY_VERDICT))
def test_within_limits_accepts(policy: str) -> None:
    assert state(policy).verdict(100, False) == (Verdict.ACCEPT, None)  # no limits
    s = state(policy, count=9, size=900, max_msgs=10, max_bytes=1000)
    assert s.verdict(100, False) == (Verdict.ACCEPT, None)  # exactly at both limits
    assert s.over_limit(100, False) is None


@pytest.mark.parametrize("policy", list(POLICY_VERDICT))
def test_max_msgs(policy: str) -> None:
    s = state(policy, count=10, size=100, max_msgs=10, max_bytes=10_000)
    assert s.verdict(1, False) == (POLICY_VERDICT[policy], REASON_MAX_MSGS)


@pytest.mark.parametrize("policy", list(POLICY_VERDICT))
def test_max_bytes(policy: str) -> None:
    s = state(policy, count=3, size=950, max_msgs=10, max_bytes=1000)
    assert s.verdict(51, False) == (POLICY_VERDICT[policy], REASON_MAX_BYTES)
    assert s.verdict(50, False) == (Verdict.ACCEPT, None)


@pytest.mark.parametrize("policy", list(POLICY_VERDICT))
def test_min_free_disk(policy: str) -> None:
    s = state(policy, count=3, size=30, max_msgs=10, max_bytes=1000)
    assert s.verdict(10, True) == (POLICY_VERDICT[policy], REASON_DISK_FLOOR)
    assert state(policy).verdict(10, True) == (POLICY_VERDICT[policy], REASON_DISK_FLOOR)


def test_verdict_ignores_durability_age_and_confirm() -> None:
    """max_age is applied by expiry, not on arrival; durability and confirm say
    nothing about room."""
    spec = ForwardGroup(
        subjects=("tele.>",),
        name="tele",
        durability="memory",
        max_bytes=100,
        max_msgs=2,
        max_age=0.001,
        policy="reject",
        confirm="link",
    )
    s = GroupState(spec, 3)
    assert s.verdict(100, False) == (Verdict.ACCEPT, None)
    s.add(60)
    assert s.verdict(41, False) == (Verdict.REJECT, REASON_MAX_BYTES)
    s.add(10)
    assert s.verdict(1, False) == (Verdict.REJECT, REASON_MAX_MSGS)
    assert GroupTable((spec,)).classify(b"tele.x") == 0


def test_reason_precedence() -> None:
    s = state(count=10, size=1000, max_msgs=10, max_bytes=1000)
    assert s.over_limit(10, True) == REASON_MAX_MSGS
    s.count = 5
    assert s.over_limit(10, True) == REASON_MAX_BYTES
    s.bytes = 0
    assert s.over_limit(10, True) == REASON_DISK_FLOOR
    assert s.over_limit(10, False) is None


def test_message_larger_than_the_group_under_drop_oldest_is_dropped() -> None:
    """No amount of dropping makes room for it."""
    empty = state("drop_oldest", max_bytes=1000)
    assert empty.verdict(1001, False) == (Verdict.DROP_NEWEST, REASON_MAX_BYTES)
    assert empty.verdict(1000, False) == (Verdict.ACCEPT, None)
    full = state("drop_oldest", count=4, size=800, max_bytes=1000)
    assert full.verdict(5000, False) == (Verdict.DROP_NEWEST, REASON_MAX_BYTES)
    assert full.verdict(201, False) == (Verdict.DROP_OLDEST, REASON_MAX_BYTES)
    assert spec_too_small(empty.spec, 1001)
    assert not spec_too_small(empty.spec, 1000)
    assert not spec_too_small(state().spec, 10**12)  # no byte limit


@pytest.mark.parametrize(
    ("policy", "verdict"), [("reject", Verdict.REJECT), ("drop_newest", Verdict.DROP_NEWEST)]
)
def test_message_larger_than_the_group_other_policies(policy: str, verdict: Verdict) -> None:
    assert state(policy, max_bytes=1000).verdict(1001, False) == (verdict, REASON_MAX_BYTES)


@given(
    policy=st.sampled_from(list(POLICY_VERDICT)),
    max_msgs=st.integers(0, 20),
    max_bytes=st.integers(0, 2000),
    count=st.integers(0, 25),
    held=st.integers(0, 2500),
    size=st.integers(0, 3000),
    low_disk=st.booleans(),
)
def test_verdict_against_the_rules(
    policy: str,
    max_msgs: int,
    max_bytes: int,
    count: int,
    held: int,
    size: int,
    low_disk: bool,
) -> None:
    s = state(policy, count=count, size=held, max_msgs=max_msgs, max_bytes=max_bytes)
    verdict, reason = s.verdict(size, low_disk)
    if max_msgs and count + 1 > max_msgs:
        want_reason: str | None = REASON_MAX_MSGS
    elif max_bytes and held + size > max_bytes:
        want_reason = REASON_MAX_BYTES
    elif low_disk:
        want_reason = REASON_DISK_FLOOR
    else:
        want_reason = None
    assert reason == want_reason
    assert reason is None or reason in REASONS
    if want_reason is None:
        assert verdict is Verdict.ACCEPT
    elif policy == "drop_oldest" and max_bytes and size > max_bytes:
        assert verdict is Verdict.DROP_NEWEST
    else:
        assert verdict is POLICY_VERDICT[policy]


def test_counts_add_remove_and_drops() -> None:
    s = state()
    s.add(100)
    s.add(50)
    assert (s.count, s.bytes, s.accepted) == (2, 150, 2)
    s.remove(100)
    assert (s.count, s.bytes, s.accepted) == (1, 50, 2)
    s.remove(80)  # never below zero
    s.remove(1)
    assert (s.count, s.bytes) == (0, 0)
    s.note_drop(REASON_MAX_MSGS)
    s.note_drop(REASON_MAX_MSGS, 4)
    s.note_drop(REASON_DISK_FLOOR)
    assert s.dropped == {REASON_MAX_MSGS: 5, REASON_DISK_FLOOR: 1}
    assert state().dropped == {}  # not shared between states


# ---- the table ---------------------------------------------------------------------------


def test_table_states_follow_config_order() -> None:
    table = GroupTable(GROUPS)
    assert len(table) == len(GROUPS)
    assert [s.index for s in table.states] == list(range(len(GROUPS)))
    assert [s.spec for s in table.states] == list(GROUPS)
    tele = table.by_name("tele")
    assert tele is not None
    assert tele is table.states[1]
    assert table.by_name("missing") is None


def test_add_orphan() -> None:
    table = GroupTable(GROUPS)
    orphan = table.add_orphan("old-group")
    assert orphan.index == len(GROUPS)
    assert table.states[-1] is orphan
    assert len(table) == len(GROUPS) + 1
    assert orphan.spec.name == "old-group"
    assert orphan.spec.subjects == (">",)
    assert (orphan.count, orphan.bytes) == (0, 0)
    assert table.by_name("old-group") is orphan
    # It takes no new messages, its ">" notwithstanding.
    assert table.classify(b"other") == -1
    assert table.classify(b"tele.a") == 1
    second = table.add_orphan("older")
    assert second.index == len(GROUPS) + 1
    assert table.classify(b"zzz") == -1
