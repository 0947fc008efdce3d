"""Local users and a shared machine (issue 18): the state dir, `saves/` and the log dir get the run
dir's rules, files are opened without following links (a root DSM writes nothing through another
user's link), a DSM that created its run dir removes it when it stops, and stopDSM names a DSM of
this folder that runs with another --run-dir.

Other-user cases run as `nobody` (the tests run as root; they are skipped otherwise). Every DSM is
started with private dirs and free ports and stopped by its pid (dsm_harness, conftest).
"""
from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

from DriveStateMonitor import local_dirs, persistence, save_writer
from DriveStateMonitor.single_instance import InstanceLock, ensure_run_dir, running_dsms
from DriveStateMonitor.statserv_tree import Tree
from dsm_harness import (DAEMON, ROOT, TEST_GROUP, free_udp_port, run_script,
                         wait_for)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
# A Python another user may run (the test's own may sit under /root).
OTHER_USER_PYTHON = "/usr/bin/python3"
needs_other_user_python = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(OTHER_USER_PYTHON, os.X_OK),
    reason="needs root and %s to run a DSM as another user" % OTHER_USER_PYTHON)
STOP_DSM = os.path.join(ROOT, "stopDSM")
RUN_DSM = os.path.join(ROOT, "runDSM")


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def victim_file(base: str) -> str:
    """A file a planted link points at: it must keep its content."""
    path = os.path.join(base, "victim")
    with open(path, "w") as f:
        f.write("precious\n")
    return path


def plant_link(target: str, path: str, owner: Optional[int] = None) -> None:
    os.symlink(target, path)
    if owner is not None:
        os.lchown(path, owner, -1)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


# --- the state dir, saves/ and the log dir get the run dir's rules ------------------------------
def test_a_state_dir_writable_by_others_is_refused_with_exit_2_naming_state_dir(dsm_factory):
    state_dir = os.path.join(dsm_factory.new_dirs(), "state")
    os.makedirs(state_dir)
    os.chmod(state_dir, 0o777)
    dsm = dsm_factory.start("--state-dir", state_dir, wait=False)
    assert dsm.wait_exit(10) == 2
    log = dsm.log_text()
    assert "--state-dir" in log and "writable by group or others" in log, log
    assert os.listdir(state_dir) == []  # no journal, no snapshot


@needs_root
def test_a_state_dir_owned_by_another_user_is_refused_with_exit_2(dsm_factory):
    state_dir = os.path.join(dsm_factory.new_dirs(), "state")
    os.makedirs(state_dir, mode=0o755)
    os.chown(state_dir, nobody().pw_uid, -1)
    dsm = dsm_factory.start("--state-dir", state_dir, wait=False)
    assert dsm.wait_exit(10) == 2
    log = dsm.log_text()
    assert "--state-dir" in log and "belongs to uid %d" % nobody().pw_uid in log, log
    assert os.listdir(state_dir) == []


@needs_root
@pytest.mark.parametrize("parent", ["another-user-s", "world-writable"])
def test_a_state_dir_in_a_parent_others_may_rename_in_is_refused(dsm_factory, parent):
    base = dsm_factory.new_dirs()
    above = os.path.join(base, "above")
    os.makedirs(os.path.join(above, "state"), mode=0o755)
    if parent == "another-user-s":
        os.chown(above, nobody().pw_uid, -1)
    else:
        os.chmod(above, 0o777)
    dsm = dsm_factory.start("--state-dir", os.path.join(above, "state"), wait=False)
    assert dsm.wait_exit(10) == 2
    assert "could replace it" in dsm.log_text() and "--state-dir" in dsm.log_text()


def test_a_state_dir_in_a_sticky_world_writable_parent_is_used(dsm_factory):
    above = os.path.join(dsm_factory.new_dirs(), "above")
    os.makedirs(above)
    os.chmod(above, 0o1777)  # as /tmp: others cannot rename what is not theirs
    dsm_factory.start("--state-dir", os.path.join(above, "state"))


@needs_root
def test_a_state_dir_that_is_another_user_s_link_is_refused(dsm_factory):
    base = dsm_factory.new_dirs()
    os.makedirs(os.path.join(base, "real"), mode=0o755)
    plant_link(os.path.join(base, "real"), os.path.join(base, "state"), nobody().pw_uid)
    dsm = dsm_factory.start("--state-dir", os.path.join(base, "state"), wait=False)
    assert dsm.wait_exit(10) == 2
    assert "symlink owned by uid %d" % nobody().pw_uid in dsm.log_text()
    assert os.listdir(os.path.join(base, "real")) == []


def test_a_state_dir_that_is_this_user_s_link_to_a_safe_dir_is_used(dsm_factory):
    # An admin who moved the state to another disk and left a link: still works.
    base = dsm_factory.new_dirs()
    os.makedirs(os.path.join(base, "real"), mode=0o755)
    os.symlink(os.path.join(base, "real"), os.path.join(base, "state"))
    dsm = dsm_factory.start("--state-dir", os.path.join(base, "state"), "--fsync", "always")
    status = str(dict(serial_number="L1", time_stamp="2026-12-07 000001", status="ok")).encode()
    assert dsm.send_status(status) == b"\x04"
    wait_for(lambda: any(n.startswith("journal-") for n in os.listdir(os.path.join(base, "real"))),
             5, "the journal in the linked dir")


@needs_root
def test_a_saves_dir_that_is_another_user_s_link_is_refused_at_start(dsm_factory):
    base = dsm_factory.new_dirs()
    state_dir = os.path.join(base, "state")
    elsewhere = os.path.join(base, "elsewhere")
    os.makedirs(state_dir, mode=0o755)
    os.makedirs(elsewhere, mode=0o755)
    plant_link(elsewhere, os.path.join(state_dir, "saves"), nobody().pw_uid)
    dsm = dsm_factory.start("--state-dir", state_dir, wait=False)
    assert dsm.wait_exit(10) == 2
    log = dsm.log_text()
    assert "SAVE dir" in log and "--state-dir" in log, log
    assert os.listdir(elsewhere) == []


def _statserv(dsm, line: str) -> str:
    sock = dsm.connect_statserv(unix=True)
    try:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not re.search(rb"^[.!][^\n]*\n", data, re.M):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return [line for line in data.decode().splitlines() if line[:1] in ".!"][0]
    finally:
        sock.close()


@needs_root
def test_a_saves_dir_planted_while_running_is_denied_and_its_target_untouched(dsm_factory):
    base = dsm_factory.new_dirs()
    state_dir = os.path.join(base, "state")
    elsewhere = os.path.join(base, "elsewhere")
    os.makedirs(elsewhere, mode=0o755)
    dsm = dsm_factory.start("--state-dir", state_dir)
    plant_link(elsewhere, os.path.join(state_dir, "saves"), nobody().pw_uid)
    answer = _statserv(dsm, "SAVE planted.save")
    assert answer.startswith("! DENIED"), answer
    assert os.listdir(elsewhere) == []
    assert "SAVE refused" in dsm.log_text()


@needs_root
def test_a_log_dir_owned_by_another_user_is_refused_by_run_dsm_naming_log_dir(dsm_factory):
    base = dsm_factory.new_dirs()
    log_dir = os.path.join(base, "logs")
    os.makedirs(log_dir, mode=0o755)
    os.chown(log_dir, nobody().pw_uid, -1)
    result = run_script([RUN_DSM] + _args(base, **{"--log-dir": log_dir}))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--log-dir" in result.stderr and "belongs to uid" in result.stderr
    assert os.listdir(log_dir) == []


def test_a_log_file_dir_writable_by_others_is_refused_by_the_daemon(dsm_factory):
    log_dir = os.path.join(dsm_factory.new_dirs(), "logs")
    os.makedirs(log_dir)
    os.chmod(log_dir, 0o777)
    dsm = dsm_factory.start("--log-file", os.path.join(log_dir, "dsm.log"), wait=False)
    assert dsm.wait_exit(10) == 2
    assert "--log-file" in dsm.log_text() and "writable by group or others" in dsm.log_text()
    assert os.listdir(log_dir) == []


# --- no file is written through a link ---------------------------------------------------------
def test_a_link_planted_as_the_log_file_is_never_followed_by_the_daemon(dsm_factory):
    base = dsm_factory.new_dirs()
    victim = victim_file(base)
    log_dir = os.path.join(base, "logs")
    os.makedirs(log_dir, mode=0o755)
    plant_link(victim, os.path.join(log_dir, "dsm.log"))
    dsm = dsm_factory.start("--log-file", os.path.join(log_dir, "dsm.log"), wait=False)
    assert dsm.wait_exit(10) == 2
    assert read(victim) == "precious\n"


def test_a_link_planted_as_run_dsm_s_log_file_is_never_followed(dsm_factory):
    base = dsm_factory.new_dirs()
    victim = victim_file(base)
    log_dir = os.path.join(base, "logs")
    os.makedirs(log_dir, mode=0o755)
    from DriveStateMonitor.launcher import log_file_for
    for offset in (0, 86400):  # today's name (and tomorrow's, should the date turn meanwhile)
        import time
        plant_link(victim, log_file_for(log_dir, time.time() + offset))
    result = run_script([RUN_DSM] + _args(base, **{"--log-dir": log_dir}))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert read(victim) == "precious\n"


@needs_root
def test_a_log_file_another_user_left_in_place_is_never_appended_to(dsm_factory):
    base = dsm_factory.new_dirs()
    log_dir = os.path.join(base, "logs")
    os.makedirs(log_dir, mode=0o755)
    theirs = os.path.join(log_dir, "dsm.log")
    with open(theirs, "w") as f:
        f.write("theirs\n")
    os.chown(theirs, nobody().pw_uid, -1)
    dsm = dsm_factory.start("--log-file", theirs, wait=False)
    assert dsm.wait_exit(10) == 2
    assert read(theirs) == "theirs\n"


def test_a_link_planted_under_the_snapshot_s_temporary_name_is_never_followed(tmp_path):
    victim = victim_file(str(tmp_path))
    state_dir = str(tmp_path / "state")
    os.makedirs(state_dir)
    plant_link(victim, "%s.tmp.%d" % (persistence.snapshot_path(state_dir, 4), os.getpid()))
    persistence.write_snapshot(state_dir, 4, {"format": 1})
    assert read(victim) == "precious\n"
    assert os.listdir(state_dir) == ["snapshot-4.json"]
    assert persistence.load_state(state_dir).snapshot == {"format": 1}


def test_a_link_planted_as_the_journal_is_never_written(tmp_path):
    victim = victim_file(str(tmp_path))
    state_dir = str(tmp_path / "state")
    os.makedirs(state_dir)
    plant_link(victim, persistence.journal_path(state_dir, 1))
    journal = persistence.Journal(state_dir, persistence.FSYNC_ALWAYS, lambda: {"format": 1})
    assert not journal.open(1)
    journal.record(["w", 1.0])
    journal.flush(0.0)
    assert read(victim) == "precious\n"
    assert journal.refusing is not None


@pytest.mark.parametrize("planted", ["temporary", "target"])
def test_a_link_planted_in_saves_is_never_written_through(tmp_path, planted):
    victim = victim_file(str(tmp_path))
    saves = str(tmp_path / "saves")
    os.makedirs(saves)
    target = os.path.join(saves, "x.save")
    tree = Tree()
    tree.touch("/lab/a", 0.0)
    link = target if planted == "target" else "%s.tmp.%d" % (target, os.getpid())
    plant_link(victim, link)
    assert save_writer._write(tree, target, 1 << 20) == 0  # in this process: its pid's name
    assert read(victim) == "precious\n"
    assert not os.path.islink(target) and read(target) == tree.dump()


# --- the defaults keep working ------------------------------------------------------------------
def test_the_default_dirs_of_root_pass_the_rules_when_made_fresh(tmp_path):
    # Root's defaults are /var/lib and /var/log: made by the DSM with 0755, they pass. Here the
    # same creation under a temporary root, so the test writes nothing into /var.
    for what, option in (("state dir", "--state-dir"), ("log dir", "--log-dir")):
        path = str(tmp_path / "var" / what.replace(" ", "-") / "DriveStateMonitor")
        old = os.umask(0)  # even with a careless umask, the DSM's own dirs are 0755
        try:
            assert local_dirs.unusable_dir(path, what, option) is None
        finally:
            os.umask(old)
        assert os.stat(path).st_mode & 0o777 == 0o755
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o755  # parents made too


@needs_other_user_python
def test_a_lab_user_s_default_dirs_pass_the_rules(dsm_factory):
    base = dsm_factory.new_dirs()  # removed at the end
    os.chmod(base, 0o755)
    home = os.path.join(base, "home")
    os.makedirs(home)
    os.chown(home, nobody().pw_uid, nobody().pw_gid)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from DriveStateMonitor import local_dirs as d\n"
            "env = {'HOME': %r}\n"
            "print(d.unusable_dir(d.default_state_dir(env=env), 'state dir', '--state-dir'))\n"
            "print(d.unusable_dir(d.default_log_dir(env=env), 'log dir', '--log-dir'))\n"
            "print(d.unsafe_state_dirs(d.default_state_dir(env=env), '/nonexistent/saves'))\n"
            % (ROOT, home))
    result = _run_as_nobody([OTHER_USER_PYTHON, "-c", code], cwd=home)
    assert result.stdout.split() == ["None", "None", "None"], (result.stdout, result.stderr)


# --- a shared machine ----------------------------------------------------------------------------
def _args(base: str, run_dir: Optional[str] = None, **override: str) -> List[str]:
    values: Dict[str, str] = {
        "--interfaces": "lo", "--query-port": "0", "--status-port": "0", "--statserv-port": "0",
        "--http-port": "0", "--mcast-group": TEST_GROUP, "--mcast-port": str(free_udp_port()),
        "--run-dir": run_dir or os.path.join(base, "run"), "--log-dir": os.path.join(base, "logs"),
        "--state-dir": os.path.join(base, "state")}
    values.update(override)
    return [item for pair in values.items() for item in pair]


def _run_as_nobody(command: List[str], **kwargs) -> subprocess.CompletedProcess:
    user = nobody()

    def drop() -> None:
        os.setgid(user.pw_gid)
        os.setgroups([])
        os.setuid(user.pw_uid)
    env = dict(os.environ, HOME=kwargs.pop("home", "/nonexistent"))
    return subprocess.run(command, preexec_fn=drop, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, **kwargs)


def _started_pid(stdout: str) -> int:
    match = re.search(r"DSM started, pid (\d+)", stdout)
    assert match, stdout
    return int(match.group(1))


@pytest.fixture
def started_pids():
    pids: List[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_dsm_that_created_its_run_dir_removes_it_when_it_stops(dsm_factory):
    dsm = dsm_factory.start()
    assert os.path.isdir(dsm.run_dir)
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit(15) == 0
    assert not os.path.exists(dsm.run_dir)


def test_a_run_dir_the_dsm_did_not_create_stays(dsm_factory):
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    os.makedirs(run_dir, mode=0o755)
    dsm = dsm_factory.start(run_dir=run_dir)
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit(15) == 0
    assert os.listdir(run_dir) == ["dsm.lock"]


def test_a_start_finds_its_run_dir_again_after_a_stopping_dsm_removed_it(tmp_path):
    run_dir = str(tmp_path / "run")
    first = InstanceLock(run_dir)
    first.created_dir = ensure_run_dir(run_dir)
    assert first.created_dir and first.acquire()
    second = InstanceLock(run_dir)
    second.created_dir = ensure_run_dir(run_dir)  # exists: not created by this one
    first.release()  # the stopping DSM removes the dir between the check and the lock
    assert not os.path.exists(run_dir)
    assert second.acquire() and second.created_dir
    second.release()
    assert not os.path.exists(run_dir)


@needs_other_user_python
@pytest.mark.parametrize("order", ["user-then-root", "root-then-user"])
def test_the_next_user_s_start_works_on_the_shared_run_dir(order, started_pids, dsm_factory):
    # The default run dir is one path under sticky, world-writable /tmp: the same layout here.
    shared = dsm_factory.new_dirs()
    os.chmod(shared, 0o1777)
    run_dir = os.path.join(shared, "DriveStateMonitor")
    outcomes = []
    for who in order.split("-then-"):
        base = dsm_factory.new_dirs()
        os.chmod(base, 0o755)
        if who == "user":
            os.chown(base, nobody().pw_uid, nobody().pw_gid)
        python = OTHER_USER_PYTHON if who == "user" else sys.executable
        command = [python, RUN_DSM] + _args(base, run_dir=run_dir)
        run = _run_as_nobody if who == "user" else (
            lambda c, **k: subprocess.run(c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, universal_newlines=True,
                                          timeout=60, **k))
        started = run(command, cwd=base)
        assert started.returncode == 0, (who, started.stdout, started.stderr)
        pid = _started_pid(started.stdout)
        started_pids.append(pid)
        stopped = run([python, STOP_DSM, "--run-dir", run_dir], cwd=base)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
        outcomes.append(os.path.exists(run_dir))
    assert outcomes == [False, False]


@needs_root
def test_another_user_s_run_dir_with_no_dsm_is_refused_with_the_command_that_clears_it(
        dsm_factory):
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    os.makedirs(run_dir, mode=0o755)
    open(os.path.join(run_dir, "dsm.lock"), "w").close()  # left by a killed DSM of that user
    os.chown(run_dir, nobody().pw_uid, -1)
    dsm = dsm_factory.start(run_dir=run_dir, wait=False)
    assert dsm.wait_exit(10) == 2
    assert "no DSM runs there" in dsm.log_text() and "sudo rm -r %s" % run_dir in dsm.log_text()


def test_stop_dsm_names_the_dsm_that_runs_with_another_run_dir_and_how_to_stop_it(dsm_factory):
    dsm = dsm_factory.start()
    elsewhere = os.path.join(dsm_factory.new_dirs(), "run")
    result = run_script([STOP_DSM, "--run-dir", elsewhere])
    assert result.returncode == 0
    assert "no DSM is running" in result.stdout
    said = result.stderr
    assert "pid %d" % dsm.pid in said and dsm.run_dir in said, said
    command = re.search(r"stop it with: (\S+ --run-dir \S+)", said).group(1)
    assert command.endswith("--run-dir " + dsm.run_dir)
    assert dsm.proc.poll() is None  # only named, not stopped
    stopped = run_script([STOP_DSM, "--run-dir", dsm.run_dir])
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert dsm.wait_exit(15) == 0


def test_stop_dsm_with_nothing_running_anywhere_names_nothing_else(tmp_path):
    result = run_script([STOP_DSM, "--run-dir", str(tmp_path / "run")])
    assert result.returncode == 0 and "no DSM is running" in result.stdout
    assert "runs with pid" not in result.stderr


def test_running_dsms_finds_a_dsm_started_with_a_relative_path_and_run_dir(dsm_factory):
    base = dsm_factory.new_dirs()
    os.makedirs(os.path.join(base, "state"))
    relative_daemon = os.path.relpath(DAEMON, base)
    proc = subprocess.Popen([sys.executable, relative_daemon, "--interfaces", "lo",
                             "--query-port", "0", "--status-port", "0", "--statserv-port", "0",
                             "--http-port", "0", "--mcast-group", TEST_GROUP,
                             "--mcast-port", str(free_udp_port()),
                             "--run-dir", "run", "--state-dir", "state"], cwd=base,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(os.path.join(base, "run", "dsm.json")), 10, "the DSM")
        assert (proc.pid, os.path.join(base, "run")) in running_dsms(DAEMON)
        # Its snapshot child (or a process whose descriptors cannot be read) is found by its
        # arguments: the same run dir, never "unknown".
        found = dict(running_dsms(DAEMON, "/nonexistent/default"))
        assert all(run_dir is not None for run_dir in found.values())
    finally:
        proc.kill()
        proc.wait(10)


def test_stop_dsm_never_blocks_on_fifos_planted_as_the_lock_and_pid_files(tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir, mode=0o755)
    for name in ("dsm.lock", "dsm.pid"):
        os.mkfifo(os.path.join(run_dir, name))
    result = run_script([STOP_DSM, "--run-dir", run_dir], timeout=20)
    assert result.returncode == 0 and "no DSM is running" in result.stdout, result


# --- links and dirs of another user on the way to a dir, not only as its last name ---------------
def _through_nobody_s_link(base: str) -> str:
    """`base/theirs` -> `base/real` (0755, this user's), the link owned by nobody: the way to
    every dir under `base/theirs` is another user's to redirect."""
    os.makedirs(os.path.join(base, "real"), mode=0o755)
    plant_link(os.path.join(base, "real"), os.path.join(base, "theirs"), nobody().pw_uid)
    return os.path.join(base, "theirs")


@needs_root
@pytest.mark.parametrize("option", ["--state-dir", "--log-dir", "--run-dir"])
def test_run_dsm_makes_and_writes_nothing_past_another_user_s_link_on_the_way(dsm_factory,
                                                                              option):
    """Before: `--state-dir /tmp/theirs/state` with /tmp/theirs nobody's link made a root-owned
    state dir (then a snapshot) wherever the link pointed; the log and run dirs likewise."""
    base = dsm_factory.new_dirs()
    theirs = _through_nobody_s_link(base)
    args = _args(base, **{option: os.path.join(theirs, "dir")})
    try:
        result = run_script([RUN_DSM] + args)
    finally:  # a DSM that started anyway (the bug) is stopped by its pid
        run_dir = args[args.index("--run-dir") + 1]
        for pid_file in (os.path.join(run_dir, "dsm.pid"),
                         os.path.join(base, "real", "dir", "dsm.pid")):
            try:
                with open(pid_file) as f:
                    os.kill(int(f.read().split()[0]), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "on the way is a symlink owned by uid %d" % nobody().pw_uid in result.stderr
    assert option in result.stderr
    assert os.listdir(os.path.join(base, "real")) == []


@needs_root
def test_a_dir_on_the_way_owned_by_another_user_is_refused_and_nothing_made(tmp_path):
    """nobody could rename what their dir holds (a root-made dir below it) and put a link in its
    place: the way is theirs whatever the last dirs are."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(str(theirs), nobody().pw_uid, -1)
    target = str(theirs / "a" / "state")
    problem = local_dirs.unusable_dir(target, "state dir", "--state-dir")
    assert problem is not None and "belongs to uid %d" % nobody().pw_uid in problem, problem
    assert os.listdir(str(theirs)) == []
    with pytest.raises(Exception, match="belongs to uid"):
        ensure_run_dir(str(theirs / "run"))
    assert os.listdir(str(theirs)) == []


def _dir_stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 2, uid, gid, 4096, 0, 0, 0))


def test_who_may_rename_entries_in_a_dir_on_the_way():
    """Writable by others: only with the sticky bit (/tmp). Writable by a group: root's dirs are
    root's choice (Ubuntu's /var/log is 0775 root:syslog), a user's dir is fine with the user's
    own private group (umask 002 makes 0775 dirs), anything else lets a stranger swap entries."""
    import grp
    strangers = local_dirs._strangers_may_rename
    assert not strangers(_dir_stat(0o40755, 12345, 12345))
    assert strangers(_dir_stat(0o40777, 0, 0))
    assert not strangers(_dir_stat(0o41777, 0, 0))
    assert not strangers(_dir_stat(0o40775, 0, grp.getgrnam("adm").gr_gid))
    private = [(user.pw_uid, user.pw_gid) for user in pwd.getpwall() if user.pw_uid != 0
               and any(g.gr_gid == user.pw_gid and g.gr_name == user.pw_name and not g.gr_mem
                       for g in grp.getgrall())]
    if private:
        uid, gid = private[0]
        assert not strangers(_dir_stat(0o40775, uid, gid))
    assert strangers(_dir_stat(0o40775, nobody().pw_uid, grp.getgrnam("adm").gr_gid))
    assert strangers(_dir_stat(0o40775, 4242424, 4242424))  # no such user or group: not trusted


@needs_root
def test_root_s_default_log_dir_under_a_group_writable_var_log_is_usable(tmp_path):
    """Ubuntu's /var/log is 0775 root:syslog: root's default log dir below it must still work."""
    import grp
    var_log = tmp_path / "var" / "log"
    var_log.mkdir(parents=True)
    os.chmod(str(var_log), 0o775)
    os.chown(str(var_log), 0, grp.getgrnam("adm").gr_gid)
    target = str(var_log / "DriveStateMonitor")
    assert local_dirs.unusable_dir(target, "log dir", "--log-dir") is None
    assert os.path.isdir(target)


def test_this_user_s_links_on_the_way_are_followed(tmp_path):
    """An admin who moved a tree to another disk and linked it back: still usable, and the
    dirs are made in the link's target."""
    (tmp_path / "disk").mkdir(mode=0o755)
    os.symlink(str(tmp_path / "disk"), str(tmp_path / "moved"))
    os.symlink("moved/../disk", str(tmp_path / "relative"))
    for name in ("moved", "relative"):
        assert local_dirs.unusable_dir(str(tmp_path / name / name / "state"), "state dir",
                                       "--state-dir") is None
        assert os.path.isdir(str(tmp_path / "disk" / name / "state"))
    assert local_dirs.unsafe_path(str(tmp_path / "moved" / "x")) is None
