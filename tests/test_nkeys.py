"""NATS nkeys: seeds, public keys, nonce signatures, .creds files.

Known answers come from the NATS documentation's example user (seed
``SUACSSL3…`` / public key ``UDXU4RCS…``); the signature over a nonce is checked
again by a real nats-server (/usr/sbin/nats-server, v2.9.10) with nkey users.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.nkeys import (
    PREFIX_ACCOUNT,
    PREFIX_OPERATOR,
    PREFIX_SEED,
    PREFIX_SERVER,
    PREFIX_USER,
    KeyPair,
    NkeyError,
    decode_sig,
    parse_creds,
    public_key_bytes,
    verify,
)
from edge.proto.ids import _crc16

NATS_SERVER = "/usr/sbin/nats-server"
DOC_SEED = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
DOC_PUBLIC = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
# Ed25519 is deterministic: this signature of nonce "DhXdTMAeiHhLDig" by DOC_SEED is the
# one published with the dart_nats nkeys test vectors (standard base64 there).
DOC_NONCE = "DhXdTMAeiHhLDig"
DOC_SIG_STD = (
    "WosANJXgeyxerXFo0twRiMG+/ZjYp1K/46bFeFax705yFTCTjM18jWl01gGYk4KKbadiHd+hP3WgUQ2iLZUAAA=="
)


def b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def unb32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def with_crc(body: bytes) -> str:
    """An nkey text with a correct checksum over ``body`` (to build wrong-but-valid keys)."""
    return b32(body + _crc16(body).to_bytes(2, "little"))


# ---- keys and seeds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "seed_prefix", "public_prefix"),
    [
        (PREFIX_USER, "SU", "U"),
        (PREFIX_ACCOUNT, "SA", "A"),
        (PREFIX_OPERATOR, "SO", "O"),
        (PREFIX_SERVER, "SN", "N"),
    ],
)
def test_generate_seed_round_trip(kind: int, seed_prefix: str, public_prefix: str) -> None:
    kp = KeyPair.generate(kind)
    seed = kp.seed()
    assert seed.startswith(seed_prefix)
    assert len(seed) == 58
    public = kp.public_key()
    assert public.startswith(public_prefix)
    assert len(public) == 56
    again = KeyPair.from_seed(seed)
    assert again.kind == kind
    assert again.public_key() == public
    assert again.seed() == seed
    assert len(public_key_bytes(public, kind)) == 32


def test_default_kind_is_user() -> None:
    kp = KeyPair.generate()
    assert kp.seed().startswith("SU")
    assert kp.public_key().startswith("U")


def test_generated_keys_differ() -> None:
    assert KeyPair.generate().seed() != KeyPair.generate().seed()


def test_known_seed_gives_the_documented_public_key() -> None:
    kp = KeyPair.from_seed(DOC_SEED)
    assert kp.kind == PREFIX_USER
    assert kp.public_key() == DOC_PUBLIC
    assert kp.seed() == DOC_SEED
    # Surrounding whitespace (a seed read from a file) is tolerated.
    assert KeyPair.from_seed(f"  {DOC_SEED}\n").public_key() == DOC_PUBLIC


def test_known_nonce_signature() -> None:
    kp = KeyPair.from_seed(DOC_SEED)
    sig = kp.sign_nonce(DOC_NONCE)
    # URL-safe alphabet, no padding: the CONNECT "sig" form.
    assert sig == DOC_SIG_STD.rstrip("=").replace("+", "-").replace("/", "_")
    assert decode_sig(sig) == base64.b64decode(DOC_SIG_STD)
    assert decode_sig(DOC_SIG_STD) == base64.b64decode(DOC_SIG_STD)
    assert verify(DOC_PUBLIC, DOC_NONCE.encode(), decode_sig(sig))


def test_sign_nonce_verifies() -> None:
    kp = KeyPair.generate()
    nonce = "-gd_sKX2iCkyOpQ"  # hub_2910's nonce in leaf_mitm_2910
    sig = kp.sign_nonce(nonce)
    assert "=" not in sig and "+" not in sig and "/" not in sig
    raw = decode_sig(sig)
    assert len(raw) == 64
    assert raw == kp.sign(nonce.encode())
    assert verify(kp.public_key(), nonce.encode(), raw)


def test_tampered_signature_or_nonce_fails() -> None:
    kp = KeyPair.generate()
    nonce = "vL1wu3VK36c6raw"
    raw = decode_sig(kp.sign_nonce(nonce))
    tampered = bytes([raw[0] ^ 1]) + raw[1:]
    assert not verify(kp.public_key(), nonce.encode(), tampered)
    assert not verify(kp.public_key(), nonce.encode(), raw[:-1])
    assert not verify(kp.public_key(), b"vL1wu3VK36c6raX", raw)
    assert not verify(kp.public_key(), b"", raw)
    # Another key's public key, or something that is not a public key at all.
    assert not verify(KeyPair.generate().public_key(), nonce.encode(), raw)
    assert not verify("UNOTAKEY", nonce.encode(), raw)
    assert not verify(kp.seed(), nonce.encode(), raw)


def test_decode_sig_rejects_non_base64() -> None:
    with pytest.raises(NkeyError):
        decode_sig("not*base64!")


# ---- malformed seeds and public keys -----------------------------------------------------


def test_seed_with_wrong_checksum() -> None:
    raw = bytearray(unb32(DOC_SEED))
    raw[-1] ^= 0x01
    with pytest.raises(NkeyError):
        KeyPair.from_seed(b32(bytes(raw)))
    raw = bytearray(unb32(DOC_SEED))
    raw[10] ^= 0x40  # a key byte changed, checksum left as is
    with pytest.raises(NkeyError):
        KeyPair.from_seed(b32(bytes(raw)))


def test_seed_with_wrong_prefix() -> None:
    body = unb32(DOC_SEED)[:-2]
    key = body[2:]
    # A public key where a seed is expected.
    with pytest.raises(NkeyError):
        KeyPair.from_seed(DOC_PUBLIC)
    # Checksums are right below; only the prefix bytes are wrong.
    not_a_seed = bytes([PREFIX_USER | (PREFIX_USER >> 5), (PREFIX_USER & 0x1F) << 3]) + key
    with pytest.raises(NkeyError):
        KeyPair.from_seed(with_crc(not_a_seed))
    unknown_kind = 23 << 3  # 'X'
    odd_kind = bytes([PREFIX_SEED | (unknown_kind >> 5), (unknown_kind & 0x1F) << 3]) + key
    with pytest.raises(NkeyError):
        KeyPair.from_seed(with_crc(odd_kind))
    # The well-formed control: the same construction with the user kind is accepted.
    good = bytes([PREFIX_SEED | (PREFIX_USER >> 5), (PREFIX_USER & 0x1F) << 3]) + key
    assert with_crc(good) == DOC_SEED
    assert KeyPair.from_seed(with_crc(good)).public_key() == DOC_PUBLIC


@pytest.mark.parametrize(
    "seed",
    [
        "",
        "SU",
        DOC_SEED[:-1],
        DOC_SEED[:-2],
        DOC_SEED[:-8],
        DOC_SEED + "A",
        DOC_SEED + "AAAAAAAA",
        with_crc(unb32(DOC_SEED)[:2] + unb32(DOC_SEED)[2:-3]),  # 31 key bytes
        with_crc(unb32(DOC_SEED)[:-2] + b"\x00"),  # 33 key bytes
        DOC_SEED.lower(),
        DOC_SEED[:20] + "0" + DOC_SEED[21:],  # 0 is not base32
        DOC_SEED[:20] + "é" + DOC_SEED[21:],
    ],
)
def test_malformed_seed_raises(seed: str) -> None:
    with pytest.raises(NkeyError):
        KeyPair.from_seed(seed)


def test_public_key_checks() -> None:
    assert len(public_key_bytes(DOC_PUBLIC)) == 32
    assert (
        public_key_bytes(DOC_PUBLIC, PREFIX_USER)
        == KeyPair.from_seed(DOC_SEED).private.public_key().public_bytes_raw()
    )
    with pytest.raises(NkeyError):
        public_key_bytes(DOC_PUBLIC, PREFIX_ACCOUNT)
    with pytest.raises(NkeyError):
        public_key_bytes(DOC_SEED)
    with pytest.raises(NkeyError):
        public_key_bytes(DOC_PUBLIC[:-1] + ("A" if DOC_PUBLIC[-1] != "A" else "B"))
    with pytest.raises(NkeyError):
        public_key_bytes(with_crc(bytes([23 << 3]) + bytes(32)))


# ---- .creds files -------------------------------------------------------------------------


def creds_text(jwt: str, seed: str, newline: str = "\n") -> str:
    lines = [
        "-----BEGIN NATS USER JWT-----",
        jwt,
        "------END NATS USER JWT------",
        "",
        "************************* IMPORTANT *************************",
        "NKEY Seed printed below can be used to sign and prove identity.",
        "NKEYs are sensitive and should be treated as secrets.",
        "",
        "-----BEGIN USER NKEY SEED-----",
        seed,
        "------END USER NKEY SEED------",
        "",
        "*************************************************************",
        "",
    ]
    return newline.join(lines)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_parse_creds(newline: str, tmp_path: Path) -> None:
    kp = KeyPair.generate()
    path = tmp_path / "user.creds"
    path.write_bytes(creds_text("aaa.bbb.ccc", kp.seed(), newline).encode())
    creds = parse_creds(path.read_bytes().decode())
    assert creds.jwt == "aaa.bbb.ccc"
    assert creds.keypair.public_key() == kp.public_key()
    assert creds.keypair.seed() == kp.seed()


def test_parse_creds_without_banner() -> None:
    text = (
        f"-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n------END NATS USER JWT------\n"
        f"-----BEGIN USER NKEY SEED-----\n{DOC_SEED}\n------END USER NKEY SEED------\n"
    )
    creds = parse_creds(text)
    assert creds.jwt == "aaa.bbb.ccc"
    assert creds.keypair.public_key() == DOC_PUBLIC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aaa.bbb.ccc\n" + DOC_SEED + "\n",
        # JWT section only.
        "-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n------END NATS USER JWT------\n",
        # Seed section only.
        f"-----BEGIN USER NKEY SEED-----\n{DOC_SEED}\n------END USER NKEY SEED------\n",
        # JWT without its END marker: the seed is swallowed into the first section.
        f"-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n"
        f"-----BEGIN USER NKEY SEED-----\n{DOC_SEED}\n------END USER NKEY SEED------\n",
        # Not JWT-shaped.
        creds_text("aaa.bbb", DOC_SEED),
        creds_text("aaa.bbb.ccc.ddd", DOC_SEED),
        creds_text("", DOC_SEED),
        # Broken seed.
        creds_text("aaa.bbb.ccc", DOC_SEED[:-1]),
        creds_text("aaa.bbb.ccc", DOC_PUBLIC),
        creds_text("aaa.bbb.ccc", ""),
    ],
)
def test_parse_malformed_creds(text: str) -> None:
    with pytest.raises(NkeyError):
        parse_creds(text)


# ---- against a real nats-server -------------------------------------------------------------


@contextlib.contextmanager
def nkey_server(tmp_path: Path, public: str) -> Iterator[int]:
    """A nats-server whose only user is ``public``; yields its client port."""
    conf = tmp_path / "nkey.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    log = tmp_path / "nats-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                NATS_SERVER,
                "-a",
                "127.0.0.1",
                "-p",
                "-1",
                "--ports_file_dir",
                str(tmp_path),
                "-c",
                str(conf),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ports = tmp_path / f"nats-server_{proc.pid}.ports"
        deadline = time.monotonic() + 15
        port = None
        while port is None:
            if proc.poll() is not None:
                pytest.fail(f"nats-server exited ({proc.returncode}):\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"nats-server wrote no ports file:\n{log.read_text()}")
            if ports.exists():
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    url = json.loads(ports.read_text())["nats"][0]
                    port = int(url.rsplit(":", 1)[1])
            if port is None:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def read_line(sock: socket.socket, buf: bytearray) -> bytes:
    deadline = time.monotonic() + 5
    while b"\r\n" not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError(bytes(buf))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed; got {bytes(buf)!r}")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


def nkey_login(port: int, kp: KeyPair, public: str | None = None) -> bytes:
    """Sign the server's nonce with ``kp`` and return the server's answer to PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        buf = bytearray()
        info_line = read_line(sock, buf)
        assert info_line.startswith(b"INFO ")
        info = json.loads(info_line[5:])
        nonce = info["nonce"]
        assert info["auth_required"] is True
        connect = {
            "nkey": public or kp.public_key(),
            "sig": kp.sign_nonce(nonce),
            "verbose": False,
        }
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        return read_line(sock, buf)


def test_nats_server_accepts_our_nonce_signature(tmp_path: Path) -> None:
    kp = KeyPair.generate()
    with nkey_server(tmp_path, kp.public_key()) as port:
        assert nkey_login(port, kp) == b"PONG"
        # A key pair read back from its seed signs the same way.
        assert nkey_login(port, KeyPair.from_seed(kp.seed())) == b"PONG"


def test_nats_server_refuses_a_signature_from_another_seed(tmp_path: Path) -> None:
    kp = KeyPair.generate()
    other = KeyPair.generate()
    with nkey_server(tmp_path, kp.public_key()) as port:
        # Claims kp's public key, signs with another seed.
        assert nkey_login(port, other, public=kp.public_key()) == b"-ERR 'Authorization Violation'"
        # Its own (unknown) public key.
        assert nkey_login(port, other) == b"-ERR 'Authorization Violation'"
