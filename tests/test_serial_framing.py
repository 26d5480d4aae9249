"""Serial framing, subject templates and port config: pure, byte by byte and with Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.serial.config import parse_serial_port
from bridges.serial.framing import (
    CobsDecoder,
    CsvDecoder,
    Event,
    Frame,
    JsonDecoder,
    LengthDecoder,
    LineDecoder,
    NmeaDecoder,
    Rejection,
    cobs_decode,
    cobs_encode,
    encode_downlink,
    length_encode,
    make_decoder,
    nmea_checksum,
)
from bridges.serial.template import RenderError, TemplateError, parse_template
from edge.config import ConfigError, config_from_dict


def _summary(events: list[Event]) -> list[tuple[str, object]]:
    return [
        ("frame", (e.payload, e.fields)) if isinstance(e, Frame) else ("reject", e.reason)
        for e in events
    ]


def _bytewise(decoder: object, data: bytes) -> list[Event]:
    out: list[Event] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])  # type: ignore[attr-defined]
    return out


def test_lines_cr_lf_crlf_and_empty_lines() -> None:
    data = b"a\rb\nc\r\nd\r\n\r\n\n"
    whole = LineDecoder(64).feed(data)
    assert [e.payload for e in whole if isinstance(e, Frame)] == [b"a", b"b", b"c", b"d"]
    assert _summary(_bytewise(LineDecoder(64), data)) == _summary(whole)
    # An unfinished line waits for its end.
    dec = LineDecoder(64)
    assert dec.feed(b"partial") == []
    assert _summary(dec.feed(b"\n")) == [("frame", (b"partial", {}))]


def test_lines_reject_overlong_invalid_utf8_and_control_bytes_then_resync() -> None:
    dec = LineDecoder(8)
    events = dec.feed(b"ok\n" + b"x" * 20)
    assert _summary(events) == [("frame", (b"ok", {})), ("reject", "overlong")]
    events = dec.feed(b"yyyy\nnext\n\xff\xfe\nnul\x00here\ntab\tok\n")
    assert _summary(events) == [
        ("frame", (b"next", {})),
        ("reject", "invalid_utf8"),
        ("reject", "garbage"),
        ("frame", (b"tab\tok", {})),
    ]
    # An overlong line arriving at once is one rejection as well.
    assert _summary(LineDecoder(4).feed(b"123456789\nab\n")) == [
        ("reject", "overlong"),
        ("frame", (b"ab", {})),
    ]


def test_json_lines_fields_and_rejections() -> None:
    dec = JsonDecoder(256)
    events = dec.feed(b'{"id":"t1","n":3,"ok":true,"v":1.5}\n[1,2]\n{bad\n')
    assert _summary(events) == [
        ("frame", (b'{"id":"t1","n":3,"ok":true,"v":1.5}', {"id": "t1", "n": "3"})),
        ("frame", (b"[1,2]", {})),
        ("reject", "invalid_json"),
    ]


def test_csv_named_columns_header_skipped() -> None:
    dec = CsvDecoder(256, ("id", "temp", "note"))
    events = dec.feed(b'id,temp,note\nt1,21.5,"a, b"\nt2,20\n')
    assert _summary(events) == [
        (
            "frame",
            (
                b'{"id":"t1","temp":"21.5","note":"a, b"}',
                {"id": "t1", "temp": "21.5", "note": "a, b"},
            ),
        ),
        ("reject", "bad_columns"),
    ]
    semi = CsvDecoder(64, ("a", "b"), ";").feed(b"1;2\n")
    assert _summary(semi) == [("frame", (b'{"a":"1","b":"2"}', {"a": "1", "b": "2"}))]


GGA = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"


def test_nmea_checksum_verified() -> None:
    assert nmea_checksum(GGA) == 0x47  # the textbook example sentence
    good = b"$" + GGA + b"*47"
    dec = NmeaDecoder(128)
    events = dec.feed(good + b"\r\n$" + GGA + b"*48\r\n$GPGGA,1\r\nhello*00\r\n!AIVDM,x*4A\r\n")
    fields = {"sentence": "GPGGA", "talker": "GP", "type": "GGA"}
    assert _summary(events)[:4] == [
        ("frame", (good, fields)),
        ("reject", "bad_checksum"),
        ("reject", "bad_checksum"),
        ("reject", "garbage"),
    ]
    body = b"AIVDM,x"
    aivdm = b"!%s*%02X" % (body, nmea_checksum(body))
    assert _summary(dec.feed(aivdm + b"\n"))[0][0] == "frame"
    assert _summary(dec.feed(b"$gpgga,1*" + b"%02x" % nmea_checksum(b"gpgga,1") + b"\n"))[0][0] == (
        "frame"
    )


def test_cobs_known_vectors_and_errors() -> None:
    assert cobs_encode(b"") == b"\x01"
    assert cobs_encode(b"\x00") == b"\x01\x01"
    assert cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert cobs_encode(bytes(range(1, 255))) == b"\xff" + bytes(range(1, 255)) + b"\x01"
    with pytest.raises(ValueError):
        cobs_decode(b"\x05\x11")
    dec = CobsDecoder(16)
    events = dec.feed(b"\x03\x11\x22\x02\x33\x00\x05\x11\x00" + b"\x01" * 40 + b"\x00\x02\x41\x00")
    assert _summary(events) == [
        ("frame", (b"\x11\x22\x00\x33", {})),
        ("reject", "garbage"),
        ("reject", "overlong"),
        ("frame", (b"A", {})),
    ]


def test_length_prefix_and_resync_after_bad_header() -> None:
    dec = LengthDecoder(8, 2)
    data = length_encode(b"abc") + length_encode(b"") + b"\xff\xff\xff" + length_encode(b"z")
    assert _summary(_bytewise(dec, data)) == [
        ("frame", (b"abc", {})),
        ("frame", (b"", {})),
        ("reject", "overlong"),
        ("frame", (b"z", {})),
    ]
    with pytest.raises(ValueError):
        length_encode(b"x" * 256, 1)


@st.composite
def _splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


_TEXT_BYTES = st.lists(
    st.sampled_from([b"a", b"1", b",", b"\r", b"\n", b"\xff", b"\x00", b"$", b"*", b'"', b"{}"]),
    max_size=80,
).map(b"".join)


@pytest.mark.parametrize("framing", ["lines", "json", "csv", "nmea", "cobs", "length"])
@given(data=st.data(), stream=st.one_of(_TEXT_BYTES, st.binary(max_size=120)))
def test_random_splits_give_the_same_events(
    framing: str, data: st.DataObject, stream: bytes
) -> None:
    def decoder() -> object:
        return make_decoder(framing, max_frame=16, columns=("a", "b"), length_bytes=1)

    whole = decoder().feed(stream)  # type: ignore[attr-defined]
    split = decoder()
    events: list[Event] = []
    for piece in data.draw(_splits(stream)):
        events += split.feed(piece)  # type: ignore[attr-defined]
    assert _summary(events) == _summary(whole)
    for event in events:
        assert isinstance(event, Frame | Rejection)
        if isinstance(event, Frame) and framing == "lines":
            assert len(event.payload) <= 16


@given(st.lists(st.binary(max_size=600), max_size=5))
def test_cobs_round_trip(payloads: list[bytes]) -> None:
    stream = b"".join(encode_downlink("cobs", p) for p in payloads)
    assert 0 not in b"".join(cobs_encode(p) for p in payloads)
    frames = CobsDecoder(600).feed(stream)
    assert [e.payload for e in frames if isinstance(e, Frame)] == payloads
    assert all(cobs_decode(cobs_encode(p)) == p for p in payloads)


@given(st.lists(st.binary(max_size=300), max_size=5), st.sampled_from([2, 4]))
def test_length_round_trip(payloads: list[bytes], width: int) -> None:
    stream = b"".join(encode_downlink("length", p, length_bytes=width) for p in payloads)
    frames = LengthDecoder(300, width).feed(stream)
    assert [e.payload for e in frames if isinstance(e, Frame)] == payloads


def test_downlink_encoding_per_framing() -> None:
    assert encode_downlink("lines", b"PING") == b"PING\r\n"
    assert encode_downlink("lines", b"PING\n", line_ending=b"\n") == b"PING\n"
    assert encode_downlink("nmea", GGA) == b"$" + GGA + b"*47\r\n"
    assert encode_downlink("nmea", b"$" + GGA + b"*47") == b"$" + GGA + b"*47\r\n"
    assert encode_downlink("length", b"ab", length_bytes=1) == b"\x02ab"


def test_subject_template_renders_and_rejects_device_tokens() -> None:
    tpl = parse_template("sensors.{port}.{field:id}")
    assert tpl.fields == ("id",)
    assert tpl.render("usb0", {"id": "t1"}) == "sensors.usb0.t1"
    for bad in ("a.b", "", "x y", "*", ">", "a\x01", "q" * 200):
        with pytest.raises(RenderError) as err:
            tpl.render("usb0", {"id": bad})
        assert err.value.reason == "bad_subject"
    with pytest.raises(RenderError) as err:
        tpl.render("usb0", {})
    assert err.value.reason == "missing_field"
    for text in ("a.{nope}", "a.*", "a..{port}", "{port", "a.{field:}", ">"):
        with pytest.raises(TemplateError):
            parse_template(text)


def test_port_config_defaults_and_errors_name_the_key() -> None:
    port = parse_serial_port({"name": "gps", "id": "usb-u-blox-if00"}, "bridges.serial[0]")
    assert port.path == "/dev/serial/by-id/usb-u-blox-if00"
    assert (port.baud, port.framing, port.subject.text) == (9600, "lines", "serial.{port}")
    cases: list[tuple[dict[str, object], str]] = [
        ({"path": "/dev/x"}, "name"),
        ({"name": "a"}, "path"),
        ({"name": "a.b", "path": "/dev/x"}, "name"),
        ({"name": "a", "path": "dev/x"}, "path"),
        ({"name": "a", "path": "/dev/x", "framing": "xml"}, "framing"),
        ({"name": "a", "path": "/dev/x", "baud": "fast"}, "baud"),
        ({"name": "a", "path": "/dev/x", "framing": "csv"}, "columns"),
        ({"name": "a", "path": "/dev/x", "subject": "s.{field:id}"}, "subject"),
        ({"name": "a", "path": "/dev/x", "subject": "s.*"}, "subject"),
        ({"name": "a", "path": "/dev/x", "length_bytes": 3}, "length_bytes"),
        ({"name": "a", "path": "/dev/x", "framing": "length", "length_bytes": 1}, "max_frame"),
        ({"name": "a", "path": "/dev/x", "stopbits": 3}, "stopbits"),
        ({"name": "a", "path": "/dev/x", "downlink": "a b"}, "downlink"),
        ({"name": "a", "path": "/dev/x", "bogus": 1}, "bogus"),
        ({"name": "a", "path": "/dev/x", "id": "y"}, "id"),
    ]
    for entry, key in cases:
        with pytest.raises(ConfigError) as err:
            parse_serial_port(entry, "bridges.serial[1]")
        assert err.value.key == f"bridges.serial[1].{key}", (entry, err.value)


def test_serial_ports_through_the_config_file_path() -> None:
    config = config_from_dict(
        {
            "bridges": {
                "serial": [
                    {
                        "name": "a",
                        "path": "/dev/ttyS0",
                        "framing": "nmea",
                        "subject": "gps.{field:type}",
                    },
                    {"name": "b", "path": "/dev/ttyS1", "framing": "csv", "columns": ["id", "t"]},
                ]
            }
        }
    )
    assert [p.name for p in config.bridges.serial] == ["a", "b"]
    with pytest.raises(ConfigError) as err:
        config_from_dict({"bridges": {"serial": [{"name": "a", "path": "/dev/x"}] * 2}})
    assert err.value.key == "bridges.serial[1].name"


@given(st.text(max_size=40))
def test_device_values_never_add_tokens_or_wildcards(value: str) -> None:
    from edge.subjects import is_valid_publish_subject

    tpl = parse_template("sensors.{port}.{field:id}.v")
    try:
        subject = tpl.render("p1", {"id": value})
    except RenderError as exc:
        assert exc.reason == "bad_subject"
        return
    assert subject == f"sensors.p1.{value}.v"
    assert len(subject.split(".")) == 4
    assert is_valid_publish_subject(subject.encode())
