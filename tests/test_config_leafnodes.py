"""edge.config: leafnode URLs and the [leafnodes] table (remotes, TLS, filters, files)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge.config import (
    ConfigError,
    LeafnodesConfig,
    LeafURL,
    RemoteConfig,
    ServerConfig,
    TLSClientConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    mask_url,
    parse_leaf_url,
    validate,
)
from tests.configutil import load_error, write

# --- parse_leaf_url ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "nats-leaf://hub.example:7422",
            LeafURL("nats-leaf", "hub.example", 7422, None, None, tls=False),
        ),
        ("nats-leaf://hub.example", LeafURL("nats-leaf", "hub.example", 7422, None, None, False)),
        ("nats-leaf://hub.example/", LeafURL("nats-leaf", "hub.example", 7422, None, None, False)),
        ("nats://10.0.0.1:4000", LeafURL("nats", "10.0.0.1", 4000, None, None, tls=False)),
        ("tls://hub.example", LeafURL("tls", "hub.example", 7422, None, None, tls=True)),
        ("tls://hub.example:443", LeafURL("tls", "hub.example", 443, None, None, tls=True)),
        ("NATS-LEAF://Hub.Example:1", LeafURL("nats-leaf", "hub.example", 1, None, None, False)),
        ("nats-leaf://h:65535", LeafURL("nats-leaf", "h", 65535, None, None, tls=False)),
        ("tls://[::1]:7500", LeafURL("tls", "::1", 7500, None, None, tls=True)),
        ("nats-leaf://[fe80::1]", LeafURL("nats-leaf", "fe80::1", 7422, None, None, False)),
        ("nats-leaf://user:pass@h:7422", LeafURL("nats-leaf", "h", 7422, "user", "pass", False)),
        # Percent-encoding: "@", ":" and "/" in a password; an encoded user name.
        (
            "nats-leaf://us%65r:p%40ss%3Aw%2Fd@h",
            LeafURL("nats-leaf", "h", 7422, "user", "p@ss:w/d", tls=False),
        ),
        ("tls://%C3%A9t%C3%A9:pw@h:1", LeafURL("tls", "h", 1, "été", "pw", tls=True)),
        # A literal ":" in the password needs no encoding (the first one splits).
        ("nats://u:a:b@h", LeafURL("nats", "h", 7422, "u", "a:b", tls=False)),
    ],
)
def test_parse_leaf_url(url: str, expected: LeafURL) -> None:
    assert parse_leaf_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://hub.example:443", "ws:// (websocket) leafnode links are not supported yet"),
        ("wss://hub.example", "wss:// (websocket) leafnode links are not supported yet"),
        ("http://hub.example", 'scheme "http" is not supported; use nats-leaf://'),
        ("hub.example:7422", "expected a URL like"),
        ("", "expected a URL like"),
        ("://h", "expected a URL like"),
        (7422, "expected a URL like"),
        (None, "expected a URL like"),
        ("nats-leaf://", "has no host"),
        ("nats-leaf://:7422", "has no host"),
        ("nats-leaf://u:p@:7422", "has no host"),
        ("nats-leaf://h:0", "port must be 1..65535"),
        ("nats-leaf://h:65536", "port must be 1..65535"),
        ("nats-leaf://h:-1", "port must be 1..65535"),
        ("nats-leaf://h:x", "port must be 1..65535"),
        ("nats-leaf://h:", "has an empty port"),
        ("nats-leaf://h:7422/ACC", "must be only scheme://host:port"),
        ("nats-leaf://h:7422?x=1", "must be only scheme://host:port"),
        ("nats-leaf://h:7422#f", "must be only scheme://host:port"),
        ("nats-leaf://a:b:7422", "an IPv6 address needs brackets"),
        ("nats-leaf://[::1", "Invalid IPv6 URL"),
        ("nats-leaf://[::1]x", "unexpected text after the host"),
        ("nats-leaf://h :7422", "must not contain spaces"),
        ("nats-leaf://token@h", "has a user but no password"),
        ("nats-leaf://u:@h", "has a user but no password"),
        ("nats-leaf://:p@h", "has an empty user name"),
        ("nats-leaf://u:%FF@h", "not valid percent-encoded UTF-8"),
        ("nats-leaf://u:a/b@h", "must be percent-encoded (%2F, %3F, %23)"),
    ],
)
def test_parse_leaf_url_rejects(url: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_leaf_url(url)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "nats-leaf://u:hunter2@h:0",
        "ftp://u:hunter2@h",
        "u:hunter2@h:7422",
        "nats-leaf://u:hunter2/x@h",
        "nats-leaf://u:hunter2@h:7422/path",
        "nats-leaf://hunter2@h",
    ],
)
def test_parse_leaf_url_errors_hide_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_leaf_url(url)
    assert "hunter2" not in str(info.value)


def test_leaf_url_is_frozen() -> None:
    url = parse_leaf_url("tls://h")
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nats-leaf://u:hunter2@h:7422", "nats-leaf://u:***@h:7422"),
        ("tls://u%40x:p%40ss@h", "tls://u%40x:***@h"),
        ("nats-leaf://token@h", "nats-leaf://***@h"),
        ("nats-leaf://h:7422", "nats-leaf://h:7422"),
        ("nats-leaf://h:7422/", "nats-leaf://h:7422/"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


# --- [leafnodes] ---------------------------------------------------------------


@pytest.fixture
def hub_files(tmp_path: Path) -> dict[str, str]:
    """A readable .creds file, nkey seed file, CA, certificate and key."""
    files = {}
    for name in ("hub.creds", "hub.nk", "ca.pem", "cert.pem", "key.pem"):
        path = tmp_path / name
        path.write_text("x\n", encoding="utf-8")
        files[name] = str(path)
    return files


def leaf_config(tmp_path: Path, files: dict[str, str], text: str) -> ServerConfig:
    for name, path in files.items():
        text = text.replace("{" + name + "}", path)
    return load_config(write(tmp_path, text))


def leaf_error(tmp_path: Path, files: dict[str, str], text: str) -> ConfigError:
    for name, path in files.items():
        text = text.replace("{" + name + "}", path)
    return load_error(tmp_path, text)


def test_no_leafnodes_gives_no_remotes(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "port = 4333\n")).leafnodes == LeafnodesConfig()
    assert load_config(write(tmp_path, "[leafnodes]\n")).leafnodes.remotes == ()
    assert load_config(write(tmp_path, "[leafnodes]\nremotes = []\n")).leafnodes.remotes == ()


def test_minimal_remote(tmp_path: Path) -> None:
    text = '[[leafnodes.remotes]]\nurl = "nats-leaf://hub.example:7422"\n'
    config = load_config(write(tmp_path, text))
    assert config.leafnodes.remotes == (RemoteConfig(urls=("nats-leaf://hub.example:7422",)),)


FULL_REMOTE = """
[[leafnodes.remotes]]
urls = ["nats-leaf://h1:7422", "tls://h2:7422"]
account = "TELEMETRY"
credentials = "{hub.creds}"
deny_exports = ["private.>", "_INBOX.local.*"]
deny_imports = "cmd.local.>"
allow_exports = ["telemetry.>"]
allow_imports = ["cmd.>", "config.*"]
reconnect = "2s"
reconnect_max = "30s"
use_advertised_urls = false
connect_timeout = "3s"
ping_interval = "1m"
ping_max = 5

[leafnodes.remotes.tls]
ca_file = "{ca.pem}"
cert_file = "{cert.pem}"
key_file = "{key.pem}"
handshake_first = true
server_name = "hub.example"
insecure_skip_verify = true

[[leafnodes.remotes]]
url = "nats-leaf://other.example"
nkey = "{hub.nk}"
"""


def test_full_remotes(tmp_path: Path, hub_files: dict[str, str]) -> None:
    config = leaf_config(tmp_path, hub_files, FULL_REMOTE)
    assert config.leafnodes.remotes == (
        RemoteConfig(
            urls=("nats-leaf://h1:7422", "tls://h2:7422"),
            account="TELEMETRY",
            credentials=hub_files["hub.creds"],
            tls=TLSClientConfig(
                ca_file=hub_files["ca.pem"],
                cert_file=hub_files["cert.pem"],
                key_file=hub_files["key.pem"],
                handshake_first=True,
                server_name="hub.example",
                insecure_skip_verify=True,
            ),
            allow_exports=("telemetry.>",),
            deny_exports=("private.>", "_INBOX.local.*"),
            allow_imports=("cmd.>", "config.*"),
            deny_imports=("cmd.local.>",),
            reconnect_delay=2.0,
            reconnect_max=30.0,
            use_advertised_urls=False,
            connect_timeout=3.0,
            ping_interval=60.0,
            ping_max=5,
        ),
        RemoteConfig(urls=("nats-leaf://other.example",), nkey_seed=hub_files["hub.nk"]),
    )


def test_remote_user_password_and_token(tmp_path: Path) -> None:
    text = (
        '[[leafnodes.remotes]]\nurl = "nats-leaf://a"\nuser = "u"\npassword = "p"\n'
        '[[leafnodes.remotes]]\nurl = "nats-leaf://b"\ntoken = "t"\n'
    )
    first, second = load_config(write(tmp_path, text)).leafnodes.remotes
    assert (first.user, first.password, first.token) == ("u", "p", None)
    assert (second.user, second.password, second.token) == (None, None, "t")


def test_url_userinfo_stays_in_the_url(tmp_path: Path) -> None:
    text = '[[leafnodes.remotes]]\nurl = "nats-leaf://u:p%40ss@hub"\n'
    (remote,) = load_config(write(tmp_path, text)).leafnodes.remotes
    assert remote.urls == ("nats-leaf://u:p%40ss@hub",)
    assert (remote.user, remote.password) == (None, None)
    assert parse_leaf_url(remote.urls[0]).password == "p@ss"


def test_empty_tls_table_turns_tls_on(tmp_path: Path) -> None:
    text = '[[leafnodes.remotes]]\nurl = "nats-leaf://h"\n[leafnodes.remotes.tls]\n'
    (remote,) = load_config(write(tmp_path, text)).leafnodes.remotes
    assert remote.tls == TLSClientConfig()


def test_tls_url_without_tls_table(tmp_path: Path) -> None:
    text = '[[leafnodes.remotes]]\nurl = "tls://h"\n'
    (remote,) = load_config(write(tmp_path, text)).leafnodes.remotes
    assert remote.tls is None  # TLS comes from the URL's scheme
    assert parse_leaf_url(remote.urls[0]).tls


def test_nats_server_insecure_alias(tmp_path: Path) -> None:
    text = '[[leafnodes.remotes]]\nurl = "tls://h"\n[leafnodes.remotes.tls]\ninsecure = true\n'
    (remote,) = load_config(write(tmp_path, text)).leafnodes.remotes
    assert remote.tls == TLSClientConfig(insecure_skip_verify=True)


def test_leafnodes_reconnect_is_the_default_delay(tmp_path: Path) -> None:
    text = (
        '[leafnodes]\nreconnect = "1s"\n'
        '[[leafnodes.remotes]]\nurl = "nats-leaf://a"\nreconnect_max = "10s"\n'
        '[[leafnodes.remotes]]\nurl = "nats-leaf://b"\nreconnect = "3s"\nreconnect_max = "9s"\n'
    )
    first, second = load_config(write(tmp_path, text)).leafnodes.remotes
    assert (first.reconnect_delay, first.reconnect_max) == (1.0, 10.0)
    assert (second.reconnect_delay, second.reconnect_max) == (3.0, 9.0)


def test_leafnodes_reconnect_after_remotes(tmp_path: Path) -> None:
    # Key order within [leafnodes] does not matter.
    data = {"leafnodes": {"remotes": [{"url": "nats-leaf://a"}], "reconnect": 0.5}}
    assert config_from_dict(data).leafnodes.remotes[0].reconnect_delay == 0.5


def test_reconnect_above_the_default_cap_raises_the_cap(tmp_path: Path) -> None:
    default = RemoteConfig(urls=("nats-leaf://x",))
    slow = default.reconnect_max + 10
    text = f'[[leafnodes.remotes]]\nurl = "nats-leaf://a"\nreconnect = {slow}\n'
    (remote,) = load_config(write(tmp_path, text)).leafnodes.remotes
    assert (remote.reconnect_delay, remote.reconnect_max) == (slow, slow)
    text = f'[leafnodes]\nreconnect = {slow}\n[[leafnodes.remotes]]\nurl = "nats-leaf://a"\n'
    (remote,) = load_config(write(tmp_path, text)).leafnodes.remotes
    assert (remote.reconnect_delay, remote.reconnect_max) == (slow, slow)


def test_reconnect_below_the_default_cap_keeps_it(tmp_path: Path) -> None:
    default = RemoteConfig(urls=("nats-leaf://x",))
    fast = default.reconnect_max / 2
    text = f'[[leafnodes.remotes]]\nurl = "nats-leaf://a"\nreconnect = {fast}\n'
    (remote,) = load_config(write(tmp_path, text)).leafnodes.remotes
    assert (remote.reconnect_delay, remote.reconnect_max) == (fast, default.reconnect_max)


_R = '[[leafnodes.remotes]]\nurl = "nats-leaf://hub"\n'
_P = "leafnodes.remotes[0]"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        # the [leafnodes] table
        ("leafnodes = 1", "leafnodes", "expected a table"),
        ("[leafnodes]\nx = 1", "leafnodes.x", "unknown key"),
        ("[leafnodes]\nremote = []", "leafnodes.remote", "did you mean remotes?"),
        ('[leafnodes]\nremotes = "x"', "leafnodes.remotes", "expected an array of tables"),
        ("[leafnodes]\nremotes = [1]", _P, "expected a table, got 1"),
        ('[leafnodes]\nreconnect = "1s"', "leafnodes.reconnect", "no [[leafnodes.remotes]]"),
        ('[leafnodes]\nreconnect = "0s"\n' + _R, "leafnodes.reconnect", "greater than 0"),
        ('[leafnodes]\nreconnect = "x"\n' + _R, "leafnodes.reconnect", "expected a duration"),
        (
            '[leafnodes]\nreconnect = "5s"\n' + _R + 'reconnect_max = "2s"',
            f"{_P}.reconnect_max",
            "must be at least reconnect (5s), got 2s",
        ),
        # URLs
        ('[[leafnodes.remotes]]\naccount = "A"', _P, "needs url or urls"),
        ("[[leafnodes.remotes]]", _P, "needs url or urls"),
        (_R + 'urls = ["nats-leaf://b"]', f"{_P}.urls", f"conflicts with {_P}.url"),
        ("[[leafnodes.remotes]]\nurls = []", f"{_P}.urls", "must list at least one URL"),
        ('[[leafnodes.remotes]]\nurls = "nats-leaf://h"', f"{_P}.urls", "an array of strings"),
        ('[[leafnodes.remotes]]\nurls = ["nats://h", 5]', f"{_P}.urls[1]", "expected a string"),
        ("[[leafnodes.remotes]]\nurl = 5", f"{_P}.url", "expected a string"),
        ('[[leafnodes.remotes]]\nurl = "ws://h"', f"{_P}.url", "not supported yet"),
        (
            '[[leafnodes.remotes]]\nurls = ["nats://a", "wss://b"]',
            f"{_P}.urls[1]",
            "not supported yet",
        ),
        ('[[leafnodes.remotes]]\nurl = "http://h"', f"{_P}.url", 'scheme "http" is not'),
        ('[[leafnodes.remotes]]\nurl = "nats://h:70000"', f"{_P}.url", "port must be 1..65535"),
        ('[[leafnodes.remotes]]\nurl = "nats://:7422"', f"{_P}.url", "has no host"),
        ('[[leafnodes.remotes]]\nurl = "hub:7422"', f"{_P}.url", "expected a URL like"),
        (_R + '[[leafnodes.remotes]]\nurl = "h"', "leafnodes.remotes[1].url", "expected a URL"),
        (_R + "urll = 1", f"{_P}.urll", "did you mean url?"),
        # authentication
        (_R + 'credentials = "{hub.creds}"\nnkey = "{hub.nk}"', f"{_P}.nkey", "with credentials"),
        (
            _R + 'credentials = "{hub.creds}"\nuser = "u"\npassword = "p"',
            f"{_P}.user",
            "cannot be combined with credentials",
        ),
        (_R + 'credentials = "{hub.creds}"\ntoken = "t"', f"{_P}.token", "with credentials"),
        (_R + 'nkey = "{hub.nk}"\ntoken = "t"', f"{_P}.token", "cannot be combined with nkey"),
        (_R + 'nkey = "{hub.nk}"\nuser = "u"\npassword = "p"', f"{_P}.user", "with nkey"),
        (
            _R + 'user = "u"\npassword = "p"\ntoken = "t"',
            f"{_P}.token",
            "cannot be combined with user",
        ),
        (_R + 'user = "u"', f"{_P}.user", "set without a password"),
        (_R + 'user = "u"\ntoken = "t"', f"{_P}.token", "cannot be combined with user"),
        (_R + 'password = "p"', f"{_P}.password", "set without a user"),
        (_R + 'user = "u"\npassword = ""', f"{_P}.password", "must not be empty"),
        (_R + 'user = ""\npassword = "p"', f"{_P}.user", "must not be empty"),
        (_R + 'token = ""', f"{_P}.token", "must not be empty"),
        (
            '[[leafnodes.remotes]]\nurl = "nats://u:p@h"\nuser = "v"\npassword = "q"',
            f"{_P}.user",
            f"cannot be combined with the user:password in {_P}.url",
        ),
        (
            '[[leafnodes.remotes]]\nurls = ["nats://h", "nats://u:p@h"]\n'
            'credentials = "{hub.creds}"',
            f"{_P}.urls[1]",
            "its user:password cannot be combined with credentials",
        ),
        (
            '[[leafnodes.remotes]]\nurl = "nats://u:p@h"\ntoken = "t"',
            f"{_P}.token",
            "cannot be combined with the user:password in the URL",
        ),
        (
            '[[leafnodes.remotes]]\nurl = "nats://u:p@h"\nnkey = "{hub.nk}"',
            f"{_P}.url",
            "its user:password cannot be combined with nkey",
        ),
        (_R + 'credentials = ""', f"{_P}.credentials", "must not be empty"),
        (_R + "nkey = 1", f"{_P}.nkey", "expected a string"),
        (_R + 'account = ""', f"{_P}.account", "must not be empty"),
        (_R + 'account = "MY ACC"', f"{_P}.account", "must not contain spaces"),
        # TLS
        (_R + 'tls = "yes"', f"{_P}.tls", "expected a table"),
        (_R + "[leafnodes.remotes.tls]\nverify = true", f"{_P}.tls.verify", "unknown key"),
        (
            _R + '[leafnodes.remotes.tls]\ncert_file = "{cert.pem}"',
            f"{_P}.tls.cert_file",
            "set without key_file",
        ),
        (
            _R + '[leafnodes.remotes.tls]\nkey_file = "{key.pem}"',
            f"{_P}.tls.key_file",
            "set without cert_file",
        ),
        (
            _R + '[leafnodes.remotes.tls]\nhandshake_first = "no"',
            f"{_P}.tls.handshake_first",
            "expected true or false",
        ),
        (
            _R + '[leafnodes.remotes.tls]\nserver_name = ""',
            f"{_P}.tls.server_name",
            "must not be empty",
        ),
        (
            _R + "[leafnodes.remotes.tls]\ninsecure = true\ninsecure_skip_verify = true",
            f"{_P}.tls.insecure_skip_verify",
            f"conflicts with {_P}.tls.insecure",
        ),
        # subject filters
        (_R + 'deny_exports = ["ok.>", "a..b"]', f"{_P}.deny_exports[1]", 'subject: "a..b"'),
        (_R + 'allow_imports = [">.x"]', f"{_P}.allow_imports[0]", "not a valid subject"),
        (_R + 'deny_imports = "a b"', f"{_P}.deny_imports[0]", "not a valid subject"),
        (_R + 'allow_exports = [""]', f"{_P}.allow_exports[0]", "not a valid subject"),
        (_R + 'allow_exports = ["a."]', f"{_P}.allow_exports[0]", "not a valid subject"),
        (_R + "deny_exports = [1]", f"{_P}.deny_exports[0]", "expected a string"),
        (_R + "deny_exports = 1", f"{_P}.deny_exports", "expected an array of strings"),
        # timing
        (_R + 'reconnect = "0s"', f"{_P}.reconnect", "must be greater than 0"),
        (_R + 'reconnect = "-1s"', f"{_P}.reconnect", "must not be negative"),
        (_R + "reconnect_max = 0", f"{_P}.reconnect_max", "must be greater than 0"),
        (
            _R + 'reconnect = "5s"\nreconnect_max = "2s"',
            f"{_P}.reconnect_max",
            "must be at least reconnect (5s), got 2s",
        ),
        (_R + "connect_timeout = 0", f"{_P}.connect_timeout", "must be greater than 0"),
        (_R + 'ping_interval = "0s"', f"{_P}.ping_interval", "must be greater than 0"),
        (_R + 'ping_interval = "soon"', f"{_P}.ping_interval", "expected a duration"),
        (_R + "ping_max = 0", f"{_P}.ping_max", "must be at least 1, got 0"),
        (_R + 'ping_max = "3"', f"{_P}.ping_max", "expected an integer"),
        (_R + 'use_advertised_urls = "yes"', f"{_P}.use_advertised_urls", "true or false"),
    ],
)
def test_leafnodes_errors_name_the_key(
    tmp_path: Path, hub_files: dict[str, str], text: str, key: str, message: str
) -> None:
    err = leaf_error(tmp_path, hub_files, text + "\n")
    assert err.key == key
    assert message in err.reason
    assert f": {key}: " in str(err)


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("credentials", f"{_P}.credentials"),
        ("nkey", f"{_P}.nkey"),
    ],
)
def test_missing_credential_file_names_key_and_path(tmp_path: Path, setting: str, key: str) -> None:
    missing = str(tmp_path / "missing.file")
    err = load_error(tmp_path, f'{_R}{setting} = "{missing}"\n')
    assert err.key == key
    assert err.reason == f'cannot read "{missing}": No such file or directory'


@pytest.mark.parametrize("name", ["ca_file", "cert_file", "key_file"])
def test_missing_tls_file_names_key_and_path(
    tmp_path: Path, hub_files: dict[str, str], name: str
) -> None:
    tls = {"ca_file": "{ca.pem}", "cert_file": "{cert.pem}", "key_file": "{key.pem}"}
    missing = str(tmp_path / "missing.pem")
    tls[name] = missing
    table = "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    err = leaf_error(tmp_path, hub_files, f"{_R}[leafnodes.remotes.tls]\n{table}")
    assert err.key == f"{_P}.tls.{name}"
    assert f'cannot read "{missing}"' in err.reason


def test_credentials_must_be_a_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, f'{_R}credentials = "{tmp_path}"\n')
    assert err.key == f"{_P}.credentials"
    assert err.reason == f'"{tmp_path}" is not a regular file'


def test_url_errors_hide_the_password(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[[leafnodes.remotes]]\nurl = "nats-leaf://u:hunter2@h:0"\n')
    assert err.key == f"{_P}.url"
    assert "hunter2" not in str(err)
    assert "u:***@h:0" not in str(err)  # the whole userinfo is hidden in errors
    assert "***@h:0" in str(err)


# --- leafnodes built in code ---------------------------------------------------


def remote_error(remote: RemoteConfig) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate(ServerConfig(leafnodes=LeafnodesConfig(remotes=(remote,))))
    return info.value


def test_validate_accepts_a_coded_remote() -> None:
    remote = RemoteConfig(urls=("nats-leaf://h", "tls://u:p@h2:7000"), account="A")
    validate(ServerConfig(leafnodes=LeafnodesConfig(remotes=(remote,))))  # must not raise
    assert parse_leaf_url(remote.urls[1]).user == "u"


@pytest.mark.parametrize(
    ("remote", "key", "message"),
    [
        (RemoteConfig(urls=()), f"{_P}.urls", "must list at least one URL"),
        (RemoteConfig(urls="nats://h"), f"{_P}.urls", "expected a tuple of URLs"),  # type: ignore[arg-type]
        (RemoteConfig(urls=("nats://h", "ws://h")), f"{_P}.urls[1]", "not supported yet"),
        (
            RemoteConfig(urls=("nats://h",), tls=TLSClientConfig(handshake_first="x")),  # type: ignore[arg-type]
            f"{_P}.tls.handshake_first",
            "expected true or false",
        ),
        (
            RemoteConfig(urls=("nats://h",), deny_exports="a.>"),  # type: ignore[arg-type]
            f"{_P}.deny_exports",
            "expected a tuple of subjects",
        ),
        (RemoteConfig(urls=("nats://h",), reconnect_delay=-1), f"{_P}.reconnect", "than 0"),
        (
            RemoteConfig(urls=("nats://h",), reconnect_delay=3, reconnect_max=2),
            f"{_P}.reconnect_max",
            "must be at least reconnect",
        ),
        (RemoteConfig(urls=("nats://h",), ping_max=0), f"{_P}.ping_max", "must be at least 1"),
    ],
)
def test_validate_rejects_bad_remotes(remote: RemoteConfig, key: str, message: str) -> None:
    err = remote_error(remote)
    assert err.key == key
    assert message in err.reason


def test_validate_names_the_remote_index() -> None:
    good = RemoteConfig(urls=("nats://a",))
    bad = RemoteConfig(urls=("nats://b",), user="u")
    with pytest.raises(ConfigError) as info:
        validate(ServerConfig(leafnodes=LeafnodesConfig(remotes=(good, bad))))
    assert info.value.key == "leafnodes.remotes[1].user"


def test_apply_overrides_merges_leafnodes() -> None:
    remote = RemoteConfig(urls=("nats-leaf://h",))
    new = apply_overrides(ServerConfig(), leafnodes={"remotes": (remote,)})
    assert new.leafnodes == LeafnodesConfig(remotes=(remote,))
    with pytest.raises(ConfigError) as info:
        apply_overrides(new, leafnodes={"remotes": (RemoteConfig(urls=("ftp://h",)),)})
    assert info.value.key == f"{_P}.urls[0]"
