"""The leafnode session, leaf side: interest in both directions, permissions, handshake.

Expected behaviour is leafnode.md and the real hub traffic in
``/work/shared/spec/transcripts`` (leaf_mitm_2910, leaf_lsdup_2910, leaf_auth_mitm_214,
fakeleaf_2910, client_core_2910). Tests marked ``# BUG:`` fail against the current
module and describe what should change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.nkeys import KeyPair, decode_sig, verify
from edge.proto.leafnode import (
    ALLOW_ALL,
    LOOP_PAUSE,
    HubInterest,
    LeafAuth,
    LeafError,
    LeafErrorKind,
    LeafIdentity,
    LeafSession,
    LinkRules,
    LocalInterest,
    SubjectFilter,
    classify_hub_error,
)
from edge.proto.leafproto import LeafParser, LsMinus, LsPlus, encode_ls_plus

TRANSCRIPTS = Path("/work/shared/spec/transcripts")
OWN_LDS = b"$LDS.Q82alhO2Bp5HdoZrzIpWod"
HUB_LDS = b"$LDS.SqIE2k0j28kp0bHIq0fA8z"  # hub_2910's, from leaf_mitm_2910
IDENTITY = LeafIdentity(
    server_id="NC4EL6NBBMHFOAZPJ7QSK3AGZJUBP5HL4ISZGCUVKORPO4OIN4O6LOOT",
    name="gw-unit-7",
    version="0.1.0",
    lds_subject=OWN_LDS,
)


def info_lines(name: str, direction: str) -> list[bytes]:
    """The complete (untrimmed) INFO JSON texts sent in ``direction`` in a transcript."""
    out = []
    for raw in (TRANSCRIPTS / name).read_text().splitlines():
        marker = f" {direction} | INFO "
        if marker in raw and "...<" not in raw:
            body = raw.split(marker, 1)[1]
            out.append(body.removesuffix("\\r\\n").strip().encode())
    return out


# First INFO on connect and the INFO after CONNECT, as real hubs sent them.
HUB_2910_FIRST, HUB_2910_CONNECTED = info_lines("leaf_mitm_2910.txt", "c1 H>L")[:2]
HUB_214_FIRST, HUB_214_CONNECTED = info_lines("leaf_auth_mitm_214.txt", "c1 H>L")[:2]
CLIENT_PORT_INFO = info_lines("client_core_2910.txt", "S>C")[0]
NONCE_2910 = json.loads(HUB_2910_FIRST)["nonce"]
NONCE_214 = json.loads(HUB_214_FIRST)["nonce"]


def test_transcript_infos_are_what_the_tests_assume() -> None:
    assert "nonce" in json.loads(HUB_2910_FIRST)
    assert json.loads(HUB_2910_CONNECTED)["connect_info"] is True
    assert json.loads(HUB_214_CONNECTED)["import"] == {"deny": ["private.>"]}
    assert json.loads(HUB_214_CONNECTED)["remote_account"] == "ACC"
    assert "leafnode_urls" not in json.loads(CLIENT_PORT_INFO)


def hub_events(*lines: str) -> list[Any]:
    return LeafParser().feed("".join(line + "\r\n" for line in lines).encode())


def make_session(
    auth: LeafAuth | None = None,
    rules: LinkRules | None = None,
    local: LocalInterest | None = None,
) -> LeafSession:
    return LeafSession(IDENTITY, auth or LeafAuth(), rules or LinkRules(), local or LocalInterest())


def connect_body(line: bytes) -> dict[str, Any]:
    assert line.startswith(b"CONNECT ") and line.endswith(b"\r\n"), line
    body = json.loads(line[len(b"CONNECT ") : -2])
    assert isinstance(body, dict)
    return body


# ---- LocalInterest: reference counts, LS+/LS- on changes --------------------------


def test_plain_interest_is_announced_once_and_withdrawn_at_last_removal() -> None:
    # leaf_mitm_2910 step2/step3: one LS+ per key, LS- when the last sub leaves.
    local = LocalInterest()
    assert local.add(b"leaf.sub", None) == b"LS+ leaf.sub\r\n"
    assert local.add(b"leaf.sub", None) is None
    assert local.add(b"leaf.sub", None) is None
    assert local.remove(b"leaf.sub", None) is None
    assert local.remove(b"leaf.sub", None) is None
    assert local.remove(b"leaf.sub", None) == b"LS- leaf.sub\r\n"
    assert local.entries() == []
    # The key can come back.
    assert local.add(b"leaf.sub", None) == b"LS+ leaf.sub\r\n"


def test_queue_weights_are_absolute() -> None:
    # leaf_mitm_2910: LS+ leaf.q lq 1, LS+ leaf.q lq 2, LS+ leaf.q lq 1, LS- leaf.q lq.
    local = LocalInterest()
    assert local.add(b"leaf.q", b"lq") == b"LS+ leaf.q lq 1\r\n"
    assert local.add(b"leaf.q", b"lq") == b"LS+ leaf.q lq 2\r\n"
    assert local.entries() == [(b"leaf.q", b"lq", 2)]
    assert local.remove(b"leaf.q", b"lq") == b"LS+ leaf.q lq 1\r\n"
    assert local.remove(b"leaf.q", b"lq") == b"LS- leaf.q lq\r\n"
    assert local.entries() == []


def test_keys_are_independent() -> None:
    local = LocalInterest()
    assert local.add(b"a", None) == b"LS+ a\r\n"
    assert local.add(b"a", b"g") == b"LS+ a g 1\r\n"
    assert local.add(b"a", b"h") == b"LS+ a h 1\r\n"
    assert local.remove(b"a", b"g") == b"LS- a g\r\n"
    assert sorted(local.entries(), key=repr) == sorted([(b"a", None, 1), (b"a", b"h", 1)], key=repr)


def test_removing_an_unknown_key_does_nothing() -> None:
    local = LocalInterest()
    assert local.remove(b"nope", None) is None
    assert local.remove(b"nope", b"g") is None
    local.add(b"x", None)
    assert local.remove(b"x", None) == b"LS- x\r\n"
    # One removal too many: no second LS-, no negative count left behind.
    assert local.remove(b"x", None) is None
    assert local.add(b"x", None) == b"LS+ x\r\n"
    local.add(b"q", b"g")
    assert local.remove(b"q", b"g") == b"LS- q g\r\n"
    assert local.remove(b"q", b"g") is None
    assert local.add(b"q", b"g") == b"LS+ q g 1\r\n"


# ---- HubInterest: what the hub wants, and the queue list of an LMSG ------------------


def test_no_hub_interest_routes_nothing() -> None:
    hub = HubInterest()
    assert hub.route(b"anything", frozenset()) is None
    assert not hub.wants(b"anything")
    assert len(hub) == 0


def test_plain_hub_interest_routes_without_queue_names() -> None:
    hub = HubInterest()
    hub.add(b"hub.sub", None, 0)
    assert hub.route(b"hub.sub", frozenset()) == ()
    assert hub.route(b"hub.other", frozenset()) is None
    assert hub.wants(b"hub.sub")


def test_hub_queue_group_without_local_member_is_listed() -> None:
    # leafnode.md §3: `LMSG hub.q | qg 2` when the hub has group qg and we do not.
    hub = HubInterest()
    hub.add(b"hub.q", b"qg", 2)
    assert hub.route(b"hub.q", frozenset()) == (b"qg",)
    assert hub.route(b"hub.q", frozenset({b"other"})) == (b"qg",)


def test_hub_queue_group_with_local_member_is_left_out() -> None:
    hub = HubInterest()
    hub.add(b"hub.q", b"qg", 1)
    # Only queue interest, and every group has a local member: nothing to send.
    assert hub.route(b"hub.q", frozenset({b"qg"})) is None
    assert hub.route(b"hub.q", {b"qg"}) is None
    assert hub.route(b"hub.q", (b"qg",)) is None
    # With a plain hub subscriber too, the message goes, without the local group.
    hub.add(b"hub.>", None, 0)
    assert hub.route(b"hub.q", frozenset({b"qg"})) == ()
    # Two hub groups, one of them local: only the other is listed.
    hub.add(b"hub.q", b"other", 1)
    assert hub.route(b"hub.q", frozenset({b"qg"})) == (b"other",)
    assert sorted(hub.route(b"hub.q", frozenset()) or ()) == [b"other", b"qg"]


def test_wildcard_hub_interest() -> None:
    hub = HubInterest()
    hub.add(b"hub.*", None, 0)
    assert hub.route(b"hub.x", frozenset()) == ()
    assert hub.route(b"hub.x.y", frozenset()) is None
    assert hub.route(b"hub", frozenset()) is None
    hub.add(b"telemetry.>", None, 0)
    assert hub.route(b"telemetry.dev1", frozenset()) == ()
    assert hub.route(b"telemetry.a.b.c", frozenset()) == ()
    assert hub.route(b"telemetry", frozenset()) is None
    # The same group name under two matching wildcards is one group: listed once.
    hub.add(b"work.*", b"grp", 1)
    hub.add(b"work.>", b"grp", 3)
    assert hub.route(b"work.a", frozenset()) == (b"grp",)
    assert hub.route(b"work.a.b", frozenset()) == (b"grp",)
    assert hub.route(b"work.a", frozenset({b"grp"})) is None


def test_ls_minus_removes_hub_interest() -> None:
    session = make_session()
    for event in hub_events("LS+ hub.sub", "LS+ hub.q qg 1", "LS+ hub.>"):
        session.on_ls_plus(event)
    assert session.hub.route(b"hub.sub", frozenset()) == ()
    for event in hub_events("LS- hub.sub", "LS- hub.>"):
        session.on_ls_minus(event)
    assert session.hub.route(b"hub.sub", frozenset()) is None
    assert session.hub.route(b"hub.q", frozenset()) == (b"qg",)
    (event,) = hub_events("LS- hub.q qg")
    session.on_ls_minus(event)
    assert session.hub.route(b"hub.q", frozenset()) is None
    assert len(session.hub) == 0
    # LS- for a key the hub never announced is harmless.
    session.on_ls_minus(LsMinus(b"never", None))
    session.on_ls_minus(LsMinus(b"never", b"g"))
    assert len(session.hub) == 0


def test_repeated_plain_ls_plus_is_one_key_and_one_ls_minus_removes_it() -> None:
    # leaf_lsdup_2910: LS+ foo, LS+ foo, LS- foo left no interest on the hub; the
    # hub's announcements to us follow the same rule.
    lines = ["LS+ foo", "LS+ foo", "LS- foo"]
    text = (TRANSCRIPTS / "leaf_lsdup_2910.txt").read_text()
    assert "".join(f"leaf C>S | {line}\\r\\n\n" for line in lines) in text.replace("t= 0.604 ", "")
    session = make_session()
    events = hub_events(*lines)
    session.on_ls_plus(events[0])
    session.on_ls_plus(events[1])
    assert len(session.hub) == 1
    assert session.hub.route(b"foo", frozenset()) == ()
    session.on_ls_minus(events[2])
    assert session.hub.route(b"foo", frozenset()) is None
    assert not session.hub.wants(b"foo")


def test_queue_weight_updates_keep_one_key() -> None:
    # leaf_mitm_2910: LS+ hub.q qg 1, LS+ hub.q qg 2, later LS+ hub.q qg 1, then LS-.
    session = make_session()
    for event in hub_events("LS+ hub.q qg 1", "LS+ hub.q qg 2", "LS+ hub.q qg 1"):
        session.on_ls_plus(event)
    assert session.hub.entries() == [(b"hub.q", b"qg", 1)]
    session.on_ls_minus(LsMinus(b"hub.q", b"qg"))
    assert session.hub.route(b"hub.q", frozenset()) is None


def test_hub_interest_clear_and_reset() -> None:
    session = make_session()
    session.on_first_info(HUB_2910_FIRST)
    session.opening(NONCE_2910)
    session.on_info(HUB_2910_CONNECTED)
    session.on_ls_plus(LsPlus(b"persist.hub", None, 0))
    session.on_ls_plus(LsPlus(b"persist.hq", b"g", 1))
    assert session.connected
    session.reset()
    # leafnode.md §11: on reconnect the hub re-sends all interest; drop the old table.
    assert not session.connected
    assert len(session.hub) == 0
    assert session.hub.route(b"persist.hub", frozenset()) is None
    session.on_ls_plus(LsPlus(b"persist.hub", None, 0))
    assert session.hub.route(b"persist.hub", frozenset()) == ()


# ---- SubjectFilter ---------------------------------------------------------------------


def test_empty_filter_allows_everything() -> None:
    assert ALLOW_ALL.permits(b"a")
    assert ALLOW_ALL.permits(b"a.b.>")
    assert SubjectFilter().permits(b"$SYS.REQ.USER.INFO")


def test_allow_list_with_wildcards() -> None:
    f = SubjectFilter(allow=(b"foo.*", b"bar.>"))
    assert f.permits(b"foo.x")
    assert not f.permits(b"foo.x.y")
    assert not f.permits(b"foo")
    assert f.permits(b"bar.a.b")
    assert not f.permits(b"bar")
    assert not f.permits(b"baz")


def test_deny_wins_over_allow() -> None:
    f = SubjectFilter(allow=(b"app.>",), deny=(b"app.secret.>", b"app.*.admin"))
    assert f.permits(b"app.public")
    assert not f.permits(b"app.secret.x")
    assert not f.permits(b"app.x.admin")
    assert f.permits(b"app.x.user")
    assert not f.permits(b"other")


def test_wildcard_subjects_are_compared_literally() -> None:
    # Interest subjects may hold wildcards; their tokens are matched as written.
    deny = SubjectFilter(deny=(b"private.>",))
    assert not deny.permits(b"private.*")
    assert not deny.permits(b"private.>")
    assert deny.permits(b"public.*")
    allow = SubjectFilter(allow=(b"foo.bar",))
    assert not allow.permits(b"foo.*")
    assert SubjectFilter(allow=(b"foo.*",)).permits(b"foo.*")


def test_filters_from_hub_info() -> None:
    # leaf_auth_mitm_214: the INFO after CONNECT carries the user's permissions.
    info = json.loads(HUB_214_CONNECTED)
    imports = SubjectFilter.from_hub(info["import"])
    exports = SubjectFilter.from_hub(info["export"])
    assert imports == SubjectFilter(allow=(), deny=(b"private.>",))
    assert exports == SubjectFilter(allow=(), deny=(b"secret.>",))
    assert not imports.permits(b"private.a")
    assert imports.permits(b"public.a")
    assert not exports.permits(b"secret.b")
    assert exports.permits(b"public.b")


def test_filters_from_odd_hub_values() -> None:
    assert SubjectFilter.from_hub(None) == ALLOW_ALL
    assert SubjectFilter.from_hub("x") == ALLOW_ALL
    assert SubjectFilter.from_hub({"allow": "a.>"}) == SubjectFilter(allow=(b"a.>",))
    assert SubjectFilter.from_hub({"allow": ["a", 3, None], "deny": 7}) == SubjectFilter(
        allow=(b"a",)
    )


# ---- LeafSession: handshake ---------------------------------------------------------------


@pytest.mark.parametrize("raw", [HUB_2910_FIRST, HUB_214_FIRST])
def test_first_info_from_a_hub_leafnode_port_is_accepted(raw: bytes) -> None:
    session = make_session()
    info = session.on_first_info(raw)
    assert info == json.loads(raw)
    assert session.info.server_name == info["server_name"]
    assert session.info.version == info["version"]
    assert session.info.leafnode_urls == info["leafnode_urls"]
    assert session.info.max_payload == 1048576


def test_first_info_from_a_client_port_is_refused() -> None:
    session = make_session()
    with pytest.raises(LeafError) as exc:
        session.on_first_info(CLIENT_PORT_INFO)
    assert exc.value.kind is LeafErrorKind.WRONG_PORT
    assert "7422" in str(exc.value)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"x"', b"\xff\xfe"])
def test_first_info_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(LeafError) as exc:
        make_session().on_first_info(raw)
    assert exc.value.kind is LeafErrorKind.PROTOCOL


def test_opening_burst_order_and_connect() -> None:
    local = LocalInterest()
    local.add(b"leaf.sub", None)
    local.add(b"leaf.q", b"lq")
    local.add(b"leaf.q", b"lq")
    session = make_session(local=local)
    session.on_first_info(HUB_2910_FIRST)
    burst = session.opening(NONCE_2910)
    assert burst[0].startswith(b"CONNECT ")
    assert burst[1] == b"LS+ " + OWN_LDS + b"\r\n"
    assert burst[2:] == [b"PING\r\n"]
    # Local interest follows the hub's answer to CONNECT, which carries the link's
    # permissions (leaf_mitm_2910: the real leaf's LS+ come after that INFO).
    assert not session.connected
    announced = session.on_info(HUB_2910_CONNECTED)
    assert sorted(announced) == [b"LS+ leaf.q lq 2\r\n", b"LS+ leaf.sub\r\n"]
    assert session.connected
    assert session.announce_if_pending() == []  # once per link

    body = connect_body(burst[0])
    assert "lang" not in body  # leafnode.md §1: the hub refuses CONNECT with lang
    assert "gateway" not in body
    assert body["name"] == IDENTITY.name
    assert body["cluster"] == body["name"]  # §12: unique per gateway
    assert body["headers"] is True  # §5
    assert body["server_id"] == IDENTITY.server_id
    assert body["version"] == IDENTITY.version
    for absent in ("user", "pass", "auth_token", "jwt", "nkey", "sig", "is_hub", "jetstream"):
        assert absent not in body, absent


def test_connect_with_user_and_password() -> None:
    session = make_session(auth=LeafAuth(user="lu", password="lp"))
    session.on_first_info(HUB_214_FIRST)
    body = connect_body(session.opening(NONCE_214)[0])
    assert body["user"] == "lu"
    assert body["pass"] == "lp"
    assert "auth_token" not in body and "nkey" not in body and "sig" not in body


def test_connect_with_token() -> None:
    session = make_session(auth=LeafAuth(token="t0k3n"))
    session.on_first_info(HUB_2910_FIRST)
    body = connect_body(session.opening(NONCE_2910)[0])
    assert body["auth_token"] == "t0k3n"
    assert "user" not in body and "pass" not in body


def test_connect_with_nkey_signs_the_nonce() -> None:
    signer = KeyPair.generate()
    session = make_session(auth=LeafAuth(signer=signer))
    session.on_first_info(HUB_2910_FIRST)
    body = connect_body(session.opening(NONCE_2910)[0])
    assert body["nkey"] == signer.public_key()
    assert body["nkey"].startswith("U")
    sig = decode_sig(body["sig"])
    assert verify(body["nkey"], NONCE_2910.encode(), sig)
    # Over this nonce, not another one.
    assert not verify(body["nkey"], NONCE_214.encode(), sig)
    assert "jwt" not in body


def test_connect_with_jwt_and_seed() -> None:
    signer = KeyPair.generate()
    session = make_session(auth=LeafAuth(jwt="aaa.bbb.ccc", signer=signer))
    session.on_first_info(HUB_214_FIRST)
    body = connect_body(session.opening(NONCE_214)[0])
    assert body["jwt"] == "aaa.bbb.ccc"
    assert "nkey" not in body  # the public key is inside the JWT
    assert verify(signer.public_key(), NONCE_214.encode(), decode_sig(body["sig"]))


@pytest.mark.parametrize("nonce", [None, ""])
def test_signer_without_a_nonce_is_a_protocol_error(nonce: str | None) -> None:
    session = make_session(auth=LeafAuth(signer=KeyPair.generate()))
    with pytest.raises(LeafError) as exc:
        session.opening(nonce)
    assert exc.value.kind is LeafErrorKind.PROTOCOL


def test_opening_filters_local_interest_by_permissions() -> None:
    local = LocalInterest()
    for subject, queue in [
        (b"ok.a", None),
        (b"ok.q", b"g"),
        (b"blocked.a", None),  # operator filter (rules.down)
        (b"private.x", None),  # hub import deny
        (b"private.q", b"g"),
        (b"$LDS.someone.else", None),  # never re-advertised
    ]:
        local.add(subject, queue)
    rules = LinkRules(down=SubjectFilter(deny=(b"blocked.>",)))
    session = make_session(rules=rules, local=local)
    session.on_first_info(HUB_214_FIRST)
    burst = session.opening(NONCE_214)
    assert burst[1] == encode_ls_plus(OWN_LDS)
    connected = json.loads(HUB_214_CONNECTED)
    connected["import"] = {"deny": ["private.>"]}
    announced = session.on_info(json.dumps(connected).encode())
    assert sorted(announced) == [b"LS+ ok.a\r\n", b"LS+ ok.q g 1\r\n"]


def test_own_lds_subject_from_the_hub_is_a_loop() -> None:
    # leafnode.md §6 / fakeleaf_loop: our own $LDS coming back means a second path.
    session = make_session()
    session.on_first_info(HUB_2910_FIRST)
    session.opening(NONCE_2910)
    session.on_ls_plus(LsPlus(HUB_LDS, None, 0))  # the hub's own: fine
    (event,) = hub_events("LS+ " + OWN_LDS.decode())
    with pytest.raises(LeafError) as exc:
        session.on_ls_plus(event)
    assert exc.value.kind is LeafErrorKind.LOOP
    assert exc.value.pause == LOOP_PAUSE == 30
    assert not session.hub.wants(OWN_LDS)


def test_account_mismatch_in_info_after_connect() -> None:
    # leaf_auth_mitm_214: the hub bound the link to ACC.
    session = make_session(rules=LinkRules(account="$G"))
    session.on_first_info(HUB_214_FIRST)
    session.opening(NONCE_214)
    with pytest.raises(LeafError) as exc:
        session.on_info(HUB_214_CONNECTED)
    assert exc.value.kind is LeafErrorKind.ACCOUNT
    assert "ACC" in exc.value.detail


@pytest.mark.parametrize("account", [None, "ACC"])
def test_expected_or_unchecked_account_is_accepted(account: str | None) -> None:
    session = make_session(rules=LinkRules(account=account))
    session.on_first_info(HUB_214_FIRST)
    session.opening(NONCE_214)
    session.on_info(HUB_214_CONNECTED)
    assert session.info.remote_account == "ACC"


def test_2910_info_after_connect_binds_global_account() -> None:
    session = make_session(rules=LinkRules(account="$G"))
    session.on_first_info(HUB_2910_FIRST)
    session.opening(NONCE_2910)
    assert session.on_info(HUB_2910_CONNECTED) == []
    assert session.info.remote_account == "$G"
    assert session.info.jetstream is True
    assert session.info.domain == "hub"


def test_new_import_permissions_withdraw_denied_keys() -> None:
    local = LocalInterest()
    local.add(b"private.x", None)
    local.add(b"private.q", b"g")
    local.add(b"public.b", None)
    local.add(b"secret.b", None)  # export deny does not limit what we receive
    session = make_session(local=local)
    session.on_first_info(HUB_214_FIRST)
    session.opening(NONCE_214)
    # The connect_info INFO denies private.>: those keys are never announced.
    out = session.on_info(HUB_214_CONNECTED)
    assert sorted(out) == [b"LS+ public.b\r\n", b"LS+ secret.b\r\n"]
    assert not session.may_announce(b"private.y")
    assert session.may_announce(b"public.y")
    # The same permissions again: nothing to change.
    assert session.on_info(HUB_214_CONNECTED) == []
    # New permissions on the live link: withdraw what is now denied, announce what
    # is now allowed.
    changed = json.loads(HUB_214_CONNECTED)
    changed["import"] = {"deny": ["public.>"]}
    out = session.on_info(json.dumps(changed).encode())
    assert sorted(out) == [
        b"LS+ private.q g 1\r\n",
        b"LS+ private.x\r\n",
        b"LS- public.b\r\n",
    ]


def test_permissions_before_the_link_is_up_withdraw_nothing() -> None:
    local = LocalInterest()
    local.add(b"private.x", None)
    session = make_session(local=local)
    session.on_first_info(HUB_214_FIRST)
    assert session.on_info(HUB_214_CONNECTED) == []  # nothing was announced yet
    assert not session.may_announce(b"private.x")


def test_export_permissions_limit_what_we_send() -> None:
    # leafnode.md §8: the hub does not reliably filter by export; we must.
    session = make_session(rules=LinkRules(up=SubjectFilter(deny=(b"local.only.>",))))
    session.on_first_info(HUB_214_FIRST)
    session.opening(NONCE_214)
    session.on_info(HUB_214_CONNECTED)
    assert not session.may_send(b"secret.b")
    assert session.may_send(b"public.a")
    assert session.may_send(b"private.a")  # import deny only limits what we receive
    assert not session.may_send(b"local.only.x")


def test_may_receive_follows_operator_down_filter() -> None:
    session = make_session(rules=LinkRules(down=SubjectFilter(allow=(b"cmd.>",))))
    assert session.may_receive(b"cmd.reboot")
    assert not session.may_receive(b"telemetry.x")


@pytest.mark.parametrize(
    "rules",
    [
        LinkRules(),
        LinkRules(down=SubjectFilter(allow=(b">",))),
        LinkRules(down=SubjectFilter(allow=(b"$LDS.>",))),
    ],
)
def test_lds_subjects_are_never_announced(rules: LinkRules) -> None:
    session = make_session(rules=rules)
    assert not session.may_announce(OWN_LDS)
    assert not session.may_announce(HUB_LDS)
    assert not session.may_announce(b"$LDS.>")
    assert session.may_announce(b"$LDSX.y") == rules.down.permits(b"$LDSX.y")


def test_lame_duck_flag_follows_info() -> None:
    session = make_session()
    session.on_first_info(HUB_2910_FIRST)
    session.opening(NONCE_2910)
    info = json.loads(HUB_2910_CONNECTED)
    info["ldm"] = True
    session.on_info(json.dumps(info).encode())
    assert session.info.lame_duck
    session.reset()
    assert not session.info.lame_duck


# ---- hub -ERR texts (leafnode.md §14) ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "pause"),
    [
        ("Authorization Violation", LeafErrorKind.AUTH, 0.0),
        ("Authentication Timeout", LeafErrorKind.AUTH, 0.0),
        ("Stale Connection", LeafErrorKind.STALE, 0.0),
        ("Unknown Protocol Operation", LeafErrorKind.HUB_ERROR, 0.0),
        (
            'Loop detected for leafnode account="$G". Delaying attempt to reconnect for 30s',
            LeafErrorKind.LOOP,
            30.0,
        ),
        ("Duplicate Remote LeafNode Connection", LeafErrorKind.DUPLICATE, 0.0),
        ('Permissions Violation for Subscription to "private.x"', LeafErrorKind.PERMISSION, 30.0),
        ("attempted to connect to leaf node port", LeafErrorKind.PROTOCOL, 0.0),
        ("something new", LeafErrorKind.HUB_ERROR, 0.0),
    ],
)
def test_classify_hub_error(text: str, kind: LeafErrorKind, pause: float) -> None:
    err = classify_hub_error(text)
    assert err.kind is kind
    assert err.pause == pause
    assert err.detail == text


def test_classified_texts_are_the_ones_hubs_sent() -> None:
    text = (TRANSCRIPTS / "fakeleaf_2910.txt").read_text()
    for quoted in (
        "'Authorization Violation'",
        "'Stale Connection'",
        "'Unknown Protocol Operation'",
        "'Loop detected for leafnode account=\"$G\". Delaying attempt to reconnect for 30s'",
        "'Duplicate Remote LeafNode Connection'",
        "'Permissions Violation for Subscription to \"private.x\"'",
        "'attempted to connect to leaf node port'",
    ):
        assert f"-ERR {quoted}" in text


# ---- known problems -----------------------------------------------------------------------


def test_permission_error_naming_an_auth_like_subject_is_a_permission_error() -> None:
    # Regression test: a denied subject that contains an auth-like word is still a
    # Permissions Violation (30 s pause, leafnode.md §2/§14), judged by the text's start.
    err = classify_hub_error('Permissions Violation for Subscription to "svc.authentication.>"')
    assert err.kind is LeafErrorKind.PERMISSION
    assert err.pause == 30.0


def test_no_local_interest_is_announced_before_the_hub_permissions_are_known() -> None:
    # Regression test: the hub's import/export arrive only in the INFO *after* CONNECT
    # (leaf_auth_mitm_214 t=0.297; leafnode.md §1.1), so local interest must wait for
    # it. With a local `private.x` and a hub user denied `private.>`, an early
    # `LS+ private.x` would make the hub answer
    # -ERR 'Permissions Violation for Subscription to "private.x"' and close the
    # link (fakeleaf_2910 part B; leafnode.md §2). A real leaf sends its LS+ only
    # after that INFO (leaf_mitm_2910 / leaf_auth_mitm_214: leaf LS+ follow the
    # connect_info INFO; nats-server's leafNodeFinishConnectProcess runs on it).
    local = LocalInterest()
    local.add(b"private.x", None)
    local.add(b"public.b", None)
    session = make_session(local=local)
    session.on_first_info(HUB_214_FIRST)
    written = session.opening(NONCE_214)
    written += session.on_info(HUB_214_CONNECTED)
    assert b"LS+ private.x\r\n" not in written
    assert b"LS+ public.b\r\n" in written


def test_hub_permissions_do_not_outlive_the_link() -> None:
    # Regression test: each link's permissions are those of its own INFO after
    # CONNECT (connect_info: true); a deny from an earlier link must not linger, or
    # local subscribers would silently miss those messages after a reconnect.
    local = LocalInterest()
    local.add(b"private.x", None)
    session = make_session(local=local)
    session.on_first_info(HUB_214_FIRST)
    session.opening(NONCE_214)
    session.on_info(HUB_214_CONNECTED)  # user denied private.>
    session.reset()

    unrestricted = json.loads(HUB_214_CONNECTED)
    del unrestricted["import"], unrestricted["export"]
    session.on_first_info(HUB_214_FIRST)
    written = session.opening(NONCE_214)
    written += session.on_info(json.dumps(unrestricted).encode())
    assert session.may_announce(b"private.x")
    assert b"LS+ private.x\r\n" in written
