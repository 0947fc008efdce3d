"""Exit codes of the DSM and of MulticastListener.py, each produced for real.

0 success (SIGTERM included), 1 keyboard interrupt (SIGINT), 2 failed to create a socket, 3 socket error
on listen, 4 internal kill switch (more than 5 handler failures within 24 hours).
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import List

import pytest

from dsm_harness import (END, PACKAGE, TEST_GROUP, ShiftedClock, free_udp_port, recv_all,
                         short_temp_dir, wait_for)

MULTICAST_LISTENER = os.path.join(PACKAGE, "MulticastListener.py")


def dual_stack_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> bytes:
    """One line of the process's standard error, waiting at most `timeout`."""
    fd = proc.stderr.fileno()
    data = b""

    def line_ready() -> bool:
        nonlocal data
        if b"\n" in data:
            return True
        ready, _, _ = select.select([fd], [], [], 0)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError("stderr closed before a line: %r" % data)
            data += chunk
        return b"\n" in data
    wait_for(line_ready, timeout, "a line on stderr")
    return data


# --- the DSM ------------------------------------------------------------------------------------

def test_sigterm_exits_0(dsm_factory):
    dsm = dsm_factory.start()
    assert dsm.query_json("s") == {}
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0
    assert "stopped, exit code 0" in dsm.log_text()
    assert not os.path.exists(os.path.join(dsm.run_dir, "dsm.pid"))


def test_sigterm_with_an_idle_client_connection_exits_promptly(dsm_factory):
    dsm = dsm_factory.start()
    with dsm.connect_query() as idle:
        assert dsm.query_json("s") == {}  # answered after the earlier, idle connection was accepted
        started = time.monotonic()
        dsm.signal(signal.SIGTERM)
        assert dsm.wait_exit() == 0
        elapsed = time.monotonic() - started
        assert idle.recv(1) == b""  # closed by the DSM, not by us
    assert elapsed < 0.5, "took %.2f s to stop" % elapsed


def test_sigint_exits_1(dsm_factory):
    dsm = dsm_factory.start()
    dsm.signal(signal.SIGINT)
    assert dsm.wait_exit() == 1
    assert "stopped, exit code 1" in dsm.log_text()


# (option, the name the message gives the port)
PORTS = [("query", "query"), ("status", "status"), ("statserv", "Status Server")]


@pytest.mark.parametrize("option, which", PORTS)
def test_port_taken_exits_2_naming_the_port(dsm_factory, option, which):
    with dual_stack_socket() as blocker:
        blocker.bind(("::", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        dsm = dsm_factory.start("--%s-port" % option, str(port), wait=False)
        assert dsm.wait_exit() == 2
    log = dsm.log_text()
    assert "cannot bind the %s port %d" % (which, port) in log, log
    assert "Address already in use" in log, log
    assert not os.path.exists(os.path.join(dsm.run_dir, "dsm.json"))


def test_run_dir_unusable_exits_2(dsm_factory, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    dsm = dsm_factory.start(wait=False, run_dir=str(not_a_dir / "run"))
    assert dsm.wait_exit() == 2
    assert "cannot use the run dir" in dsm.log_text()


# On Linux, a blocker bound to the port with SO_REUSEADDR but not listening does NOT make the DSM's
# listen() fail (kernels since the fastreuse fix let both bind and listen). listen() does fail with
# EADDRINUSE when the blocker starts listening between the DSM's bind() and its listen(). This
# sitecustomize (on the DSM's PYTHONPATH) only pauses the DSM at that point until the test says go;
# the listen() that then fails is the kernel's own.
PAUSE_HOOK = textwrap.dedent('''\
    import os, socket, time
    _port = int(os.environ.get("DSMT_PAUSE_LISTEN_PORT", "0"))
    if _port:
        _real_listen = socket.socket.listen
        def _paused_listen(self, *args):
            try:
                bound = self.getsockname()[1] if self.family != socket.AF_UNIX else None
            except OSError:
                bound = None
            if bound == _port:
                where = os.environ["DSMT_PAUSE_DIR"]
                open(os.path.join(where, "bound"), "w").close()
                deadline = time.monotonic() + 20
                while not os.path.exists(os.path.join(where, "go")) and time.monotonic() < deadline:
                    time.sleep(0.005)
            return _real_listen(self, *args)
        socket.socket.listen = _paused_listen
''')


@pytest.mark.parametrize("option, which", PORTS)
def test_listen_failure_exits_3(dsm_factory, option, which):
    hook_dir = short_temp_dir()
    try:
        with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as f:
            f.write(PAUSE_HOOK)
        with dual_stack_socket() as blocker:
            blocker.bind(("::", 0))
            port = blocker.getsockname()[1]
            env = dict(os.environ, PYTHONPATH=hook_dir, DSMT_PAUSE_LISTEN_PORT=str(port),
                       DSMT_PAUSE_DIR=hook_dir)
            dsm = dsm_factory.start("--%s-port" % option, str(port), wait=False, env=env)
            wait_for(lambda: os.path.exists(os.path.join(hook_dir, "bound"))
                     or dsm.proc.poll() is not None, what="the DSM to bind port %d" % port)
            assert dsm.proc.poll() is None, dsm.log_text()  # its bind() succeeded beside the blocker
            blocker.listen(1)
            open(os.path.join(hook_dir, "go"), "w").close()
            assert dsm.wait_exit() == 3, dsm.log_text()
        log = dsm.log_text()
        assert "cannot listen on the %s port %d: Address already in use" % (which, port) in log, log
    finally:
        shutil.rmtree(hook_dir, ignore_errors=True)


def crash(dsm, token: bytes = b"!crash") -> bytes:
    """A fault-injection query: `!crash` raises while handling this connection's input (the DSM
    closes the connection); `!crash-loop` makes a timer of the DSM's own raise."""
    try:
        return dsm.query(token)
    except ConnectionResetError:
        return b""


def test_failures_handling_input_never_trip_the_kill_switch(dsm_factory):
    dsm = dsm_factory.start("--fault-injection")
    assert dsm.send_status(b'{"serial_number": "K1", "time_stamp": 1, "status": "001"}') == END
    for _ in range(1, 13):
        assert crash(dsm) == b""  # closed without a reply
        assert dsm.proc.poll() is None
        assert dsm.query_json("s") == {"K1": [{"time_stamp": 1, "status": "001"}]}
    log = dsm.log_text()
    # tracebacks are rate-limited: the first five of the minute
    assert log.count("RuntimeError: fault injection: !crash") == 5, log
    assert "kill switch" not in log
    wait_for(lambda: b'"12"' in _statserv_get(dsm, "/dsm/counters/handler_failures"), 5,
             "the failures to be counted")


def _statserv_get(dsm, path: str) -> bytes:
    with dsm.connect_statserv() as sock:
        sock.sendall(b"GET %s\nLOGOFF\n" % path.encode())
        return recv_all(sock, timeout=5)


def test_kill_switch_exits_4_after_more_than_5_internal_failures(dsm_factory):
    dsm = dsm_factory.start("--fault-injection")
    assert dsm.send_status(b'{"serial_number": "K1", "time_stamp": 1, "status": "001"}') == END
    for failure in range(1, 6):
        crash(dsm, b"!crash-loop")
        wait_for(lambda failure=failure: dsm.log_text().count("RuntimeError: fault injection: !crash-loop")
                 == failure, 5, "failure %d to be logged" % failure)
        # Still serving after each of the first five failures.
        assert dsm.proc.poll() is None
        assert dsm.query_json("s") == {"K1": [{"time_stamp": 1, "status": "001"}]}
        assert dsm.query(b"m", unix=True) == b"{}" + END
    assert "kill switch" not in dsm.log_text()
    crash(dsm, b"!crash-loop")
    assert dsm.wait_exit() == 4
    log = dsm.log_text()
    assert "kill switch: more than 5 internal failures" in log, log
    assert "stopped, exit code 4" in log


def test_crash_token_is_an_ordinary_bad_query_without_the_flag(dsm_factory):
    dsm = dsm_factory.start()
    for _ in range(7):
        reply = dsm.query(b"!crash")
        assert reply.endswith(END) and b'"error"' in reply
    assert dsm.proc.poll() is None
    assert "Traceback" not in dsm.log_text()


# --- MulticastListener.py -----------------------------------------------------------------------

def listener_args(*extra: str, port: int = 0) -> List[str]:
    return [sys.executable, MULTICAST_LISTENER, "--interfaces", "lo", "--mcast-group", TEST_GROUP,
            "--mcast-port", str(port or free_udp_port())] + list(extra)


def start_listener(procs, *extra: str, port: int = 0) -> subprocess.Popen:
    proc = subprocess.Popen(listener_args(*extra, port=port), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    assert b"listening to" in read_line(proc)  # its signal handlers are in place
    return proc


def test_multicast_listener_exits_0_when_time_is_up():
    result = subprocess.run(listener_args("-t", "0"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                            universal_newlines=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{}"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_multicast_listener_signal_exit_codes(procs, signum, code):
    proc = start_listener(procs, "-t", "60")
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == code
    assert out.strip() == b"{}"  # still prints what it heard


@pytest.mark.parametrize("extra, message", [
    (["--interfaces", "nosuchif0"], "nosuchif0"),
    (["--mcast-group", "127.0.0.1"], "cannot join 127.0.0.1 on lo"),
    (["--mcast-group", "not-an-address"], "bad multicast group address"),
])
def test_multicast_listener_socket_failure_exits_2(extra, message):
    result = subprocess.run(listener_args("-t", "5") + extra, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                            universal_newlines=True)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""


def test_kill_switch_forgets_failures_older_than_24_hours(dsm_factory):
    with ShiftedClock() as clock:
        dsm = dsm_factory.start("--fault-injection", env=clock.env())

        def crash_and_wait(count: int) -> None:
            crash(dsm, b"!crash-loop")
            wait_for(lambda: dsm.log_text().count("fault injection: !crash-loop") == count, 5,
                     "failure %d" % count)

        for count in range(1, 6):
            crash_and_wait(count)
        assert dsm.query_json("s") == {}
        clock.shift(24 * 3600 + 1)
        for count in range(6, 11):  # the first five left the window: five in it, not more than five
            crash_and_wait(count)
            assert dsm.query_json("s") == {}
        assert dsm.proc.poll() is None
        crash(dsm, b"!crash-loop")
        assert dsm.wait_exit() == 4


# --- StatusListener.py --------------------------------------------------------------------------

STATUS_LISTENER = os.path.join(PACKAGE, "StatusListener.py")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_status_listener_signal_exit_codes(procs, signum, code):
    proc = subprocess.Popen([sys.executable, STATUS_LISTENER, "--status-port", "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    assert b"listening on TCP port" in read_line(proc)
    proc.send_signal(signum)
    proc.communicate(timeout=15)
    assert proc.returncode == code


def test_status_listener_port_taken_exits_2():
    with dual_stack_socket() as blocker:
        blocker.bind(("::", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        result = subprocess.run([sys.executable, STATUS_LISTENER, "--status-port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=30, universal_newlines=True)
    assert result.returncode == 2, result.stderr
    assert "cannot bind the status port %d" % port in result.stderr
