"""Running under systemd: readiness and stopping over $NOTIFY_SOCKET, watchdog pings, journal logs."""
import configparser
import os
import signal
import socket

from DriveStateMonitor.daemon_log import JournalFormatter
from DriveStateMonitor.sd_notify import notify, watchdog_interval
from dsm_harness import ROOT, short_temp_dir, wait_for

import logging


def _notify_socket():
    path = os.path.join(short_temp_dir(), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    return sock, path


def test_notify_without_notify_socket_is_a_no_op():
    assert notify("READY=1", environ={}) is False


def test_notify_sends_one_datagram_to_the_socket():
    sock, path = _notify_socket()
    with sock:
        assert notify("READY=1", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1"


def test_watchdog_interval_is_half_of_watchdog_sec_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


def test_daemon_says_ready_pings_the_watchdog_and_says_stopping(dsm_factory):
    sock, path = _notify_socket()
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    with sock:
        dsm = dsm_factory.start(env=env)
        messages = []

        def heard(text):
            def check():
                try:
                    messages.append(sock.recv(4096).decode())
                except socket.timeout:
                    pass
                return any(text in m for m in messages)
            return check

        wait_for(heard("READY=1"), what="READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert "MAINPID=%d" % dsm.pid in ready
        wait_for(heard("WATCHDOG=1"), what="a watchdog ping")
        dsm.signal(signal.SIGTERM)
        wait_for(heard("STOPPING=1"), what="STOPPING=1")
        assert dsm.wait_exit() == 0


def test_journal_formatter_prefixes_every_line_with_its_priority():
    formatter = JournalFormatter("%(message)s")
    record = logging.LogRecord("dsm", logging.ERROR, __file__, 1, "two\nlines", None, None)
    assert formatter.format(record) == "<3>two\n<3>lines"


def test_unit_file_is_a_notify_service_that_restarts_on_failure():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(os.path.join(ROOT, "DriveStateMonitor", "systemd", "drive-state-monitor.service"))
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert "DriveStateMonitor.py" in service["ExecStart"]
    assert "--run-dir" in service["ExecStart"] and "--state-dir" in service["ExecStart"]
