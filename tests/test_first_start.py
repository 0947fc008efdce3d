"""runDSM/stopDSM inside the folder, a copy under any name, default dirs outside the code, and what
runDSM prints: where everything is and what next after a start, the cause first after a failure.

Every DSM started here gets temporary run, log and state dirs and free ports, and is stopped by its
pid afterwards (the `scripts` fixture), pass or fail.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from typing import List

import pytest

from dsm_harness import (END, PACKAGE, ROOT, TEST_GROUP, free_tcp_port, free_udp_port,
                         run_script, short_temp_dir)

sys.path.insert(0, ROOT)
from DriveStateMonitor import local_dirs, options, start_report  # noqa: E402


class Launch:
    """runDSM/stopDSM of one folder with private dirs and free ports; kills what it started."""

    def __init__(self, folder: str = PACKAGE) -> None:
        self.folder = folder
        self.base = short_temp_dir()
        self.run_dir = os.path.join(self.base, "run")
        self.log_dir = os.path.join(self.base, "logs")
        self.mcast_port = free_udp_port()

    def args(self, **override: str) -> List[str]:
        values = {"--interfaces": "lo", "--query-port": "0", "--status-port": "0",
                  "--statserv-port": "0", "--http-port": "0", "--mcast-group": TEST_GROUP,
                  "--mcast-port": str(self.mcast_port), "--run-dir": self.run_dir,
                  "--log-dir": self.log_dir, "--state-dir": os.path.join(self.base, "state")}
        values.update({"--" + key.replace("_", "-"): value for key, value in override.items()})
        return [item for pair in values.items() for item in pair]

    def run(self, script: str, args: List[str], cwd: str = None) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # the copy's __pycache__ proves what was imported
        return run_script([os.path.join(self.folder, script)] + args, cwd=cwd or self.base, env=env)

    def cleanup(self) -> None:
        info = start_report.read_info(self.run_dir)
        if info and info.get("pid"):
            try:
                os.kill(info["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def launches():
    made: List[Launch] = []
    yield lambda folder=PACKAGE: made.append(Launch(folder)) or made[-1]
    for launch in made:
        launch.cleanup()


def query(path: str, letter: bytes = b"s") -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(letter)
        data = b""
        while not data.endswith(END):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


# --- the scripts live inside the folder; the folder runs under any name ------------------------
def test_run_and_stop_scripts_are_inside_the_folder_and_executable():
    for name in ("runDSM", "stopDSM"):
        assert os.access(os.path.join(PACKAGE, name), os.X_OK), name
        assert os.access(os.path.join(ROOT, name), os.X_OK), name


def test_a_copy_under_another_name_starts_answers_and_stops(launches):
    base = short_temp_dir()
    try:
        copy = os.path.join(base, "DriveStateMonitor-2.0")
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        launch = launches(copy)
        started = launch.run("runDSM", launch.args(), cwd=base)
        assert started.returncode == 0, started.stderr
        info = start_report.read_info(launch.run_dir)
        assert query(info["query_socket"]) == b"{}" + END
        # It ran the copy's code, not this checkout's.
        compiled = os.listdir(os.path.join(copy, "__pycache__"))
        assert any(name.startswith("daemon.") for name in compiled), compiled
        for script in ("dsmctl.py", "MulticastListener.py", "StatusListener.py",
                       "DriveStateMonitor.py"):
            helped = run_script([sys.executable, os.path.join(copy, script), "--help"])
            assert helped.returncode == 0 and "usage" in helped.stdout, (script, helped.stderr)
        stopped = launch.run("stopDSM", ["--run-dir", launch.run_dir], cwd=base)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_top_level_wrappers_run_the_folder_scripts(launches):
    launch = launches()
    started = run_script([os.path.join(ROOT, "runDSM")] + launch.args())
    assert started.returncode == 0, started.stderr
    assert "DSM started" in started.stdout
    stopped = run_script([os.path.join(ROOT, "stopDSM"), "--run-dir", launch.run_dir])
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr


# --- default dirs outside the code folder ---------------------------------------------------------
def test_default_dirs_for_root_and_for_a_lab_user():
    assert local_dirs.default_state_dir(0, {}) == "/var/lib/DriveStateMonitor"
    assert local_dirs.default_log_dir(0, {}) == "/var/log/DriveStateMonitor"
    env = {"HOME": "/home/alice"}
    assert local_dirs.default_state_dir(1000, env) == \
        "/home/alice/.local/state/DriveStateMonitor/state"
    assert local_dirs.default_log_dir(1000, env) == "/home/alice/.local/state/DriveStateMonitor/logs"
    env["XDG_STATE_HOME"] = "/srv/xdg"
    assert local_dirs.default_state_dir(1000, env) == "/srv/xdg/DriveStateMonitor/state"
    env["XDG_STATE_HOME"] = "relative/ignored"  # the XDG spec: relative paths are invalid
    assert local_dirs.default_log_dir(1000, env) == "/home/alice/.local/state/DriveStateMonitor/logs"


def test_defaults_are_not_inside_the_code_folder_so_a_copy_brings_no_drives():
    for path in (options.DEFAULT_STATE_DIR, options.DEFAULT_LOG_DIR):
        assert not os.path.abspath(path).startswith(options.PACKAGE_DIR + os.sep), path
    parser = options.build_parser()
    defaults = parser.parse_args([])
    assert defaults.state_dir == local_dirs.default_state_dir()
    assert defaults.log_dir == local_dirs.default_log_dir()


@pytest.mark.parametrize("which,option", [("log_dir", "--log-dir"), ("state_dir", "--state-dir")])
def test_an_unusable_dir_is_said_on_the_terminal_with_the_option_that_fixes_it(launches, which,
                                                                                 option):
    launch = launches()
    blocker = os.path.join(launch.base, "a-file")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    result = launch.run("runDSM", launch.args(**{which: os.path.join(blocker, "sub")}))
    assert result.returncode == 2, (result.stdout, result.stderr)
    first = result.stderr.splitlines()[0]
    assert first.startswith("runDSM: cannot use %s" % os.path.join(blocker, "sub")), first
    assert option in first
    assert start_report.read_info(launch.run_dir) is None  # nothing was started


# --- what runDSM prints ---------------------------------------------------------------------------
def test_run_dsm_ends_with_pid_ports_sockets_web_address_and_the_next_command(launches):
    launch = launches()
    started = launch.run("runDSM", launch.args(http_port="0"))
    assert started.returncode == 0, started.stderr
    info = start_report.read_info(launch.run_dir)
    out = started.stdout
    assert "pid %d" % info["pid"] in out
    for key in ("query_port", "status_port", "statserv_port"):
        assert "TCP port %d" % info[key] in out, key
    assert info["query_socket"] in out and info["statserv_socket"] in out
    assert "web page           off" in out
    assert "239.1.2.99:%d on lo" % launch.mcast_port in out
    last = out.rstrip("\n").splitlines()
    assert re.match(r"next: \S*dsmctl\.py --unix %s m$" % re.escape(info["query_socket"]),
                    last[-2]), last
    assert "simulate --drives 5 --mcast-group %s --mcast-port %d" % (
        TEST_GROUP, launch.mcast_port) in last[-1]
    again = launch.run("runDSM", launch.args())
    assert again.returncode == 0 and "already running with pid %d" % info["pid"] in again.stdout
    assert "TCP port %d" % info["query_port"] in again.stdout and "next: " in again.stdout
    # the shared DSM's hint still names the port it hears drives on (the simulator's default
    # port is not that DSM's)
    assert "--mcast-port %d" % launch.mcast_port in again.stdout.rstrip("\n").splitlines()[-1]


def test_run_dsm_prints_the_web_address_when_the_page_is_on(launches):
    launch = launches()
    http_port = free_tcp_port()
    started = launch.run("runDSM", launch.args(http_port=str(http_port)))
    assert started.returncode == 0, started.stderr
    assert "http://localhost:%d/" % http_port in started.stdout


def test_a_failed_start_prints_the_cause_first_with_the_flag_and_not_an_old_log(launches):
    launch = launches()
    os.makedirs(launch.log_dir)
    old_log = os.path.join(launch.log_dir, os.path.basename(
        __import__("DriveStateMonitor.launcher").launcher.log_file_for(launch.log_dir)))
    with open(old_log, "w") as f:
        f.writelines("2026-01-01 00:00:00,000 INFO dsm: an OLD line %d\n" % n for n in range(20))
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as blocker:
        blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        blocker.bind(("::", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        result = launch.run("runDSM", launch.args(status_port=str(port)))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines[0] == "runDSM: the DSM could not start: cannot bind the status port %d: " \
                       "Address already in use" % port, lines
    assert any("--status-port PORT" in line for line in lines[1:3]), lines
    assert "OLD line" not in result.stderr
    assert len(lines) <= 5


@pytest.mark.parametrize("cause,flag", [
    ("cannot bind the query port 2203: Address already in use", "--query-port"),
    ("cannot bind the Status Server port 3111: Address already in use", "--statserv-port"),
    ("cannot bind the HTTP port 2204: Address already in use", "--http-port"),
    ("cannot use the run dir /x: [Errno 13] Permission denied", "--run-dir"),
    ("cannot listen for drives: no interface named eth9", "--interfaces"),
])
def test_each_start_up_error_names_its_flag(cause, flag):
    log = "2026-11-30 03:00:00,000 ERROR dsm: %s\n" % cause
    text = start_report.start_failure(2, log, "/log")
    assert text.splitlines()[0] == "runDSM: the DSM could not start: " + cause
    assert flag in text
