"""Accounts: one Router per account, joined only by declared exports and imports.

Each account has its own subject space (its own Router): a message published in
account A reaches A's subscribers and nobody else's. An import joins two spaces
for the subjects it names, through an internal subscriber:

* a stream import (A imports B's ``events.>``, optionally as ``b.events.>``) is a
  subscription in B's router on ``events.>`` that republishes each message in A's
  router under the mapped subject;
* a service import (A imports B's ``time`` as ``b.time``) is a subscription in A's
  router on ``b.time`` that republishes each request in B's router on ``time``;
  its reply subject is replaced by ``_R_.<id>.<n>``, and one subscription per
  import on ``_R_.<id>.>`` in B's router sends the first answer back to the
  requester's own reply subject in A (then forgets it; at most ``RESPONSES_MAX``
  pending, each for ``RESPONSE_TTL`` seconds).

Messages cross at most ``MAX_HOPS`` imports (a cycle of imports cannot loop).
Internal subscribers take every delivery through ``deliver`` (``inline`` False),
so the router's inline framing never writes into them. Synchronous, no I/O.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.auth.activation import activation_refusal
from edge.auth.jwt import AccountClaims, JwtError, read_activation
from edge.auth.settings import (
    GLOBAL_ACCOUNT,
    AccountConfig,
    ExportConfig,
    ImportConfig,
    find_export,
    matching_export,
)
from edge.router import InProcessSubscriber, Router, Subscription

MAX_HOPS = 2
RESPONSES_MAX = 10_000
RESPONSE_TTL = 120.0


def _ref(token: bytes) -> int | None:
    """N of a ``$N`` (or ``{{wildcard(N)}}``) wildcard reference, else None."""
    if token.startswith(b"$") and token[1:].isdigit():
        return int(token[1:])
    if token.startswith(b"{{") and token.endswith(b"}}"):
        inner = token[2:-2].replace(b" ", b"")
        if inner.startswith(b"wildcard(") and inner.endswith(b")") and inner[9:-1].isdigit():
            return int(inner[9:-1])
    return None


def plain(subject: bytes) -> bytes:
    """``subject`` with its wildcard references as the ``*`` they stand for."""
    if b"$" not in subject and b"{" not in subject:
        return subject
    return b".".join(b"*" if _ref(t) is not None else t for t in subject.split(b"."))


def remap(pattern: bytes, to: bytes, subject: bytes) -> bytes:
    """``subject`` (matched by ``pattern``) in the importer's space ``to``: the
    tokens under ``pattern``'s wildcards go to ``to``'s wildcards, in order, or to
    the ``$N`` references that name them."""
    if pattern == to:
        return subject
    ptoks = pattern.split(b".")
    stoks = subject.split(b".")
    captured: list[bytes] = []
    for i, tok in enumerate(ptoks):
        if tok == b"*":
            captured.append(stoks[i])
        elif tok == b">":
            captured.append(b".".join(stoks[i:]))
    out: list[bytes] = []
    it = iter(captured)
    for tok in to.split(b"."):
        n = _ref(tok)
        if n is not None:
            out.append(captured[n - 1] if 0 < n <= len(captured) else tok)
        else:
            out.append(next(it, tok) if tok in (b"*", b">") else tok)
    return b".".join(out)


def inverse(remote: bytes, local: bytes) -> bytes:
    """The remote pattern whose wildcards are references to the wildcards of
    ``plain(local)`` carrying them: maps a subject of the importer's space back
    to the exporter's when ``local`` reorders them with ``$N``."""
    lwild = [t for t in local.split(b".") if t in (b"*", b">") or _ref(t) is not None]
    refs = [_ref(t) for t in lwild]
    if not any(r is not None for r in refs):
        return remote
    free = iter(j for j, r in enumerate(refs, 1) if r is None)
    out: list[bytes] = []
    k = 0
    for tok in remote.split(b"."):
        if tok not in (b"*", b">"):
            out.append(tok)
            continue
        k += 1
        j = next((j for j, r in enumerate(refs, 1) if r == k), None) or next(free, None)
        out.append(b"$%d" % j if j is not None else tok)
    return b".".join(out)


class _Internal(InProcessSubscriber):
    """A subscriber inside the server (no socket)."""

    echo = True
    hops = 0  # imports the message being delivered has crossed (all bridges share it)

    def __init__(self) -> None:
        self.out = bytearray()
        self.subscriptions: list[tuple[Router, Subscription]] = []

    def _subscribe(self, router: Router, sub: Subscription) -> Subscription:
        router.subscribe(sub)
        self.subscriptions.append((router, sub))
        return sub

    def close(self) -> None:
        """Undo the import: its subscriptions leave their routers."""
        for router, sub in self.subscriptions:
            router.unsubscribe(sub)
        self.subscriptions.clear()

    def appended(self, sub: Subscription) -> None:
        self.out.clear()

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        raise NotImplementedError

    def _relay(self, target: Router, subject: bytes, reply: bytes, hdr: int, data: bytes) -> None:
        if _Internal.hops >= MAX_HOPS:
            return
        _Internal.hops += 1
        try:
            target.publish(self, subject, reply, hdr, data)
        finally:
            _Internal.hops -= 1


class StreamImport(_Internal):
    def __init__(self, exporter: Router, importer: Router, imp: ImportConfig) -> None:
        super().__init__()
        self.importer = importer
        self.subject = imp.subject
        self.to = imp.to or imp.subject  # may hold $N references
        self.sub = self._subscribe(exporter, Subscription(self, imp.subject, None, b"import"))

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        self._relay(self.importer, remap(self.subject, self.to, subject), reply, hdr, data)


class _Responses(_Internal):
    """Answers in the exporter's space, sent back to the requesters' replies
    (the first only, unless the export's responses are a stream)."""

    def __init__(
        self, exporter: Router, importer: Router, clock: Callable[[], float], many: bool
    ) -> None:
        super().__init__()
        self.importer = importer
        self.clock = clock
        self.many = many
        self.prefix = b"_R_." + secrets.token_hex(6).encode() + b"."
        self.pending: dict[bytes, tuple[bytes, float]] = {}
        self._next = itertools.count(1)
        self._subscribe(exporter, Subscription(self, self.prefix + b">", None, b"responses"))

    def route(self, reply: bytes) -> bytes:
        now = self.clock()
        pending = self.pending
        while pending:
            oldest = next(iter(pending))
            if len(pending) < RESPONSES_MAX and pending[oldest][1] > now:
                break
            del pending[oldest]
        mapped = self.prefix + b"%d" % next(self._next)
        pending[mapped] = (reply, now + RESPONSE_TTL)
        return mapped

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        entry = self.pending.get(subject) if self.many else self.pending.pop(subject, None)
        if entry is not None and entry[1] > self.clock():
            self._relay(self.importer, entry[0], reply, hdr, data)


class ServiceImport(_Internal):
    def __init__(
        self,
        exporter: Router,
        importer: Router,
        imp: ImportConfig,
        clock: Callable[[], float],
        many: bool = False,
    ) -> None:
        super().__init__()
        self.exporter = exporter
        local = imp.to or imp.subject
        self.local_subject = plain(local)
        self.subject = inverse(imp.subject, local)
        self.responses = _Responses(exporter, importer, clock, many)
        self.sub = self._subscribe(
            importer, Subscription(self, self.local_subject, None, b"service")
        )

    def close(self) -> None:
        super().close()
        self.responses.close()

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        mapped_reply = self.responses.route(reply) if reply else b""
        target = remap(self.local_subject, self.subject, subject)
        self._relay(self.exporter, target, mapped_reply, hdr, data)


@dataclass(frozen=True, slots=True)
class JoinProblem:
    """An import of an operator-mode account that was not made, and why."""

    account: str
    subject: str
    reason: str


class Accounts:
    """The routers of all accounts and the imports between them."""

    def __init__(
        self,
        global_router: Router,
        accounts: tuple[AccountConfig, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routers: dict[str, Router] = {GLOBAL_ACCOUNT: global_router}
        self.limits: dict[str, AccountConfig] = {a.name: a for a in accounts}
        self.clock = clock
        for account in accounts:
            self.routers[account.name] = Router()
        self.bridges: list[_Internal] = []
        self._made: dict[str, list[_Internal]] = {}  # importing account -> its bridges
        # (importing account, import): the subscriptions /subsz lists, as nats-server does.
        self.service_imports: list[tuple[str, ServiceImport]] = []
        self.jwt_claims: dict[str, AccountClaims] = {}  # operator-mode accounts joined
        self.exporters: dict[str, AccountClaims] = {}  # and those they import from
        # Importing account -> when the first of its activation tokens expires
        # (a Unix time): its imports are made again then, without that one.
        self.activation_expiries: dict[str, float] = {}
        by_name = {a.name: a for a in accounts}
        for account in accounts:
            for imp in account.imports:
                export = find_export(by_name[imp.account], imp, account.name)
                self._join(account.name, imp, self.routers[imp.account], export)

    def _join(
        self, account: str, imp: ImportConfig, exporter: Router, export: ExportConfig | None
    ) -> None:
        importer = self.router(account)
        bridge: _Internal
        if imp.kind == "stream":
            bridge = StreamImport(exporter, importer, imp)
        else:
            many = export is not None and export.response_type != "singleton"
            bridge = service = ServiceImport(exporter, importer, imp, self.clock, many)
            self.service_imports.append((account, service))
        self.bridges.append(bridge)
        self._made.setdefault(account, []).append(bridge)

    def _unjoin(self, account: str) -> None:
        """Undo the imports made for ``account`` (its JWT changed)."""
        made = self._made.pop(account, [])
        for bridge in made:
            bridge.close()
        self.bridges = [b for b in self.bridges if b not in made]
        self.service_imports = [(a, s) for a, s in self.service_imports if s not in made]

    def router(self, name: str) -> Router:
        """The router of account ``name`` (operator-mode accounts are made on first use)."""
        router = self.routers.get(name)
        if router is None:
            router = self.routers[name] = Router()
        return router

    def join_jwt_account(
        self,
        claims: AccountClaims,
        lookup: Callable[[str], AccountClaims | None],
        now: float | None = None,
        force: bool = False,
    ) -> list[JoinProblem]:
        """Make the imports of operator-mode account ``claims`` (at its first
        client, and again when its JWT changed: a new file in a directory
        resolver, a reload, a claims update; ``force``: again even if unchanged,
        e.g. an exporter's JWT changed or an activation expired). Each must name
        an account ``lookup`` knows whose JWT exports a covering subject; an
        export with ``token_req`` needs the import's activation token, which
        must be in its time window (``now``, a Unix time) and not revoked by the
        export (see edge.auth.activation)."""
        key = claims.public_key
        known = self.jwt_claims.get(key)
        if not force and (known is claims or known == claims):
            return []
        if known is not None:
            self._unjoin(key)
        self.jwt_claims[key] = claims
        self.activation_expiries.pop(key, None)
        self.router(key)
        wall = time.time() if now is None else now
        problems = [JoinProblem(key, "", reason) for reason in claims.dropped]
        for imp in claims.imports:
            subject = imp.subject.decode()
            exporter = lookup(imp.account) if imp.account != key else None
            if exporter is None:
                problems.append(JoinProblem(key, subject, f"no usable account {imp.account}"))
                continue
            export = matching_export(exporter.exports, imp, key)
            if export is None:
                problems.append(
                    JoinProblem(key, subject, f"account {imp.account} exports no {imp.kind} for it")
                )
                continue
            if export.token_required:
                reason = self._activation_refusal(key, imp, exporter, export, wall)
                if reason is not None:
                    problems.append(JoinProblem(key, subject, reason))
                    continue
            self.exporters[imp.account] = exporter
            self._join(key, imp, self.router(imp.account), export)
        return problems

    def _activation_refusal(
        self, key: str, imp: ImportConfig, exporter: AccountClaims, export: ExportConfig, now: float
    ) -> str | None:
        if imp.token is None:
            return "export needs an activation token, the import has none"
        try:
            act = read_activation(imp.token)
        except JwtError as exc:  # verified with the account JWT: not expected
            return f"activation token: {exc}"
        reason = activation_refusal(
            act, exporter.public_key, exporter.signing_keys, export.revocations, now
        )
        if reason is None and act.expires:
            known = self.activation_expiries.get(key)
            self.activation_expiries[key] = min(known, act.expires) if known else act.expires
        return reason

    def drop_jwt_account(self, key: str) -> None:
        """Forget operator-mode account ``key`` (its JWT was removed or became
        invalid): its imports are undone; it is joined again at its next client."""
        self._unjoin(key)
        self.jwt_claims.pop(key, None)
        self.exporters.pop(key, None)
        self.activation_expiries.pop(key, None)

    def importers_of(self, key: str) -> list[AccountClaims]:
        """The joined accounts with an import from account ``key``."""
        return [
            c
            for k, c in self.jwt_claims.items()
            if k != key and any(i.account == key for i in c.imports)
        ]
