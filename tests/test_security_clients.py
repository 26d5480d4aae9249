"""The official nats-py client authenticating each supported way, against leafgate and
against a real nats-server with the same configuration (``both``), and being refused
with each wrong credential; TLS with and without client certificates.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from edge.nkeys import PREFIX_USER, KeyPair
from tests.aio import connect, run, settle
from tests.certs import TLSFiles, make_tls_files
from tests.conftest import ServerFactory
from tests.harness import Config, RawClient, leafgate_command
from tests.jwtgen import Operator, creds_file_text, encode_jwt, user_jwt

PASSWORD_HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4, prefix=b"2a")).decode()
NKEY_USER = KeyPair.generate(PREFIX_USER)


def _users_config() -> Config:
    nkey = NKEY_USER.public_key()
    return Config(
        nats=(
            "authorization {\n"
            "  users = [\n"
            "    {user: alice, password: plain}\n"
            f'    {{user: bob, password: "{PASSWORD_HASH}"}}\n'
            f"    {{nkey: {nkey}}}\n"
            "    {user: guest, password: unused}\n"
            "  ]\n"
            "}\n"
            "no_auth_user: guest\n"
        ),
        toml=(
            'no_auth_user = "guest"\n'
            "[[authorization.users]]\n"
            'user = "alice"\npassword = "plain"\n'
            "[[authorization.users]]\n"
            f"user = \"bob\"\npassword = '{PASSWORD_HASH}'\n"
            "[[authorization.users]]\n"
            f'nkey = "{nkey}"\n'
            "[[authorization.users]]\n"
            'user = "guest"\npassword = "unused"\n'
        ),
    )


USERS = _users_config()


async def _round_trip(url: str, **kwargs: Any) -> None:
    nc = await connect(url, **kwargs)
    try:
        sub = await nc.subscribe("sec.ping")
        await settle(nc)
        await nc.publish("sec.ping", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"
    finally:
        await nc.close()


async def _refused(url: str, **kwargs: Any) -> str:
    try:
        nc = await connect(url, **kwargs)
    except Exception as exc:  # nats-py raises its own error types for -ERR
        return f"{type(exc).__name__}: {exc}"
    connected = nc.is_connected
    await nc.close()
    if not connected:
        # nats-py may return a client that already lost the link (a TLS 1.3 server
        # refuses the client certificate after the client's side of the handshake).
        return "closed by the server"
    raise AssertionError(f"connection with {sorted(kwargs)} was accepted")


def _seed_file(tmp_path: Path, keys: KeyPair) -> str:
    path = tmp_path / "user.nk"
    path.write_text(keys.seed() + "\n")
    path.chmod(0o600)
    return str(path)


def test_users_passwords_bcrypt_nkey_no_auth_user(both: ServerFactory, tmp_path: Path) -> None:
    server = both(config=USERS)
    seed = _seed_file(tmp_path, NKEY_USER)
    (tmp_path / "other").mkdir()
    wrong_seed = _seed_file(tmp_path / "other", KeyPair.generate(PREFIX_USER))

    async def scenario() -> None:
        await _round_trip(server.url, user="alice", password="plain")
        await _round_trip(server.url, user="bob", password="s3cret")  # bcrypt hash
        await _round_trip(server.url, nkeys_seed=seed)
        await _round_trip(server.url)  # no credentials: the no_auth_user
        for bad in (
            {"user": "alice", "password": "wrong"},
            {"user": "bob", "password": PASSWORD_HASH},  # the hash is not the password
            {"user": "mallory", "password": "plain"},
            {"nkeys_seed": wrong_seed},
            {"token": "plain"},
        ):
            err = await _refused(server.url, **bad)
            assert "authorization" in err.lower(), (bad, err)

    run(scenario())


def test_token(both: ServerFactory) -> None:
    server = both(
        config=Config(
            nats="authorization { token: t0k }\n", toml='[authorization]\ntoken = "t0k"\n'
        )
    )

    async def scenario() -> None:
        await _round_trip(server.url, token="t0k")
        assert "authorization" in (await _refused(server.url, token="nope")).lower()
        assert "authorization" in (await _refused(server.url)).lower()

    run(scenario())


# ---- operator mode: .creds files -------------------------------------------------------


def _operator_config(op: Operator) -> Config:
    preload = [op.system, *op.accounts.values()]
    toml_preload = "".join(f'{a.public_key} = "{a.jwt}"\n' for a in preload)
    return Config(
        nats=op.hub_config(),
        toml=(
            f'operator = "{op.jwt}"\n'
            f'system_account = "{op.system.public_key}"\n'
            'resolver = "MEMORY"\n'
            f"[resolver_preload]\n{toml_preload}"
        ),
    )


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_creds_files(both: ServerFactory, tmp_path: Path) -> None:
    op = Operator.create("APP")
    server = both(config=_operator_config(op))
    account = op.accounts["APP"]
    good = _write(tmp_path, "good.creds", account.user_creds("dev"))
    # A user signed by a key the account does not know.
    stranger = KeyPair.generate(0)
    user = KeyPair.generate(PREFIX_USER)
    forged_jwt = encode_jwt(stranger, user.public_key(), "forged", {"type": "user", "version": 2})
    forged = _write(tmp_path, "forged.creds", creds_file_text(forged_jwt, user.seed()))
    # The right JWT with another user's seed: the nonce signature does not match.
    other = KeyPair.generate(PREFIX_USER)
    right_jwt = account.user_creds("x").split("\n")[1]
    wrong_seed = _write(tmp_path, "wrongseed.creds", creds_file_text(right_jwt, other.seed()))

    async def scenario() -> None:
        await _round_trip(server.url, user_credentials=good)
        for bad in (forged, wrong_seed):
            assert "authorization" in (await _refused(server.url, user_credentials=bad)).lower()
        assert "authorization" in (await _refused(server.url)).lower()

    run(scenario())


# ---- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _tls_config(files: TLSFiles, *, verify: bool) -> Config:
    extra_nats = f"  ca_file: {files.ca}\n  verify: true\n" if verify else ""
    extra_toml = f'ca_file = "{files.ca}"\nverify = true\n' if verify else ""
    return Config(
        nats=(
            f"tls {{\n  cert_file: {files.server_cert}\n"
            f"  key_file: {files.server_key}\n{extra_nats}}}\n"
        ),
        toml=(
            f'[tls]\ncert_file = "{files.server_cert}"\n'
            f'key_file = "{files.server_key}"\n{extra_toml}'
        ),
    )


def _client_ctx(files: TLSFiles, *, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.ca))
    if cert:
        ctx.load_cert_chain(str(files.client_cert), str(files.client_key))
    return ctx


def test_tls_server_certificate(both: ServerFactory, tls_files: TLSFiles) -> None:
    server = both(config=_tls_config(tls_files, verify=False))
    url = f"tls://127.0.0.1:{server.port}"

    async def scenario() -> None:
        await _round_trip(url, tls=_client_ctx(tls_files, cert=False))
        # A client that does not trust the CA refuses the server.
        await _refused(url, tls=ssl.create_default_context())

    run(scenario())


def test_tls_client_certificate_required(both: ServerFactory, tls_files: TLSFiles) -> None:
    server = both(config=_tls_config(tls_files, verify=True))
    url = f"tls://127.0.0.1:{server.port}"

    async def scenario() -> None:
        await _round_trip(url, tls=_client_ctx(tls_files, cert=True))
        await _refused(url, tls=_client_ctx(tls_files, cert=False))

    run(scenario())


def test_tls_certificate_mapped_to_user(both: ServerFactory, tls_files: TLSFiles) -> None:
    cfg = _tls_config(tls_files, verify=True)
    config = Config(
        nats=cfg.nats.replace("verify: true", "verify_and_map: true")
        + 'authorization { users = [ {user: "CN=edge-gateway"} ] }\n',
        toml=cfg.toml.replace("verify = true", "verify_and_map = true")
        + '[[authorization.users]]\nuser = "CN=edge-gateway"\n',
    )
    server = both(config=config)
    url = f"tls://127.0.0.1:{server.port}"

    async def scenario() -> None:
        await _round_trip(url, tls=_client_ctx(tls_files, cert=True))
        await _refused(url, tls=_client_ctx(tls_files, cert=False))

    run(scenario())


def test_tls_handshake_first(leafgate_factory: ServerFactory, tls_files: TLSFiles) -> None:
    # nats-server 2.9.10 predates handshake_first, so leafgate alone.
    cfg = _tls_config(tls_files, verify=False)
    server = leafgate_factory(config_text=cfg.toml + "handshake_first = true\n")
    url = f"tls://127.0.0.1:{server.port}"

    async def scenario() -> None:
        await _round_trip(url, tls=_client_ctx(tls_files, cert=False), tls_handshake_first=True)

    run(scenario())


def test_tls_bad_key_reported_with_path(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    files.server_key.write_text("not a key\n")
    config = _write(
        tmp_path,
        "bad.toml",
        f'port = -1\n[tls]\ncert_file = "{files.server_cert}"\nkey_file = "{files.server_key}"\n',
    )
    proc = subprocess.run(
        [*leafgate_command(), "-c", config], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert "tls.cert_file" in proc.stderr
    assert str(files.server_key) in proc.stderr, proc.stderr


def _resigned(jwt: str, signer: KeyPair, **changes: Any) -> str:
    """``jwt`` with changed claims, signed again by ``signer``."""
    head, body, _ = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    sig = base64.urlsafe_b64encode(signer.sign(f"{head}.{body}".encode())).decode()
    return f"{head}.{body}.{sig.rstrip('=')}"


async def test_hostile_jwts_close_only_their_client(both: ServerFactory) -> None:
    op = Operator.create("APP")
    server = both(config=_operator_config(op))
    account = op.accounts["APP"]
    user = KeyPair.generate(PREFIX_USER)
    good = user_jwt(account.keys, user, "dev")
    head, body, sig = good.split(".")
    tampered = f"{head}.{body[:-4]}AAAA.{sig}"
    expired = _resigned(good, account.keys, exp=int(time.time()) - 60)

    async def login(jwt: str, signer: KeyPair) -> RawClient:
        client = await RawClient.connect(server.port)
        info = await client.read_info()
        sig = signer.sign_nonce(info["nonce"])
        line = json.dumps({"verbose": False, "jwt": jwt, "sig": sig, "protocol": 1})
        await client.send(b"CONNECT " + line.encode() + b"\r\n")
        return client

    keeper = await login(good, user)
    await keeper.send(b"SUB hostile 1\r\n")
    assert await keeper.ping() == []
    for jwt, signer in (
        (tampered, user),
        (expired, user),
        (good, KeyPair.generate(PREFIX_USER)),  # the nonce signed by another key
        ("not.a.jwt", user),
    ):
        bad = await login(jwt, signer)
        assert await bad.read_line() == b"-ERR 'Authorization Violation'", (both.name, jwt)
        assert await bad.closed(timeout=2)
        await bad.aclose()
    await keeper.send(b"PUB hostile 2\r\nok\r\n")
    frames = await keeper.ping()
    assert [f.payload for f in frames] == [b"ok"], frames
    await keeper.aclose()


async def test_silent_tls_client_closed_at_tls_timeout(
    leafgate_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """A client that opens TCP and never starts TLS holds nothing past tls.timeout."""
    cfg = _tls_config(tls_files, verify=False)
    server = leafgate_factory(config_text=cfg.toml + "timeout = 0.5\n")
    client = await RawClient.connect(server.port)
    info = await client.read_info()
    assert info["tls_required"] is True
    start = time.monotonic()
    assert await client.closed(timeout=3)
    assert time.monotonic() - start < 2.5
    await client.aclose()
    assert "tls_handshake_failed" in server.log_tail(4000)


def test_secrets_never_logged(leafgate_factory: ServerFactory) -> None:
    server = leafgate_factory(
        "-DV",
        config_text=(
            "[[authorization.users]]\n"
            'user = "alice"\npassword = "pw-SECRET-1"\n'
            "[[authorization.users]]\n"
            'user = "bob"\npassword = "pw-SECRET-2"\n'
        ),
    )

    async def scenario() -> None:
        await _round_trip(server.url, user="alice", password="pw-SECRET-1")
        await _refused(server.url, user="bob", password="pw-SECRET-3-wrong")
        await _refused(server.url, token="tok-SECRET-4")

    run(scenario())
    log = server.log_tail(200_000)
    assert "authorization_violation" in log  # the refusals were logged ...
    assert "SECRET" not in log  # ... without any password or token
