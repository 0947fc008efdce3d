import logging
import os
import subprocess
import sys

from DriveStateMonitor.daemon_log import BadInputLog, ReopenableFileHandler


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _logger():
    logger = logging.getLogger("test.badinput.%d" % id(object()))
    logger.propagate = False
    handler = _Collect()
    logger.addHandler(handler)
    return logger, handler


def test_suppressed_count_is_logged_by_flush_after_the_flood_stopped():
    logger, handler = _logger()
    bad = BadInputLog(logger, per_window=2, window_s=60)
    for i in range(5):
        bad.complain(100.0 + i, "query 1.2.3.4:5", "junk %d" % i)
    assert len(handler.lines) == 2
    bad.flush(130.0)  # the window is still open: nothing yet
    assert len(handler.lines) == 2
    bad.flush(161.0)
    assert handler.lines[-1] == "3 more bad inputs not logged in the last 60 s"
    bad.flush(300.0)  # said once
    assert len(handler.lines) == 3


def test_reopen_moves_stderr_to_the_new_file_when_stderr_was_the_log(tmp_path):
    # Run in a child whose stderr is the log file, as under runDSM.
    log = tmp_path / "dsm.log"
    code = (
        "import os, sys\n"
        "sys.path.insert(0, %r)\n"
        "from DriveStateMonitor.daemon_log import ReopenableFileHandler\n"
        "h = ReopenableFileHandler(%r)\n"
        "assert h.owns_std_streams\n"
        "os.rename(%r, %r)\n"
        "h.reopen()\n"
        "sys.stderr.write('after reopen\\n'); sys.stderr.flush()\n"
    ) % (os.getcwd(), str(log), str(log), str(log) + ".1")
    with open(log, "a") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True, timeout=30)
    assert "after reopen" in log.read_text()
    assert "after reopen" not in (tmp_path / "dsm.log.1").read_text()


def test_reopen_leaves_a_terminal_stderr_alone(tmp_path):
    handler = ReopenableFileHandler(str(tmp_path / "x.log"))
    try:
        assert not handler.owns_std_streams
    finally:
        handler.close()


def test_reopen_on_a_full_disk_never_raises_and_counts_what_is_lost(tmp_path):
    """logrotate's SIGHUP while the log disk is full: the old stream still buffers a line that
    failed, and closing it fails again. Before, that OSError left reopen() at every SIGHUP and
    each one counted against the loop's kill switch: about 30 of them stopped the DSM (exit 4)."""
    from DriveStateMonitor import daemon_log
    handler = ReopenableFileHandler(str(tmp_path / "dsm.log"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        for _ in range(40):
            handler.stream.close()
            handler.stream = open("/dev/full", "a", buffering=1)  # what a full disk answers
            before = daemon_log.lines_lost()
            handler.emit(logging.LogRecord("dsm", logging.INFO, __file__, 1, "a line", None, None))
            handler.reopen()
            assert daemon_log.lines_lost() >= before + 2  # the line, and its retry at close
        handler.emit(logging.LogRecord("dsm", logging.INFO, __file__, 1, "after", None, None))
        handler.flush()
        assert (tmp_path / "dsm.log").read_text().endswith("after\n")
    finally:
        handler.close()
