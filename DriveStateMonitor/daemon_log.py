"""Timestamped logging, a log file that SIGHUP reopens, and rate-limited complaints about bad input."""
from __future__ import annotations

import logging
import sys
from typing import Optional

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ReopenableFileHandler(logging.StreamHandler):
    """Appends to a file; `reopen()` after logrotate moved it starts a fresh one at the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(open(path, "a", buffering=1))

    def reopen(self) -> None:
        self.acquire()
        try:
            old = self.stream
            self.stream = open(self.path, "a", buffering=1)
            old.close()
        finally:
            self.release()


def configure_logging(log_file: Optional[str]) -> Optional[ReopenableFileHandler]:
    """Sends every log line, timestamped, to `log_file` (or standard error when None)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = ReopenableFileHandler(log_file) if log_file else None
    handler: logging.Handler = file_handler or logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return file_handler


class BadInputLog:
    """Logs each bad input once, with its source, at most `per_window` lines per window.

    A script stuck in a loop, or a stranger's flood, must not fill the disk: what is over the budget is
    counted and summarised in one line when the next window opens.
    """

    def __init__(self, logger: logging.Logger, per_window: int = 20, window_s: float = 60.0) -> None:
        self.logger = logger
        self.per_window = per_window
        self.window_s = window_s
        self._window_start = float("-inf")
        self._logged = 0
        self.suppressed = 0
        self.total = 0

    def complain(self, now: float, source: str, what: str) -> None:
        self.total += 1
        if now - self._window_start >= self.window_s:
            if self.suppressed:
                self.logger.warning("%d more bad inputs not logged in the last %.0f s",
                                    self.suppressed, self.window_s)
            self._window_start = now
            self._logged = 0
            self.suppressed = 0
        if self._logged < self.per_window:
            self._logged += 1
            self.logger.warning("bad input from %s: %s", source, what)
        else:
            self.suppressed += 1
