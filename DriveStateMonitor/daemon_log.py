"""Timestamped logging, a log file that SIGHUP reopens, and rate-limited complaints about bad input.

A line the log cannot take (its disk is full, the file was removed under a read-only mount, standard
error is closed) is counted in `lines_lost()` (`dsm_log_lines_lost_total`) and dropped: logging's
default would print a "--- Logging error ---" traceback of about 1.5 KB on standard error for each
one, which under runDSM is the same full disk, and under systemd a flood of the journal.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional

from .local_dirs import open_append_no_follow

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_lines_lost = 0


def lines_lost() -> int:
    """Log lines dropped because their handler could not write them, since the start."""
    return _lines_lost


class CountingStreamHandler(logging.StreamHandler):
    """A StreamHandler that counts a line it cannot write instead of printing a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        global _lines_lost
        _lines_lost += 1


class ReopenableFileHandler(CountingStreamHandler):
    """Appends to a file; `reopen()` after logrotate moved it starts a fresh one at the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        stream = _open_log(path)
        super().__init__(stream)
        # Under runDSM, standard output and error go to this same file (a crash's traceback lands
        # there): they follow it to the new file on reopen.
        self.owns_std_streams = _same_file(stream.fileno(), 2)

    def reopen(self) -> None:
        """Starts the file anew at its path. A full disk or a closed stream loses lines (counted),
        never raises: what the old file still buffers fails again as it is flushed and closed,
        and an exception here would count against the loop's kill switch at each SIGHUP."""
        self.acquire()
        try:
            old = self.stream
            try:
                self.stream = _open_log(self.path)
            except OSError as exc:  # a link planted after logrotate moved the file, say
                complaint = ("%s: cannot reopen the log file %s: %s; still writing to the old "
                             "one\n" % (logging.getLevelName(logging.ERROR), self.path, exc))
                _lose_quietly(lambda: old.write(complaint))
                return
            if self.owns_std_streams:
                _lose_quietly(sys.stdout.flush)
                _lose_quietly(sys.stderr.flush)
                os.dup2(self.stream.fileno(), 1)
                os.dup2(self.stream.fileno(), 2)
            _lose_quietly(old.close)  # the descriptor is closed even when the flush fails
        finally:
            self.release()


def _lose_quietly(operation: Callable[[], object]) -> None:
    """Runs a write, flush or close of a log stream; a failure is a lost line, counted."""
    global _lines_lost
    try:
        operation()
    except (OSError, ValueError):
        _lines_lost += 1


def _open_log(path: str):
    """The log file for appending, line-buffered; never through a planted link, never another
    user's file (local_dirs.open_append_no_follow). OSError if it cannot be."""
    return os.fdopen(open_append_no_follow(path), "a", buffering=1)


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class JournalFormatter(logging.Formatter):
    """Under systemd: `<priority>` prefixes (sd-daemon(3)) and no timestamp — the journal adds it."""

    PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
                  logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        return "\n".join("<%d>%s" % (priority, line)
                         for line in super().format(record).split("\n"))


def stderr_is_journal() -> bool:
    """True when systemd connected standard error to the journal ($JOURNAL_STREAM names it)."""
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def configure_logging(log_file: Optional[str]) -> Optional[ReopenableFileHandler]:
    """Sends every log line, timestamped, to `log_file` (or standard error when None; under
    systemd, to the journal with priorities)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    file_handler = ReopenableFileHandler(log_file) if log_file else None
    handler: logging.Handler = file_handler or CountingStreamHandler(sys.stderr)
    if file_handler is None and stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return file_handler


class BadInputLog:
    """Logs each bad input once, with its source, at most `per_window` lines per window.

    A script stuck in a loop, or a stranger's flood, must not fill the disk: what is over the budget is
    counted and summarised in one line when the next window opens.
    """

    def __init__(self, logger: logging.Logger, per_window: int = 20, window_s: float = 60.0,
                 line: str = "bad input from %s: %s",
                 summary: str = "%d more bad inputs not logged in the last %.0f s",
                 level: int = logging.WARNING) -> None:
        self.logger = logger
        self.per_window = per_window
        self.window_s = window_s
        # What is logged: `line` % (source, what) and `summary` % (count, window_s), at `level`;
        # another instance rate-limits another kind of per-connection line (idle closes).
        self.line = line
        self.summary = summary
        self.level = level
        self._window_start = float("-inf")
        self._logged = 0
        self.suppressed = 0
        self.total = 0

    def complain(self, now: float, source: str, what: str) -> None:
        self.total += 1
        if now - self._window_start >= self.window_s:
            self.flush(now)
            self._window_start = now
            self._logged = 0
        if self._logged < self.per_window:
            self._logged += 1
            self.logger.log(self.level, self.line, source, what)
        else:
            self.suppressed += 1

    def flush(self, now: float) -> None:
        """Logs the count of suppressed complaints once their window has passed (called by a
        timer too, so the count of a flood that stopped is not lost)."""
        if self.suppressed and now - self._window_start >= self.window_s:
            self.logger.log(self.level, self.summary, self.suppressed, self.window_s)
            self.suppressed = 0
