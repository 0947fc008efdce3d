"""runDSM and stopDSM: start the daemon detached (or share the running one), and stop it."""
from __future__ import annotations

import argparse
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

from .event_loop import EXIT_INTERRUPT, EXIT_KILL_SWITCH, EXIT_OK, EXIT_SOCKET_CREATE
from .local_dirs import open_append_no_follow, unusable_dir
from .options import DEFAULT_RUN_DIR, PACKAGE_DIR, build_parser
from .query_protocol import END_BYTE
from .state_guard import read_exit_note
from .single_instance import QUERY_SOCKET, lock_holder_pid, lock_is_held, running_dsms
from .start_report import describe_running, next_steps, read_info, simulate_options, start_failure

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
DAEMON_SCRIPT = os.path.join(PACKAGE_DIR, "DriveStateMonitor.py")


def log_file_for(log_dir: str, now: Optional[float] = None) -> str:
    """The original's dated log file: <log-dir>/<YYYY-MM-DD>_DSMlog.txt."""
    return os.path.join(log_dir, time.strftime("%Y-%m-%d", time.localtime(now)) + "_DSMlog.txt")


def answers_queries(run_dir: str, timeout: float = 2.0) -> bool:
    """True when the DSM in `run_dir` answers an `s` query on its Unix socket."""
    path = os.path.join(run_dir, QUERY_SOCKET)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"s")
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while not reply.endswith(END_BYTE):
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                reply += chunk
            return True
    except OSError:
        return False


def _log_since(path: str, offset: int) -> str:
    """What the log file gained after `offset` bytes (this start's lines, not an older run's)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""


def run_dsm(argv: Optional[List[str]] = None) -> int:
    """runDSM: starts the DSM detached, waits until it answers, says where and what next.

    Exit codes as every script: 0 started (or already running: shared), 1 Ctrl-C, 2 a dir or socket
    could not be used (the cause is printed first, with the option that fixes it), 3 listen
    failed, 4 it did not answer in time."""
    code = _start_or_share(argv)
    try:
        # A pipe's reader may have gone (`./runDSM | head -1`) with our report still buffered
        # (Python 3.8 block-buffers a piped stdout): the start went as `code` says all the same.
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    return code


def _start_or_share(argv: Optional[List[str]]) -> int:
    parser = build_parser(prog="runDSM")
    parser.description = ("Start the Drive State Monitor in the background (or share the one "
                          "already running) and wait until it answers queries.")
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parser.parse_args(argv)
    run_dir = options.run_dir
    try:
        try:
            if lock_is_held(run_dir):
                return _already_running(run_dir)
        except OSError as exc:
            print("runDSM: cannot use %s as the run dir: %s; choose another with --run-dir DIR"
                  % (run_dir, exc.strerror or exc), file=sys.stderr)
            return EXIT_SOCKET_CREATE
        log_file = options.log_file or log_file_for(options.log_dir)
        problems = [problem for problem in (
            unusable_dir(os.path.dirname(os.path.abspath(log_file)), "log dir",
                         "--log-file FILE or" if options.log_file else "--log-dir"),
            unusable_dir(options.state_dir, "state dir", "--state-dir")) if problem]
        if problems:  # both at once: a user whose home is not writable needs both options
            for problem in problems:
                print("runDSM: %s" % problem, file=sys.stderr)
            return EXIT_SOCKET_CREATE
        if options.log_file is None:
            argv += ["--log-file", log_file]
        log_offset = os.path.getsize(log_file) if os.path.exists(log_file) else 0
        # Never through a link planted under the log file's name, never into another's file.
        with os.fdopen(open_append_no_follow(log_file), "a") as log_out, \
                open(os.devnull, "rb") as devnull:
            child = subprocess.Popen([sys.executable, DAEMON_SCRIPT] + argv, stdin=devnull,
                                     stdout=log_out, stderr=log_out, start_new_session=True,
                                     close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = child.poll()
            if code is not None:
                if code == EXIT_OK and lock_is_held(run_dir):
                    return _already_running(run_dir)  # another runDSM won the race
                new_lines = _log_since(log_file, log_offset)
                print(start_failure(code, new_lines, log_file), file=sys.stderr)
                return code
            if answers_queries(run_dir):
                holder = lock_holder_pid(run_dir)
                if holder == child.pid:
                    print("runDSM: DSM started, pid %d; logging to %s" % (child.pid, log_file))
                    print(next_steps(run_dir, options, _log_since(log_file, log_offset)))
                    return EXIT_OK
                if holder is not None:  # another runDSM's DSM won the race; ours will exit 0
                    return _already_running(run_dir)
            time.sleep(POLL_S)
        print("runDSM: the DSM (pid %d) did not answer within %.0f s; log %s" % (
            child.pid, START_TIMEOUT_S, log_file), file=sys.stderr)
        return EXIT_KILL_SWITCH
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    except BrokenPipeError:
        # `./runDSM | head -1`: the reader left while runDSM said where the DSM is; only the
        # start (or the shared DSM) was printed to standard output, so the start went well.
        _quiet_stdout()
        return EXIT_OK
    except OSError as exc:
        print("runDSM: %s" % exc, file=sys.stderr)
        return EXIT_SOCKET_CREATE


def _quiet_stdout() -> None:
    """Points standard output at /dev/null, so exiting does not flush into a closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _already_running(run_dir: str) -> int:
    """Names the running DSM's pid only if it can be tied to the lock (single_instance)."""
    pid = lock_holder_pid(run_dir)
    deadline = time.monotonic() + 2.0
    while pid is None and lock_is_held(run_dir) and time.monotonic() < deadline:
        time.sleep(POLL_S)  # the holder writes its pid file just after taking the lock
        pid = lock_holder_pid(run_dir)
    print("runDSM: a DSM is already running%s (run dir %s); sharing it"
          % (" with pid %d" % pid if pid else "", run_dir))
    info = read_info(run_dir)
    if info:
        # (the group is not in dsm.json: a DSM on another group is named by its port alone)
        print(describe_running(info, run_dir, simulate_options=simulate_options(info)))
    return EXIT_OK


def stop_dsm(argv: Optional[List[str]] = None) -> int:
    """stopDSM: SIGTERM to the running DSM, then wait for it to exit."""
    parser = argparse.ArgumentParser(prog="stopDSM", description="Stop the running Drive State "
                                     "Monitor (SIGTERM), and wait until it has exited.")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                        help="the run dir of the DSM to stop (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, metavar="SECONDS",
                        help="how long to wait for it to exit (default %(default)s)")
    options = parser.parse_args(argv)
    run_dir = options.run_dir
    pid: Optional[int] = None
    try:
        if not lock_is_held(run_dir):
            print("stopDSM: no DSM is running (run dir %s)" % run_dir)
            _name_dsms_elsewhere(run_dir)
            return EXIT_OK
        pid = lock_holder_pid(run_dir)
        deadline = time.monotonic() + 2.0
        while pid is None and lock_is_held(run_dir) and time.monotonic() < deadline:
            time.sleep(POLL_S)  # a DSM that just took the lock writes its pid file at once
            pid = lock_holder_pid(run_dir)
        if pid is None:
            if not lock_is_held(run_dir):
                print("stopDSM: no DSM is running (run dir %s)" % run_dir)
                _name_dsms_elsewhere(run_dir)
                return EXIT_OK
            print("stopDSM: a process holds the lock in %s but no live pid can be tied to it; "
                  "nothing signalled" % run_dir, file=sys.stderr)
            return EXIT_KILL_SWITCH
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + options.timeout
        while lock_is_held(run_dir):
            if time.monotonic() >= deadline:
                print("stopDSM: the DSM (pid %d) is still running after %.0f s"
                      % (pid, options.timeout), file=sys.stderr)
                return EXIT_KILL_SWITCH
            time.sleep(POLL_S)
        note = read_exit_note(run_dir, pid)
        if note is not None and note.get("code"):
            print("stopDSM: DSM (pid %d) stopped with exit code %s: %s"
                  % (pid, note["code"], note.get("why", "")), file=sys.stderr)
            return EXIT_KILL_SWITCH
        print("stopDSM: DSM (pid %d) stopped" % pid)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    except PermissionError:
        if pid is None:
            print("stopDSM: not allowed to read the run dir %s; choose yours with --run-dir DIR"
                  % run_dir, file=sys.stderr)
        else:
            print("stopDSM: not allowed to stop the DSM (pid %d): it runs as %s; stop it as that "
                  "user (e.g. sudo ./stopDSM)" % (pid, _owner_of(pid)), file=sys.stderr)
        return EXIT_KILL_SWITCH


def _name_dsms_elsewhere(run_dir: str) -> None:
    """After "no DSM is running" in `run_dir`: names each DSM of this folder that holds the lock
    of another run dir (found in /proc), with the command that stops it, on standard error."""
    here = os.path.realpath(run_dir)
    for pid, other in running_dsms(DAEMON_SCRIPT, DEFAULT_RUN_DIR):
        if other is None:
            print("stopDSM: a DSM of this folder runs with pid %d (%s), its run dir unknown; "
                  "stop it with: %s --run-dir DIR" % (pid, _owner_of(pid), _stop_command()),
                  file=sys.stderr)
        elif os.path.realpath(other) != here and lock_holder_pid(other) in (pid, None) \
                and lock_is_held(other):
            print("stopDSM: but a DSM of this folder runs with pid %d and run dir %s; stop it "
                  "with: %s --run-dir %s" % (pid, other, _stop_command(), shlex.quote(other)),
                  file=sys.stderr)


def _stop_command() -> str:
    """How this stopDSM was called (./stopDSM, DriveStateMonitor/stopDSM, ...)."""
    invoked = sys.argv[0] if sys.argv and sys.argv[0] else "stopDSM"
    if os.path.basename(invoked) != "stopDSM":
        return "stopDSM"
    return shlex.quote(invoked if os.sep in invoked else "./" + invoked)


def _owner_of(pid: Optional[int]) -> str:
    """'user NAME' (or 'uid N') running process `pid`; 'another user' when that cannot be read."""
    if pid is None:
        return "another user"
    try:
        uid = os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return "another user"
    try:
        return "user %s" % pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid
