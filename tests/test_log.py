"""edge.log: structlog set-up, levels, trace, JSON vs console, rate-limited warnings."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from edge import log as edge_log
from edge.config import (
    LogConfig,
)

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


# --- under systemd: the journal stream ---------------------------------------------


def _run_leafgate_briefly(tmp_path: Path, env_for: Any, *flags: str) -> list[str]:
    """Start ``leafgate run`` with stderr to a file, stop it with SIGTERM once it
    listens, and return its stderr lines. ``env_for(stderr_file)`` gives the
    extra environment (to name the file as the journal stream)."""
    import os
    import signal
    import socket
    import subprocess
    import time

    from tests.harness import REPO_ROOT

    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        env = dict(os.environ, **env_for(err))
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "edge", "run", "-a", "127.0.0.1", "-p", "-1"),
                *("--hub", "nats-leaf://127.0.0.1:1", "--ports_file_dir", str(tmp_path)),
                *flags,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 20
        # A hub on a closed port: the first failed dial is a warning.
        while b'"uplink_down"' not in err_path.read_bytes() or not list(tmp_path.glob("*.ports")):
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        # A client that comes and goes: its close is a debug line.
        ports = json.loads(next(tmp_path.glob("*.ports")).read_text())
        port = int(ports["nats"][0].rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.settimeout(5)
            assert client.recv(4096).startswith(b"INFO ")
        while b'"client_closed"' not in err_path.read_bytes() and "-D" in flags:
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return err_path.read_text().splitlines()


def _journal_of(err: Any) -> dict[str, str]:
    import os

    st = os.fstat(err.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_stream_lines_carry_their_priority(tmp_path: Path) -> None:
    out = _run_leafgate_briefly(tmp_path, _journal_of, "-D")
    assert out and all(re.match(r"<[2-7]>\{", line) for line in out), out
    events = {json.loads(line[3:])["event"]: line[:3] for line in out}
    assert events["listening"] == "<6>"
    warning = next(line for line in out if '"uplink_down"' in line)
    assert warning.startswith("<4>")
    assert json.loads(warning[3:])["level"] == "warning"
    # -D: debug lines are there, with journald's debug priority.
    assert any(line.startswith("<7>") for line in out), out


def test_inherited_journal_stream_is_plain_json(tmp_path: Path) -> None:
    """JOURNAL_STREAM naming another file (inherited from a parent run by
    systemd, stderr redirected): JSON still, but no priority prefixes."""
    out = _run_leafgate_briefly(tmp_path, lambda _err: {"JOURNAL_STREAM": "1:2"})
    assert out and all(line.startswith("{") for line in out), out
    levels = {json.loads(line)["level"] for line in out}
    assert "debug" not in levels and {"info", "warning"} <= levels  # INFO by default


def test_journal_stream_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert edge_log.journal_stream(f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not edge_log.journal_stream(f)
    assert not edge_log.journal_stream(io.StringIO())  # no file descriptor
