"""Progress lines for long store operations (``leafgate store export|replay``)."""

from __future__ import annotations

import time
from typing import TextIO

PROGRESS_EVERY = 1000  # rows between progress updates (and replay flushes)
PROGRESS_PERIOD = 0.2  # seconds between redraws on a terminal


class Progress:
    """A running count on *stream* (at most every PROGRESS_PERIOD s) when *live*:
    redrawn in place on a terminal, one line per update elsewhere (``--progress``
    into a log); otherwise only the final line (``done``)."""

    def __init__(self, verb: str, stream: TextIO, total: int | None, live: bool) -> None:
        self.verb, self.stream, self.total, self.live = verb, stream, total, live
        self.redraw = _isatty(stream)
        self.count = 0
        self._drawn = 0.0

    def step(self) -> None:
        self.count += 1
        if self.live and self.count % PROGRESS_EVERY == 0:
            now = time.monotonic()
            if now - self._drawn >= PROGRESS_PERIOD:
                self._drawn = now
                of = f"/{self.total}" if self.total is not None else ""
                line = f"{self.verb} {self.count}{of} messages"
                self.stream.write(f"\r{line}" if self.redraw else line + "\n")
                self.stream.flush()

    def done(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self._drawn and self.redraw else "") + text + "\n")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
