"""The leafnode session, leaf side: handshake, interest in both directions, permissions.

Theory of operation
-------------------
leafgate dials the hub; the hub speaks first. ``on_info`` takes the hub's first
INFO, refuses a port that is not a leafnode listener (a client port answers with
a client INFO: no ``leafnode_urls``), and returns the opening burst: CONNECT
(unique name and cluster, headers on, credentials, a signed nonce for nkey or
JWT credentials), our own ``$LDS`` loop-detection subject, every local interest
key the link may carry, and a PING. Later INFOs update the hub's permissions,
account and advertised URLs.

Interest flows both ways as keys (a subject, or a subject and a queue name):

* local -> hub: ``LocalInterest`` counts local subscriptions per key, because
  the hub does not: one ``LS-`` removes a key whatever number of ``LS+`` came
  before. Queue keys are announced with their absolute member count as weight.
* hub -> local: ``HubInterest`` mirrors the hub's keys in a subject trie, so a
  local publish can ask "does the hub want this, and which hub queue groups
  have no member here?" in one cached lookup.

Permissions: what the hub lets us receive (``import``) and send (``export``)
arrive in its INFO, the operator's own filters come from the config; both are
applied here before anything is written, since the hub closes the link on a
subscription it refuses. ``$LDS.`` subjects are exempt, as in nats-server.

An ``LS+`` carrying our own ``$LDS`` subject means the hub reaches us through
another path too: a loop. The session raises ``LeafError`` with a 30 s pause.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edge.proto.leafproto import LsMinus, LsPlus, encode_ls_minus, encode_ls_plus
from edge.subjects import matches
from edge.sublist import Sublist

LDS_PREFIX = b"$LDS."
LOOP_PAUSE = 30.0
PERMISSION_PAUSE = 30.0


class LeafErrorKind(Enum):
    WRONG_PORT = "wrong port"
    AUTH = "authorization"
    LOOP = "loop detected"
    PERMISSION = "permission"
    ACCOUNT = "account mismatch"
    DUPLICATE = "duplicate link"
    STALE = "stale link"
    PROTOCOL = "protocol"
    HUB_ERROR = "hub error"


class LeafError(Exception):
    """Why a link attempt failed; ``pause`` is the minimum wait before the next one."""

    def __init__(self, kind: LeafErrorKind, detail: str, pause: float = 0.0) -> None:
        super().__init__(kind, detail, pause)
        self.kind = kind
        self.detail = detail
        self.pause = pause

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}"


def classify_hub_error(text: str) -> LeafError:
    """Map a hub ``-ERR`` text to what it means for the link."""
    # Judge by how the text starts: a subject quoted later in it may hold any word.
    lower = text.lower()
    if lower.startswith("permissions violation"):
        return LeafError(LeafErrorKind.PERMISSION, text, PERMISSION_PAUSE)
    if lower.startswith("loop detected"):
        return LeafError(LeafErrorKind.LOOP, text, LOOP_PAUSE)
    if lower.startswith(("authorization violation", "authentication")):
        return LeafError(LeafErrorKind.AUTH, text)
    if "duplicate" in lower:
        return LeafError(LeafErrorKind.DUPLICATE, text)
    if "stale connection" in lower:
        return LeafError(LeafErrorKind.STALE, text)
    if "attempted to connect to leaf node port" in lower:
        return LeafError(LeafErrorKind.PROTOCOL, text)
    return LeafError(LeafErrorKind.HUB_ERROR, text)


@dataclass(frozen=True)
class SubjectFilter:
    """Allow and deny lists of subject filters; empty ``allow`` allows everything.

    Checks work as nats-server's permission checks do: a subject (which may
    itself hold wildcards, for interest) is allowed when an allow entry matches
    it and no deny entry does, wildcard tokens of the subject compared literally.
    """

    allow: tuple[bytes, ...] = ()
    deny: tuple[bytes, ...] = ()

    def permits(self, subject: bytes) -> bool:
        if not self.allow and not self.deny:
            return True
        if self.allow and not any(matches(f, subject) for f in self.allow):
            return False
        return not any(matches(f, subject) for f in self.deny)

    @classmethod
    def from_hub(cls, perms: Any) -> SubjectFilter:
        """From an INFO ``import``/``export`` object (``{"allow": [...], "deny": [...]}``)."""
        if not isinstance(perms, dict):
            return cls()
        return cls(_subjects(perms.get("allow")), _subjects(perms.get("deny")))


def _subjects(value: Any) -> tuple[bytes, ...]:
    if isinstance(value, str):
        return (value.encode(),)
    if isinstance(value, list):
        return tuple(v.encode() for v in value if isinstance(v, str))
    return ()


ALLOW_ALL = SubjectFilter()


@dataclass(frozen=True)
class LeafIdentity:
    server_id: str
    name: str
    version: str
    lds_subject: bytes  # $LDS.<nuid>, stable for the process


@dataclass(frozen=True)
class LeafAuth:
    """What we present to the hub. At most one method is normally set."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    jwt: str | None = None
    # Signs the nonce (nkey seed, or the seed from a .creds file).
    signer: Any = None  # edge.nkeys.KeyPair; typed loosely to keep this module light


@dataclass(frozen=True)
class LinkRules:
    """Operator filters for one link, and the hub account it must be bound to."""

    up: SubjectFilter = ALLOW_ALL  # what local traffic may go to the hub
    down: SubjectFilter = ALLOW_ALL  # what local interest may pull from the hub
    account: str | None = None


# ---- interest ----------------------------------------------------------------


class LocalInterest:
    """Reference counts of local subscriptions per key; emits LS+/LS- on changes."""

    def __init__(self) -> None:
        self.plain: dict[bytes, int] = {}
        self.queues: dict[tuple[bytes, bytes], int] = {}

    def add(self, subject: bytes, queue: bytes | None) -> bytes | None:
        if queue is None:
            count = self.plain.get(subject, 0) + 1
            self.plain[subject] = count
            return encode_ls_plus(subject) if count == 1 else None
        key = (subject, queue)
        count = self.queues.get(key, 0) + 1
        self.queues[key] = count
        return encode_ls_plus(subject, queue, count)

    def remove(self, subject: bytes, queue: bytes | None) -> bytes | None:
        if queue is None:
            count = self.plain.get(subject, 0) - 1
            if count > 0:
                self.plain[subject] = count
                return None
            if self.plain.pop(subject, None) is None:
                return None
            return encode_ls_minus(subject)
        key = (subject, queue)
        count = self.queues.get(key, 0) - 1
        if count > 0:
            self.queues[key] = count
            return encode_ls_plus(subject, queue, count)
        if self.queues.pop(key, None) is None:
            return None
        return encode_ls_minus(subject, queue)

    def entries(self) -> list[tuple[bytes, bytes | None, int]]:
        out: list[tuple[bytes, bytes | None, int]] = [(s, None, 1) for s in self.plain]
        out.extend((s, q, n) for (s, q), n in self.queues.items())
        return out


class HubInterest:
    """The hub's interest keys, matchable by published subject."""

    def __init__(self) -> None:
        self._index: Sublist[bytes] = Sublist(4096)
        self._keys: dict[tuple[bytes, bytes | None], int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, subject: bytes, queue: bytes | None, weight: int) -> None:
        key = (subject, queue)
        if key not in self._keys:
            self._index.insert(subject, queue, subject if queue is None else subject + b" " + queue)
        self._keys[key] = weight

    def remove(self, subject: bytes, queue: bytes | None) -> None:
        if self._keys.pop((subject, queue), None) is not None:
            item = subject if queue is None else subject + b" " + queue
            self._index.remove(subject, queue, item)

    def route(
        self, subject: bytes, local_queues: frozenset[bytes] | set[bytes] | tuple[bytes, ...]
    ) -> tuple[bytes, ...] | None:
        """Queue names to put on an LMSG for ``subject``, or None if the hub wants nothing.

        Hub queue groups that have a local member are left out: local members
        are preferred, as nats-server prefers them.
        """
        plain, queues = self._index.match(subject)
        if not queues:
            return () if plain else None
        names = tuple(name for name, _members in queues if name not in local_queues)
        if not plain and not names:
            return None
        return names

    def has_queues(self, subject: bytes) -> bool:
        """Whether any hub queue group matches (then routes depend on local groups)."""
        return bool(self._index.match(subject).queues)

    def wants(self, subject: bytes) -> bool:
        return self._index.has_interest(subject)

    def clear(self) -> None:
        self._index = Sublist(4096)
        self._keys.clear()

    def entries(self) -> list[tuple[bytes, bytes | None, int]]:
        return [(s, q, w) for (s, q), w in self._keys.items()]


# ---- the session ---------------------------------------------------------------


@dataclass
class HubInfo:
    """What the hub told us about itself and this link."""

    server_id: str = ""
    server_name: str = ""
    version: str = ""
    max_payload: int = 1024 * 1024
    tls_required: bool = False
    jetstream: bool = False
    domain: str | None = None
    remote_account: str | None = None
    leafnode_urls: list[str] = field(default_factory=list)
    lame_duck: bool = False


def parse_info(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LeafError(LeafErrorKind.PROTOCOL, "hub INFO is not JSON") from None
    if not isinstance(info, dict):
        raise LeafError(LeafErrorKind.PROTOCOL, "hub INFO is not a JSON object")
    return info


class LeafSession:
    """One link's protocol state, independent of sockets and clocks."""

    def __init__(
        self,
        identity: LeafIdentity,
        auth: LeafAuth,
        rules: LinkRules,
        local: LocalInterest,
    ) -> None:
        self.identity = identity
        self.auth = auth
        self.rules = rules
        self.local = local
        self.hub = HubInterest()
        self.info = HubInfo()
        self.hub_import = ALLOW_ALL  # what the hub lets us receive
        self.hub_export = ALLOW_ALL  # what the hub lets us send
        self.connected = False

    # -- handshake ----------------------------------------------------------------

    def on_first_info(self, raw: bytes) -> dict[str, Any]:
        """Validate the hub's first INFO; returns it parsed (TLS may follow)."""
        info = parse_info(raw)
        if not info.get("client_id") or not (
            "leafnode_urls" in info or info.get("info_on_connect")
        ):
            raise LeafError(
                LeafErrorKind.WRONG_PORT,
                "the server did not answer as a leafnode listener "
                "(is the URL a client port? use the hub's leafnodes port, 7422 by default)",
            )
        self._apply_info(info)
        return info

    def opening(self, nonce: str | None) -> list[bytes]:
        """CONNECT, our $LDS subject, then a PING.

        Local interest waits for the hub's answer to CONNECT (the INFO with
        ``connect_info``): only that INFO carries the link's permissions, and an
        ``LS+`` the hub refuses closes the link. A hub that sends no such INFO
        gets the interest when its first PONG arrives (``announce_if_pending``).
        """
        return [
            self._connect(nonce),
            encode_ls_plus(self.identity.lds_subject),
            b"PING\r\n",
        ]

    def announce_if_pending(self) -> list[bytes]:
        """Every announceable local key, once per link."""
        if self.connected:
            return []
        self.connected = True
        return self.announce_all()

    def _connect(self, nonce: str | None) -> bytes:
        body: dict[str, Any] = {
            "version": self.identity.version,
            "server_id": self.identity.server_id,
            "name": self.identity.name,
            "cluster": self.identity.name,
            "headers": True,
        }
        auth = self.auth
        if auth.user is not None:
            body["user"] = auth.user
            if auth.password is not None:
                body["pass"] = auth.password
        if auth.token is not None:
            body["auth_token"] = auth.token
        if auth.jwt is not None:
            body["jwt"] = auth.jwt
        if auth.signer is not None:
            if not nonce:
                raise LeafError(LeafErrorKind.PROTOCOL, "hub sent no nonce to sign")
            if auth.jwt is None:
                body["nkey"] = auth.signer.public_key()
            body["sig"] = auth.signer.sign_nonce(nonce)
        return b"CONNECT " + json.dumps(body, separators=(",", ":")).encode() + b"\r\n"

    def on_info(self, raw: bytes) -> list[bytes]:
        """A later INFO: permissions, account, URLs, lame duck. May re-filter interest."""
        info = parse_info(raw)
        before = (self.hub_import, self.hub_export)
        if info.get("connect_info"):
            # This link's permissions: absent fields mean no restriction.
            self.hub_import = SubjectFilter.from_hub(info.get("import"))
            self.hub_export = SubjectFilter.from_hub(info.get("export"))
        self._apply_info(info)
        expected = self.rules.account
        if (
            expected is not None
            and self.info.remote_account is not None
            and self.info.remote_account != expected
        ):
            raise LeafError(
                LeafErrorKind.ACCOUNT,
                f"hub bound the link to account {self.info.remote_account!r}, "
                f"expected {expected!r} (check the credentials)",
            )
        if not self.connected:
            return self.announce_if_pending() if info.get("connect_info") else []
        if (self.hub_import, self.hub_export) == before:
            return []
        # Permissions changed on a live link: withdraw what the hub would now
        # refuse (it closes the link otherwise), announce what it now allows.
        old_import = before[0]
        out = []
        for s, q, n in self.local.entries():
            was, now = old_import.permits(s), self.hub_import.permits(s)
            if was and not now and self.may_announce_ignoring_hub(s):
                out.append(encode_ls_minus(s, q))
            elif now and not was and self.may_announce(s):
                out.append(encode_ls_plus(s, q, n))
        return out

    def _apply_info(self, info: dict[str, Any]) -> None:
        hub = self.info
        hub.server_id = str(info.get("server_id", hub.server_id))
        hub.server_name = str(info.get("server_name", hub.server_name))
        hub.version = str(info.get("version", hub.version))
        if isinstance(info.get("max_payload"), int):
            hub.max_payload = info["max_payload"]
        hub.tls_required = bool(info.get("tls_required", hub.tls_required))
        hub.jetstream = bool(info.get("jetstream", hub.jetstream))
        if isinstance(info.get("domain"), str):
            hub.domain = info["domain"]
        if isinstance(info.get("remote_account"), str):
            hub.remote_account = info["remote_account"]
        urls = info.get("leafnode_urls")
        if isinstance(urls, list):
            hub.leafnode_urls = [u for u in urls if isinstance(u, str)]
        hub.lame_duck = bool(info.get("ldm", False))

    # -- interest -------------------------------------------------------------------

    def may_announce(self, subject: bytes) -> bool:
        """May local interest in ``subject`` be announced to the hub?"""
        if subject.startswith(LDS_PREFIX):
            return False  # never re-advertise loop-detection subjects
        return self.rules.down.permits(subject) and self.hub_import.permits(subject)

    def may_announce_ignoring_hub(self, subject: bytes) -> bool:
        return not subject.startswith(LDS_PREFIX) and self.rules.down.permits(subject)

    def may_send(self, subject: bytes) -> bool:
        """May a local message on ``subject`` go to the hub?"""
        return self.rules.up.permits(subject) and self.hub_export.permits(subject)

    def announce_all(self) -> list[bytes]:
        return [encode_ls_plus(s, q, n) for s, q, n in self.local.entries() if self.may_announce(s)]

    def on_ls_plus(self, event: LsPlus) -> None:
        if event.subject == self.identity.lds_subject:
            raise LeafError(
                LeafErrorKind.LOOP,
                "the hub announced our own $LDS subject: this gateway reaches the hub "
                "by more than one path",
                LOOP_PAUSE,
            )
        try:
            self.hub.add(event.subject, event.queue, event.weight)
        except ValueError:
            raise LeafError(
                LeafErrorKind.PROTOCOL, f"the hub announced an invalid subject {event.subject!r}"
            ) from None

    def on_ls_minus(self, event: LsMinus) -> None:
        self.hub.remove(event.subject, event.queue)

    def may_receive(self, subject: bytes) -> bool:
        """May a message from the hub on ``subject`` be delivered locally?"""
        return self.rules.down.permits(subject)

    def reset(self) -> None:
        """The link went down: forget everything the hub told us about interest."""
        self.hub.clear()
        self.connected = False
        self.info.lame_duck = False
        self.hub_import = ALLOW_ALL
        self.hub_export = ALLOW_ALL
