"""MQTT topic <-> NATS subject translation, headers/properties, loop memory, config (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.mqtt.config import parse_mqtt_bridge
from bridges.mqtt.headers import MARKER, to_mqtt_properties, to_nats_headers
from bridges.mqtt.mapping import (
    MappingError,
    Route,
    filter_to_subject,
    subject_filter_to_topic,
    subject_to_topic,
    topic_to_subject,
)
from bridges.mqtt.recent import RecentPublishes
from edge.config import ConfigError
from edge.proto.encoder import encode_headers
from edge.subjects import is_valid_publish_subject, is_valid_subject, matches

topics = (
    st.lists(
        st.text(
            st.characters(exclude_characters="/+#\x00", exclude_categories=("Cs",)), max_size=6
        ),
        min_size=1,
        max_size=5,
    )
    .map("/".join)
    .filter(bool)
)
subjects = st.lists(
    st.text(
        st.characters(exclude_characters=". \t\r\n", exclude_categories=("Cs",)),
        min_size=1,
        max_size=6,
    ).filter(lambda t: t not in ("*", ">")),
    min_size=1,
    max_size=5,
).map(".".join)


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("sensors/k1/temp", "sensors.k1.temp"),
        ("a.b/c", "a%2Eb.c"),
        ("room 1/t", "room%201.t"),
        ("a//b", "a.%.b"),
        ("/lead", "%.lead"),
        ("trail/", "trail.%"),
        ("$SYS/broker/uptime", "%24SYS.broker.uptime"),
        ("x/$y", "x.$y"),
        ("100%/*/>", "100%25.%2A.%3E"),
        ("é/ü", "é.ü"),
    ],
)
def test_topic_to_subject_examples(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject
    assert subject_to_topic(subject) == topic


def test_nats_to_mqtt_escapes_what_mqtt_cannot_carry() -> None:
    assert subject_to_topic("a/b.c+d.#") == "a%2Fb/c%2Bd/%23"
    assert subject_to_topic("50%off.x") == "50%off/x"  # not one of our escapes: literal


def test_prefix_and_strip() -> None:
    route = Route(strip=1, prefix="site1.mqtt")
    assert route.to_subject("home/k1/t") == "site1.mqtt.k1.t"
    assert Route(strip=1, prefix="devices").to_topic("cmd.k1.set") == "devices/k1/set"
    with pytest.raises(MappingError):
        route.to_subject("home")
    with pytest.raises(MappingError):
        topic_to_subject("\ud800")  # not UTF-8 text


def test_wildcards_translate() -> None:
    assert filter_to_subject("sensors/+/temp") == "sensors.*.temp"
    assert filter_to_subject("sensors/#") == "sensors.>"
    assert subject_filter_to_topic("cmd.*.>") == "cmd/+/#"
    for bad in ("a/#/b", "a/b+", ""):
        with pytest.raises(MappingError):
            filter_to_subject(bad)


@given(topics)
def test_topic_round_trips_and_gives_valid_subjects(topic: str) -> None:
    subject = topic_to_subject(topic)
    assert is_valid_publish_subject(subject.encode())
    assert not subject.startswith("$")
    assert subject_to_topic(subject) == topic


@given(subjects)
def test_subject_gives_valid_topic(subject: str) -> None:
    try:
        topic = subject_to_topic(subject)
    except MappingError:
        assert subject == "%"  # one empty level: refused (counted as unmapped)
        return
    assert topic and "+" not in topic and "#" not in topic and "\x00" not in topic
    # A subject that came from MQTT comes back the same.
    assert topic_to_subject(subject_to_topic(topic_to_subject(topic))) == topic_to_subject(topic)


@given(topics, st.lists(st.sampled_from(["+", "#"]), max_size=1))
def test_filter_translation_matches_like_mqtt(topic: str, tail: list[str]) -> None:
    levels = topic.split("/")
    flt = (
        "/".join(["+", *levels[1:]]) if not tail or tail[0] == "+" else "/".join([*levels[:1], "#"])
    )
    nats_filter = filter_to_subject(flt)
    assert is_valid_subject(nats_filter.encode())
    subject = topic_to_subject(topic)
    if len(levels) > 1 or flt.startswith("+"):
        assert matches(nats_filter.encode(), subject.encode())


@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5), st.booleans())
def test_properties_become_encodable_headers(props: list[tuple[str, str]], retain: bool) -> None:
    out = to_nats_headers("b1", props, "text/plain", retain)
    encode_headers(None, "", out.headers)  # never raises
    assert out.headers[0] == (MARKER, "b1")
    back = to_mqtt_properties(out.headers)
    assert back.marker == "b1" and back.retain == retain and back.content_type == "text/plain"
    assert len(back.user_properties) + out.skipped == len(
        [p for p in props if p[0].lower() != MARKER.lower()]
    )


def test_recent_publishes_bounded_and_expiring() -> None:
    recent = RecentPublishes(capacity=2, ttl=5.0)
    recent.note("a", b"1", 0.0)
    recent.note("a", b"1", 0.0)
    assert recent.take("a", b"1", 1.0) and recent.take("a", b"1", 1.0)
    assert not recent.take("a", b"1", 1.0)
    for i in range(5):
        recent.note("t", b"%d" % i, 2.0)
    assert len(recent) == 2
    assert not recent.take("t", b"0", 2.0) and recent.take("t", b"4", 2.0)
    assert not recent.take("t", b"3", 100.0)  # expired


def _bridge(**over: object) -> dict[str, object]:
    entry: dict[str, object] = {"map": [{"mqtt": "s/#"}]}
    entry.update(over)
    return entry


def test_config_defaults() -> None:
    cfg = parse_mqtt_bridge(_bridge(), "bridges.mqtt[0]")
    assert (cfg.name, cfg.port, cfg.protocol, cfg.clean_session) == (
        "127.0.0.1:1883",
        1883,
        "5",
        True,
    )
    assert cfg.mappings[0].direction == "mqtt_to_nats"
    tls = parse_mqtt_bridge(_bridge(tls={"ca_file": "ca.pem"}, protocol="3.1.1"), "k")
    assert tls.port == 8883 and tls.tls is not None and not tls.mqtt5


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        (
            _bridge(map=[{"mqtt": "a"}, {"mqtt": "a"}, {"nats": "x", "qos": 3}]),
            "bridges.mqtt[0].map[2].qos",
        ),
        (_bridge(map=[{"mqtt": "a/#/b"}]), "bridges.mqtt[0].map[0].mqtt"),
        (_bridge(map=[{"nats": "a..b"}]), "bridges.mqtt[0].map[0].nats"),
        (_bridge(map=[{"mqtt": "a", "nats": "b"}]), "bridges.mqtt[0].map[0]"),
        (_bridge(map=[{"mqtt": "a/+", "strip": 2}]), "bridges.mqtt[0].map[0].strip"),
        (_bridge(map=[{"mqtt": "a", "prefix": "x.*"}]), "bridges.mqtt[0].map[0].prefix"),
        (_bridge(map=[{"nats": "a", "prefix": "x/#"}]), "bridges.mqtt[0].map[0].prefix"),
        (_bridge(map=[{"mqtt": "a", "colour": 1}]), "bridges.mqtt[0].map[0].colour"),
        (_bridge(map=[]), "bridges.mqtt[0].map"),
        (_bridge(port=0), "bridges.mqtt[0].port"),
        (_bridge(protocol="4"), "bridges.mqtt[0].protocol"),
        (_bridge(password="x"), "bridges.mqtt[0].password"),
        (_bridge(tls={"cert_file": "c"}), "bridges.mqtt[0].tls.cert_file"),
        (_bridge(tls=3), "bridges.mqtt[0].tls"),
        (_bridge(hold_max=-1), "bridges.mqtt[0].hold_max"),
        (_bridge(reconnect_min=2, reconnect_max=1), "bridges.mqtt[0].reconnect_max"),
        (_bridge(name=""), "bridges.mqtt[0].name"),
        (_bridge(nmae="x"), "bridges.mqtt[0].nmae"),
    ],
)
def test_config_errors_name_the_key(entry: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mqtt_bridge(entry, "bridges.mqtt[0]")
    assert err.value.key == key


def test_duplicate_names_refused_through_the_server_config() -> None:
    from edge.config import config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"bridges": {"mqtt": [_bridge(name="a"), _bridge(name="a")]}})
    assert err.value.key == "bridges.mqtt[1].name"
