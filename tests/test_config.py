"""edge.config: TOML loading, value parsing, validation, overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge.config import (
    KIB,
    MIB,
    AuthConfig,
    ConfigError,
    LeafnodesConfig,
    LeafURL,
    LogConfig,
    RemoteConfig,
    ServerConfig,
    TLSClientConfig,
    apply_overrides,
    config_from_dict,
    format_size,
    load_config,
    mask_url,
    parse_duration,
    parse_hostport,
    parse_leaf_url,
    parse_size,
    validate,
)


def write(tmp_path: Path, text: str, name: str = "leafgate.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == path
    return info.value


# --- parse_size --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1048576, 1048576),
        ("1048576", 1048576),
        ("1MB", MIB),
        ("64MB", 64 * MIB),
        ("4KB", 4 * KIB),
        ("4kb", 4 * KIB),
        ("1MiB", MIB),
        ("1Mi", MIB),
        ("2GB", 2 * 1024**3),
        ("1 MB", MIB),
        ("512B", 512),
        # nats-server: a bare K/M is 1000-based, KB/MB 1024-based
        ("1K", 1000),
        ("1M", 1000 * 1000),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["abc", "1.5MB", "1XB", "", "MB", 1.5, True, [1], None])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(value)


@pytest.mark.parametrize("value", [-1, "-1MB"])
def test_parse_size_rejects_negative(value: object) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(value)


def test_format_size() -> None:
    assert format_size(MIB) == "1MB"
    assert format_size(64 * MIB) == "64MB"
    assert format_size(4 * KIB) == "4KB"
    assert format_size(1000) == "1000B"


# --- parse_duration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10, 10.0),
        (2.5, 2.5),
        (0, 0.0),
        ("0", 0.0),
        ("2m", 120.0),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s", 3723.0),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(value: object, expected: float) -> None:
    assert parse_duration(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["abc", "10", "10 s", "1m30", "s", "", "1d", True, float("nan")])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, "-1s"])
def test_parse_duration_rejects_negative(value: object) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(value)


# --- parse_hostport ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:4222", ("0.0.0.0", 4222)),
        (":4223", (None, 4223)),
        ("localhost:-1", ("localhost", -1)),
        ("[::1]:4222", ("::1", 4222)),
        (4224, (None, 4224)),
    ],
)
def test_parse_hostport(value: object, expected: tuple[str | None, int]) -> None:
    assert parse_hostport(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost", "expected"),
        ("host:abc", "expected"),
        ("host:70000", "port must be 0..65535"),
        (-2, "port must be 0..65535"),
        ("::1:4222", "needs brackets"),
        (True, "expected"),
    ],
)
def test_parse_hostport_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hostport(value)


# --- load_config: accepted keys ----------------------------------------------


FULL_CONFIG = """
listen = "0.0.0.0:4333"
server_name = "edge-1"
max_payload = "2MB"
max_control_line = "8KB"
max_connections = 100
max_subscriptions = 1000
max_pending = "32MB"
write_deadline = "2s"
ping_interval = "1m30s"
ping_max = 3
lame_duck_duration = "30s"
lame_duck_grace_period = "5s"
shutdown_grace = 1.5
http = "127.0.0.2:8333"
ports_file_dir = "/run/leafgate"
pid_file = "/run/leafgate/leafgate.pid"
debug = true
trace = true
logfile = "/var/log/leafgate.log"
log_format = "json"

[authorization]
user = "alice"
password = "s3cret"
timeout = "500ms"
"""


def test_load_full_config(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_CONFIG)
    config = load_config(path)
    assert config == ServerConfig(
        host="0.0.0.0",
        port=4333,
        server_name="edge-1",
        max_payload=2 * MIB,
        max_control_line=8 * KIB,
        max_connections=100,
        max_subscriptions=1000,
        max_pending=32 * MIB,
        write_deadline=2.0,
        ping_interval=90.0,
        max_pings_out=3,
        lame_duck_duration=30.0,
        lame_duck_grace_period=5.0,
        shutdown_grace=1.5,
        http_host="127.0.0.2",
        http_port=8333,
        auth=AuthConfig(user="alice", password="s3cret", timeout=0.5),
        log=LogConfig(debug=True, trace=True, logfile="/var/log/leafgate.log", format="json"),
        ports_file_dir="/run/leafgate",
        pid_file="/run/leafgate/leafgate.pid",
        config_file=path,
    )


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path) == ServerConfig(config_file=path)


def test_host_and_port_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'host = "10.0.0.1"\nport = 4500\n'))
    assert (config.host, config.port) == ("10.0.0.1", 4500)


def test_listen_port_only_keeps_host(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'host = "10.0.0.1"\nlisten = ":4501"\n'))
    assert (config.host, config.port) == ("10.0.0.1", 4501)


def test_listen_random_port(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'listen = "127.0.0.1:-1"\n'))
    assert config.port == -1


def test_http_port_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "http_port = 8222\n"))
    assert config.http_port == 8222
    assert config.http_host == "127.0.0.1"


def test_integer_sizes_and_durations(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "max_payload = 4096\nping_interval = 30\n"))
    assert config.max_payload == 4096
    assert config.ping_interval == 30.0


def test_log_file_alias(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'log_file = "/tmp/x.log"\n'))
    assert config.log.logfile == "/tmp/x.log"


def test_token_auth(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[authorization]\ntoken = "t0k"\n'))
    assert config.auth.token == "t0k"
    assert config.auth.required


# --- load_config: errors name the key -----------------------------------------


def test_error_message_format(tmp_path: Path) -> None:
    err = load_error(tmp_path, 'max_payload = "abc"\n')
    assert err.key == "max_payload"
    assert str(err) == (
        f'config error in {err.file}: max_payload: expected a size like 1048576 or "1MB", got "abc"'
    )


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    err = load_error(tmp_path, "max_payoad = 10\n")
    assert err.key == "max_payoad"
    assert "unknown key" in str(err)
    assert "did you mean max_payload?" in str(err)


def test_unknown_key_without_suggestion(tmp_path: Path) -> None:
    err = load_error(tmp_path, "frobnicate = 1\n")
    assert err.key == "frobnicate"
    assert str(err).endswith("frobnicate: unknown key")


@pytest.mark.parametrize("table", ["store", "mqtt", "serial", "accounts"])
def test_future_tables_are_unknown_for_now(tmp_path: Path, table: str) -> None:
    err = load_error(tmp_path, f"[{table}]\nx = 1\n")
    assert err.key == table
    assert str(err).endswith(f"{table}: unknown key")


def test_unknown_key_in_authorization(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[authorization]\nusr = "a"\n')
    assert err.key == "authorization.usr"
    assert "did you mean user?" in str(err)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('port = "4222"', "port", 'expected an integer, got "4222"'),
        ("port = 70000", "port", "must be 0..65535 (or -1 for a random port), got 70000"),
        ("port = -2", "port", "got -2"),
        ("http_port = 65536", "http_port", "must be 0..65535"),
        ('listen = "host:99999"', "listen", "port must be 0..65535"),
        ('listen = "nohost"', "listen", "expected"),
        ("max_payload = -1", "max_payload", "must not be negative"),
        ("max_payload = 0", "max_payload", "must be at least 1"),
        ('max_payload = "65MB"\nmax_pending = "128MB"', "max_payload", "must be at most 64MB"),
        ('max_payload = "2MB"\nmax_pending = "1MB"', "max_payload", "larger than max_pending"),
        ('max_pending = "-4KB"', "max_pending", "must not be negative"),
        ("max_control_line = 1.5", "max_control_line", "expected a size"),
        ("max_connections = 0", "max_connections", "must be at least 1"),
        ("max_subscriptions = -1", "max_subscriptions", "must be at least 0"),
        ('max_connections = "10"', "max_connections", "expected an integer"),
        ('write_deadline = "soon"', "write_deadline", "expected a duration"),
        ("write_deadline = 0", "write_deadline", "must be greater than 0"),
        ('ping_interval = "-5s"', "ping_interval", "must not be negative"),
        ("ping_max = 0", "ping_max", "must be at least 1"),
        ("ping_max = 1.5", "ping_max", "expected an integer"),
        ('lame_duck_duration = "10s"', "lame_duck_grace_period", "shorter than lame_duck"),
        ("shutdown_grace = true", "shutdown_grace", "expected a duration"),
        ('debug = "yes"', "debug", 'expected true or false, got "yes"'),
        ("trace = 1", "trace", "expected true or false, got 1"),
        ('log_format = "xml"', "log_format", 'got "xml"'),
        ("logfile = 3", "logfile", "expected a string"),
        ('logfile = ""', "logfile", "must not be empty"),
        ('server_name = "my edge"', "server_name", "must not contain spaces"),
        ('host = ""', "host", "must not be empty"),
        ("server_name = [1]", "server_name", "got an array"),
        ('authorization = "x"', "authorization", "expected a table"),
        ('listen = ":4222"\nport = 4223', "port", "conflicts with listen"),
        ('logfile = "a"\nlog_file = "b"', "log_file", "conflicts with logfile"),
        ('http = ":8222"\nhttp_port = 8223', "http_port", "conflicts with http"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    err = load_error(tmp_path, text + "\n")
    assert err.key == key
    assert message in err.reason
    assert f": {key}: " in str(err)


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ('user = "a"', "authorization.user", "set without a password"),
        ('password = "p"', "authorization.password", "set without a user"),
        ('user = "a"\npassword = "p"\ntoken = "t"', "authorization.token", "cannot be combined"),
        ('token = ""', "authorization.token", "must not be empty"),
        ("user = 1", "authorization.user", "expected a string"),
        ('token = "t"\ntimeout = "0s"', "authorization.timeout", "must be greater than 0"),
    ],
)
def test_authorization_errors(tmp_path: Path, table: str, key: str, message: str) -> None:
    err = load_error(tmp_path, f"[authorization]\n{table}\n")
    assert err.key == key
    assert message in err.reason


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key is None
    assert info.value.file == path
    assert str(info.value).startswith(f"config error in {path}: cannot read file")


def test_invalid_toml(tmp_path: Path) -> None:
    err = load_error(tmp_path, "port = \n")
    assert err.key is None
    assert "invalid TOML" in str(err)


def test_nats_server_conf_syntax_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 4222\n", name="nats-server.conf")
    with pytest.raises(ConfigError, match=r"not nats-server's \.conf syntax"):
        load_config(path)


# --- config_from_dict / validate / apply_overrides ----------------------------


def test_config_from_dict_has_no_file() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"ping_max": 0})
    assert info.value.file is None
    assert str(info.value) == "config error: ping_max: must be at least 1, got 0"


def test_validate_accepts_defaults() -> None:
    validate(ServerConfig())  # must not raise
    assert ServerConfig().port == 4222


def test_validate_rejects_bad_dataclass_values() -> None:
    with pytest.raises(ConfigError) as info:
        validate(ServerConfig(max_pings_out=0))
    assert info.value.key == "ping_max"
    with pytest.raises(ConfigError) as info:
        validate(ServerConfig(port=True))
    assert info.value.key == "port"
    with pytest.raises(ConfigError) as info:
        validate(ServerConfig(log=LogConfig(format="yaml")))
    assert info.value.key == "log_format"


def test_apply_overrides_replaces_and_keeps_the_rest() -> None:
    base = ServerConfig(server_name="a", max_payload=2 * MIB, config_file="/x.toml")
    new = apply_overrides(base, port=5000, server_name="b")
    assert (new.port, new.server_name) == (5000, "b")
    assert new.max_payload == 2 * MIB
    assert new.config_file == "/x.toml"
    assert base.port == 4222  # the original is untouched


def test_apply_overrides_merges_nested_mappings() -> None:
    base = ServerConfig(auth=AuthConfig(user="u", password="p", timeout=3.0))
    new = apply_overrides(base, auth={"password": "q"}, log={"debug": True})
    assert new.auth == AuthConfig(user="u", password="q", timeout=3.0)
    assert new.log == LogConfig(debug=True)


def test_apply_overrides_accepts_dataclasses() -> None:
    new = apply_overrides(ServerConfig(), log=LogConfig(format="console"))
    assert new.log.format == "console"


def test_apply_overrides_validates() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(ServerConfig(), port=99999)
    assert info.value.key == "port"
    assert info.value.file is None
    with pytest.raises(ConfigError) as info:
        apply_overrides(ServerConfig(max_pending=MIB), max_payload=2 * MIB)
    assert info.value.key == "max_payload"


def test_apply_overrides_unknown_field_is_type_error() -> None:
    with pytest.raises(TypeError):
        apply_overrides(ServerConfig(), no_such_field=1)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServerConfig().port = 1  # type: ignore[misc]


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
