"""NATS nkeys and credentials files, with Ed25519 from ``cryptography``.

An nkey is base32 text (no padding) over ``prefix byte(s) + raw key + CRC16``.
Seeds start with ``S`` and carry two prefix bytes: the seed marker and the kind of
key (``U`` user, ``A`` account, ``O`` operator, ``N`` server). Public keys carry
one prefix byte. A client proves it holds a seed by signing the server's nonce;
the signature travels as URL-safe base64 without padding.

A ``.creds`` file holds a user JWT and the user's seed between
``-----BEGIN ...-----`` / ``------END ...------`` markers.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge.proto.ids import _crc16

PREFIX_SEED = 18 << 3  # 'S'
PREFIX_OPERATOR = 14 << 3  # 'O'
PREFIX_SERVER = 13 << 3  # 'N'
PREFIX_ACCOUNT = 0  # 'A'
PREFIX_USER = 20 << 3  # 'U'
_KINDS = {PREFIX_OPERATOR, PREFIX_SERVER, PREFIX_ACCOUNT, PREFIX_USER}


class NkeyError(ValueError):
    """A malformed or mistyped key, seed, signature or credentials file."""


def _b32decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except (binascii.Error, ValueError):
        raise NkeyError("not base32") from None


def _checked(raw: bytes) -> bytes:
    if len(raw) < 3:
        raise NkeyError("too short")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if _crc16(body) != crc:
        raise NkeyError("checksum mismatch")
    return body


def _encode(prefix: bytes, key: bytes) -> str:
    body = prefix + key
    raw = body + _crc16(body).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


@dataclass(frozen=True)
class KeyPair:
    """A seed and what it gives: the public key and signatures."""

    kind: int
    private: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        body = _checked(_b32decode(seed.strip()))
        if len(body) != 34:
            raise NkeyError("a seed holds 32 key bytes")
        # The first two bytes pack the seed marker (5 bits) and the key kind (5 bits).
        b0, b1 = body[0], body[1]
        marker = b0 & 0xF8
        kind = ((b0 & 0x07) << 5) | ((b1 & 0xF8) >> 3)
        if marker != PREFIX_SEED or kind not in _KINDS:
            raise NkeyError("not an nkey seed")
        return cls(kind, Ed25519PrivateKey.from_private_bytes(body[2:]))

    @classmethod
    def generate(cls, kind: int = PREFIX_USER) -> KeyPair:
        return cls(kind, Ed25519PrivateKey.generate())

    def seed(self) -> str:
        raw = self.private.private_bytes_raw()
        prefix = bytes([PREFIX_SEED | (self.kind >> 5), (self.kind & 0x1F) << 3])
        return _encode(prefix, raw)

    def public_key(self) -> str:
        return _encode(bytes([self.kind]), self.private.public_key().public_bytes_raw())

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def sign_nonce(self, nonce: str) -> str:
        """The CONNECT ``sig`` for a server nonce: base64url, no padding."""
        return base64.urlsafe_b64encode(self.sign(nonce.encode())).decode().rstrip("=")


def public_key_bytes(public: str, kind: int | None = None) -> bytes:
    """The raw Ed25519 key of an nkey public key, checking its kind if given."""
    body = _checked(_b32decode(public.strip()))
    if len(body) != 33:
        raise NkeyError("a public key holds 32 key bytes")
    if kind is not None and body[0] != kind:
        raise NkeyError("wrong kind of public key")
    if body[0] not in _KINDS:
        raise NkeyError("unknown kind of public key")
    return body[1:]


def verify(public: str, data: bytes, signature: bytes) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key_bytes(public))
        key.verify(signature, data)
    except (NkeyError, InvalidSignature, ValueError):
        return False
    return True


def decode_sig(sig: str) -> bytes:
    """A CONNECT ``sig`` field (base64url or std base64, padding optional)."""
    padded = sig + "=" * (-len(sig) % 4)
    try:
        return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        raise NkeyError("signature is not base64") from None


_SECTION = re.compile(
    r"-{3,}[^\n]*BEGIN[^\n]*-{3,}\s*\n(?P<body>.*?)\n\s*-{3,}[^\n]*END[^\n]*-{3,}", re.S
)


@dataclass(frozen=True)
class Credentials:
    jwt: str
    keypair: KeyPair


def parse_creds(text: str) -> Credentials:
    """Read a ``.creds`` file's text: the user JWT, then the user's nkey seed."""
    sections = [m.group("body").strip() for m in _SECTION.finditer(text)]
    if len(sections) < 2:
        raise NkeyError("a credentials file holds a JWT section and a seed section")
    jwt, seed = sections[0], sections[1]
    if jwt.count(".") != 2:
        raise NkeyError("the first section is not a JWT")
    return Credentials(jwt, KeyPair.from_seed(seed))
