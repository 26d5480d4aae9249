"""Identifiers: server ids in nkey form, NUIDs for inboxes and ``$LDS`` subjects, nonces."""

from __future__ import annotations

import base64
import secrets
import string

# nkey prefix byte for a server public key ('N' once base32-encoded).
_PREFIX_SERVER = 13 << 3
_NUID_ALPHABET = string.digits + string.ascii_letters


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum nkeys append to their payload."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def new_server_id() -> str:
    """A random 56-character server id shaped like nats-server's (``N...``)."""
    raw = bytes([_PREFIX_SERVER]) + secrets.token_bytes(32)
    raw += _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


def nuid(length: int = 22) -> str:
    """A random token of letters and digits, as NATS uses for inboxes and ``$LDS``."""
    return "".join(secrets.choice(_NUID_ALPHABET) for _ in range(length))


def new_nonce() -> str:
    """An auth nonce: URL-safe base64 of random bytes, like nats-server's (~15 chars)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(11)).decode().rstrip("=")
