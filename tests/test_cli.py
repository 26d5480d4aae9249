"""edge.cli (argument -> ServerConfig, subcommands, exit codes) and edge.log."""

from __future__ import annotations

import io
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from edge import cli
from edge import log as edge_log
from edge.cli import UNSUPPORTED_FLAGS, UnsupportedFlagError, build_config, main, parse_run_args
from edge.config import MIB, AuthConfig, ConfigError, LogConfig, ServerConfig


def config_for(*argv: str) -> ServerConfig:
    return build_config(parse_run_args(list(argv)))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "leafgate.toml"
    path.write_text(text, encoding="utf-8")
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

    async def serve(config: ServerConfig) -> int:
        seen["config"] = config
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


# --- edge.log ----------------------------------------------------------------


@pytest.fixture
def reset_structlog() -> Iterator[None]:
    yield
    edge_log.configure(LogConfig(), stream=sys.stderr)  # trace off, log file closed
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_level_for() -> None:
    assert edge_log.level_for(LogConfig()) == 20
    assert edge_log.level_for(LogConfig(debug=True)) == 10
    assert edge_log.level_for(LogConfig(trace=True)) == edge_log.TRACE == 5


def test_json_logging_at_info(reset_structlog: None) -> None:
    stream = io.StringIO()
    edge_log.configure(LogConfig(format="json"), stream=stream)
    logger = edge_log.get_logger("edge.test")
    logger.info("hello", client=3)
    logger.debug("hidden")
    edge_log.trace(logger, "hidden too")
    [record] = lines(stream)
    assert record["event"] == "hello"
    assert record["client"] == 3
    assert record["level"] == "info"
    assert record["logger"] == "edge.test"
    assert record["timestamp"].endswith("Z")


def test_debug_logging(reset_structlog: None) -> None:
    stream = io.StringIO()
    edge_log.configure(LogConfig(debug=True, format="json"), stream=stream)
    logger = edge_log.get_logger("t")
    logger.debug("shown")
    edge_log.trace(logger, "hidden")
    assert [r["event"] for r in lines(stream)] == ["shown"]
    assert not edge_log.trace_enabled()


def test_trace_logging(reset_structlog: None) -> None:
    stream = io.StringIO()
    edge_log.configure(LogConfig(trace=True, format="json"), stream=stream)
    logger = edge_log.get_logger("t")
    logger.debug("dbg")
    edge_log.trace(logger, "<<- PING", cid=1)
    records = lines(stream)
    assert [(r["event"], r["level"]) for r in records] == [("dbg", "debug"), ("<<- PING", "trace")]
    assert records[1]["cid"] == 1
    assert "_leafgate_trace" not in records[1]
    assert edge_log.trace_enabled()


def test_logger_created_before_configure_follows_it(reset_structlog: None) -> None:
    logger = edge_log.get_logger("early")
    stream = io.StringIO()
    edge_log.configure(LogConfig(format="json"), stream=stream)
    logger.warning("late")
    assert lines(stream)[0]["logger"] == "early"


def test_console_format_without_tty_has_no_colors(reset_structlog: None) -> None:
    stream = io.StringIO()
    edge_log.configure(LogConfig(format="console"), stream=stream)
    edge_log.get_logger("t").info("readable", x=1)
    text = stream.getvalue()
    assert "readable" in text
    assert "x=1" in text
    assert "\x1b[" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    auto = LogConfig(format="auto")
    assert edge_log.use_json(auto, io.StringIO())  # not a terminal
    assert not edge_log.use_json(auto, _Tty())
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert edge_log.use_json(auto, _Tty())  # systemd
    assert not edge_log.use_json(LogConfig(format="console"), io.StringIO())
    assert edge_log.use_json(LogConfig(format="json"), _Tty())


def test_logfile_is_appended(tmp_path: Path, reset_structlog: None) -> None:
    path = tmp_path / "leafgate.log"
    path.write_text('{"event": "old"}\n', encoding="utf-8")
    edge_log.configure(LogConfig(logfile=str(path), format="json"))
    edge_log.get_logger("t").info("new")
    edge_log.configure(LogConfig(format="json"), stream=io.StringIO())  # closes the file
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["old", "new"]


# --- RateLimitedWarning ------------------------------------------------------


def test_rate_limited_first_occurrence_logs() -> None:
    limiter = edge_log.RateLimitedWarning(period=10.0)
    assert limiter.check("k", now=100.0) == (True, 0)


def test_rate_limited_counts_suppressed() -> None:
    limiter = edge_log.RateLimitedWarning(period=10.0)
    limiter.check("k", now=100.0)
    assert limiter.check("k", now=101.0) == (False, 1)
    assert limiter.check("k", now=109.9) == (False, 2)
    assert limiter.pending("k") == 2
    decision = limiter.check("k", now=110.0)
    assert decision.log
    assert decision.suppressed == 2
    assert limiter.pending("k") == 0
    # The period restarts from the last logged occurrence.
    assert limiter.check("k", now=115.0) == (False, 1)
    assert limiter.check("k", now=120.0) == (True, 1)


def test_rate_limited_keys_are_independent() -> None:
    limiter = edge_log.RateLimitedWarning(period=60.0)
    assert limiter.check(("slow", 1), now=0.0).log
    assert limiter.check(("slow", 2), now=1.0).log
    assert not limiter.check(("slow", 1), now=2.0).log
    assert limiter.pending(("slow", 2)) == 0


def test_rate_limited_quiet_key_logs_without_count() -> None:
    limiter = edge_log.RateLimitedWarning(period=5.0)
    limiter.check("k", now=0.0)
    assert limiter.check("k", now=100.0) == (True, 0)


def test_rate_limited_zero_period_always_logs() -> None:
    limiter = edge_log.RateLimitedWarning(period=0.0)
    assert [limiter.check("k", now=1.0).log for _ in range(3)] == [True, True, True]


def test_rate_limited_bounds_memory() -> None:
    limiter = edge_log.RateLimitedWarning(period=10.0, max_keys=3)
    for i in range(3):
        limiter.check(i, now=float(i))
    limiter.check(0, now=5.0)  # suppressed, stays remembered
    limiter.check("new", now=6.0)  # evicts the oldest key (0)
    assert len(limiter) == 3
    assert limiter.pending(0) == 0
    assert limiter.check(0, now=6.5) == (True, 0)  # forgotten: logs again


def test_rate_limited_evicts_expired_first() -> None:
    limiter = edge_log.RateLimitedWarning(period=10.0, max_keys=2)
    limiter.check("a", now=0.0)
    limiter.check("b", now=9.0)
    limiter.check("b", now=9.5)
    limiter.check("c", now=12.0)  # "a" has expired; "b" is kept
    assert len(limiter) == 2
    assert limiter.pending("b") == 1


def test_rate_limited_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="period"):
        edge_log.RateLimitedWarning(period=-1.0)
    with pytest.raises(ValueError, match="max_keys"):
        edge_log.RateLimitedWarning(period=1.0, max_keys=0)
