"""edge.cli (argument -> ServerConfig, subcommands, exit codes) and edge.log."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import cli
from edge import log as edge_log
from edge.cli import UNSUPPORTED_FLAGS, UnsupportedFlagError, build_config, main, parse_run_args
from edge.config import (
    MIB,
    AuthConfig,
    ConfigError,
    LeafnodesConfig,
    LogConfig,
    RemoteConfig,
    ServerConfig,
    TLSClientConfig,
)


def config_for(*argv: str) -> ServerConfig:
    return build_config(parse_run_args(list(argv)))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "leafgate.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it may hold passwords: leafgate refuses those world-readable
    return str(path)


# --- build_config ------------------------------------------------------------


def test_no_flags_gives_defaults() -> None:
    assert config_for() == ServerConfig()


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["-a", "0.0.0.0"], "host", "0.0.0.0"),
        (["--addr", "10.1.1.1"], "host", "10.1.1.1"),
        (["--net", "10.1.1.2"], "host", "10.1.1.2"),
        (["-p", "4223"], "port", 4223),
        (["--port", "4224"], "port", 4224),
        (["-p", "-1"], "port", -1),
        (["--port=-1"], "port", -1),
        (["-p0"], "port", 0),
        (["-n", "edge-a"], "server_name", "edge-a"),
        (["--name", "edge-b"], "server_name", "edge-b"),
        (["--server_name", "edge-c"], "server_name", "edge-c"),
        (["-m", "8222"], "http_port", 8222),
        (["--http_port", "-1"], "http_port", -1),
        (["--max_payload", "2MB"], "max_payload", 2 * MIB),
        (["--max_payload", "4096"], "max_payload", 4096),
        (["--ports_file_dir", "/run/lg"], "ports_file_dir", "/run/lg"),
        (["-P", "/run/lg.pid"], "pid_file", "/run/lg.pid"),
        (["--pid", "/run/lg2.pid"], "pid_file", "/run/lg2.pid"),
    ],
)
def test_server_flags(argv: list[str], field: str, expected: object) -> None:
    assert getattr(config_for(*argv), field) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], LogConfig()),
        (["-D"], LogConfig(debug=True)),
        (["--debug"], LogConfig(debug=True)),
        (["-V"], LogConfig(trace=True)),
        (["--trace"], LogConfig(trace=True)),
        (["-VV"], LogConfig(trace=True)),
        (["-DV"], LogConfig(debug=True, trace=True)),
        (["-DVV"], LogConfig(debug=True, trace=True)),
        (["-D", "-V"], LogConfig(debug=True, trace=True)),
        (["-DV", "-p", "4300"], LogConfig(debug=True, trace=True)),
        (["-l", "/tmp/lg.log"], LogConfig(logfile="/tmp/lg.log")),
        (["--log", "/tmp/lg.log"], LogConfig(logfile="/tmp/lg.log")),
        (["--log_format", "json"], LogConfig(format="json")),
    ],
)
def test_log_flags(argv: list[str], expected: LogConfig) -> None:
    assert config_for(*argv).log == expected


def test_dv_does_not_swallow_the_next_flag() -> None:
    config = config_for("-DV", "-p", "4300")
    assert config.port == 4300
    assert config.log.debug and config.log.trace


def test_go_style_single_dash_long_flags() -> None:
    config = config_for("-port", "4400", "-addr=0.0.0.0", "-user", "u", "-pass", "p")
    assert (config.host, config.port) == ("0.0.0.0", 4400)
    assert config.auth == AuthConfig(user="u", password="p")


def test_user_and_password_flags() -> None:
    assert config_for("--user", "u", "--pass", "p").auth == AuthConfig(user="u", password="p")


def test_token_flag() -> None:
    assert config_for("--auth", "tok").auth == AuthConfig(token="tok")


def test_user_without_password_is_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        config_for("--user", "u")
    assert info.value.key == "authorization.user"


def test_user_and_token_flags_conflict() -> None:
    with pytest.raises(ConfigError) as info:
        config_for("--user", "u", "--pass", "p", "--auth", "t")
    assert info.value.key == "authorization.token"


def test_out_of_range_port_flag_names_port() -> None:
    with pytest.raises(ConfigError) as info:
        config_for("-p", "70000")
    assert info.value.key == "port"


def test_max_payload_flag_over_limit() -> None:
    with pytest.raises(ConfigError) as info:
        config_for("--max_payload", "65MB")
    assert info.value.key == "max_payload"


# --- config file and precedence ----------------------------------------------


def test_config_file_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 4500\nserver_name = "from-file"\ndebug = true\n')
    config = config_for("-c", path)
    assert (config.port, config.server_name, config.log.debug) == (4500, "from-file", True)
    assert config.config_file == path


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "0.0.0.0:4500"\nserver_name = "file"\nmax_payload = "2MB"\n'
        'log_format = "console"\n',
    )
    config = config_for("--config", path, "-p", "4600", "-n", "flag", "--log_format", "json")
    assert config.port == 4600
    assert config.server_name == "flag"
    assert config.log.format == "json"
    # Not given on the command line: the file's values stay.
    assert config.host == "0.0.0.0"
    assert config.max_payload == 2 * MIB


def test_flag_order_does_not_matter_for_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 4500\n")
    assert config_for("-p", "4700", "-c", path).port == 4700


def test_random_port_flag_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 4500\n")
    assert config_for("-c", path, "-p", "-1").port == -1


def test_pass_flag_completes_user_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[authorization]\nuser = "alice"\npassword = "old"\ntimeout = 5\n')
    assert config_for("-c", path, "--pass", "new").auth == AuthConfig(
        user="alice", password="new", timeout=5.0
    )


def test_token_flag_replaces_file_user(tmp_path: Path) -> None:
    path = write(tmp_path, '[authorization]\nuser = "alice"\npassword = "pw"\n')
    assert config_for("-c", path, "--auth", "tok").auth == AuthConfig(token="tok")


def test_user_flags_replace_file_token(tmp_path: Path) -> None:
    path = write(tmp_path, '[authorization]\ntoken = "tok"\n')
    assert config_for("-c", path, "--user", "u", "--pass", "p").auth == AuthConfig(
        user="u", password="p"
    )


def test_flag_cannot_break_file_limits(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_pending = "1MB"\n')
    with pytest.raises(ConfigError) as info:
        config_for("-c", path, "--max_payload", "2MB")
    assert info.value.key == "max_payload"


def test_bad_config_file_raises(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_payload = "abc"\n')
    with pytest.raises(ConfigError) as info:
        config_for("-c", path)
    assert info.value.file == path


# --- hub flags -----------------------------------------------------------------

HUB = "nats-leaf://hub.example:7422"


@pytest.fixture
def creds(tmp_path: Path) -> str:
    path = tmp_path / "hub.creds"
    path.write_text("x\n", encoding="utf-8")
    return str(path)


def test_hub_flag_builds_a_remote() -> None:
    assert config_for("--hub", HUB).leafnodes == LeafnodesConfig(
        remotes=(RemoteConfig(urls=(HUB,)),)
    )


def test_repeated_hub_flags_form_one_remote_in_order() -> None:
    urls = ("tls://h2:7422", HUB, "nats://h3")
    config = config_for("--hub", urls[0], "--hub", urls[1], "--hub=" + urls[2])
    assert config.leafnodes.remotes == (RemoteConfig(urls=urls),)


def test_go_style_hub_flags(creds: str) -> None:
    config = config_for("-hub", HUB, "-hub-creds", creds, "-hub-account=TELEMETRY")
    assert config.leafnodes.remotes == (
        RemoteConfig(urls=(HUB,), credentials=creds, account="TELEMETRY"),
    )


def test_hub_flags_without_a_file(creds: str) -> None:
    config = config_for("--hub-account", "ACC", "--hub", HUB, "--hub-creds", creds)
    assert config.leafnodes.remotes == (
        RemoteConfig(urls=(HUB,), credentials=creds, account="ACC"),
    )


FILE_REMOTES = """
[[leafnodes.remotes]]
urls = ["nats-leaf://file1:7422", "nats-leaf://file2:7422"]
account = "FILE"
user = "u"
password = "p"
deny_exports = ["private.>"]
reconnect = "2s"
[leafnodes.remotes.tls]
server_name = "hub.example"

[[leafnodes.remotes]]
url = "nats-leaf://second:7422"
"""


def test_hub_flag_replaces_the_urls_of_the_first_file_remote(tmp_path: Path) -> None:
    config = config_for("-c", write(tmp_path, FILE_REMOTES), "--hub", HUB, "--hub", "tls://b")
    first, second = config.leafnodes.remotes
    assert first.urls == (HUB, "tls://b")
    # Everything else of the file's first remote stays, and the second is untouched.
    assert (first.account, first.user, first.password) == ("FILE", "u", "p")
    assert first.deny_exports == ("private.>",)
    assert first.reconnect_delay == 2.0
    assert first.tls == TLSClientConfig(server_name="hub.example")
    assert second == RemoteConfig(urls=("nats-leaf://second:7422",))


def test_hub_flag_order_does_not_matter_for_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, FILE_REMOTES)
    assert config_for("--hub", HUB, "-c", path) == config_for("-c", path, "--hub", HUB)
    assert config_for("--hub", HUB, "-c", path).leafnodes.remotes[0].urls == (HUB,)


def test_hub_creds_applies_to_the_first_file_remote(tmp_path: Path, creds: str) -> None:
    config = config_for("-c", write(tmp_path, FILE_REMOTES), "--hub-creds", creds)
    first, second = config.leafnodes.remotes
    assert first.urls == ("nats-leaf://file1:7422", "nats-leaf://file2:7422")
    assert first.credentials == creds
    # The flag's credentials replace the file's user/password, as --auth does.
    assert (first.user, first.password) == (None, None)
    assert first.account == "FILE"
    assert second.credentials is None


def test_hub_creds_replaces_a_file_nkey(tmp_path: Path, creds: str) -> None:
    nkey = tmp_path / "hub.nk"
    nkey.write_text("x")
    path = write(tmp_path, f'[[leafnodes.remotes]]\nurl = "{HUB}"\nnkey = "{nkey}"\n')
    (remote,) = config_for("-c", path, "--hub-creds", creds).leafnodes.remotes
    assert (remote.credentials, remote.nkey_seed) == (creds, None)


def test_hub_account_applies_to_the_first_file_remote(tmp_path: Path) -> None:
    config = config_for("-c", write(tmp_path, FILE_REMOTES), "--hub-account", "FLAG")
    assert [r.account for r in config.leafnodes.remotes] == ["FLAG", None]


@pytest.mark.parametrize("flag", ["--hub-creds", "--hub-account"])
def test_hub_settings_without_a_hub_are_an_error(
    flag: str, creds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    value = creds if flag == "--hub-creds" else "ACC"
    with pytest.raises(ConfigError) as info:
        config_for(flag, value)
    assert info.value.key == flag
    assert "give --hub URL or a [[leafnodes.remotes]]" in info.value.reason
    # Also with a config file that has no remotes.
    with pytest.raises(ConfigError) as info:
        config_for("-c", write(tmp_path, "port = 4500\n"), flag, value)
    assert info.value.key == flag
    assert main([flag, value]) == 1
    assert capsys.readouterr().err.startswith(f"leafgate: config error: {flag}: no hub")


def test_hub_creds_file_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.creds")
    with pytest.raises(ConfigError) as info:
        config_for("--hub", HUB, "--hub-creds", missing)
    assert info.value.key == "leafnodes.remotes[0].credentials"
    assert f'cannot read "{missing}"' in info.value.reason


def test_hub_url_with_user_conflicts_with_file_user(tmp_path: Path) -> None:
    path = write(tmp_path, FILE_REMOTES)
    with pytest.raises(ConfigError) as info:
        config_for("-c", path, "--hub", "nats-leaf://x:y@hub")
    assert info.value.key == "leafnodes.remotes[0].user"
    assert "user:password in leafnodes.remotes[0].urls[0]" in info.value.reason


def test_hub_creds_conflicts_with_user_in_file_urls(tmp_path: Path, creds: str) -> None:
    path = write(tmp_path, '[[leafnodes.remotes]]\nurl = "nats-leaf://x:y@hub"\n')
    with pytest.raises(ConfigError) as info:
        config_for("-c", path, "--hub-creds", creds)
    assert info.value.key == "leafnodes.remotes[0].urls[0]"
    assert "cannot be combined with credentials" in info.value.reason


def test_bad_hub_account_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        config_for("--hub", HUB, "--hub-account", "A B")
    assert info.value.key == "leafnodes.remotes[0].account"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://hub:443", "not supported yet"),
        ("http://hub", 'scheme "http" is not supported'),
        ("hub:7422", "expected a URL like"),
        ("nats-leaf://hub:0", "port must be 1..65535"),
        ("nats-leaf://u:hunter2@hub:99999", "port must be 1..65535"),
    ],
)
def test_bad_hub_url_is_usage_error(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--hub", url]) == 2
    err = capsys.readouterr().err
    assert "argument --hub: " in err
    assert message in err
    assert "hunter2" not in err


def test_check_config_takes_hub_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "port = 4500\n")
    assert main(["check-config", "-c", path, "--hub", HUB, "--hub-account", "ACC"]) == 0
    out = capsys.readouterr().out
    assert f"leafnode remote 0: {HUB}" in out
    assert "account ACC" in out


def test_help_documents_hub_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--hub URL" in out
    assert "--hub-creds FILE" in out
    assert "--hub-account NAME" in out
    assert "Replaces the URLs of the config file's first remote" in out


# --- describe ------------------------------------------------------------------


def test_describe_without_remotes() -> None:
    assert "leafnode remotes:  none" in cli.describe(ServerConfig())


def test_describe_lists_remotes_and_masks_passwords(creds: str) -> None:
    remotes = (
        RemoteConfig(
            urls=("nats-leaf://u:hunter2@h1:7422", "tls://h2"),
            account="TELEMETRY",
            reconnect_delay=1.0,
            reconnect_max=30.0,
        ),
        RemoteConfig(urls=("tls://h3",), credentials=creds),
        RemoteConfig(urls=("nats-leaf://h4",), user="v", password="hunter3"),
        RemoteConfig(urls=("nats-leaf://h5",), token="hunter4", tls=TLSClientConfig()),
    )
    default = RemoteConfig(urls=())
    backoff = f"reconnect {default.reconnect_delay:g}s..{default.reconnect_max:g}s"
    lines = cli.describe(ServerConfig(leafnodes=LeafnodesConfig(remotes=remotes)))
    text = "\n".join(lines)
    for secret in ("hunter2", "hunter3", "hunter4"):
        assert secret not in text
    start = lines.index("leafnode remote 0: nats-leaf://u:***@h1:7422, tls://h2")
    assert lines[start + 1 :] == [
        "                   account TELEMETRY, user:password in the URL, "
        "TLS for the tls:// URLs, reconnect 1s..30s",
        "leafnode remote 1: tls://h3",
        f"                   any account, credentials {creds}, TLS, {backoff}",
        "leafnode remote 2: nats-leaf://h4",
        f"                   any account, user 'v' with password, no TLS, {backoff}",
        "leafnode remote 3: nats-leaf://h5",
        f"                   any account, token, TLS, {backoff}",
    ]


def test_t_flag_shows_the_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-t", "--hub", "nats-leaf://leaf:s3cret@hub.example"]) == 0
    out = capsys.readouterr().out
    assert "leafnode remote 0: nats-leaf://leaf:***@hub.example" in out
    assert "s3cret" not in out


def test_run_passes_the_hub_to_the_server(fake_server: dict[str, Any]) -> None:
    assert main(["run", "--hub", HUB]) == 7
    assert fake_server["config"].leafnodes.remotes == (RemoteConfig(urls=(HUB,)),)


# --- unsupported and unknown flags --------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--cluster", "nats://0.0.0.0:6222"],
        ["--cluster=nats://0.0.0.0:6222"],
        ["--routes", "nats://a:6222"],
        ["--cluster_name", "c"],
        ["-js"],
        ["--jetstream"],
        ["-sd", "/data"],
        ["--store_dir", "/data"],
        ["--tls"],
        ["--tlscert", "c.pem"],
        ["--tlskey", "k.pem"],
        ["--tlsverify"],
        ["--tlscacert", "ca.pem"],
        ["-r", "udp://h:514"],
        ["--remote_syslog", "udp://h:514"],
        ["--connect_retries", "3"],
        ["--no_advertise"],
        ["--client_advertise", "h:4222"],
        ["--signal", "stop"],
        ["-sl", "stop"],
        ["--syslog"],
        ["-s"],
        ["-ms", "8443"],
        ["--https_port", "8443"],
        ["-cluster", "nats://h:6222"],
    ],
)
def test_unsupported_flags_exit_1(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    flag = argv[0].split("=")[0]
    if flag == "-cluster":
        flag = "--cluster"
    assert main(["-p", "4300", *argv]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"leafgate: flag {flag} is not supported (leafgate is a single edge server; see README)\n"
    )


def test_every_unsupported_flag_is_refused() -> None:
    for flag in UNSUPPORTED_FLAGS:
        with pytest.raises(UnsupportedFlagError) as info:
            parse_run_args([flag])
        assert info.value.flag == flag


def test_unsupported_flag_in_check_config(tmp_path: Path) -> None:
    assert main(["check-config", "-c", write(tmp_path, ""), "--routes", "x"]) == 1


def test_unknown_flag_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--frobnicate"]) == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_abbreviated_flag_is_not_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--serv", "x"]) == 2
    assert "unrecognized" in capsys.readouterr().err


def test_bad_port_value_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-p", "abc"]) == 2
    assert "expected a port number" in capsys.readouterr().err


def test_bad_size_value_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max_payload", "lots"]) == 2
    assert "expected a size" in capsys.readouterr().err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "unknown command 'serve'" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert "--max_payload" in out
    assert "check-config" in out


# --- --version, -t, check-config ---------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("leafgate v")
    assert out.strip() == f"leafgate v{cli.version()}"


def test_version_falls_back_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.version() == "0.0.0+unknown"


def test_version_from_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7")
    assert cli.version() == "9.8.7"


def test_t_flag_tests_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'port = 4500\n[authorization]\nuser = "u"\npassword = "hunter2"\n')
    assert main(["-t", "-c", path]) == 0
    out = capsys.readouterr().out
    assert f"configuration file {path} is valid" in out
    assert "127.0.0.1:4500" in out
    assert "hunter2" not in out  # secrets are never printed


def test_t_flag_with_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "ping_max = 0\n")
    assert main(["-t", "-c", path]) == 1
    captured = capsys.readouterr()
    expected = f"leafgate: config error in {path}: ping_max: must be at least 1, got 0\n"
    assert captured.err == expected
    assert "Traceback" not in captured.err


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'max_payload = "2MB"\n[authorization]\ntoken = "s3cret"\n')
    assert main(["check-config", "-c", path]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out
    assert "2MB" in out
    assert "token" in out
    assert "s3cret" not in out


def test_check_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'max_payload = "abc"\n')
    assert main(["check-config", "-c", path]) == 1
    assert capsys.readouterr().err == (
        f"leafgate: config error in {path}: max_payload: "
        'expected a size like 1048576 or "1MB", got "abc"\n'
    )


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(tmp_path / "none.toml")]) == 1
    assert "cannot read file" in capsys.readouterr().err


def test_check_config_requires_c(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 2
    assert "-c/--config" in capsys.readouterr().err


# --- run and bench dispatch --------------------------------------------------


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Stand-ins for edge.server.serve and edge.log.configure."""
    seen: dict[str, Any] = {}

    async def serve(config: ServerConfig, reload: Any = None) -> int:
        seen["config"] = config
        # SIGHUP loads the configuration again the same way (file and flags).
        seen["reloaded"] = reload() if reload is not None else None
        return 7

    module = types.ModuleType("edge.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge.server", module)
    monkeypatch.setattr(edge_log, "configure", lambda log: seen.setdefault("log", log))
    yield seen


def test_run_calls_serve_with_config(fake_server: dict[str, Any]) -> None:
    assert main(["-p", "4301", "-DV"]) == 7
    config = fake_server["config"]
    assert config.port == 4301
    assert fake_server["log"] == LogConfig(debug=True, trace=True)
    assert fake_server["reloaded"] == config  # a reload applies the same flags again


def test_explicit_run_subcommand(fake_server: dict[str, Any]) -> None:
    assert main(["run", "-n", "x"]) == 7
    assert fake_server["config"].server_name == "x"


def test_no_arguments_runs(fake_server: dict[str, Any]) -> None:
    assert main([]) == 7
    assert fake_server["config"] == ServerConfig()


def test_t_flag_does_not_start_the_server(fake_server: dict[str, Any]) -> None:
    assert main(["-t"]) == 0
    assert "config" not in fake_server


def test_config_error_from_flags_in_run(
    fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-p", "70000"]) == 1
    assert capsys.readouterr().err.startswith("leafgate: config error: port: must be 0..65535")
    assert "config" not in fake_server  # the server was not started


def test_run_reports_unopenable_log_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = types.ModuleType("edge.server")
    module.serve = None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge.server", module)
    logfile = tmp_path / "missing-dir" / "x.log"
    assert main(["-l", str(logfile)]) == 1
    assert f"cannot open log file {logfile}" in capsys.readouterr().err


def test_bench_delegates_remaining_args(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def bench_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    module = types.ModuleType("edge.bench")
    module.main = bench_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge.bench", module)
    assert main(["bench", "--clients", "10", "-p", "4222"]) == 3
    assert seen == [["--clients", "10", "-p", "4222"]]
