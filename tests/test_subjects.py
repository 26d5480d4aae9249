"""Subject syntax: validity, literals, matching and filter containment."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.subjects import (
    is_literal,
    is_subset,
    is_valid_publish_subject,
    is_valid_subject,
    matches,
)

VALID = [
    b"foo",
    b"foo.bar",
    b"foo.bar.baz",
    b"*",
    b">",
    b"foo.*",
    b"*.bar",
    b"foo.>",
    b"*.>",
    b"foo.*.>",
    b"foo.*.baz",
    b"foo*bar",  # literal token: wildcards count only as whole tokens
    b">x",
    b"x>",
    b"foo.>x.bar",
    b"foo.**",
    b"$SYS.x",
    b"_INBOX.abc123.1",
    "caf\u00e9.\u00fc\u00f1\u00ee".encode(),
    b"a-b_c:d/e",
]

INVALID = [
    b"",
    b".",
    b"foo.",
    b".foo",
    b"a..b",
    b"..",
    b"foo bar",
    b"foo\tbar",
    b"foo\rbar",
    b"foo\nbar",
    b" foo",
    b"foo ",
    b"foo.>.*",
    b"foo.>.bar",
    b">.foo",
    b">.>",
    b"a.>.b.>",
]


@pytest.mark.parametrize("subject", VALID)
def test_valid(subject: bytes) -> None:
    assert is_valid_subject(subject)


@pytest.mark.parametrize("subject", INVALID)
def test_invalid(subject: bytes) -> None:
    assert not is_valid_subject(subject)
    assert not is_valid_publish_subject(subject)


@pytest.mark.parametrize(
    ("subject", "literal"),
    [
        (b"foo", True),
        (b"foo.bar", True),
        (b"foo*bar", True),
        (b">x.x>", True),
        (b"foo.**", True),
        (b"$SYS.x", True),
        (b"*", False),
        (b">", False),
        (b"foo.*", False),
        (b"*.foo", False),
        (b"a.*.b", False),
        (b"foo.>", False),
    ],
)
def test_literal(subject: bytes, literal: bool) -> None:
    assert is_literal(subject) is literal
    assert is_valid_publish_subject(subject) is literal


MATCH_CASES = [
    (b"foo", b"foo", True),
    (b"foo", b"bar", False),
    (b"foo.bar", b"foo", False),
    (b"foo", b"foo.bar", False),
    (b"*", b"foo", True),
    (b"*", b"foo.bar", False),
    (b"foo.*", b"foo.bar", True),
    (b"foo.*", b"foo", False),
    (b"foo.*", b"foo.bar.baz", False),
    (b"*.bar", b"foo.bar", True),
    (b"foo.*.baz", b"foo.x.baz", True),
    (b"foo.*.baz", b"foo.x.qux", False),
    (b">", b"foo", True),
    (b">", b"foo.bar.baz", True),
    (b"foo.>", b"foo", False),
    (b"foo.>", b"foo.bar", True),
    (b"foo.>", b"foo.bar.baz", True),
    (b"foo.>", b"bar.baz", False),
    (b"*.>", b"foo", False),
    (b"*.>", b"foo.bar", True),
    (b"foo*bar", b"foo*bar", True),
    (b"foo*bar", b"fooxbar", False),
    (b"*", b"foo*bar", True),
    (b">", b"foo*bar", True),
    (b">x", b"ax", False),
    # Published subjects with wildcard tokens are read literally.
    (b"foo.>", b"foo.*", True),
    (b"foo.*", b"foo.*", True),
    (b"foo.*", b"foo.>", True),
    (b"foo.bar", b"foo.*", False),
    (b"foo.bar", b"foo.>", False),
    (b"$SYS.>", b"$SYS.x", True),
]


@pytest.mark.parametrize(("filt", "subject", "expected"), MATCH_CASES)
def test_matches(filt: bytes, subject: bytes, expected: bool) -> None:
    assert matches(filt, subject) is expected


SUBSET_CASES = [
    (b"a.b", b"a.b", True),
    (b"a.b", b"a.*", True),
    (b"a.*", b"a.>", True),
    (b"a.>", b">", True),
    (b"a.b", b">", True),
    (b"a.b", b"a.>", True),
    (b"a.*.c", b"a.>", True),
    (b"a.*.>", b"a.>", True),
    (b"a.>", b"a.*.>", False),
    (b"a.*", b"a.b", False),
    (b"a.>", b"a.*", False),
    (b">", b"a.>", False),
    (b">", b"*", False),
    (b"*", b">", True),
    (b"*.*", b">", True),
    (b"*.*", b"*.>", True),
    (b"a", b"a.>", False),
    (b"a.b", b"a.c", False),
    (b"a.b.c", b"a.b", False),
    (b"a.b", b"a.b.c", False),
    (b"*.b", b"a.*", False),
    (b"a.*", b"*.*", True),
]


@pytest.mark.parametrize(("sub", "sup", "expected"), SUBSET_CASES)
def test_is_subset(sub: bytes, sup: bytes, expected: bool) -> None:
    assert is_subset(sub, sup) is expected


# -- properties ---------------------------------------------------------------

FILTER_TOKENS = [b"a", b"b", b"*", b">"]
# "z" never appears in filters: it is the token that only wildcards match.
SUBJECT_TOKENS = [b"a", b"b", b"z"]
MAX_DEPTH = 3


@st.composite
def filters(draw: st.DrawFn) -> bytes:
    toks = draw(st.lists(st.sampled_from(FILTER_TOKENS), min_size=1, max_size=MAX_DEPTH))
    # ">" is only valid as the last token: truncate after the first one.
    if b">" in toks:
        toks = toks[: toks.index(b">") + 1]
    return b".".join(toks)


literal_subjects = st.lists(st.sampled_from(SUBJECT_TOKENS), min_size=1, max_size=5).map(b".".join)

# Every literal subject up to MAX_DEPTH + 1 tokens: long enough to witness any
# difference between two filters of at most MAX_DEPTH tokens.
UNIVERSE = [
    b".".join(toks)
    for n in range(1, MAX_DEPTH + 2)
    for toks in itertools.product(SUBJECT_TOKENS, repeat=n)
]


def _regex_match(filt: bytes, subject: bytes) -> bool:
    """Independent oracle: translate the filter to a regular expression."""
    parts = []
    for tok in filt.split(b"."):
        if tok == b"*":
            parts.append(rb"[^.]+")
        elif tok == b">":
            parts.append(rb"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(tok))
    return re.fullmatch(rb"\.".join(parts), subject) is not None


@given(filters())
def test_generated_filters_are_valid(filt: bytes) -> None:
    assert is_valid_subject(filt)
    assert is_literal(filt) == (b"*" not in filt and b">" not in filt)


@given(literal_subjects)
def test_literal_subjects_valid_and_literal(subject: bytes) -> None:
    assert is_valid_publish_subject(subject)


@given(filters(), literal_subjects)
def test_matches_agrees_with_regex(filt: bytes, subject: bytes) -> None:
    assert matches(filt, subject) == _regex_match(filt, subject)


@given(filters())
def test_literal_filter_matches_only_itself(filt: bytes) -> None:
    if is_literal(filt):
        assert [s for s in UNIVERSE if matches(filt, s)] == [filt]


@given(filters(), filters())
def test_is_subset_is_exact_containment(a: bytes, b: bytes) -> None:
    contained = all(matches(b, s) for s in UNIVERSE if matches(a, s))
    assert is_subset(a, b) == contained


@given(filters(), filters(), literal_subjects)
def test_is_subset_implies_match(a: bytes, b: bytes, subject: bytes) -> None:
    if is_subset(a, b) and matches(a, subject):
        assert matches(b, subject)


@given(filters(), filters(), filters())
def test_is_subset_reflexive_transitive(a: bytes, b: bytes, c: bytes) -> None:
    assert is_subset(a, a)
    if is_subset(a, b) and is_subset(b, c):
        assert is_subset(a, c)
    assert is_subset(a, b">")


@given(st.binary(max_size=12))
def test_validity_agrees_with_token_definition(subject: bytes) -> None:
    toks = subject.split(b".")
    expected = (
        all(toks)
        and not any(ws in subject for ws in (b" ", b"\t", b"\r", b"\n"))
        and b">" not in toks[:-1]
    )
    assert is_valid_subject(subject) == expected


@given(st.lists(st.sampled_from([b"a", b"*", b">", b"a*", b">b", b"."]), max_size=6))
def test_literal_agrees_with_token_definition(parts: list[bytes]) -> None:
    subject = b"".join(parts)
    toks = subject.split(b".")
    assert is_literal(subject) == (b"*" not in toks and b">" not in toks)
