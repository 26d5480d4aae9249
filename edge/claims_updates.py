"""Account claims updates pushed by the system account, as nats-server 2.9.10
takes them: a client of the system account publishes an account JWT to
``$SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE`` (or the older
``$SYS.ACCOUNT.<account>.CLAIMS.UPDATE``) and, if it asked for a reply, gets
the server's answer: ``{"server": {...}, "data": {"account": ..., "code": 200,
"message": "jwt updated"}}``, or ``"error": {"code": 500, "description": ...}``.

The subscriber lives in the system account's router (no socket); what an
update does to the account and its connections is edge.security's
(``Security.claims_update``), which returns the message and whether it failed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from edge.router import InProcessSubscriber, Router, Subscription

SUBJECTS = (b"$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE", b"$SYS.ACCOUNT.*.CLAIMS.UPDATE")

# (account public key, the JWT) -> (message, error or None)
Apply = Callable[[str, bytes], tuple[str, str | None]]


def account_of(subject: bytes) -> str | None:
    """The account key an update subject names (None: not an update subject)."""
    tokens = subject.split(b".")
    if len(tokens) == 6 and tokens[1] == b"REQ":
        return tokens[3].decode("ascii", "replace")
    if len(tokens) == 5:
        return tokens[2].decode("ascii", "replace")
    return None


def response(server: dict[str, object], account: str, message: str, error: str | None) -> bytes:
    """nats-server's answer to an update (respondToUpdate)."""
    body: dict[str, object] = {"account": account}
    out: dict[str, object] = {"server": server}
    if error is None:
        body.update(code=200, message=message)
        out["data"] = body
    else:
        body.update(code=500, description=f"{message} - {error}")
        out["error"] = body
    return json.dumps(out).encode()


class ClaimsUpdates(InProcessSubscriber):
    """The system account's subscriptions to claims updates."""

    echo = False

    def __init__(self, router: Router, apply: Apply, server: Callable[[], dict[str, object]]):
        self.out = bytearray()
        self.router = router
        self.apply = apply
        self.server = server
        self.subscriptions = [Subscription(self, s, None, b"claims") for s in SUBJECTS]
        for sub in self.subscriptions:
            router.subscribe(sub)

    def close(self) -> None:
        for sub in self.subscriptions:
            self.router.unsubscribe(sub)

    def appended(self, sub: Subscription) -> None:
        self.out.clear()

    def deliver(
        self, sub: Subscription, subject: bytes, reply: bytes, hdr: int, data: bytes
    ) -> None:
        account = account_of(subject)
        if account is None:
            return
        message, error = self.apply(account, data[hdr:])
        if reply:
            info = {**self.server(), "time": dt.datetime.now(dt.UTC).isoformat()}
            self.router.publish(self, reply, b"", 0, response(info, account, message, error))
