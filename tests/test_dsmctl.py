"""dsmctl.py, run as a user runs it (a subprocess) against real DSMs: every subcommand, --json, and
every exit code (0 success, 1 Ctrl-C, 2 cannot connect, 3 connection broke, 5 refused, 6 invalid
value). Waiting is on conditions with deadlines, never fixed sleeps.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from typing import List

import pytest

from dsm_harness import (LOOPBACK, PACKAGE, ROOT, announcement, free_tcp_port, run_script,
                         short_temp_dir, wait_for)
from DriveStateMonitor.statserv_client import StatServClient

DSMCTL = os.path.join(PACKAGE, "dsmctl.py")
CHANGE_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (\S+) = (.*)$")


def server_of(dsm) -> str:
    return "%s:%d" % (LOOPBACK, dsm.statserv_port)


def ctl(server: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_script([sys.executable, DSMCTL, "--server", server] + list(args), **kwargs)


@pytest.fixture
def client(dsm):
    """A library client of the `dsm` fixture, to set things up and check what dsmctl did."""
    made = StatServClient("pytest", server_of(dsm))
    assert made.logon()
    yield made
    made.logoff()


def start_watch(procs: List[subprocess.Popen], server: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, DSMCTL, "--server", server, "watch"] + list(args),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    procs.append(proc)
    return proc


def wait_monitored(client: StatServClient, name: str, proc: subprocess.Popen) -> None:
    """Waits until the watch process has MONITORed `name` (the server counts its monitors)."""
    def monitored() -> bool:
        if proc.poll() is not None:
            raise AssertionError("watch exited %s: %s" % (proc.returncode, proc.stderr.read()))
        attributes = client.stat(name)
        return attributes is not None and attributes["monitors"] >= 1
    wait_for(monitored, 10, "the watch to monitor %s" % name)


def read_stdout_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from watch within %g s" % timeout
    return proc.stdout.readline()


# --- get / put ---------------------------------------------------------------------------------

def test_put_create_then_get_prints_the_raw_value(dsm):
    value = 'naïve "quoted" 100% = fine'
    assert ctl(server_of(dsm), "put", "--create", "/lab/note", value).returncode == 0
    result = ctl(server_of(dsm), "get", "/lab/note")
    assert (result.returncode, result.stdout, result.stderr) == (0, value + "\n", "")


def test_put_with_type_and_comment(dsm, client):
    result = ctl(server_of(dsm), "put", "/lab/n", "12", "--create", "--type", "int",
                 "--comment", "a count")
    assert result.returncode == 0, result.stderr
    attributes = client.stat("/lab/n")
    assert (attributes["type"], attributes["comment"], attributes["value"]) == ("int", "a count",
                                                                               "12")
    refused = ctl(server_of(dsm), "put", "/lab/n", "twelve")
    assert refused.returncode == 5 and refused.stderr.startswith("dsmctl: TYPE ")


def test_get_json(dsm, client):
    assert client.touch("/lab/j") and client.put("/lab/j", "v")
    result = ctl(server_of(dsm), "get", "/lab/j", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"name": "/lab/j", "value": "v", "valid": True}


def test_get_of_a_missing_object_exits_5_with_the_code_on_stderr(dsm):
    result = ctl(server_of(dsm), "get", "/lab/missing")
    assert (result.returncode, result.stdout) == (5, "")
    assert result.stderr == "dsmctl: NONEXISTENT /lab/missing does not exist\n"


def test_put_without_create_on_a_missing_object_exits_5(dsm):
    result = ctl(server_of(dsm), "put", "/lab/missing", "x")
    assert result.returncode == 5 and "NONEXISTENT" in result.stderr


def test_get_of_an_undefined_value_exits_6(dsm, client):
    assert client.touch("/lab/u")
    result = ctl(server_of(dsm), "get", "/lab/u")
    assert (result.returncode, result.stdout) == (6, "UNDEFINED\n")
    as_json = ctl(server_of(dsm), "--json", "get", "/lab/u")
    assert as_json.returncode == 6
    assert json.loads(as_json.stdout) == {"name": "/lab/u", "value": "UNDEFINED", "valid": False}


def test_put_lifetime_makes_an_expired_value_exit_6(dsm):
    assert ctl(server_of(dsm), "put", "--create", "/lab/e", "soon", "--lifetime", "0.2"
               ).returncode == 0
    result = wait_for(lambda: (lambda r: r if r.returncode != 0 else None)(
        ctl(server_of(dsm), "get", "/lab/e")), 10, "the value to expire")
    assert (result.returncode, result.stdout) == (6, "EXPIRED\n")


def test_a_silent_drive_reads_expired(dsm_factory):
    dsm = dsm_factory.start("--drive-lifetime", "0.3")
    dsm.announce(announcement("ZEXPIRE1"))
    result = wait_for(lambda: (lambda r: r if r.stdout == "expired\n" else None)(
        ctl(server_of(dsm), "get", "/drives/ZEXPIRE1/state")), 10, "the drive to expire")
    assert result.returncode == 0
    # Only state changes: the model still reads what the drive last said.
    assert ctl(server_of(dsm), "get", "/drives/ZEXPIRE1/model").stdout == "ST4000NK0001\n"


# --- ls / tree / stat --------------------------------------------------------------------------

def test_ls_text_and_json(dsm, client):
    assert client.touch("/lab/a") and client.put("/lab/a", "x y") and client.touchdir("/lab/d")
    result = ctl(server_of(dsm), "ls", "/lab")
    assert (result.returncode, result.stdout) == (0, 'a = "x y"\nd/\n')
    as_json = ctl(server_of(dsm), "ls", "/lab", "--json")
    assert json.loads(as_json.stdout) == {"path": "/lab", "entries": [
        {"name": "a", "value": "x y", "valid": True}, {"name": "d", "directory": True}]}
    root = ctl(server_of(dsm), "ls")
    assert "dsm/" in root.stdout.splitlines() and "lab/" in root.stdout.splitlines()


def test_tree_shows_a_drive_indented(dsm):
    dsm.announce(announcement("ZTREE1"))
    result = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
        ctl(server_of(dsm), "tree", "/drives")), 10, "the drive in the tree")
    lines = result.stdout.splitlines()
    assert lines[0] == "/drives/" and lines[1] == "  ZTREE1/"
    assert '    model = "ST4000NK0001"' in lines
    assert "    interfaces/" in lines and "      eth0/" in lines
    assert '        ipv4_addr = "10.20.30.41"' in lines


def test_tree_json_nests_directories(dsm, client):
    assert client.touch("/t/a/b/c") and client.put("/t/a/b/c", "deep") and client.touch("/t/top")
    result = ctl(server_of(dsm), "tree", "/t", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"path": "/t", "directory": True, "entries": [
        {"name": "a", "directory": True, "entries": [
            {"name": "b", "directory": True, "entries": [
                {"name": "c", "value": "deep", "valid": True}]}]},
        {"name": "top", "value": "UNDEFINED", "valid": False}]}


def test_tree_of_a_missing_directory_exits_5(dsm):
    result = ctl(server_of(dsm), "tree", "/nowhere")
    assert result.returncode == 5 and "NONEXISTENT" in result.stderr


def test_stat_text_and_json(dsm, client):
    assert client.touch("/lab/s", comment="why not") and client.put("/lab/s", "v")
    result = ctl(server_of(dsm), "stat", "/lab/s")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "name=/lab/s" in lines and 'value="v"' in lines and 'comment="why not"' in lines
    as_json = json.loads(ctl(server_of(dsm), "stat", "/lab/s", "--json").stdout)
    assert as_json["value"] == "v" and as_json["valid"] is True and as_json["kind"] == "object"
    assert isinstance(as_json["revision"], int)


# --- rm / rmdir --------------------------------------------------------------------------------

def test_rm_and_rmdir(dsm, client):
    assert client.touch("/gone/x")
    assert ctl(server_of(dsm), "rmdir", "/gone").returncode == 5  # not empty
    assert ctl(server_of(dsm), "rm", "/gone/x").returncode == 0
    assert ctl(server_of(dsm), "rm", "/gone/x").returncode == 5
    assert ctl(server_of(dsm), "rmdir", "/gone").returncode == 0
    assert client.ls("/gone") is None


# --- watch -------------------------------------------------------------------------------------

def test_watch_prints_a_drive_announcements_change(dsm, client, procs):
    dsm.announce(announcement("ZWATCH1"))
    wait_for(lambda: client.get("/drives/ZWATCH1/firmware_version") == "3.1.7", 10, "the drive")
    watch = start_watch(procs, server_of(dsm), "/drives/ZWATCH1/firmware_version", "--count", "1")
    wait_monitored(client, "/drives/ZWATCH1/firmware_version", watch)
    dsm.announce(announcement("ZWATCH1", firmware_version="3.2.0"))
    out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    match = CHANGE_LINE.match(out.strip())
    assert match and match.groups() == ("/drives/ZWATCH1/firmware_version", '"3.2.0"'), out


def test_watch_a_directory_sees_a_new_drive(dsm, client, procs):
    assert client.touchdir("/drives")
    watch = start_watch(procs, server_of(dsm), "/drives", "--count", "1")
    wait_monitored(client, "/drives", watch)
    dsm.announce(announcement("ZWATCH2"))
    out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    assert out.rstrip().endswith(" /drives/ZWATCH2/"), out


def test_watch_several_names_until_the_count(dsm, client, procs):
    assert client.touch("/w/a") and client.touch("/w/b")
    watch = start_watch(procs, dsm.statserv_socket, "/w/a", "/w/b", "--count", "2")
    wait_monitored(client, "/w/a", watch)
    wait_monitored(client, "/w/b", watch)
    assert client.put("/w/a", "1")
    first = CHANGE_LINE.match(read_stdout_line(watch).rstrip("\n"))
    assert first and first.groups() == ("/w/a", '"1"')
    assert client.put("/w/b", "two words")
    out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    second = CHANGE_LINE.match(out.rstrip("\n"))
    assert second and second.groups() == ("/w/b", '"two words"')


def test_watch_ends_at_its_timeout(dsm, client):
    assert client.touch("/quiet")
    result = ctl(server_of(dsm), "watch", "/quiet", "--timeout", "0.3")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_watch_of_a_name_not_there_yet_says_so_and_prints_it_when_it_appears(dsm, client, procs):
    watch = start_watch(procs, server_of(dsm), "/w/late", "--count", "1")
    # The note comes once the monitor is in place (a typo would otherwise wait in silence).
    ready, _, _ = select.select([watch.stderr], [], [], 10)
    assert ready and watch.stderr.readline() == (
        "dsmctl: /w/late does not exist (yet): watching for it to appear\n")
    assert client.touch("/w/late") and client.put("/w/late", "here")
    out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0 and err == "", err
    match = CHANGE_LINE.match(out.rstrip("\n"))
    assert match and match.group(1) == "/w/late", out


def test_watch_of_an_impossible_name_exits_5(dsm):
    result = ctl(server_of(dsm), "watch", "/dsm/pid/below")
    assert result.returncode == 5 and "NOTDIR" in result.stderr


def test_ctrl_c_exits_1(dsm, client, procs):
    assert client.touch("/w/interrupted")  # STAT, which shows the monitors, needs it to exist
    watch = start_watch(procs, server_of(dsm), "/w/interrupted")
    wait_monitored(client, "/w/interrupted", watch)
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=10)
    assert watch.returncode == 1


# --- connecting --------------------------------------------------------------------------------

def test_cannot_connect_exits_2():
    result = run_script([sys.executable, DSMCTL, "--server", "%s:%d" % (LOOPBACK, free_tcp_port()),
                         "get", "/x"])
    assert result.returncode == 2, result.stderr
    # The same hint as the DSM commands give, not a raw [Errno 111].
    assert result.stderr.startswith("dsmctl: cannot reach the Status Server at %s:" % LOOPBACK)
    assert "connection refused \u2014 is it running? (./runDSM)" in result.stderr
    assert "Errno" not in result.stderr
    for command in (["ls"], ["tree"], ["get", "/x"]):
        unix = run_script([sys.executable, DSMCTL] + command +
                          ["--server", "/nonexistent-dir/statserv.sock"])
        assert unix.returncode == 2
        assert unix.stderr == "dsmctl: cannot reach the Status Server at " \
            "/nonexistent-dir/statserv.sock: no such socket \u2014 is it running? (./runDSM)\n"


def test_connection_broken_during_a_watch_exits_3(dsm, client, procs):
    assert client.touch("/w/broken")
    watch = start_watch(procs, server_of(dsm), "/w/broken", "--reconnect-timeout", "0")
    wait_monitored(client, "/w/broken", watch)
    client.logoff()
    dsm.stop()
    out, err = watch.communicate(timeout=15)
    assert watch.returncode == 3, err
    assert err.startswith("dsmctl: ")


def test_watch_survives_a_dsm_restart(dsm_factory, procs):
    port = free_tcp_port()
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    first = dsm_factory.start("--statserv-port", str(port), run_dir=run_dir)
    server = "%s:%d" % (LOOPBACK, port)
    checker = StatServClient("pytest", server, reconnect_timeout=0)
    assert checker.logon() and checker.touch("/w/kept")
    watch = start_watch(procs, server, "/w/kept", "--count", "2")
    wait_monitored(checker, "/w/kept", watch)
    checker.logoff()
    first.stop()
    dsm_factory.start("--statserv-port", str(port), run_dir=run_dir)
    # After the replay the watch reports the monitored object as it now is: absent.
    replayed = CHANGE_LINE.match(read_stdout_line(watch).rstrip("\n"))
    assert replayed and replayed.groups() == ("/w/kept", "NONEXISTENT")
    assert checker.logon() and checker.touch("/w/kept") and checker.put("/w/kept", "back")
    out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    assert CHANGE_LINE.match(out.rstrip("\n")).groups()[1] in ('"back"', "UNDEFINED")
    checker.logoff()


def test_server_defaults_to_the_statserv_variable(dsm):
    env = dict(os.environ, STATSERV=server_of(dsm))
    result = run_script([sys.executable, DSMCTL, "get", "/dsm/pid"], env=env)
    assert (result.returncode, result.stdout) == (0, "%d\n" % dsm.pid)


def test_server_may_name_the_run_dir_as_unix_does(dsm):
    run_dir = os.path.dirname(dsm.statserv_socket)
    result = run_script([sys.executable, DSMCTL, "--server", run_dir, "get", "/dsm/pid"])
    assert (result.returncode, result.stdout) == (0, "%d\n" % dsm.pid), result.stderr


def test_unix_names_the_dsm_for_the_status_server_commands_too(dsm):
    """`--unix RUN_DIR get` asks that DSM's Status Server (statserv.sock in the run dir), not
    whichever DSM listens on localhost:3111; an explicit --server still wins."""
    run_dir = os.path.dirname(dsm.statserv_socket)
    env = {key: value for key, value in os.environ.items() if key != "STATSERV"}
    for unix in (run_dir, os.path.join(run_dir, "dsm.sock")):
        result = run_script([sys.executable, DSMCTL, "--unix", unix, "get", "/dsm/pid"], env=env)
        assert (result.returncode, result.stdout) == (0, "%d\n" % dsm.pid), result.stderr
    wrong = run_script([sys.executable, DSMCTL, "--unix", run_dir, "--server",
                        os.path.join(run_dir, "nothing.sock"), "get", "/dsm/pid"], env=env)
    assert wrong.returncode == 2


def test_runs_as_a_module_and_from_a_copied_folder(dsm):
    as_module = run_script([sys.executable, "-m", "DriveStateMonitor.dsmctl", "--server",
                            dsm.statserv_socket, "get", "/dsm/pid"], cwd=ROOT)
    assert (as_module.returncode, as_module.stdout) == (0, "%d\n" % dsm.pid), as_module.stderr
    elsewhere = short_temp_dir()
    try:
        copy = os.path.join(elsewhere, "DriveStateMonitor")
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
        result = run_script([sys.executable, os.path.join(copy, "dsmctl.py"), "--server",
                             dsm.statserv_socket, "get", "/dsm/pid"], cwd=elsewhere)
        assert (result.returncode, result.stdout) == (0, "%d\n" % dsm.pid), result.stderr
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_help_documents_the_exit_codes():
    result = run_script([sys.executable, DSMCTL, "--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for phrase in ("1 keyboard interrupt", "2 cannot connect", "3 the connection broke",
                   "5 the server refused", "6 get of a value that is not valid"):
        assert phrase in text


def test_a_nul_in_a_value_is_shown_escaped_in_tables_and_csv_on_every_python(capsys):
    # Python 3.10's csv raised "need to escape" on a NUL (3.8 quoted it, 3.11+ writes it raw).
    import argparse
    from DriveStateMonitor.dsmctl import cell_text, print_rows
    row = [cell_text("Z\x00K"), cell_text({"m": "a\x00"})]
    print_rows(["serial_number", "model"], [row], argparse.Namespace(csv=True, no_header=True))
    assert capsys.readouterr().out == 'Z\\x00K,"{""m"":""a\\u0000""}"\n'
