"""The pure auth modules byte by byte and with Hypothesis: permission matching and
caching, error texts, security settings, nkey/JWT verification, the authenticator,
subject remapping of imports."""

from __future__ import annotations

import base64
import json
import time

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.accounts import remap
from edge.auth import jwt as natsjwt
from edge.auth.authn import Authenticator, cert_identities
from edge.auth.permissions import (
    Permissions,
    PublishCache,
    ResponsePermission,
    SubjectPermission,
    SubjectRule,
    needs_deny_filter,
    publish_allowed,
    publish_violation,
    subscribe_allowed,
    subscribe_violation,
)
from edge.auth.settings import SettingError, parse_security
from edge.nkeys import PREFIX_ACCOUNT, PREFIX_OPERATOR, PREFIX_USER, KeyPair
from edge.proto.session import parse_connect
from edge.subjects import matches
from tests.jwtgen import account_jwt, encode_jwt, operator_jwt, user_jwt


def rules(*texts: str) -> tuple[SubjectRule, ...]:
    return tuple(SubjectRule.parse(t) for t in texts)


# ---- permissions -------------------------------------------------------------------


def test_publish_allow_and_deny() -> None:
    perm = SubjectPermission(rules("foo.*", "req.>"), rules("foo.secret"))
    assert publish_allowed(perm, b"foo.a")
    assert publish_allowed(perm, b"req.a.b")
    assert not publish_allowed(perm, b"foo.secret")
    assert not publish_allowed(perm, b"foo.a.b")
    assert not publish_allowed(perm, b"bar")
    assert publish_allowed(None, b"anything")
    assert not publish_allowed(SubjectPermission(()), b"x")  # empty allow list: nothing


def test_subscribe_wildcards_taken_literally() -> None:
    perm = SubjectPermission(rules("foo.*"))
    assert subscribe_allowed(perm, b"foo.*", None)
    assert subscribe_allowed(perm, b"foo.>", None)  # nats-server's sublist Match quirk
    assert not subscribe_allowed(SubjectPermission(rules("foo.bar")), b"foo.*", None)
    assert not subscribe_allowed(perm, b">", None)


def test_subscribe_queue_entries() -> None:
    perm = SubjectPermission(rules("work q1", "jobs.* w.*", "jobs.* w*"), rules("jobs.x w.9"))
    assert subscribe_allowed(perm, b"work", b"q1")
    assert not subscribe_allowed(perm, b"work", b"q2")
    assert not subscribe_allowed(perm, b"work", None)  # only queue entries match
    assert subscribe_allowed(perm, b"jobs.a", b"w.1")  # queue filters match by tokens
    assert not subscribe_allowed(perm, b"jobs.a", b"w1")  # "w*" is no wildcard: literal
    assert subscribe_allowed(perm, b"jobs.a", b"w*")
    assert not subscribe_allowed(perm, b"jobs.x", b"w.9")  # the deny queue entry
    assert subscribe_allowed(perm, b"jobs.x", b"w.1")


def test_deny_filter_for_wildcard_subscriptions() -> None:
    perm = SubjectPermission(None, rules("foo.secret"))
    assert needs_deny_filter(perm, b"foo.*")
    assert needs_deny_filter(perm, b">")
    assert not needs_deny_filter(perm, b"foo.a")
    assert not needs_deny_filter(perm, b"bar.*")


def test_error_texts() -> None:
    assert publish_violation(b"bar") == b"-ERR 'Permissions Violation for Publish to \"bar\"'\r\n"
    assert (
        subscribe_violation(b"a.*", b"q")
        == b'-ERR \'Permissions Violation for Subscription to "a.*" using queue "q"\'\r\n'
    )
    assert publish_violation(b'a"b') == b'-ERR \'Permissions Violation for Publish to "a\\"b"\'\r\n'


def test_publish_cache_and_responses() -> None:
    perms = Permissions(None, None, ResponsePermission(max_msgs=2, expires=10))
    cache = PublishCache(perms)
    assert not cache.check(b"_INBOX.1", 0)  # allow_responses alone denies other publishes
    cache.note_request(b"_INBOX.1", 0)
    assert cache.check(b"_INBOX.1", 1)
    assert cache.check(b"_INBOX.1", 1)
    assert not cache.check(b"_INBOX.1", 1)  # two answers used
    cache.note_request(b"_INBOX.2", 0)
    assert not cache.check(b"_INBOX.2", 11)  # expired
    assert cache.allowed == set()


tokens = st.sampled_from([b"a", b"b", b"foo", b"*", b">"])
subjects = st.lists(st.sampled_from([b"a", b"b", b"foo"]), min_size=1, max_size=4).map(b".".join)
filters = st.lists(tokens, min_size=1, max_size=4).map(
    lambda toks: (
        b".".join(t for t in toks[:-1] if t != b">") + b"." + toks[-1] if len(toks) > 1 else toks[0]
    )
)


@settings(max_examples=300, deadline=None)
@given(st.lists(filters, max_size=3), st.lists(filters, max_size=3), subjects)
def test_publish_cache_agrees_with_lists(
    allow: list[bytes], deny: list[bytes], subject: bytes
) -> None:
    allow = [f for f in allow if f.strip(b".") == f and b".." not in f]
    deny = [f for f in deny if f.strip(b".") == f and b".." not in f]
    perm = SubjectPermission(
        tuple(SubjectRule(f) for f in allow) or None, tuple(SubjectRule(f) for f in deny)
    )
    expected = (not allow or any(matches(f, subject) for f in allow)) and not any(
        matches(f, subject) for f in deny
    )
    cache = PublishCache(Permissions(perm))
    assert cache.check(subject, 0) == expected
    assert cache.check(subject, 0) == expected  # and the cached answer is the same
    assert (subject in cache.allowed) == expected


@settings(max_examples=200, deadline=None)
@given(subjects, st.lists(st.sampled_from([b"a", b"b", b"c"]), min_size=1, max_size=3))
def test_remap_moves_wildcard_tokens(subject: bytes, prefix: list[bytes]) -> None:
    pre = b".".join(prefix)
    assert remap(b">", pre + b".>", subject) == pre + b"." + subject
    toks = subject.split(b".")
    star = b".".join([b"*"] * len(toks))
    assert remap(star, b"x." + star, subject) == b"x." + subject


# ---- settings ------------------------------------------------------------------------


def test_settings_parse_users_accounts_tls_errors() -> None:
    sec = parse_security(
        {
            "authorization.users": [
                {"user": "a", "password": "p", "permissions": {"publish": "x.>"}},
                {"nkey": KeyPair.generate(PREFIX_USER).public_key()},
            ],
            "accounts": {
                "A": {"users": [{"user": "b", "password": "p"}], "exports": [{"stream": "e.>"}]},
                "B": {"imports": [{"stream": {"account": "A", "subject": "e.>"}, "prefix": "p"}]},
            },
            "no_auth_user": "a",
        }
    )
    assert sec.users[0].name == "a"
    assert sec.users[0].permissions.publish == SubjectPermission(rules("x.>"))
    assert sec.accounts[1].imports[0].to == b"p.e.>"
    for raw, key in (
        (
            {"authorization.users": [{"user": "a", "pasword": "p"}]},
            "authorization.users[0].pasword",
        ),
        ({"no_auth_user": "ghost"}, "no_auth_user"),
        (
            {"accounts": {"B": {"imports": [{"stream": {"account": "A", "subject": "x"}}]}}},
            "accounts.B.imports[0]",
        ),
        (
            {
                "accounts": {
                    "A": {"exports": [{"stream": "e.>", "accounts": ["C"]}]},
                    "B": {"imports": [{"stream": {"account": "A", "subject": "e.x"}}]},
                }
            },
            "accounts.B.imports[0]",
        ),
        ({"tls": {"cert_file": "c", "key_file": "k", "verify": True}}, "tls.ca_file"),
        (
            {
                "authorization.users": [
                    {"user": "a", "password": "p", "permissions": {"publish": "a..b"}}
                ]
            },
            "authorization.users[0].permissions.publish[0]",
        ),
        ({"resolver": "MEMORY"}, "resolver"),
    ):
        with pytest.raises(SettingError) as info:
            parse_security(raw)
        assert info.value.key == key, (raw, info.value)


# ---- JWT and authenticator ----------------------------------------------------------


class Chain:
    def __init__(self) -> None:
        self.operator = KeyPair.generate(PREFIX_OPERATOR)
        self.account = KeyPair.generate(PREFIX_ACCOUNT)
        self.user = KeyPair.generate(PREFIX_USER)
        self.account_jwt = account_jwt(self.operator, self.account, "APP")
        self.op_jwt = operator_jwt(self.operator)
        self.auth = Authenticator(
            parse_security(
                {
                    "operator": self.op_jwt,
                    "resolver": "MEMORY",
                    "resolver_preload": {self.account.public_key(): self.account_jwt},
                }
            ),
            resolver={self.account.public_key(): self.account_jwt}.get,
        )

    def connect(self, jwt: str, signer: KeyPair, nonce: bytes = b"n0nce") -> bytes:
        sig = signer.sign_nonce(nonce.decode())
        return json.dumps({"jwt": jwt, "sig": sig}).encode()


def test_jwt_user_accepted_and_claims() -> None:
    chain = Chain()
    nats = {
        "type": "user",
        "version": 2,
        "pub": {"allow": ["a.>"]},
        "sub": {"deny": ["b"]},
        "subs": 5,
        "payload": -1,
    }
    jwt = encode_jwt(chain.account, chain.user.public_key(), "dev", nats)
    ident = chain.auth.authenticate(
        parse_connect(chain.connect(jwt, chain.user)), b"n0nce", time.time()
    )
    assert ident is not None
    assert ident.account == chain.account.public_key()
    assert ident.permissions.publish == SubjectPermission(rules("a.>"))
    assert ident.permissions.subscribe == SubjectPermission(None, rules("b"))
    assert ident.max_subscriptions == 5 and ident.max_payload == 0


def _tamper(jwt: str) -> str:
    head, body, sig = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["nats"]["pub"] = {"allow": [">"]}
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{raw}.{sig}"


def test_jwt_refusals() -> None:
    chain = Chain()
    good = user_jwt(chain.account, chain.user, "dev")
    now = time.time()
    expired = encode_jwt(
        chain.account, chain.user.public_key(), "old", {"type": "user", "version": 2}
    )
    # exp in the past: rebuilt with the claim (encode_jwt has no exp parameter).
    head, body, _ = expired.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["exp"] = int(now) - 10
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    sig = base64.urlsafe_b64encode(chain.account.sign(f"{head}.{body}".encode())).decode()
    expired = f"{head}.{body}.{sig.rstrip('=')}"
    stranger = KeyPair.generate(PREFIX_ACCOUNT)
    cases = {
        "tampered": (_tamper(good), chain.user),
        "expired": (expired, chain.user),
        "wrong nonce signer": (good, KeyPair.generate(PREFIX_USER)),
        "unknown account": (user_jwt(stranger, chain.user, "x"), chain.user),
        "not a jwt": ("abc", chain.user),
        "account jwt as user": (chain.account_jwt, chain.user),
    }
    for name, (jwt, signer) in cases.items():
        opts = parse_connect(chain.connect(jwt, signer))
        assert chain.auth.authenticate(opts, b"n0nce", now) is None, name
    with pytest.raises(natsjwt.JwtError, match="expired"):
        natsjwt.verified_user(expired, now)
    with pytest.raises(natsjwt.JwtError, match="signature"):
        natsjwt.verified_user(_tamper(good), now)


def test_authenticator_users_bcrypt_nkeys_no_auth_and_certs() -> None:
    nkey = KeyPair.generate(PREFIX_USER)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    sec = parse_security(
        {
            "authorization.users": [
                {"user": "plain", "password": "pw"},
                {"user": "hashed", "password": hashed},
                {"nkey": nkey.public_key()},
                {"user": "guest", "password": "x"},
            ],
            "no_auth_user": "guest",
        }
    )
    auth = Authenticator(sec)
    assert auth.required and auth.needs_nonce

    def who(**opts: str) -> str | None:
        ident = auth.authenticate(parse_connect(json.dumps(opts).encode()), b"nonce", 0)
        return ident.name if ident else None

    assert who(user="plain", **{"pass": "pw"}) == "plain"
    assert who(user="hashed", **{"pass": "pw"}) == "hashed"
    assert who(user="hashed", **{"pass": hashed}) is None
    assert who(user="plain", **{"pass": "PW"}) is None
    assert who(nkey=nkey.public_key(), sig=nkey.sign_nonce("nonce")) == nkey.public_key()
    assert who(nkey=nkey.public_key(), sig=nkey.sign_nonce("other")) is None
    assert who(nkey=nkey.public_key(), sig="!!!") is None
    assert who() == "guest"
    assert who(auth_token="x") is None  # credentials given: no fallback to no_auth_user
    assert auth.expensive(parse_connect(b'{"user":"hashed"}'))
    assert not auth.expensive(parse_connect(b'{"user":"plain"}'))

    mapped = Authenticator(
        parse_security(
            {
                "tls": {"cert_file": "c", "key_file": "k", "ca_file": "a", "verify_and_map": True},
                "authorization.users": [{"user": "CN=edge"}],
            }
        )
    )
    empty = parse_connect(b"{}")
    names = cert_identities((), ("dev.local",), "CN=edge")
    assert mapped.authenticate(empty, b"", 0, names) is not None
    assert mapped.authenticate(empty, b"", 0, ("CN=other",)) is None
    assert mapped.authenticate(empty, b"", 0, None) is None
