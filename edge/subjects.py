"""NATS subject syntax: validation, wildcard matching and filter containment.

Subjects are ``bytes`` throughout: the protocol parser hands us byte slices and
the publish hot path never decodes them.  Tokens are separated by ``b"."``.
Wildcards count only as *whole* tokens: ``b"*"`` matches exactly one token,
``b">"`` matches one or more trailing tokens (so ``b"foo.>"`` does not match
``b"foo"``), while ``b"foo*bar"`` or ``b">x"`` are ordinary literal tokens.

A published subject is always read literally: if a (non-pedantic) client
publishes to ``b"foo.*"``, its ``*`` is the literal token ``*``, matched by the
subscriptions ``b"foo.*"``, ``b"foo.>"`` and ``b">"``, but not by ``b"foo.bar"``.

This module is pure (no I/O, no logging) so it can be used by the parser, the
sublist, permissions and tests alike.
"""

from __future__ import annotations

__all__ = [
    "is_literal",
    "is_subset",
    "is_valid_publish_subject",
    "is_valid_subject",
    "matches",
]

_STAR = b"*"
_FWC = b">"

# Byte values: testing ``int in bytes`` measured several times faster than the
# equivalent ``bytes in bytes`` (substring search) on CPython 3.11.
_DOT, _SPACE, _TAB, _CR, _LF, _STAR_BYTE, _FWC_BYTE = b". \t\r\n*>"


def is_valid_subject(subject: bytes) -> bool:
    """Whether ``subject`` is acceptable as a subscription subject or filter.

    Invalid: empty, an empty token (leading/trailing dot or ``..``), any of
    space/tab/CR/LF, or a ``>`` token that is not the last token.  Runs on every
    SUB, so everything is done with bytes methods and no per-token loop.
    """
    if not subject or subject[0] == _DOT or subject[-1] == _DOT or subject.find(b"..") >= 0:
        return False
    if _SPACE in subject or _TAB in subject or _CR in subject or _LF in subject:
        return False
    # A non-final ">" token is either the first token (">.") or an inner one
    # (".>."); a final one (">" or "....>") is fine.
    return _FWC_BYTE not in subject or not (subject.startswith(b">.") or subject.find(b".>.") >= 0)


def _has_token(subject: bytes, byte: int, token: bytes) -> bool:
    """Whether the one-byte ``token`` (value ``byte``) is a whole token of ``subject``."""
    if byte not in subject:  # the common case: one quick scan
        return False
    return (
        subject == token
        or subject.startswith(token + b".")
        or subject.endswith(b"." + token)
        or subject.find(b"." + token + b".") >= 0
    )


def is_literal(subject: bytes) -> bool:
    """Whether ``subject`` contains no ``*`` or ``>`` wildcard token."""
    return not (_has_token(subject, _STAR_BYTE, _STAR) or _has_token(subject, _FWC_BYTE, _FWC))


def is_valid_publish_subject(subject: bytes) -> bool:
    """Whether ``subject`` is valid and literal (what a pedantic PUB requires)."""
    return is_valid_subject(subject) and is_literal(subject)


def matches(filter: bytes, subject: bytes) -> bool:
    """Whether subscription ``filter`` matches published ``subject``.

    A straightforward token-by-token matcher: the reference the sublist is
    tested against, and good enough for short filter lists (permissions).
    ``subject`` tokens are always literal; ``filter`` is assumed valid.
    """
    if filter == subject:
        return True
    ftoks = filter.split(b".")
    stoks = subject.split(b".")
    last = len(ftoks) - 1
    for i, ftok in enumerate(ftoks):
        if ftok == _FWC and i == last:
            return len(stoks) > i  # ">" needs at least one remaining token
        if i >= len(stoks):
            return False
        if ftok != _STAR and ftok != stoks[i]:
            return False
    return len(ftoks) == len(stoks)


def is_subset(sub: bytes, sup: bytes) -> bool:
    """Whether every subject matched by filter ``sub`` is matched by ``sup``.

    E.g. ``a.b`` within ``a.*`` within ``a.>`` within ``>``.  Both filters are
    assumed valid.  Used by permissions (is a SUB inside an allowed filter?).
    """
    if sub == sup:
        return True
    a = sub.split(b".")
    b = sup.split(b".")
    for i, btok in enumerate(b):
        if btok == _FWC:
            # sup accepts any tail of >= 1 token; every subject of sub has at
            # least len(a) tokens (a final ">" stands for one or more).
            return len(a) > i
        if i >= len(a):
            return False  # sub's subjects may be shorter than sup requires
        atok = a[i]
        if atok == _FWC:
            return False  # sub allows any length here; sup's length is bounded
        if btok == _STAR:
            continue  # "*" accepts whatever single token sub allows here
        if atok != btok:
            return False  # includes atok == "*" against a literal
    return len(a) == len(b)
