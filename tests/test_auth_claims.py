"""The pure parts of operator mode's account and user claims: JWT exports and
imports as nats-server 2.9.10 reads them, wildcard references, which imports are
made (and why the others are not)."""

from __future__ import annotations

import calendar
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edge.accounts import Accounts, JoinProblem, inverse, plain, remap
from edge.auth import access
from edge.auth import jwt as natsjwt
from edge.auth.settings import ExportConfig, ImportConfig, SettingError, parse_security
from edge.nkeys import PREFIX_ACCOUNT, PREFIX_OPERATOR, PREFIX_USER, KeyPair
from edge.router import Router
from tests.jwtgen import account_jwt, encode_jwt, operator_jwt

OPERATOR = KeyPair.generate(PREFIX_OPERATOR)
EXPORTER = KeyPair.generate(PREFIX_ACCOUNT)
IMPORTER = KeyPair.generate(PREFIX_ACCOUNT)
OTHER = KeyPair.generate(PREFIX_ACCOUNT)


def _claims(keys: KeyPair, **fields: object) -> natsjwt.AccountClaims:
    token = account_jwt(OPERATOR, keys, "X", **fields)
    op = natsjwt.Operator(OPERATOR.public_key(), frozenset(), None)
    return natsjwt.verified_account(token, op, time.time())


def test_jwt_imports_both_spellings() -> None:
    a = EXPORTER.public_key()
    claims = _claims(
        IMPORTER,
        imports=[
            {"subject": "time", "account": a, "local_subject": "a.time", "type": "service"},
            {"subject": "a.time", "account": a, "to": "time", "type": "service"},
            {"subject": "time", "account": a, "type": "service"},
            {"subject": "ev.>", "account": a, "local_subject": "in.>", "type": "stream"},
            {"subject": "ev.>", "account": a, "to": "pre", "type": "stream"},
            {"subject": "w.*", "account": a, "local_subject": "x.$1", "type": "service"},
            # Left out (2.9.10 lets these pass but they cannot be used):
            {"subject": "x", "account": "not-a-key", "type": "stream"},
            {"subject": "x", "account": a, "local_subject": "a..b", "type": "stream"},
        ],
    )
    assert claims.imports == (
        ImportConfig("service", a, b"time", b"a.time"),
        ImportConfig("service", a, b"time", b"a.time"),  # 'to' names the exporter's
        ImportConfig("service", a, b"time", b"time"),
        ImportConfig("stream", a, b"ev.>", b"in.>"),
        ImportConfig("stream", a, b"ev.>", b"pre.ev.>"),  # 'to' is a prefix
        ImportConfig("service", a, b"w.*", b"x.$1"),
    )
    assert len(claims.dropped) == 2


@pytest.mark.parametrize(
    "entry",
    [
        {"subject": "bad subject", "account": EXPORTER.public_key(), "type": "stream"},
        {"subject": "x", "type": "stream"},
        {"account": EXPORTER.public_key(), "type": "stream"},
        {"subject": "x", "account": EXPORTER.public_key(), "type": "other"},
        {"subject": "w.*", "account": EXPORTER.public_key(), "local_subject": "x.$2"},
        "junk",
    ],
)
def test_invalid_jwt_imports_invalidate_the_account(entry: object) -> None:
    """What 2.9.10 finds invalid makes the account JWT invalid (its users refused)."""
    if isinstance(entry, dict):
        entry.setdefault("type", "service")
    with pytest.raises(natsjwt.JwtError):
        _claims(IMPORTER, imports=[entry])


@pytest.mark.parametrize(
    "entry",
    [
        {"subject": "a b", "type": "service"},
        {"subject": "zz"},
        {"subject": "zz", "type": "service", "response_type": "Weird"},
        {"subject": "zz", "type": "service", "response_type": "stream"},
        ["junk"],
    ],
)
def test_invalid_jwt_exports_invalidate_the_account(entry: object) -> None:
    with pytest.raises(natsjwt.JwtError):
        _claims(EXPORTER, exports=[entry])


def test_jwt_exports() -> None:
    claims = _claims(
        EXPORTER,
        exports=[
            {"subject": "time", "type": "service"},
            {"subject": "many", "type": "service", "response_type": "Stream"},
            {"subject": "tok.>", "type": "stream", "token_req": True},
        ],
    )
    assert claims.exports == (
        ExportConfig("service", b"time"),
        ExportConfig("service", b"many", None, "stream"),
        ExportConfig("stream", b"tok.>", None, "singleton", True),
    )
    assert claims.dropped == ()


def test_wildcard_references() -> None:
    assert plain(b"x.$2.$1") == b"x.*.*"
    assert plain(b"x.{{wildcard(1)}}") == b"x.*"
    assert remap(b"a.*.*", b"x.$2.$1", b"a.p.q") == b"x.q.p"
    assert remap(b"a.*.>", b"x.{{ wildcard(2) }}.$1", b"a.p.q.r") == b"x.q.r.p"
    # Back from the importer's subject to the exporter's.
    back = inverse(b"wc.*.*", b"x.$2.$1")
    assert back == b"wc.$2.$1"
    assert remap(plain(b"x.$2.$1"), back, b"x.p.q") == b"wc.q.p"
    assert inverse(b"wc.*", b"x.*") == b"wc.*"


@given(st.lists(st.sampled_from([b"p", b"q", b"rr"]), min_size=2, max_size=2))
def test_swapped_references_round_trip(tokens: list[bytes]) -> None:
    subject = b"wc." + b".".join(tokens)
    local = remap(b"wc.*.*", b"x.$2.$1", subject)
    assert remap(plain(b"x.$2.$1"), inverse(b"wc.*.*", b"x.$2.$1"), local) == subject


def test_join_jwt_account_problems() -> None:
    a = EXPORTER.public_key()
    exporter = _claims(
        EXPORTER,
        exports=[
            {"subject": "time", "type": "service"},
            {"subject": "tok", "type": "service", "token_req": True},
        ],
    )
    importer = _claims(
        IMPORTER,
        imports=[
            {"subject": "time", "account": a, "type": "service"},
            {"subject": "tok", "account": a, "type": "service"},
            {"subject": "other", "account": a, "type": "service"},
            {"subject": "x", "account": OTHER.public_key(), "type": "stream"},
            {"subject": "x", "account": "AUNKNOWN", "type": "stream"},
        ],
    )
    accounts = Accounts(Router(), ())
    problems = accounts.join_jwt_account(importer, {a: exporter}.get)
    assert problems[0] == JoinProblem(
        IMPORTER.public_key(), "", "import '': account 'AUNKNOWN' is not an account public key"
    )
    problems = problems[1:]
    assert [(p.subject, p.reason) for p in problems] == [
        ("tok", "export needs an activation token, the import has none"),
        ("other", f"account {a} exports no service for it"),
        ("x", f"no usable account {OTHER.public_key()}"),
    ]
    assert len(accounts.bridges) == 1
    assert accounts.join_jwt_account(importer, {a: exporter}.get) == []  # once only


# ---- user JWT claims: revocations, src, times -----------------------------------


def test_revocations() -> None:
    assert access.revoked([("UA", 100)], "UA", 100)  # issued at the revocation time
    assert access.revoked([("UA", 100)], "UA", 99)
    assert not access.revoked([("UA", 100)], "UA", 101)
    assert not access.revoked([("UB", 100)], "UA", 50)
    assert access.revoked([("*", 100)], "UA", 50)
    assert not access.revoked([], "UA", 0)


def test_source_networks() -> None:
    allowed = access.source_allowed
    assert allowed((), None)
    assert allowed(("127.0.0.0/8",), "127.0.0.1")
    assert allowed(("10.0.0.0/8", "::1/128"), "::1")
    assert not allowed(("10.0.0.0/8",), "127.0.0.1")
    assert not allowed(("127.0.0.1",), "127.0.0.1")  # not a CIDR: matches nothing
    assert not allowed(("junk/8", "127.0.0.0/8"), "127.0.0.1")  # refused at the bad entry
    assert allowed(("127.0.0.0/8", "junk/8"), "127.0.0.1")
    assert not allowed(("127.0.0.0/8",), None)
    assert not allowed(("127.0.0.0/8",), "not-an-ip")


def _at(hms: str) -> float:
    """A UTC time on 2026-06-15."""
    return calendar.timegm(time.strptime("2026-06-15 " + hms, "%Y-%m-%d %H:%M:%S"))


def test_connect_times() -> None:
    office = (("08:00:00", "17:00:00"),)
    assert access.time_allowed((), "", _at("03:00:00"))
    assert access.time_allowed(office, "UTC", _at("12:00:00"))
    assert not access.time_allowed(office, "UTC", _at("08:00:00"))  # strictly inside
    assert not access.time_allowed(office, "UTC", _at("17:00:00"))
    assert not access.time_allowed(office, "UTC", _at("18:00:00"))
    # 12:00 UTC is 14:00 in Paris (summer), 21:00 in Tokyo.
    assert access.time_allowed(office, "Europe/Paris", _at("12:00:00"))
    assert not access.time_allowed(office, "Asia/Tokyo", _at("12:00:00"))
    night = (("22:00:00", "06:00:00"),)
    assert access.time_allowed(night, "UTC", _at("23:00:00"))
    # As nats-server: the range starts today, so the hours after midnight are out.
    assert not access.time_allowed(night, "UTC", _at("03:00:00"))
    assert not access.time_allowed(office, "Nowhere/Else", _at("12:00:00"))
    assert not access.time_allowed((("8am", "5pm"),), "UTC", _at("12:00:00"))
    assert not access.time_allowed((("24:00:00", "25:00:00"),), "UTC", _at("12:00:00"))
    assert access.time_allowed((("bad", "x"), *office), "UTC", _at("12:00:00")) is False


@given(st.integers(0, 86399), st.integers(0, 86399), st.integers(1, 86398))
def test_connect_times_inside_range(a: int, b: int, t: int) -> None:
    start, end = sorted((a, b))
    hms = [time.strftime("%H:%M:%S", time.gmtime(x)) for x in (start, end)]
    now = _at("00:00:00") + t
    assert access.time_allowed(((hms[0], hms[1]),), "UTC", now) == (start < t < end)


def test_refusal_reasons() -> None:
    now = _at("12:00:00")
    ok = access.refusal("UA", 10, ("127.0.0.0/8",), (), "", [("UB", 50)], "127.0.0.1", now)
    assert ok is None
    assert access.refusal("UA", 10, (), (), "", [("UA", 50)], "1.2.3.4", now) == (
        "user JWT revoked by its account"
    )
    assert access.refusal("UA", 10, ("10.0.0.0/8",), (), "", (), "1.2.3.4", now) == (
        "client address outside the JWT's src networks"
    )
    assert access.refusal("UA", 10, (), (("01:00:00", "02:00:00"),), "UTC", (), None, now) == (
        "outside the JWT's connect times"
    )


def test_user_claims_src_times_read() -> None:
    user = KeyPair.generate(PREFIX_USER)
    token = encode_jwt(
        IMPORTER,
        user.public_key(),
        "u",
        {
            "type": "user",
            "version": 2,
            "src": "10.0.0.0/8, 127.0.0.1/32",
            "times": [{"start": "01:00:00", "end": "02:00:00"}, "junk"],
            "times_location": "UTC",
        },
    )
    claims = natsjwt.read_user(token)
    assert claims == natsjwt.verified_user(token, time.time())
    assert claims.src == ("10.0.0.0/8", "127.0.0.1/32")
    assert claims.times == (("01:00:00", "02:00:00"), ("", ""))
    assert claims.times_location == "UTC"
    assert claims.issued_at > 0


def test_when_an_accepted_jwt_expires() -> None:
    now = _at("12:00:00")
    office = (("08:00:00", "17:00:00"),)
    assert access.window_end(office, "UTC", now) == _at("17:00:00")
    assert access.window_end((), "UTC", now) is None
    assert access.window_end((("01:00:00", "02:00:00"),), "UTC", now) is None
    assert access.expires_at(0.0, (), "", now) is None
    assert access.expires_at(now + 60, office, "UTC", now) == now + 60
    assert access.expires_at(now + 86400, office, "UTC", now) == _at("17:00:00")
    assert access.expires_at(0.0, office, "UTC", now) == _at("17:00:00")
    # A night range ends the next morning.
    assert access.window_end((("22:00:00", "06:00:00"),), "UTC", _at("23:00:00")) == (
        _at("06:00:00") + 86400
    )


def test_allowed_connection_types() -> None:
    allowed = access.connection_type_allowed
    assert allowed(())
    assert allowed(("STANDARD",))
    assert allowed(("standard", "FOO"))  # unknown types are left out
    assert not allowed(("LEAFNODE", "MQTT"))
    assert not allowed(("FOO",))  # only unknown types: meant another kind of client
    assert allowed(("LEAFNODE",), "LEAFNODE")
    assert access.refusal("UA", 0, (), (), "", (), None, 0.0, ("MQTT",)) == (
        "connection type not in the JWT's allowed_connection_types"
    )


def test_preloaded_account_jwts_must_decode() -> None:
    """As nats-server 2.9.10 (its -t check): a preload with a bad signature, or
    not an account JWT, stops the start; an expired one does not."""
    good = account_jwt(OPERATOR, EXPORTER, "A")
    expired = encode_jwt(
        OPERATOR, EXPORTER.public_key(), "A", {"type": "account", "version": 2}, expires=1
    )
    raw = {
        "operator": operator_jwt(OPERATOR),
        "resolver": "MEMORY",
    }
    for token in (good, expired):
        parse_security({**raw, "resolver_preload": {EXPORTER.public_key(): token}})
    bad_sig = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    user = encode_jwt(EXPORTER, KeyPair.generate(PREFIX_USER).public_key(), "u", {"type": "user"})
    for token in (bad_sig, user, "not.a.jwt"):
        with pytest.raises(SettingError) as err:
            parse_security({**raw, "resolver_preload": {EXPORTER.public_key(): token}})
        assert err.value.key == f"resolver_preload.{EXPORTER.public_key()}"
        assert "invalid account JWT" in err.value.reason


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    ["type", "subject", "account", "local_subject", "to", "response_type", "token_req", "name"]
)


@given(
    st.lists(st.dictionaries(_FIELDS, _JSON, max_size=6) | _JSON, max_size=4),
    st.lists(st.dictionaries(_FIELDS, _JSON, max_size=6) | _JSON, max_size=4),
    _JSON,
)
@example([], [], {"*": float("inf"), "UA": -float("inf"), "UB": 1e300})
def test_hostile_account_claims_are_refused_or_read(
    exports: list[object], imports: list[object], revocations: object
) -> None:
    """Any JSON in exports, imports and revocations: claims or a JwtError, nothing else."""
    claims = {
        "sub": EXPORTER.public_key(),
        "iss": OPERATOR.public_key(),
        "nats": {"exports": exports, "imports": imports, "revocations": revocations},
    }
    try:
        read = natsjwt.account_claims(claims)
    except natsjwt.JwtError:
        return
    accounts = Accounts(Router(), ())
    accounts.join_jwt_account(read, lambda key: read)


@given(st.text(max_size=40))
def test_any_times_location_is_a_zone_or_refused(location: str) -> None:
    assert access.time_allowed((("00:00:00", "23:59:59"),), location, _at("12:00:00")) in (
        True,
        False,
    )


def test_rejoin_when_the_account_jwt_changes() -> None:
    a = EXPORTER.public_key()
    exporter = _claims(EXPORTER, exports=[{"subject": ">", "type": "service"}])
    first = _claims(IMPORTER, imports=[{"subject": "one", "account": a, "type": "service"}])
    second = _claims(IMPORTER, imports=[{"subject": "two", "account": a, "type": "service"}])
    accounts = Accounts(Router(), ())
    lookup = {a: exporter}.get
    assert accounts.join_jwt_account(first, lookup) == []
    importer = accounts.router(IMPORTER.public_key())
    assert importer.sublist.has_interest(b"one")
    assert accounts.join_jwt_account(first, lookup) == []  # the same claims: nothing to do
    assert accounts.join_jwt_account(second, lookup) == []
    assert not importer.sublist.has_interest(b"one")
    assert importer.sublist.has_interest(b"two")
    assert len(accounts.bridges) == len(accounts.service_imports) == 1
    # The old import's responses subscription left the exporter's router too.
    assert len(accounts.router(a).sublist) == 1
