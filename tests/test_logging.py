"""The DSM's log: timestamped lines, SIGHUP reopens the log file (logrotate), bad input logged with its
source and rate-limited (at most 20 lines per 60 s, then a summary of what was not logged)."""
from __future__ import annotations

import os
import re
import signal
import socket


from dsm_harness import END, LOOPBACK, ShiftedClock, recv_all, recv_until_end, wait_for

# logging's default asctime: 2024-11-24 10:16:00,123, then the level.
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def bad_query(dsm, token: bytes) -> int:
    """Sends one bad query over TCP; returns the client's port (the source the log must name)."""
    with dsm.connect_query() as sock:
        port = sock.getsockname()[1]
        sock.sendall(token)
        sock.shutdown(socket.SHUT_WR)
        reply = recv_all(sock)
    assert reply.endswith(END) and b'"error"' in reply, reply
    return port


def start_with_log_file(dsm_factory, *extra: str, env=None):
    log_file = os.path.join(dsm_factory.new_dirs(), "dsm.log")
    dsm = dsm_factory.start("--log-file", log_file, *extra, env=env)
    wait_for(lambda: "started, pid %d" % dsm.pid in read(log_file), what="the start in the log")
    return dsm, log_file


def test_every_log_line_is_timestamped(dsm_factory):
    dsm, log_file = start_with_log_file(dsm_factory)
    bad_query(dsm, b"xyz")
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0
    lines = read(log_file).splitlines()
    assert len(lines) >= 5, lines
    for line in lines:
        assert TIMESTAMP.match(line), line
    assert "stopped, exit code 0" in lines[-1]
    assert dsm.log_text() == ""  # with --log-file nothing goes to standard error


def test_traceback_lines_follow_a_timestamped_record(dsm_factory):
    dsm, log_file = start_with_log_file(dsm_factory, "--fault-injection")
    try:
        dsm.query(b"!crash")
    except ConnectionResetError:
        pass
    text = wait_for(lambda: "RuntimeError: fault injection" in read(log_file) and read(log_file),
                    what="the traceback in the log")
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    assert TIMESTAMP.match(lines[first - 1]) and "unexpected error in query 127.0.0.1:" in \
        lines[first - 1], lines[first - 1]


def test_bad_inputs_are_logged_with_their_source(dsm_factory):
    dsm, log_file = start_with_log_file(dsm_factory)
    port = bad_query(dsm, b"bogus1")
    with socket.create_connection((LOOPBACK, dsm.status_port), timeout=10) as sock:
        status_port = sock.getsockname()[1]
        sock.sendall(b"not a status\n")
        assert b"error" in recv_until_end(sock)
    dsm.announce(b"\xff not json")
    text = wait_for(lambda: read(log_file).count("bad input from") >= 3 and read(log_file),
                    what="three bad inputs in the log")
    assert re.search(r"bad input from query 127\.0\.0\.1:%d: unknown query 'bogus1'" % port, text), text
    assert "bad input from status 127.0.0.1:%d: " % status_port in text, text
    assert re.search(r"bad input from multicast 127\.0\.0\.1:\d+ on lo: ", text), text
    for line in text.splitlines():
        if "bad input from" in line:
            assert TIMESTAMP.match(line) and " WARNING " in line, line


def test_sighup_reopens_the_log_file(dsm_factory):
    dsm, log_file = start_with_log_file(dsm_factory)
    rotated = log_file + ".1"
    os.rename(log_file, rotated)
    bad_query(dsm, b"before-hup")
    wait_for(lambda: "before-hup" in read(rotated), what="the old file to take lines until SIGHUP")
    assert not os.path.exists(log_file)

    dsm.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: log file reopened" in read(log_file), what="a new log file")
    bad_query(dsm, b"after-hup")
    wait_for(lambda: "after-hup" in read(log_file), what="new lines in the new file")
    old = read(rotated)
    assert "after-hup" not in old and "SIGHUP" not in old
    assert "started, pid %d" % dsm.pid in old and "started" not in read(log_file)

    assert dsm.proc.poll() is None  # SIGHUP does not stop it
    assert dsm.query_json("s") == {}
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0
    assert "stopped, exit code 0" in read(log_file)


def test_bad_inputs_beyond_20_in_a_minute_are_not_logged(dsm_factory):
    dsm, log_file = start_with_log_file(dsm_factory)
    # One connection each: a run of bad tokens on one connection gets one error.
    for i in range(25):
        reply = dsm.query(b"flood%02d" % i)
        assert reply.endswith(END) and b"error" in reply  # each one is still answered
    dsm.signal(signal.SIGTERM)  # everything it logs is in the file once it has exited
    assert dsm.wait_exit() == 0
    text = read(log_file)
    logged = re.findall(r"bad input from query 127\.0\.0\.1:\d+: unknown query 'flood(\d\d)'", text)
    assert logged == ["%02d" % i for i in range(20)], text


def test_rate_limit_summary_when_the_next_window_opens(dsm_factory):
    with ShiftedClock() as clock:
        dsm, log_file = start_with_log_file(dsm_factory, env=clock.env())
        for i in range(27):
            bad_query(dsm, b"first%02d" % i)
        wait_for(lambda: "'first19'" in read(log_file), what="20 bad inputs logged")

        # 59 s later: still the same window, still nothing logged.
        clock.shift(59)
        bad_query(dsm, b"late")
        assert dsm.query_json("s") == {}  # the late query has been handled
        assert "'late'" not in read(log_file)

        # 61 s later: a new window; the summary first, then the new bad input.
        clock.shift(61)
        bad_query(dsm, b"next")
        text = wait_for(lambda: "'next'" in read(log_file) and read(log_file),
                        what="the bad input of the next window")
        lines = text.splitlines()
        summary = [i for i, line in enumerate(lines) if "more bad inputs not logged" in line]
        assert len(summary) == 1, text
        assert "8 more bad inputs not logged in the last 60 s" in lines[summary[0]]
        assert TIMESTAMP.match(lines[summary[0]])
        assert "'next'" in lines[summary[0] + 1]
        assert sum("unknown query 'first" in line for line in lines) == 20
