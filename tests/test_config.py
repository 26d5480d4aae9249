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
    LogConfig,
    ServerConfig,
    apply_overrides,
    config_from_dict,
    format_size,
    load_config,
    parse_duration,
    parse_hostport,
    parse_size,
    validate,
)
from tests.configutil import load_error, write

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


@pytest.mark.parametrize("table", ["mqtt", "serial"])
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
