"""Publish and subscribe permissions, as nats-server judges them.

Theory of operation
-------------------
A user's permissions are two lists per direction: ``allow`` (absent: everything
is allowed) and ``deny`` (deny wins). Entries are subject filters; a subscribe
entry may name a queue group too (``"work.* workers"``), which makes the entry
apply to queue subscriptions of that group only.

nats-server matches a SUB's subject against the entries *token by token, the
SUB's wildcards taken literally* (its sublist ``Match``): ``foo.*`` is allowed by
``foo.*``, ``*.*``, ``foo.>`` and ``>``, not by ``foo.bar``. A wildcard SUB that
is allowed but overlaps a deny entry (``foo.*`` with ``foo.secret`` denied) is
accepted, and the messages it would get on denied subjects are dropped at
delivery (``needs_deny_filter``).

Publish checks are cached per connection (``PublishCache``): the hot path asks a
dict, the lists are walked once per new subject.

``allow_responses`` lets a service answer on the reply subjects of the requests it
received (up to ``max_msgs`` answers each, within ``expires`` seconds), even when
its publish permissions deny them. With ``allow_responses`` and no publish
permissions, nats-server denies every other publish; so does this module.

Pure module: values in, answers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.subjects import is_literal, is_subset, matches

# Cache bounds: a client publishing to ever new subjects must not grow memory.
PUBLISH_CACHE_MAX = 4096
RESPONSES_MAX = 4096
DEFAULT_RESPONSE_MAX_MSGS = 1
DEFAULT_RESPONSE_EXPIRES = 120.0


@dataclass(frozen=True, slots=True)
class SubjectRule:
    """One list entry: a subject filter and, for subscribe entries, a queue filter."""

    subject: bytes
    queue: bytes | None = None

    @classmethod
    def parse(cls, text: str) -> SubjectRule:
        """``"subject"`` or ``"subject queue"`` (nats-server's queue permission form)."""
        parts = text.split()
        if len(parts) == 2:
            return cls(parts[0].encode(), parts[1].encode())
        return cls(text.strip().encode())


@dataclass(frozen=True, slots=True)
class SubjectPermission:
    """``allow``: None means no allow list (all allowed); an empty tuple allows nothing."""

    allow: tuple[SubjectRule, ...] | None = None
    deny: tuple[SubjectRule, ...] = ()


@dataclass(frozen=True, slots=True)
class ResponsePermission:
    max_msgs: int = DEFAULT_RESPONSE_MAX_MSGS  # <= 0: unlimited
    expires: float = DEFAULT_RESPONSE_EXPIRES  # <= 0: never


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: SubjectPermission | None = None
    subscribe: SubjectPermission | None = None
    responses: ResponsePermission | None = None

    @property
    def effective_publish(self) -> SubjectPermission | None:
        """With allow_responses and no publish allow list, nothing else may be published."""
        pub = self.publish
        if self.responses is not None and (pub is None or pub.allow is None):
            return SubjectPermission((), pub.deny if pub else ())
        return pub

    @property
    def empty(self) -> bool:
        return self.publish is None and self.subscribe is None and self.responses is None


def publish_allowed(perm: SubjectPermission | None, subject: bytes) -> bool:
    if perm is None:
        return True
    if perm.allow is not None and not any(matches(r.subject, subject) for r in perm.allow):
        return False
    return not any(matches(r.subject, subject) for r in perm.deny)


def _queue_verdict(
    rules: Sequence[SubjectRule], subject: bytes, queue: bytes | None
) -> tuple[bool, bool | None]:
    """(a plain entry matched, the queue verdict if any queue entry matched)."""
    plain = False
    queue_hit: bool | None = None
    for rule in rules:
        if not matches(rule.subject, subject):
            continue
        if rule.queue is None:
            plain = True
        elif queue is not None:
            hit = matches(rule.queue, queue)
            queue_hit = hit or bool(queue_hit)
    return plain, queue_hit


def subscribe_allowed(perm: SubjectPermission | None, subject: bytes, queue: bytes | None) -> bool:
    """nats-server's ``canSubscribe`` for a client connection."""
    if perm is None:
        return True
    allowed = True
    if perm.allow is not None:
        plain, queue_hit = _queue_verdict(perm.allow, subject, queue)
        allowed = plain
        if queue_hit is not None:
            allowed = queue_hit  # the queue appears in the allow list
    if allowed and perm.deny:
        plain, queue_hit = _queue_verdict(perm.deny, subject, queue)
        allowed = not plain
        if queue_hit is not None:
            allowed = not queue_hit
    return allowed


def needs_deny_filter(perm: SubjectPermission | None, subject: bytes) -> bool:
    """Whether an allowed wildcard SUB reaches into a deny entry; then, as
    nats-server does, the connection's deliveries are checked against the deny
    list from now on (``deny_subjects``)."""
    if perm is None or not perm.deny or is_literal(subject):
        return False
    return any(is_subset(r.subject, subject) for r in perm.deny)


def deny_subjects(perm: SubjectPermission | None) -> tuple[bytes, ...]:
    return tuple(r.subject for r in perm.deny if r.queue is None) if perm else ()


def delivery_denied(filters: tuple[bytes, ...], subject: bytes) -> bool:
    return any(matches(f, subject) for f in filters)


class PublishCache:
    """Per connection: subject -> allowed, and the reply subjects it may answer.

    ``allowed`` holds the subjects found valid *and* permitted: the connection's
    fast publish path looks subjects up in it instead of the server-wide set of
    valid subjects, so a permitted publish costs nothing extra.
    """

    __slots__ = ("_denied", "allowed", "perm", "responses", "rule")

    def __init__(self, perms: Permissions) -> None:
        self.perm = perms.effective_publish
        self.rule = perms.responses
        self.allowed: set[bytes] = set()
        self._denied: set[bytes] = set()
        # reply subject -> [answers left, expiry time]
        self.responses: dict[bytes, list[float]] = {}

    def check(self, subject: bytes, now: float) -> bool:
        """Whether ``subject`` may be published (a response uses up one answer)."""
        if subject in self.allowed:
            return True
        if subject not in self._denied:
            if publish_allowed(self.perm, subject):
                if len(self.allowed) >= PUBLISH_CACHE_MAX:
                    self.allowed.clear()
                self.allowed.add(subject)
                return True
            if len(self._denied) >= PUBLISH_CACHE_MAX:
                self._denied.clear()
            self._denied.add(subject)
        return self._use_response(subject, now)

    def note_request(self, reply: bytes, now: float) -> None:
        """A message with ``reply`` was delivered to this client."""
        rule = self.rule
        if rule is None or not reply:
            return
        responses = self.responses
        if len(responses) >= RESPONSES_MAX:
            self._expire(now)
            if len(responses) >= RESPONSES_MAX:
                del responses[next(iter(responses))]
        expires = now + rule.expires if rule.expires > 0 else float("inf")
        responses[reply] = [float(rule.max_msgs), expires]

    def _use_response(self, subject: bytes, now: float) -> bool:
        entry = self.responses.get(subject)
        if entry is None:
            return False
        if now > entry[1]:
            del self.responses[subject]
            return False
        if entry[0] > 0:
            entry[0] -= 1
            if entry[0] == 0:
                del self.responses[subject]
        return True

    def _expire(self, now: float) -> None:
        for reply in [r for r, e in self.responses.items() if now > e[1]]:
            del self.responses[reply]


def permission_error_subject(subject: bytes) -> str:
    """The subject as nats-server writes it in the error (Go ``%q``)."""
    text = subject.decode("utf-8", "replace")
    out = ['"']
    for ch in text:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    out.append('"')
    return "".join(out)


def publish_violation(subject: bytes) -> bytes:
    return b"-ERR 'Permissions Violation for Publish to %s'\r\n" % (
        permission_error_subject(subject).encode()
    )


def subscribe_violation(subject: bytes, queue: bytes | None) -> bytes:
    shown = permission_error_subject(subject)
    if queue:
        queued = permission_error_subject(queue)
        text = f"Permissions Violation for Subscription to {shown} using queue {queued}"
        return b"-ERR '%s'\r\n" % text.encode()
    return b"-ERR 'Permissions Violation for Subscription to %s'\r\n" % shown.encode()
