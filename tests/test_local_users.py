"""Local users and pids (issue 10): an unsafe run dir is refused, run-dir files never follow a planted
link, only the DSM's own user (or root) may stop or wipe it over the 0666 Unix sockets, and
stopDSM/runDSM never signal or name a pid they cannot tie to the lock holder.

Other-user tests fork a child that drops to `nobody` (the tests run as root).
"""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import socket
import subprocess
import sys

import pytest

from DriveStateMonitor.single_instance import _write_atomic
from dsm_harness import END, short_temp_dir
from test_scripts import RUN_DSM, is_dsm, pid_alive, plant_bystander_pid

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _as_nobody(action) -> bytes:
    """Runs `action()` (returns bytes) in a forked child with the uid of `nobody`; its result."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = action()
        except BaseException as exc:  # reported to the parent as text
            result = ("EXC %r" % exc).encode()
        os.write(write_end, result)
        os._exit(0)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks)


def _open_to_others(dsm) -> None:
    """Lets other users reach the sockets (the harness's temporary dirs are 0700); 0755 keeps the
    run dir acceptable."""
    os.chmod(os.path.dirname(dsm.run_dir), 0o755)
    os.chmod(dsm.run_dir, 0o755)


# --- the run dir --------------------------------------------------------------------------------
def test_a_run_dir_writable_by_others_is_refused_with_exit_2_naming_run_dir(dsm_factory):
    run_dir = os.path.join(short_temp_dir(), "run")
    os.makedirs(run_dir)
    os.chmod(run_dir, 0o777)
    dsm = dsm_factory.start(run_dir=run_dir, wait=False)
    assert dsm.wait_exit(10) == 2
    log = dsm.log_text()
    assert "--run-dir" in log and "writable by group or others" in log
    assert not os.path.exists(os.path.join(run_dir, "dsm.lock"))


@needs_root
def test_a_run_dir_owned_by_another_user_is_refused(dsm_factory):
    run_dir = os.path.join(short_temp_dir(), "run")
    os.makedirs(run_dir, mode=0o755)
    os.chown(run_dir, pwd.getpwnam("nobody").pw_uid, -1)
    dsm = dsm_factory.start(run_dir=run_dir, wait=False)
    assert dsm.wait_exit(10) == 2
    assert "belongs to uid" in dsm.log_text() and "--run-dir" in dsm.log_text()


def test_a_run_dir_that_is_a_symlink_is_refused(dsm_factory):
    base = short_temp_dir()
    os.makedirs(os.path.join(base, "real"))
    os.symlink(os.path.join(base, "real"), os.path.join(base, "run"))
    dsm = dsm_factory.start(run_dir=os.path.join(base, "run"), wait=False)
    assert dsm.wait_exit(10) == 2
    assert "not a directory" in dsm.log_text()


def test_writing_a_run_dir_file_replaces_a_planted_link_and_never_writes_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(str(victim), str(tmp_path / "dsm.pid"))
    os.symlink(str(victim), str(tmp_path / ("dsm.pid.%d.tmp" % os.getpid())))
    _write_atomic(str(tmp_path / "dsm.pid"), "123\n")
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(str(tmp_path / "dsm.pid"))
    assert (tmp_path / "dsm.pid").read_text() == "123\n"


# --- who may stop or wipe -------------------------------------------------------------------------
@needs_root
def test_another_user_on_the_unix_socket_cannot_shutdown(dsm_factory):
    dsm = dsm_factory.start()
    _open_to_others(dsm)

    def shutdown() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(dsm.statserv_socket)
            sock.sendall(b"SHUTDOWN\nPWD\n")
            data = b""
            while data.count(b"\n") < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data
    answer = _as_nobody(shutdown).decode()
    assert answer.startswith("! DENIED ") and answer.endswith(". /\n"), answer
    assert dsm.proc.poll() is None


@needs_root
def test_with_wipe_from_local_another_user_on_the_unix_socket_cannot_wipe(dsm_factory):
    dsm = dsm_factory.start("--wipe-from", "local")
    _open_to_others(dsm)
    assert dsm.send_status(json.dumps({"serial_number": "KEEP", "time_stamp": 1,
                                       "status": "ok"}).encode()) == END

    def wipe() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(dsm.unix_socket)
            sock.sendall(b"w")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return data
                data += chunk
    reply = _as_nobody(wipe)
    assert reply.endswith(END) and "error" in json.loads(reply[:-1]), reply
    assert "KEEP" in dsm.query_json("s")
    # The DSM's own user still may.
    assert "wiped" in json.loads(dsm.query(b"w", unix=True)[:-1])


# --- pids -----------------------------------------------------------------------------------------
def test_stop_dsm_never_signals_a_pid_it_cannot_tie_to_the_lock_holder(scripts, procs):
    # The lock is held (by this test), but the pid file names a bystander that is not the holder:
    # the window in which a DSM restarting after a crash has the lock and has not written its pid.
    bystander = plant_bystander_pid(scripts.run_dir, procs)
    lock_fd = os.open(os.path.join(scripts.run_dir, "dsm.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.lockf(lock_fd, fcntl.LOCK_EX)  # the DSM's own kind of lock (POSIX)
        stopped = scripts.stop_dsm("--timeout", "1")
        assert stopped.returncode == 4, (stopped.stdout, stopped.stderr)
        assert "nothing signalled" in stopped.stderr
        assert "pid %d" % bystander.pid not in stopped.stdout + stopped.stderr
        started = scripts.run_dsm()
        assert started.returncode == 0
        assert "already running" in started.stdout
        assert str(bystander.pid) not in started.stdout
    finally:
        os.close(lock_fd)
    assert bystander.poll() is None


def test_the_pid_file_is_written_before_the_state_is_restored(dsm_factory, monkeypatch):
    from DriveStateMonitor import daemon as daemon_module
    from DriveStateMonitor.options import parse_options
    base = short_temp_dir()
    run_dir = os.path.join(base, "run")
    seen = []
    monitor = daemon_module.DriveStateMonitor(parse_options([
        "--run-dir", run_dir, "--state-dir", os.path.join(base, "state"), "--interfaces", "lo",
        "--query-port", "0", "--status-port", "0", "--statserv-port", "0", "--http-port", "0",
        "--mcast-port", "0", "--mcast-group", "239.1.2.99"]))
    monkeypatch.setattr(monitor, "_restore", lambda: seen.append(
        open(os.path.join(run_dir, "dsm.pid")).read()))
    try:
        assert monitor.start()
    finally:
        monitor.close()
    assert seen == ["%d\n" % os.getpid()]


def test_two_run_dsm_at_once_one_starts_the_other_names_the_same_live_pid(scripts):
    os.makedirs(scripts.log_dir, exist_ok=True)
    command = [sys.executable, RUN_DSM] + scripts.dsm_args()
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, universal_newlines=True)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, universal_newlines=True)
    try:
        outputs = [proc.communicate(timeout=30) for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        scripts.remember_pid()
    assert first.returncode == 0 and second.returncode == 0, outputs
    said = [out for out, _err in outputs]
    started = [s for s in said if "DSM started, pid" in s]
    sharing = [s for s in said if "already running with pid" in s]
    assert len(started) == 1 and len(sharing) == 1, said
    pid = int(re.search(r"started, pid (\d+)", started[0]).group(1))
    assert "with pid %d " % pid in sharing[0]
    assert pid_alive(pid) and is_dsm(pid)
    with open(os.path.join(scripts.run_dir, "dsm.pid")) as f:
        assert int(f.read()) == pid
