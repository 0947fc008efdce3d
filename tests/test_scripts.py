"""The scripts, run as a user runs them: runDSM, stopDSM, DriveStateMonitor.py in the foreground,
MulticastListener.py beside a running DSM, StatusListener.py, and the DriveStateMonitor/ folder copied
alone to another directory.

Every DSM here uses free ports, the loopback interface only, a test multicast group and a private run
dir; whatever runDSM starts is stopped by the pid in its run dir when the test ends.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

import pytest

import dsm_harness
from dsm_harness import (END, LOOPBACK, PACKAGE, ROOT, TEST_GROUP, announcement,
                         free_udp_port, recv_all, recv_until_end, run_script,
                         short_temp_dir, wait_for)

RUN_DSM = os.path.join(ROOT, "runDSM")
STOP_DSM = os.path.join(ROOT, "stopDSM")
MULTICAST_LISTENER = os.path.join(PACKAGE, "MulticastListener.py")
STATUS_LISTENER = os.path.join(PACKAGE, "StatusListener.py")


def read_stderr_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    fd = proc.stderr.fileno()
    data = b""

    def line_ready() -> bool:
        nonlocal data
        if b"\n" not in data and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError("stderr closed before a line: %r" % data)
            data += chunk
        return b"\n" in data
    wait_for(line_ready, timeout, "a line on stderr")
    return data.decode()


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def is_dsm(pid: int) -> bool:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"DriveStateMonitor.py" in f.read()
    except OSError:
        return False


def dsm_pids_with_run_dir(run_dir: str) -> List[int]:
    """Pids of the DSM processes whose command line names `run_dir` (every test has its own)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"DriveStateMonitor.py") for arg in args) and \
                os.fsencode(run_dir) in args:
            found.append(int(entry))
    return found


def lock_held(run_dir: str) -> bool:
    try:
        fd = os.open(os.path.join(run_dir, "dsm.lock"), os.O_RDWR)
    except FileNotFoundError:  # a DSM that created its run dir removes it when it stops
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the DSM holds a POSIX lock
    except OSError as exc:
        assert exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        return True
    finally:
        os.close(fd)
    return False


class Scripts:
    """runDSM / stopDSM with a private run dir, log dir and ports; kills what runDSM started."""

    def __init__(self) -> None:
        self.base = short_temp_dir()
        self.run_dir = os.path.join(self.base, "run")
        self.log_dir = os.path.join(self.base, "logs")
        self.mcast_port = free_udp_port()
        self.pids: List[int] = []

    def dsm_args(self, *extra: str) -> List[str]:
        return ["--interfaces", "lo", "--query-port", "0", "--status-port", "0",
                "--statserv-port", "0", "--http-port", "0", "--mcast-group", TEST_GROUP,
                "--mcast-port", str(self.mcast_port), "--run-dir", self.run_dir,
                "--log-dir", self.log_dir, "--state-dir", os.path.join(self.base, "state")
                ] + list(extra)

    def run_dsm(self, *extra: str) -> subprocess.CompletedProcess:
        try:
            return run_script([sys.executable, RUN_DSM] + self.dsm_args(*extra))
        finally:
            self.remember_pid()

    def stop_dsm(self, *extra: str) -> subprocess.CompletedProcess:
        return run_script([sys.executable, STOP_DSM, "--run-dir", self.run_dir] + list(extra))

    def remember_pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.run_dir, "dsm.pid")) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return None
        if pid not in self.pids:
            self.pids.append(pid)
        return pid

    def info(self) -> dict:
        with open(os.path.join(self.run_dir, "dsm.json")) as f:
            return json.load(f)

    def cleanup(self) -> None:
        self.remember_pid()
        # A runDSM that lost a start race leaves its DSM starting; on a loaded host it can take the
        # lock only after the winner was stopped here, and outlive the test: find it by run dir.
        self.pids += [pid for pid in dsm_pids_with_run_dir(self.run_dir) if pid not in self.pids]
        for pid in self.pids:
            if pid_alive(pid) and is_dsm(pid):
                os.kill(pid, signal.SIGTERM)
                try:
                    wait_for(lambda pid=pid: not pid_alive(pid), 10, "DSM pid %d to stop" % pid)
                except AssertionError:
                    if is_dsm(pid):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def query_tcp(port: int, data: bytes = b"s") -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def today_log_names(log_dir: str, before: float) -> List[str]:
    """The dated log file names possible for a run that started at `before` and ended now."""
    return sorted({os.path.join(log_dir, time.strftime("%Y-%m-%d", time.localtime(t)) + "_DSMlog.txt")
                   for t in (before, time.time())})


# --- runDSM and stopDSM -------------------------------------------------------------------------

def test_run_dsm_starts_detached_and_stop_dsm_stops_it(scripts):
    before = time.time()
    started = scripts.run_dsm()
    assert started.returncode == 0, started.stderr
    # It waited until the DSM answers: a query right now gets an answer, no waiting.
    info = scripts.info()
    pid = info["pid"]
    assert query_tcp(info["query_port"]) == b"{}" + END
    assert info["status_port"] not in (0, info["query_port"])
    assert info["mcast_port"] == scripts.mcast_port

    match = re.search(r"pid (\d+); logging to (\S+)", started.stdout)
    assert match, started.stdout
    assert int(match.group(1)) == pid
    log_file = match.group(2)
    assert log_file in today_log_names(scripts.log_dir, before)
    wait_for(lambda: "started, pid %d" % pid in read(log_file), what="the start in the log")

    # Detached: its own session, not runDSM's child any more, not ours.
    assert os.getsid(pid) == pid
    assert os.getsid(pid) != os.getsid(0)
    assert lock_held(scripts.run_dir)

    stopped = scripts.stop_dsm()
    assert stopped.returncode == 0, stopped.stderr
    assert "DSM (pid %d) stopped" % pid in stopped.stdout
    # stopDSM waited until the DSM let go of the lock, which it does last, after closing its sockets.
    assert not lock_held(scripts.run_dir)
    with pytest.raises(ConnectionRefusedError):
        query_tcp(info["query_port"])
    wait_for(lambda: not pid_alive(pid), 2, "DSM pid %d to be gone" % pid)
    assert not os.path.exists(os.path.join(scripts.run_dir, "dsm.pid"))
    assert "stopped, exit code 0" in read(log_file)

    again = scripts.stop_dsm()
    assert again.returncode == 0, again.stderr
    assert "no DSM is running" in again.stdout


def test_stop_dsm_when_none_ever_ran(scripts):
    result = scripts.stop_dsm()
    assert result.returncode == 0, result.stderr
    assert "no DSM is running" in result.stdout
    assert scripts.run_dir in result.stdout


def test_run_dsm_shares_the_running_dsm(scripts):
    first = scripts.run_dsm()
    assert first.returncode == 0, first.stderr
    pid = scripts.info()["pid"]
    second = scripts.run_dsm()
    assert second.returncode == 0, second.stderr
    assert "already running with pid %d" % pid in second.stdout
    assert scripts.info()["pid"] == pid
    assert pid_alive(pid)


def plant_bystander_pid(run_dir: str, procs: list) -> subprocess.Popen:
    """A live process that is not a DSM, named by <run_dir>/dsm.pid (made here); stopped with
    `procs`."""
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
    procs.append(bystander)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "dsm.pid"), "w") as f:
        f.write("%d\n" % bystander.pid)
    return bystander


def test_a_stale_pid_file_neither_blocks_a_start_nor_gets_signalled(scripts, procs):
    # A process that is not a DSM, whose pid a dead DSM's files still name.
    bystander = plant_bystander_pid(scripts.run_dir, procs)
    with open(os.path.join(scripts.run_dir, "dsm.json"), "w") as f:
        json.dump({"pid": bystander.pid, "query_port": 1, "status_port": 2}, f)
    open(os.path.join(scripts.run_dir, "dsm.lock"), "w").close()  # no one holds it

    stopped = scripts.stop_dsm()
    assert stopped.returncode == 0, stopped.stderr
    assert "no DSM is running" in stopped.stdout
    started = scripts.run_dsm()
    assert started.returncode == 0, started.stderr
    assert "DSM started" in started.stdout
    info = scripts.info()
    assert info["pid"] != bystander.pid and is_dsm(info["pid"])
    assert query_tcp(info["query_port"]) == b"{}" + END
    stopped = scripts.stop_dsm()
    assert stopped.returncode == 0, stopped.stderr
    assert "DSM (pid %d) stopped" % info["pid"] in stopped.stdout
    assert bystander.poll() is None


def test_run_dsm_reports_a_dsm_that_cannot_start(scripts):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as blocker:
        blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        blocker.bind(("::", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        result = scripts.run_dsm("--query-port", str(port))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "exited with code 2" in result.stderr
    assert "cannot bind the query port %d" % port in result.stderr
    assert not lock_held(scripts.run_dir)


def test_stop_dsm_stops_a_foreground_dsm_with_exit_0(dsm_factory):
    dsm = dsm_factory.start()
    result = run_script([sys.executable, STOP_DSM, "--run-dir", dsm.run_dir])
    assert result.returncode == 0, result.stderr
    assert "DSM (pid %d) stopped" % dsm.pid in result.stdout
    assert dsm.wait_exit() == 0


# --- one DSM per run dir ------------------------------------------------------------------------

def test_single_instance_lock_pid_and_info(dsm_factory):
    first = dsm_factory.start()
    run_dir = first.run_dir
    assert lock_held(run_dir)
    with open(os.path.join(run_dir, "dsm.pid")) as f:
        assert int(f.read()) == first.pid
    info = first.info
    assert info["pid"] == first.pid
    for key in ("query_port", "status_port", "mcast_port"):
        assert isinstance(info[key], int) and info[key] > 0, info
    assert info["mcast_port"] == first.mcast_port
    # The ports in dsm.json are the ones actually bound.
    assert query_tcp(info["query_port"]) == b"{}" + END
    assert first.send_status(b'{"serial_number": "I1", "time_stamp": 1, "status": "002"}') == END

    second = dsm_factory.start(wait=False, run_dir=run_dir)
    assert second.wait_exit() == 0
    assert "already running with pid %d" % first.pid in second.log_text()
    assert first.query_json("s") == {"I1": [{"time_stamp": 1, "status": "002"}]}
    with open(os.path.join(run_dir, "dsm.json")) as f:
        assert json.load(f)["pid"] == first.pid

    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert not lock_held(run_dir)
    # The lock file stays; the next DSM takes it.
    third = dsm_factory.start(run_dir=run_dir)
    assert third.info["pid"] == third.pid
    assert lock_held(run_dir)


# --- DriveStateMonitor.py in the foreground -----------------------------------------------------

def test_daemon_runs_in_the_foreground(dsm_factory):
    dsm = dsm_factory.start()
    # No fork: the process we started is the DSM, in our session.
    assert dsm.info["pid"] == dsm.pid
    assert os.getsid(dsm.pid) == os.getsid(0)
    assert dsm.proc.poll() is None
    assert dsm.query_json("m") == {}
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0


def test_daemon_help_hides_the_test_only_flag():
    result = run_script([sys.executable, dsm_harness.DAEMON, "--help"])
    assert result.returncode == 0
    for option in ("--run-dir", "--query-port", "--status-port", "--mcast-port", "--log-file"):
        assert option in result.stdout
    assert "fault-injection" not in result.stdout


# --- MulticastListener.py -----------------------------------------------------------------------

def test_multicast_listener_beside_a_running_dsm(dsm_factory, procs):
    dsm = dsm_factory.start()
    proc = subprocess.Popen(
        [sys.executable, MULTICAST_LISTENER, "-t", "1.5", "--interfaces", "lo",
         "--mcast-group", TEST_GROUP, "--mcast-port", str(dsm.mcast_port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    assert "listening to %s:%d on lo" % (TEST_GROUP, dsm.mcast_port) in read_stderr_line(proc)
    dsm.announce(announcement("ML1"))
    dsm.announce(b'{"box_id": 3, "id": 1, "port": 9, "version": 1}')  # another device's shape
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    heard = json.loads(out)
    assert list(heard) == ["ML1"]
    drive = heard["ML1"]
    assert drive["serial_number"] == "ML1"
    assert drive["network_interfaces"][0]["ipv4_addr"] == "10.20.30.41"
    assert re.match(r"^\d{4} [A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2}$", drive["last_seen"])
    assert b"not drive announcements" in err
    # The DSM heard the same datagram: both share the group and port.
    in_dsm = wait_for(lambda: dsm.query_json("m"), what="ML1 in the DSM")
    assert set(in_dsm) == {"ML1"}
    # The same shape as `m`; the drive's own fields exactly as the DSM has them.
    assert set(drive) == set(in_dsm["ML1"])
    for key, value in json.loads(announcement("ML1")).items():
        assert drive[key] == value == in_dsm["ML1"][key], key
    assert dsm.proc.poll() is None


# --- StatusListener.py --------------------------------------------------------------------------

def test_status_listener_prints_each_status_as_a_json_line(procs):
    proc = subprocess.Popen([sys.executable, STATUS_LISTENER, "--status-port", "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    line = read_stderr_line(proc)
    match = re.search(r"listening on TCP port (\d+)", line)
    assert match, line
    port = int(match.group(1))
    sent = [b"{'serial_number': 'SL1', 'time_stamp': 1.5, 'status': '001'}",
            b'{"serial_number": "SL2", "time_stamp": 2, "status": "002"}']
    for message in sent:
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(message)  # the lab scripts' way: no terminator, wait for \x04
            assert recv_until_end(sock) == END
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(b"{'serial_number': 'SL3'}\n")
        reply = recv_until_end(sock)
        assert reply.endswith(END) and b"error" in reply
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.decode().splitlines()]
    assert [(x["serial_number"], x["time_stamp"], x["status"]) for x in lines] == [
        ("SL1", 1.5, "001"), ("SL2", 2, "002")]
    assert all(x["source"].startswith("status 127.0.0.1:") for x in lines)
    assert b"refused" in err and b"SL3" not in out


# --- the folder alone ---------------------------------------------------------------------------

def copy_package_alone() -> str:
    base = short_temp_dir()
    shutil.copytree(PACKAGE, os.path.join(base, "DriveStateMonitor"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "Logs", "State"))
    return base


def clean_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the copy's __pycache__ proves what was imported
    return env


def test_folder_copied_alone_runs(dsm_factory, monkeypatch):
    base = copy_package_alone()
    dsm_factory.dirs.append(base)
    copy = os.path.join(base, "DriveStateMonitor")
    monkeypatch.setattr(dsm_harness, "DAEMON", os.path.join(copy, "DriveStateMonitor.py"))
    monkeypatch.chdir(base)
    dsm = dsm_factory.start(env=clean_env())
    assert dsm.query_json("s") == {}
    dsm.announce(announcement("CP1"))
    assert "CP1" in wait_for(lambda: dsm.query_json("m"), what="CP1 in m")
    compiled = os.listdir(os.path.join(copy, "__pycache__"))
    assert any(name.startswith("daemon.") for name in compiled), compiled
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0


def test_multicast_listener_copied_alone_runs(tmp_path):
    base = copy_package_alone()
    try:
        result = run_script(
            [sys.executable, os.path.join(base, "DriveStateMonitor", "MulticastListener.py"),
             "-t", "0", "--interfaces", "lo", "--mcast-group", TEST_GROUP,
             "--mcast-port", str(free_udp_port())], cwd=str(tmp_path), env=clean_env())
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {}
        compiled = os.listdir(os.path.join(base, "DriveStateMonitor", "__pycache__"))
        assert any(name.startswith("multicast_listener.") for name in compiled), compiled
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_cleanup_finds_a_dsm_started_with_the_run_dir_whose_pid_it_never_read(scripts, procs):
    # What a runDSM that lost a start race leaves behind: a DSM of this run dir, pid file not ours.
    late = subprocess.Popen([sys.executable, os.path.join(ROOT, "DriveStateMonitor",
                                                          "DriveStateMonitor.py")]
                            + scripts.dsm_args(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(late)
    # (/proc/<pid>/cmdline reads empty for a moment after the spawn)
    wait_for(lambda: dsm_pids_with_run_dir(scripts.run_dir) == [late.pid], 10,
             "the DSM's command line")
    assert dsm_pids_with_run_dir(scripts.run_dir + "-other") == []
    scripts.cleanup()
    assert late.wait(15) is not None
