"""The log cannot be turned into a disk filler: malformed requests on every port (HTTP included) go
through the rate-limited bad-input log, and lines the log cannot take (a full disk) are counted in
dsm_log_lines_lost_total instead of a traceback each on standard error."""
from __future__ import annotations

import logging
import re
import socket
import time

from DriveStateMonitor import daemon_log
from DriveStateMonitor.daemon_log import CountingStreamHandler, ReopenableFileHandler
from DriveStateMonitor.metrics import empty_facts, render_metrics
from dsm_harness import LOOPBACK, free_tcp_port, wait_for

MALFORMED = b"GARBAGE\r\n\r\n"
REQUESTS = 10000
BATCH = 100  # connections in flight at once: well under every per-address limit


def metrics_value(dsm, name: str) -> float:
    with socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            body += chunk
    found = re.search(rb"\n%s (\S+)\n" % name.encode(), body)
    assert found is not None, name
    return float(found.group(1))


def test_ten_thousand_malformed_http_requests_write_a_bounded_number_of_log_lines(dsm_factory):
    dsm = dsm_factory.start("--http-port", str(free_tcp_port()))
    port = dsm.info["http_port"]
    lines_before = dsm.log_text().count("\n")
    started = time.monotonic()
    sent = 0
    while sent < REQUESTS:  # bounded: REQUESTS connections, BATCH at a time
        batch = []
        for _ in range(min(BATCH, REQUESTS - sent)):
            sock = socket.create_connection((LOOPBACK, port), timeout=10)
            sock.sendall(MALFORMED)
            batch.append(sock)
        for sock in batch:  # each is answered 400 and closed by the DSM
            sock.settimeout(10)
            while sock.recv(65536):
                pass
            sock.close()
        sent += len(batch)
        assert time.monotonic() - started < 300, "the DSM answered only %d in 300 s" % sent
    wait_for(lambda: metrics_value(dsm, "dsm_bad_inputs_total") >= REQUESTS, 30,
             "every malformed request counted as bad input")
    log = dsm.log_text()
    written = log.count("\n") - lines_before
    # one window's 20 lines, a summary line per window, and a little slack for other lines
    assert written <= 30, log[-3000:]
    assert log.count("bad input from http") >= 1
    assert dsm.proc.poll() is None


def _full_disk_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger("test.fulldisk.%d" % id(handler))
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def test_lines_the_full_log_disk_cannot_take_are_counted_and_stderr_stays_quiet(capfd, tmp_path):
    before = daemon_log.lines_lost()
    # The log file is opened while there is room (a regular file: the handler opens nothing else),
    # then the disk fills: its stream now writes where every write fails with ENOSPC.
    handler = ReopenableFileHandler(str(tmp_path / "dsm.log"))
    handler.stream.close()
    handler.stream = open("/dev/full", "a", buffering=1)
    logger = _full_disk_logger(handler)
    try:
        for index in range(5):
            logger.warning("bad input from somewhere: %d", index)
    finally:
        logger.removeHandler(handler)
        try:
            handler.close()
        except OSError:
            pass  # the close flushes what /dev/full refused
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert daemon_log.lines_lost() - before == 5


def test_a_closed_standard_error_loses_lines_quietly_too(capfd):
    before = daemon_log.lines_lost()

    class Closed:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            raise OSError(28, "No space left on device")

    logger = _full_disk_logger(CountingStreamHandler(Closed()))
    logger.error("one")
    logger.error("two")
    assert capfd.readouterr().err == ""
    assert daemon_log.lines_lost() - before == 2


def test_lost_lines_are_a_metric():
    facts = empty_facts()
    facts["log_lines_lost"] = 7
    text = render_metrics(facts)
    assert "# TYPE dsm_log_lines_lost_total counter\n" in text
    assert "\ndsm_log_lines_lost_total 7\n" in text


def test_connections_closed_as_idle_write_a_bounded_number_of_log_lines(dsm_factory):
    """Open, stay quiet, get closed: before, one INFO line per connection (a stranger's to
    multiply: 1,000 connections every --idle-timeout). Now rate-limited like bad input."""
    dsm = dsm_factory.start("--idle-timeout", "0.5", "--statserv-idle-timeout", "0.5")
    quiet = []
    for port in (dsm.query_port, dsm.status_port, dsm.statserv_port):
        for _ in range(40):
            quiet.append(socket.create_connection((LOOPBACK, port), timeout=10))
    try:
        for sock in quiet:  # each is closed by the DSM's idle sweep: its end of stream
            while sock.recv(4096):  # bounded: the socket's 10 s timeout
                pass
    finally:
        for sock in quiet:
            sock.close()
    lines = dsm.log_text().count("idle for more than")
    assert 1 <= lines <= 20, lines
