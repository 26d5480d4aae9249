"""Logging: structlog, configured once at start from LogConfig.

Levels: INFO by default, DEBUG with ``-D``/``debug``, TRACE (5, below DEBUG)
with ``-V``/``trace`` (trace also shows debug output). Output is JSON lines
(for journald and log shippers) or a readable console format; see configure().
Straight into journald (stderr is the stream ``JOURNAL_STREAM`` names) each
line starts with its syslog priority (``<4>`` for a warning), which journald
takes as the entry's priority. Repeated warnings go through
``RateLimitedWarning``: one line per period with the count suppressed since.

structlog's native filtering loggers only know the standard levels
(``logger.log(5, ...)`` raises KeyError), so trace lines go through the
``trace()`` helper: it is a cheap no-op unless trace is on, and otherwise logs
at debug level with the ``level`` field rewritten to ``"trace"``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from edge.config import LogConfig

TRACE = 5

_TRACE_MARK = "_leafgate_trace"
# structlog.get_logger(logger=...) collides with wrap_logger()'s own ``logger``
# parameter, so the name is bound under this key and renamed by a processor.
_NAME_KEY = "_leafgate_logger"
_trace_enabled = False
_logfile: TextIO | None = None


def level_for(log: LogConfig) -> int:
    """The numeric level a LogConfig asks for: TRACE, DEBUG or INFO."""
    if log.trace:
        return TRACE
    if log.debug:
        return logging.DEBUG
    return logging.INFO


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def use_json(log: LogConfig, stream: TextIO) -> bool:
    """JSON for "json"; for "auto", JSON unless writing to a terminal, and
    always under systemd (JOURNAL_STREAM is set when stderr goes to journald)."""
    if log.format == "json":
        return True
    if log.format == "console":
        return False
    return not _isatty(stream) or "JOURNAL_STREAM" in os.environ


# syslog priorities journald reads from a "<N>" line prefix (SyslogLevelPrefix=,
# on by default), so `journalctl -p warning` finds leafgate's warnings.
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7, "trace": 7}


def journal_stream(stream: TextIO) -> bool:
    """True when *stream* is the journald stream systemd connected us to:
    ``JOURNAL_STREAM`` holds its ``device:inode`` (a variable inherited by a
    process whose stderr goes elsewhere does not count)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class _JournalJSON:
    """JSON lines with journald's "<priority>" prefix."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        priority = _PRIORITY.get(str(event_dict.get("level", "info")), 6)
        return f"<{priority}>" + str(self._json(logger, method, event_dict))


def _name_logger(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = event_dict.pop(_NAME_KEY, None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


def _mark_trace(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    if event_dict.pop(_TRACE_MARK, False):
        event_dict["level"] = "trace"
    return event_dict


def configure(log: LogConfig, *, stream: TextIO | None = None) -> None:
    """Configure structlog for the process.

    Writes to *stream* (default stderr), or appends to ``log.logfile`` when set
    (raises OSError if it cannot be opened). May be called again; a log file
    opened by a previous call is closed.
    """
    global _trace_enabled, _logfile

    out: TextIO
    new_file: TextIO | None = None
    if log.logfile:
        new_file = open(log.logfile, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        out = new_file
    else:
        out = stream if stream is not None else sys.stderr

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _name_logger,
        structlog.processors.add_log_level,
        _mark_trace,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json(log, out):
        processors += [
            structlog.processors.format_exc_info,
            _JournalJSON() if journal_stream(out) else structlog.processors.JSONRenderer(),
        ]
    else:
        colors = _isatty(out) and "NO_COLOR" not in os.environ
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))

    level = level_for(log)
    structlog.configure(
        processors=processors,
        # structlog cannot filter at 5; NOTSET lets everything through and
        # trace() does its own check.
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.NOTSET if level == TRACE else level
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached, so a later configure() (tests, reload) reaches loggers
        # already in use. Costs ~3 us per call; guard hot paths with
        # trace_enabled() or a level check.
        cache_logger_on_first_use=False,
    )
    _trace_enabled = level == TRACE
    if _logfile is not None and _logfile is not new_file:
        _logfile.close()
    _logfile = new_file


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose lines carry ``logger=<name>``."""
    return cast(FilteringBoundLogger, structlog.get_logger(**{_NAME_KEY: name}))


def trace_enabled() -> bool:
    """True when trace output is on: check before building costly trace data."""
    return _trace_enabled


def trace(logger: FilteringBoundLogger, event: str, **kw: Any) -> None:
    """Log *event* at TRACE level (a no-op unless trace is configured)."""
    if _trace_enabled:
        kw[_TRACE_MARK] = True
        logger.debug(event, **kw)


class RateDecision(NamedTuple):
    log: bool  # log now
    suppressed: int  # occurrences not logged since the last logged one


@dataclass(slots=True)
class _Entry:
    last: float  # when the key was last logged
    suppressed: int = 0  # occurrences since then


class RateLimitedWarning:
    """Decides when a repeated warning is logged: at most once per *period*
    seconds per key, with the number of occurrences suppressed in between.

    Pure: the caller passes the clock (e.g. ``trio.current_time()``)::

        decision = limiter.check(("slow_consumer", cid), now)
        if decision.log:
            log.warning("slow consumer", suppressed=decision.suppressed)

    At most *max_keys* keys are remembered; beyond that, expired keys and then
    the oldest ones are forgotten (a forgotten key logs on its next occurrence).
    """

    def __init__(self, period: float, max_keys: int = 1024) -> None:
        if period < 0:
            raise ValueError(f"period must not be negative, got {period}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.period = period
        self.max_keys = max_keys
        # Ordered least recently logged first.
        self._state: dict[Hashable, _Entry] = {}

    def check(self, key: Hashable, now: float) -> RateDecision:
        entry = self._state.get(key)
        if entry is None:
            self._remember(key, now)
            return RateDecision(True, 0)
        if now - entry.last >= self.period:
            suppressed = entry.suppressed
            del self._state[key]
            self._state[key] = _Entry(now)
            return RateDecision(True, suppressed)
        entry.suppressed += 1
        return RateDecision(False, entry.suppressed)

    def pending(self, key: Hashable) -> int:
        """Occurrences of *key* suppressed since it was last logged."""
        entry = self._state.get(key)
        return 0 if entry is None else entry.suppressed

    def __len__(self) -> int:
        return len(self._state)

    def _remember(self, key: Hashable, now: float) -> None:
        if len(self._state) >= self.max_keys:
            expired = [k for k, e in self._state.items() if now - e.last >= self.period]
            for k in expired:
                del self._state[k]
            while len(self._state) >= self.max_keys:
                del self._state[next(iter(self._state))]
        self._state[key] = _Entry(now)
