"""Identifiers: nkey-shaped server ids, NUIDs and auth nonces."""

from __future__ import annotations

import base64
import re
import string

from edge.proto.ids import new_nonce, new_server_id, nuid

_BASE32 = re.compile(r"[A-Z2-7]+")
_PREFIX_SERVER = 13 << 3  # nkeys: PrefixByteServer


def _crc16_xmodem(data: bytes) -> int:
    """Independent CRC-16/XMODEM (poly 0x1021, init 0), table-free, MSB first."""
    crc = 0
    for byte in data:
        for bit in range(7, -1, -1):
            top = (crc >> 15) & 1
            crc = (crc << 1) & 0xFFFF
            if top ^ ((byte >> bit) & 1):
                crc ^= 0x1021
    return crc


def test_reference_crc() -> None:
    assert _crc16_xmodem(b"123456789") == 0x31C3  # the catalogued check value


def test_server_id_shape() -> None:
    sid = new_server_id()
    assert len(sid) == 56
    assert sid.startswith("N")
    assert _BASE32.fullmatch(sid)


def test_server_id_decodes_to_prefix_key_and_valid_crc() -> None:
    for _ in range(50):
        sid = new_server_id()
        raw = base64.b32decode(sid)  # 56 chars = 35 bytes: no padding needed
        assert len(raw) == 1 + 32 + 2
        assert raw[0] == _PREFIX_SERVER
        body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
        assert _crc16_xmodem(body) == crc


def test_server_id_shaped_like_a_captured_one() -> None:
    # From transcripts/client_core_2910.txt: a real nats-server id passes the same checks.
    real = "NAAUO7SI276TXIWVNX7GJOY2MFROOWKSU7CJCPAGP3DE76O2HOPWYZBO"
    raw = base64.b32decode(real)
    assert raw[0] == _PREFIX_SERVER
    assert _crc16_xmodem(raw[:-2]) == int.from_bytes(raw[-2:], "little")


def test_server_ids_distinct() -> None:
    ids = {new_server_id() for _ in range(200)}
    assert len(ids) == 200


def test_nuid_length_and_alphabet() -> None:
    alphabet = set(string.digits + string.ascii_letters)
    for _ in range(100):
        token = nuid()
        assert len(token) == 22
        assert set(token) <= alphabet
    assert len(nuid(8)) == 8
    assert set(nuid(8)) <= alphabet


def test_nuids_distinct() -> None:
    assert len({nuid() for _ in range(1000)}) == 1000


def test_nonce_shape_and_distinct() -> None:
    nonces = [new_nonce() for _ in range(1000)]
    assert len(set(nonces)) == len(nonces)
    for nonce in nonces:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", nonce)
        assert 11 <= len(nonce) <= 22  # "~15 chars" in nats-server
        # Decodes as unpadded URL-safe base64.
        base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
